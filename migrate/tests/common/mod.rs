//! A stand-in for Cairn's side of the migration contract, for testing the
//! migrator before the real target is merged: an in-memory multi-version
//! store behind `cairnpb.migrate.v1.Migration` (the contract's position
//! checks, phases and messages), etcd's Range at a revision, LeaseLeases,
//! and HashKV (the hash is the source etcd's own at that revision, the
//! compact revision the fake's: it cannot compute etcd's hash itself).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_server::{Kv, KvServer};
use cairn_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use cairn_proto::migrate::migration_server::{Migration, MigrationServer};
use cairn_proto::migrate::*;
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::KeyValue;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

type Res<T> = Result<Response<T>, Status>;

#[derive(Clone, Debug)]
struct Version {
    kv: KeyValue,
    deleted: bool,
}

/// The fake's store.
#[derive(Default)]
pub struct Inner {
    pub state: MigrationState,
    history: BTreeMap<Vec<u8>, Vec<Version>>,
    pub leases: BTreeMap<i64, ImportLease>,
    pub calls: u64,
    /// When each imported revision was applied (for lag measurements).
    pub imported_at: Vec<(i64, std::time::Instant)>,
}

impl Inner {
    fn wipe(&mut self) {
        self.history.clear();
        self.leases.clear();
    }

    fn at(&self, rev: i64) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for versions in self.history.values() {
            if let Some(v) = versions.iter().rev().find(|v| v.kv.mod_revision <= rev) {
                if !v.deleted {
                    out.push(v.kv.clone());
                }
            }
        }
        out
    }
}

/// The fake target.
#[derive(Clone)]
pub struct Fake {
    pub inner: Arc<Mutex<Inner>>,
    /// Every import call waits this long before it applies (to interrupt a copy).
    pub delay: Arc<Mutex<Duration>>,
    source: String,
}

fn out_of_step(holds: String, names: String) -> Status {
    Status::aborted(format!(
        "cairn: migration out of step: {holds}, request starts after {names}"
    ))
}

fn phase_str(p: i32) -> &'static str {
    cairn_migrate::target::phase_name(p)
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    async fn wait(&self) {
        let d = *self.delay.lock().unwrap();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// The key-values the fake holds at `rev`.
    pub fn kvs_at(&self, rev: i64) -> Vec<KeyValue> {
        self.lock().at(rev)
    }

    /// Changes the value of `key`'s latest version in place (a corrupt copy).
    pub fn corrupt(&self, key: &[u8]) {
        let mut g = self.lock();
        if let Some(v) = g.history.get_mut(key).and_then(|vs| vs.last_mut()) {
            v.kv.value = b"corrupted".to_vec();
        }
    }

    /// Its state.
    pub fn state(&self) -> MigrationState {
        self.lock().state.clone()
    }
}

