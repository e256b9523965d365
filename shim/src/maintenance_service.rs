//! etcdserverpb.Maintenance: status, alarms, defragmentation and HashKV.

use std::pin::Pin;

use cairn_proto::etcdserverpb::{
    maintenance_server::Maintenance, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest,
    DefragmentResponse, DowngradeInfo, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use cairn_raft_backend::{Command, CommandOutput};
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::errors::store_status;
use crate::node::{SharedNode, ETCD_VERSION};

pub struct MaintenanceService {
    node: SharedNode,
}

impl MaintenanceService {
    pub fn new(node: SharedNode) -> Self {
        MaintenanceService { node }
    }
}

/// etcd's text for an active alarm in Status.errors.
fn alarm_text(member_id: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map(|a| a.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{member_id} alarm:{name} ")
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = req.into_inner();
        let span = tracing::info_span!("alarm", action = r.action, alarm = r.alarm);
        let out = self
            .node
            .store
            .propose(Command::Alarm(r))
            .instrument(span)
            .await
            .map_err(store_status)?;
        match out {
            CommandOutput::Alarm(mut resp) => {
                self.node.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for alarm",
            )),
        }
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.node.store.status().await.map_err(store_status)?;
        let alarms = self.node.store.alarms().await.map_err(store_status)?;
        let raft = self.node.store.raft_status();
        let versions = self
            .node
            .store
            .version_state()
            .await
            .map_err(store_status)?;
        Ok(Response::new(StatusResponse {
            header: self.node.header(),
            version: ETCD_VERSION.to_string(),
            db_size: st.db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_log_index.max(st.applied.applied_index),
            raft_term: raft.term,
            raft_applied_index: st.applied.applied_index,
            errors: alarms
                .iter()
                .map(|a| alarm_text(a.member_id, a.alarm))
                .chain(self.node.migration_note())
                .collect(),
            db_size_in_use: st.db_size_in_use,
            is_learner: raft.is_learner,
            storage_version: ETCD_VERSION.to_string(),
            db_size_quota: self.node.quota_bytes,
            // As etcd 3.6: always present, the target while enabled.
            downgrade_info: Some(DowngradeInfo {
                enabled: versions.downgrade_target.is_some(),
                target_version: versions
                    .downgrade_target
                    .map(|t| t.target_string())
                    .unwrap_or_default(),
            }),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.node
            .store
            .defragment()
            .instrument(tracing::info_span!("defragment"))
            .await
            .map_err(store_status)?;
        Ok(Response::new(DefragmentResponse {
            header: self.node.header(),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented(
            "Hash is not implemented yet; use HashKV when it lands",
        ))
    }

    /// From this member's own state, as etcd answers it (no ReadIndex), so
    /// that `etcdctl endpoint hashkv --cluster` compares the members.
    #[tracing::instrument(skip_all, name = "HashKV")]
    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let h = self
            .node
            .store
            .hash_kv(revision)
            .await
            .map_err(store_status)?;
        Ok(Response::new(HashKvResponse {
            header: self.node.header(),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// The store in etcd's backend format, streamed as etcd streams its own
    /// (see `snapshot_stream`); from this member's state, as etcd does.
    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let rx = crate::snapshot_stream::start(self.node.clone());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Like etcd, only the leader hands leadership over; etcdctl finds it.
    #[tracing::instrument(skip_all, name = "MoveLeader")]
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let replica = &self.node.store;
        if !replica.is_leader() {
            return Err(crate::errors::EtcdError::NotLeader.into());
        }
        let target = req.into_inner().target_id;
        if replica
            .raft_status()
            .members
            .iter()
            .all(|(id, _, learner)| *id != target || *learner)
        {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        replica
            .transfer_leader(target)
            .await
            .map_err(store_status)?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.node.header(),
        }))
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        let r = req.into_inner();
        let span = tracing::info_span!("downgrade", action = r.action, version = %r.version);
        let version = crate::downgrade::downgrade(&self.node, r)
            .instrument(span)
            .await?;
        Ok(Response::new(DowngradeResponse {
            header: self.node.header(),
            version,
        }))
    }
}
