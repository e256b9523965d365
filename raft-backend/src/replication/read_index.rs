//! Linearizable reads (ReadIndex): a read point confirmed by a quorum, and
//! waiting until this member has applied up to it.

use std::time::Duration;

use cairn_proto::peer as pb;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ReadPolicy;

use super::error_map::from_status;
use super::forwarder::LeaderLocator;
use super::read_batch::ReadBatcher;
use super::replica::Replica;
use super::state_machine::Raft;
use crate::error::{Result, StoreError};

/// The two queues of linearizable reads (see `read_batch`): on the leader,
/// its own reads and its followers' share quorum rounds; on a follower, its
/// reads share one ReadIndex call to the leader.
pub(super) struct ReadQueues {
    leader: ReadBatcher,
    forwarded: ReadBatcher,
}

impl ReadQueues {
    pub(super) fn start(raft: &Raft, locator: &LeaderLocator, timeout: Duration) -> Self {
        let raft = raft.clone();
        let locator = locator.clone();
        ReadQueues {
            leader: ReadBatcher::start(move || confirm_leadership(raft.clone(), timeout)),
            forwarded: ReadBatcher::start(move || ask_leader(locator.clone(), timeout)),
        }
    }
}

/// One ReadIndex round on the leader: its commit index, once a quorum
/// confirmed it still leads. Leader leases are not used: they trust clocks.
async fn confirm_leadership(raft: Raft, timeout: Duration) -> Result<u64> {
    let fut = raft.get_read_log_id(ReadPolicy::ReadIndex);
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(StoreError::Timeout),
        Ok(Err(e)) => Err(match e.api_error() {
            Some(_) => StoreError::NoLeader,
            None => StoreError::Stopped,
        }),
        Ok(Ok((read_log_id, _))) => Ok(read_log_id.index()),
    }
}

/// One ReadIndex call from a follower to the leader.
async fn ask_leader(locator: LeaderLocator, timeout: Duration) -> Result<u64> {
    let peer = locator.leader_peer()?;
    let resp = peer
        .client
        .clone()
        .read_index(peer.request(pb::ReadIndexRequest {}, Some(timeout)))
        .await
        .map_err(from_status)?;
    Ok(resp.into_inner().index)
}

impl Replica {
    /// ReadIndex: resolves once this member has applied everything committed
    /// when the call began, confirmed by a quorum's heartbeat, so a read after
    /// it is linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        let index = if self.is_leader() {
            self.leader_read_index().await?
        } else {
            self.within_timeout(self.reads.forwarded.read_index())
                .await?
        };
        self.wait_applied(index).await
    }

    /// The leader's read index, for its own reads and its followers'.
    pub async fn leader_read_index(&self) -> Result<u64> {
        self.within_timeout(self.reads.leader.read_index()).await
    }

    /// A queued read waits for the round under way and then its own.
    async fn within_timeout(
        &self,
        read: impl std::future::Future<Output = Result<u64>>,
    ) -> Result<u64> {
        tokio::time::timeout(2 * self.request_timeout, read)
            .await
            .map_err(|_| StoreError::Timeout)?
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