#[tonic::async_trait]
impl Migration for Fake {
    async fn begin(&self, r: Request<BeginRequest>) -> Res<MigrationState> {
        let r = r.into_inner();
        let mut g = self.lock();
        let phase = Phase::try_from(g.state.phase).unwrap_or(Phase::None);
        match phase {
            Phase::None => {}
            Phase::Copying | Phase::Following => {
                if g.state.source_cluster_id != r.source_cluster_id {
                    return Err(Status::failed_precondition(format!(
                        "cairn: target is importing from etcd cluster {:x}, not {:x}",
                        g.state.source_cluster_id, r.source_cluster_id
                    )));
                }
                if !r.restart {
                    return Ok(Response::new(g.state.clone()));
                }
                g.wipe();
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "cairn: no import in progress (phase {})",
                    phase_str(g.state.phase)
                )))
            }
        }
        g.state = MigrationState {
            phase: Phase::Copying as i32,
            source_cluster_id: r.source_cluster_id,
            source_version: r.source_version,
            start_revision: r.start_revision,
            compact_revision: r.compact_revision,
            target_revision: 1,
            history_none: r.history_none,
            phase_since_unix_ms: r.unix_ms,
            ..Default::default()
        };
        g.calls += 1;
        Ok(Response::new(g.state.clone()))
    }

    async fn import_base(&self, r: Request<ImportBaseRequest>) -> Res<MigrationState> {
        self.wait().await;
        let r = r.into_inner();
        let mut g = self.lock();
        if g.state.phase != Phase::Copying as i32 {
            return Err(Status::failed_precondition(format!(
                "cairn: no import in progress (phase {})",
                phase_str(g.state.phase)
            )));
        }
        if r.after_key != g.state.copy_resume_after {
            return Err(out_of_step(
                format!(
                    "copy resumes after {:?}",
                    String::from_utf8_lossy(&g.state.copy_resume_after)
                ),
                format!("{:?}", String::from_utf8_lossy(&r.after_key)),
            ));
        }
        let mut last = r.after_key.clone();
        for kv in &r.kvs {
            if kv.key <= last && !(last.is_empty() && kv.key.is_empty()) {
                return Err(Status::invalid_argument(
                    "kvs not ascending after after_key",
                ));
            }
            if kv.mod_revision > g.state.start_revision {
                return Err(Status::invalid_argument("kv newer than start_revision"));
            }
            last = kv.key.clone();
        }
        for l in r.leases {
            g.leases.insert(l.id, l);
        }
        for kv in r.kvs {
            g.state.keys_copied += 1;
            g.state.bytes_copied += (kv.key.len() + kv.value.len()) as i64;
            g.history
                .entry(kv.key.clone())
                .or_default()
                .push(Version { kv, deleted: false });
        }
        g.state.copy_resume_after = last;
        g.state.source_revision = r.source_revision;
        if r.done {
            g.state.phase = Phase::Following as i32;
            g.state.target_revision = g.state.start_revision;
        }
        g.calls += 1;
        Ok(Response::new(g.state.clone()))
    }

    async fn import_revisions(&self, r: Request<ImportRevisionsRequest>) -> Res<MigrationState> {
        self.wait().await;
        let r = r.into_inner();
        let mut g = self.lock();
        if g.state.phase != Phase::Following as i32 {
            return Err(Status::failed_precondition(format!(
                "cairn: no import in progress (phase {})",
                phase_str(g.state.phase)
            )));
        }
        if r.after_revision != g.state.target_revision {
            return Err(out_of_step(
                format!("target at revision {}", g.state.target_revision),
                format!("revision {}", r.after_revision),
            ));
        }
        let mut prev = r.after_revision;
        for rev in &r.revisions {
            if rev.revision != prev + 1 {
                return Err(Status::invalid_argument(format!(
                    "revision {} after {prev}",
                    rev.revision
                )));
            }
            prev = rev.revision;
        }
        if r.compact_to != 0 && r.compact_to > prev {
            return Err(Status::invalid_argument("compact_to above the revision"));
        }
        for l in r.lease_grants {
            g.leases.insert(l.id, l);
        }
        for rev in r.revisions {
            for ev in rev.events {
                let kv = ev.kv.unwrap_or_default();
                let deleted = ev.r#type == EventType::Delete as i32;
                g.history
                    .entry(kv.key.clone())
                    .or_default()
                    .push(Version { kv, deleted });
            }
            g.state.target_revision = rev.revision;
            g.imported_at
                .push((rev.revision, std::time::Instant::now()));
        }
        for id in r.lease_drops {
            g.leases.remove(&id);
        }
        // 0: the source did not compact (a never-compacted target stays at -1).
        if r.compact_to != 0 && r.compact_to > g.state.compact_revision {
            g.state.compact_revision = r.compact_to;
        }
        g.state.source_revision = r.source_revision;
        g.state.source_seen_unix_ms = r.unix_ms;
        g.calls += 1;
        Ok(Response::new(g.state.clone()))
    }

    async fn state(&self, _: Request<StateRequest>) -> Res<MigrationState> {
        Ok(Response::new(self.lock().state.clone()))
    }

    async fn cutover(&self, r: Request<CutoverRequest>) -> Res<MigrationState> {
        let r = r.into_inner();
        let mut g = self.lock();
        if g.state.phase != Phase::Following as i32 {
            return Err(Status::failed_precondition(format!(
                "cairn: no import in progress (phase {})",
                phase_str(g.state.phase)
            )));
        }
        if r.expected_revision != g.state.target_revision {
            return Err(out_of_step(
                format!("target at revision {}", g.state.target_revision),
                format!("revision {}", r.expected_revision),
            ));
        }
        g.state.phase = Phase::CutOver as i32;
        Ok(Response::new(g.state.clone()))
    }

    async fn abort(&self, _: Request<AbortRequest>) -> Res<MigrationState> {
        let mut g = self.lock();
        match Phase::try_from(g.state.phase) {
            Ok(Phase::Copying | Phase::Following) => {
                g.state.phase = Phase::Aborted as i32;
                Ok(Response::new(g.state.clone()))
            }
            _ => Err(Status::failed_precondition(format!(
                "cairn: no import in progress (phase {})",
                phase_str(g.state.phase)
            ))),
        }
    }
}

