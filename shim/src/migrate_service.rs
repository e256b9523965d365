//! cairnpb.migrate.v1.Migration: the target's side of a live migration from
//! etcd (docs/design.md, "Live migration from etcd"), on the client port.
//!
//! Every call that changes the target is one log command (`Store::migration_*`),
//! applied by every member alike; its refusals (wrong phase, out of step, a
//! store with data) come back from apply and become the statuses of the
//! design's table in `errors::store_status`. `State` answers from this
//! member's applied state, without a Raft round.

use cairn_proto::migrate::{
    migration_server::Migration, AbortRequest, BeginRequest, CutoverRequest, ImportBaseRequest,
    ImportRevisionsRequest, MigrationState, StateRequest,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::errors::store_status;
use crate::node::SharedNode;

/// The largest request the service takes: an etcd revision that deletes a
/// million keys is about 100 MB of events. Each request becomes one Raft
/// log record, and the log refuses to read back a record above 256 MiB
/// (`replication::log_file`), so the bound stays well below that.
pub const MAX_MESSAGE_BYTES: usize = 192 << 20;

pub struct MigrationService {
    node: SharedNode,
}

impl MigrationService {
    pub fn new(node: SharedNode) -> Self {
        MigrationService { node }
    }
}

fn answer(
    r: cairn_raft_backend::Result<MigrationState>,
) -> Result<Response<MigrationState>, Status> {
    match r {
        Ok(state) => {
            tracing::debug!(
                phase = state.phase().as_str_name(),
                target_revision = state.target_revision,
                "migration call applied"
            );
            Ok(Response::new(state))
        }
        Err(e) => {
            tracing::info!(error = %e, "migration call refused");
            Err(store_status(e))
        }
    }
}

#[tonic::async_trait]
impl Migration for MigrationService {
    async fn begin(&self, req: Request<BeginRequest>) -> Result<Response<MigrationState>, Status> {
        let r = req.into_inner();
        let span = tracing::info_span!(
            "migration_begin",
            source = format_args!("{:x}", r.source_cluster_id),
            source_version = %r.source_version,
            start_revision = r.start_revision,
            compact_revision = r.compact_revision,
            restart = r.restart,
        );
        answer(self.node.store.migration_begin(r).instrument(span).await)
    }

    async fn import_base(
        &self,
        req: Request<ImportBaseRequest>,
    ) -> Result<Response<MigrationState>, Status> {
        let r = req.into_inner();
        let span = tracing::debug_span!(
            "import_base",
            kvs = r.kvs.len(),
            leases = r.leases.len(),
            done = r.done,
        );
        answer(self.node.store.import_base(r).instrument(span).await)
    }

    async fn import_revisions(
        &self,
        req: Request<ImportRevisionsRequest>,
    ) -> Result<Response<MigrationState>, Status> {
        let r = req.into_inner();
        let span = tracing::debug_span!(
            "import_revisions",
            after_revision = r.after_revision,
            revisions = r.revisions.len(),
            lease_grants = r.lease_grants.len(),
            lease_drops = r.lease_drops.len(),
            compact_to = r.compact_to,
        );
        answer(self.node.store.import_revisions(r).instrument(span).await)
    }

    async fn state(&self, _req: Request<StateRequest>) -> Result<Response<MigrationState>, Status> {
        let span = tracing::debug_span!("migration_state");
        self.node
            .store
            .migration_state()
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(store_status)
    }

    async fn cutover(
        &self,
        req: Request<CutoverRequest>,
    ) -> Result<Response<MigrationState>, Status> {
        let r = req.into_inner();
        let span =
            tracing::info_span!("migration_cutover", expected_revision = r.expected_revision);
        answer(self.node.store.migration_cutover(r).instrument(span).await)
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<MigrationState>, Status> {
        let span = tracing::info_span!("migration_abort");
        answer(
            self.node
                .store
                .migration_abort(req.into_inner())
                .instrument(span)
                .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::{
        kv_server::Kv, lease_server::Lease, maintenance_server::Maintenance, LeaseGrantRequest,
        PutRequest, RangeRequest, StatusRequest,
    };
    use cairn_proto::migrate::{ImportRevision, Phase};
    use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
    use tonic::Code;

    use super::*;
    use crate::kv_service::KvService;
    use crate::lease::{LeaseService, Lessor};
    use crate::maintenance_service::MaintenanceService;
    use crate::stream_end::StreamEnd;
    use crate::testing;

    const SOURCE: u64 = 0xcdf8_1819_4e3a_8c32;

    fn begin(start: i64) -> Request<BeginRequest> {
        Request::new(BeginRequest {
            source_cluster_id: SOURCE,
            source_version: "3.5.1".into(),
            start_revision: start,
            compact_revision: -1,
            unix_ms: 1,
            ..Default::default()
        })
    }

    fn put(key: &str) -> Request<PutRequest> {
        Request::new(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn status_of<T: std::fmt::Debug>(r: Result<T, Status>) -> (Code, String) {
        let s = r.expect_err("refused");
        (s.code(), s.message().to_string())
    }

    #[tokio::test]
    async fn the_service_refuses_as_the_design_says() {
        let t = testing::leader().await;
        let svc = MigrationService::new(t.node.clone());
        // No migration yet.
        let st = svc.state(Request::new(StateRequest {})).await.unwrap();
        assert_eq!(
            (st.get_ref().phase(), st.get_ref().target_revision),
            (Phase::None, 1)
        );
        assert_eq!(
            status_of(svc.cutover(Request::new(CutoverRequest::default())).await),
            (
                Code::FailedPrecondition,
                "cairn: no import in progress (phase NONE)".into()
            )
        );
        // A store with data is no target.
        let used = testing::leader().await;
        testing::put(&used.node, "a", "1", 0).await;
        let on_used = MigrationService::new(used.node.clone())
            .begin(begin(5))
            .await;
        assert_eq!(
            status_of(on_used),
            (
                Code::FailedPrecondition,
                "cairn: target is not empty (revision 2); a migration needs an empty Cairn cluster"
                    .into()
            )
        );

        let st = svc.begin(begin(5)).await.unwrap().into_inner();
        assert_eq!(st.phase(), Phase::Copying);
        let other = svc
            .begin(Request::new(BeginRequest {
                source_cluster_id: 0xabc,
                start_revision: 5,
                compact_revision: -1,
                ..Default::default()
            }))
            .await;
        assert_eq!(
            status_of(other),
            (
                Code::FailedPrecondition,
                "cairn: target is importing from etcd cluster cdf818194e3a8c32, not abc".into()
            )
        );
        let early = svc
            .import_revisions(Request::new(ImportRevisionsRequest {
                after_revision: 1,
                ..Default::default()
            }))
            .await;
        assert_eq!(
            status_of(early),
            (
                Code::FailedPrecondition,
                "cairn: no import in progress (phase COPYING)".into()
            )
        );
        let stale = svc
            .import_base(Request::new(ImportBaseRequest {
                after_key: b"m".to_vec(),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            status_of(stale),
            (
                Code::Aborted,
                "cairn: migration out of step: the copy resumes after the first key, request starts after key \"m\"".into()
            )
        );
        let st = svc
            .import_base(Request::new(ImportBaseRequest {
                kvs: vec![KeyValue {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    create_revision: 2,
                    mod_revision: 4,
                    version: 2,
                    lease: 0,
                }],
                done: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (st.phase(), st.target_revision, st.keys_copied),
            (Phase::Following, 5, 1)
        );
        let gap = svc
            .import_revisions(Request::new(ImportRevisionsRequest {
                after_revision: 6,
                revisions: vec![ImportRevision {
                    revision: 7,
                    events: vec![],
                }],
                ..Default::default()
            }))
            .await;
        assert_eq!(
            status_of(gap),
            (
                Code::Aborted,
                "cairn: migration out of step: the target is at revision 5, request starts after revision 6".into()
            )
        );
        let st = svc
            .import_revisions(Request::new(ImportRevisionsRequest {
                after_revision: 5,
                revisions: vec![ImportRevision {
                    revision: 6,
                    events: vec![Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: b"a".to_vec(),
                            ..Default::default()
                        }),
                        prev_kv: None,
                    }],
                }],
                source_revision: 6,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((st.target_revision, st.source_revision), (6, 6));
        let wrong = svc
            .cutover(Request::new(CutoverRequest {
                expected_revision: 7,
                unix_ms: 2,
            }))
            .await;
        assert_eq!(status_of(wrong).0, Code::Aborted);
        let st = svc
            .cutover(Request::new(CutoverRequest {
                expected_revision: 6,
                unix_ms: 2,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.phase(), Phase::CutOver);
        assert_eq!(
            status_of(svc.abort(Request::new(AbortRequest { unix_ms: 3 })).await),
            (
                Code::FailedPrecondition,
                "cairn: no import in progress (phase CUT_OVER)".into()
            )
        );
    }

    #[tokio::test]
    async fn client_writes_are_refused_before_proposing_until_cutover() {
        let t = testing::leader().await;
        let svc = MigrationService::new(t.node.clone());
        let kv = KvService::new(t.node.clone());
        let lessor = Lessor::start(t.node.clone(), std::time::Duration::from_millis(100))
            .await
            .unwrap();
        let (stream_end, _stop) =
            StreamEnd::start(t.node.clone(), std::time::Duration::from_secs(1));
        let leases = LeaseService::new(t.node.clone(), lessor, stream_end);
        let maintenance = MaintenanceService::new(t.node.clone());
        svc.begin(begin(1)).await.unwrap();
        let applied = t.node.store.applied().applied_index;
        let importing = (
            Code::FailedPrecondition,
            "etcdserver: cairn is importing from etcd cluster cdf818194e3a8c32 (phase COPYING); writes are refused until cutover".to_string(),
        );
        assert_eq!(status_of(kv.put(put("a")).await), importing);
        assert_eq!(
            status_of(
                leases
                    .lease_grant(Request::new(LeaseGrantRequest { ttl: 10, id: 0 }))
                    .await
            ),
            importing
        );
        // Refused before the log: nothing was proposed.
        assert_eq!(t.node.store.applied().applied_index, applied);
        // Reads are served.
        kv.range(Request::new(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let status = maintenance
            .status(Request::new(StatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.errors,
            vec!["IMPORTING from etcd cluster cdf818194e3a8c32 (phase COPYING); writes are refused until cutover".to_string()]
        );
        assert!(t.node.migration_note().is_some());

        svc.import_base(Request::new(ImportBaseRequest {
            done: true,
            ..Default::default()
        }))
        .await
        .unwrap();
        svc.cutover(Request::new(CutoverRequest {
            expected_revision: 1,
            unix_ms: 0,
        }))
        .await
        .unwrap();
        let resp = kv.put(put("a")).await.unwrap().into_inner();
        assert_eq!(resp.header.unwrap().revision, 2);
        leases
            .lease_grant(Request::new(LeaseGrantRequest { ttl: 10, id: 0 }))
            .await
            .unwrap();
        assert_eq!(t.node.migration_note(), None);
    }

    #[tokio::test]
    async fn after_an_abort_writes_stay_refused() {
        let t = testing::leader().await;
        let svc = MigrationService::new(t.node.clone());
        svc.begin(begin(3)).await.unwrap();
        svc.abort(Request::new(AbortRequest { unix_ms: 1 }))
            .await
            .unwrap();
        let kv = KvService::new(t.node.clone());
        assert_eq!(
            status_of(kv.put(put("a")).await),
            (
                Code::FailedPrecondition,
                "etcdserver: cairn's import from etcd cluster cdf818194e3a8c32 was aborted; this cluster holds a partial copy and refuses writes".into()
            )
        );
        // The apply step refuses it too, should it reach the log.
        let proposed = t
            .node
            .store
            .propose(cairn_raft_backend::Command::Put(put("a").into_inner()))
            .await;
        assert!(
            matches!(
                proposed,
                Err(cairn_raft_backend::StoreError::MigrationAborted { .. })
            ),
            "{proposed:?}"
        );
    }
}
