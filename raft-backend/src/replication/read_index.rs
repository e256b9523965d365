//! Linearizable reads (ReadIndex): a read point confirmed by a quorum, and
//! waiting until this member has applied up to it.

use cairn_proto::peer as pb;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ReadPolicy;

use super::error_map::from_status;
use super::replica::Replica;
use crate::error::{Result, StoreError};

impl Replica {
    /// ReadIndex: resolves once this member has applied everything committed
    /// when the call began, confirmed by a quorum's heartbeat, so a read after
    /// it is linearizable. Leader leases are not used: they trust clocks.
    pub async fn read_barrier(&self) -> Result<()> {
        let index = if self.is_leader() {
            self.leader_read_index().await?
        } else {
            let peer = self.leader_peer()?;
            peer.client
                .clone()
                .read_index(peer.request(pb::ReadIndexRequest {}, Some(self.request_timeout)))
                .await
                .map_err(from_status)?
                .into_inner()
                .index
        };
        self.wait_applied(index).await
    }

    /// The leader's read index: its commit index, once a quorum confirmed it still leads.
    pub async fn leader_read_index(&self) -> Result<u64> {
        let fut = self.raft.get_read_log_id(ReadPolicy::ReadIndex);
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(match e.api_error() {
                Some(_) => StoreError::NoLeader,
                None => StoreError::Stopped,
            }),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.index()),
        }
    }

    /// Waits until this member has applied everything it knows to be
    /// committed (etcd's waitAppliedIndex): no quorum round, unlike
    /// `read_barrier`, for a leader that must not answer from a state behind
    /// what a follower may already have answered from.
    pub async fn catch_up_apply(&self) -> Result<()> {
        let committed = self
            .raft
            .metrics()
            .borrow_watched()
            .cluster_committed
            .as_ref()
            .map(|c| c.index)
            .unwrap_or(0);
        self.wait_applied(committed).await
    }

    async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut state = self.state.clone();
        let wait = async move {
            state
                .wait_for(|s| s.applied_index >= index)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.request_timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}