fn header(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: 7,
        member_id: 8,
        revision: rev,
        raft_term: 1,
    })
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, r: Request<pb::RangeRequest>) -> Res<pb::RangeResponse> {
        let r = r.into_inner();
        let g = self.lock();
        let current = g.state.target_revision.max(1);
        let rev = if r.revision <= 0 { current } else { r.revision };
        if g.state.phase != Phase::Copying as i32 && rev < g.state.compact_revision {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            ));
        }
        if rev > current {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        let all = g.at(rev);
        let matching: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| {
                if r.range_end.is_empty() {
                    kv.key == r.key
                } else if r.range_end == [0] {
                    kv.key >= r.key
                } else {
                    kv.key >= r.key && kv.key < r.range_end
                }
            })
            .collect();
        let count = matching.len() as i64;
        let limit = if r.limit > 0 {
            r.limit as usize
        } else {
            usize::MAX
        };
        let more = matching.len() > limit;
        let kvs = if r.count_only {
            Vec::new()
        } else {
            matching.into_iter().take(limit).collect()
        };
        Ok(Response::new(pb::RangeResponse {
            header: header(current),
            kvs,
            more,
            count,
        }))
    }
    async fn put(&self, _: Request<pb::PutRequest>) -> Res<pb::PutResponse> {
        Err(Status::failed_precondition(
            "etcdserver: cairn is importing",
        ))
    }
    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Res<pb::DeleteRangeResponse> {
        Err(Status::failed_precondition(
            "etcdserver: cairn is importing",
        ))
    }
    async fn txn(&self, _: Request<pb::TxnRequest>) -> Res<pb::TxnResponse> {
        Err(Status::failed_precondition(
            "etcdserver: cairn is importing",
        ))
    }
    async fn compact(&self, _: Request<pb::CompactionRequest>) -> Res<pb::CompactionResponse> {
        Err(Status::failed_precondition(
            "etcdserver: cairn is importing",
        ))
    }
}

type Boxed<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for Fake {
    async fn lease_grant(&self, _: Request<pb::LeaseGrantRequest>) -> Res<pb::LeaseGrantResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn lease_revoke(
        &self,
        _: Request<pb::LeaseRevokeRequest>,
    ) -> Res<pb::LeaseRevokeResponse> {
        Err(Status::unimplemented("fake"))
    }
    type LeaseKeepAliveStream = Boxed<pb::LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        _: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Res<Self::LeaseKeepAliveStream> {
        Err(Status::unimplemented("fake"))
    }
    async fn lease_time_to_live(
        &self,
        _: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Res<pb::LeaseTimeToLiveResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Res<pb::LeaseLeasesResponse> {
        let g = self.lock();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: header(g.state.target_revision),
            leases: g
                .leases
                .keys()
                .map(|id| pb::LeaseStatus { id: *id })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Maintenance for Fake {
    async fn alarm(&self, _: Request<pb::AlarmRequest>) -> Res<pb::AlarmResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn status(&self, _: Request<pb::StatusRequest>) -> Res<pb::StatusResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Res<pb::DefragmentResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn hash(&self, _: Request<pb::HashRequest>) -> Res<pb::HashResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn hash_kv(&self, r: Request<pb::HashKvRequest>) -> Res<pb::HashKvResponse> {
        let rev = r.into_inner().revision;
        let mut c = MaintenanceClient::connect(self.source.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut resp = c
            .hash_kv(pb::HashKvRequest { revision: rev })
            .await?
            .into_inner();
        resp.compact_revision = self.lock().state.compact_revision;
        Ok(Response::new(resp))
    }
    type SnapshotStream = Boxed<pb::SnapshotResponse>;
    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Res<Self::SnapshotStream> {
        Err(Status::unimplemented("fake"))
    }
    async fn move_leader(&self, _: Request<pb::MoveLeaderRequest>) -> Res<pb::MoveLeaderResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn downgrade(&self, _: Request<pb::DowngradeRequest>) -> Res<pb::DowngradeResponse> {
        Err(Status::unimplemented("fake"))
    }
}

/// A running fake target; stops when dropped.
pub struct FakeTarget {
    pub fake: Fake,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeTarget {
    /// Serves a fake on a free port of 127.0.0.1; `source` is the etcd its HashKV asks.
    pub async fn start(source: &str) -> anyhow::Result<FakeTarget> {
        let fake = Fake {
            inner: Arc::new(Mutex::new(Inner::default())),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            source: source.to_string(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(MigrationServer::new(fake.clone()))
            .add_service(KvServer::new(fake.clone()))
            .add_service(LeaseServer::new(fake.clone()))
            .add_service(MaintenanceServer::new(fake.clone()));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(FakeTarget {
            fake,
            addr,
            stop: Some(tx),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
