//! The one place the rest of Cairn meets openraft: a Raft member and what it
//! knows (leader, term, membership). What it does is in the files beside:
//! `propose` (writes), `read_index` (linearizable reads), `membership`
//! (member changes), `peer_handlers` (Raft messages from peers). Upgrading
//! openraft touches this module tree (`replication/`) only.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::Fatal;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use super::error_map::fatal;
use super::forwarder::{Forwarder, LeaderLocator};
use super::leader_liveness::{self, LeaderContact};
use super::log_store::LogStore;
use super::network::{Factory, Peer};
use super::options::{member_list, Bootstrap, RaftStatus, ReplicaOptions};
use super::read_index::ReadQueues;
use super::state_machine::{Raft, StateMachine};
use super::types::TypeConfig;
use super::waiters::Waiters;
use super::{raft_events, solo_member};
use crate::error::{Result, StoreError};
use crate::fault::StorageFault;
use crate::mvcc::ApplyState;

pub struct Replica {
    pub(super) raft: Raft,
    pub(super) id: u64,
    pub(super) sm: StateMachine,
    pub(super) waiters: Waiters,
    pub(super) locator: LeaderLocator,
    pub(super) forwarder: Forwarder,
    pub(super) next_request: AtomicU64,
    pub(super) state: watch::Receiver<ApplyState>,
    pub(super) request_timeout: Duration,
    /// When a leader was last heard from, and the leader that is reachable
    /// (see `leader_liveness`).
    pub(super) contact: Arc<LeaderContact>,
    pub(super) reachable_leader: watch::Receiver<Option<u64>>,
    /// openraft refuses a membership change while another is uncommitted;
    /// changes on this leader (member add/promote, a member publishing its
    /// URLs) queue here instead of failing each other.
    pub(super) membership_changes: tokio::sync::Mutex<()>,
    /// Linearizable reads waiting for a shared ReadIndex round.
    pub(super) reads: ReadQueues,
}

impl Replica {
    pub(crate) async fn start(
        opts: ReplicaOptions,
        log: LogStore,
        sm: StateMachine,
        state: watch::Receiver<ApplyState>,
        waiters: Waiters,
    ) -> Result<Self> {
        let t = &opts.timing;
        let election_ms = t.election.as_millis().max(2) as u64;
        let heartbeat_ms = t.heartbeat.as_millis().max(1) as u64;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: heartbeat_ms,
            // openraft's followers refuse (pre-)votes while their leader lease,
            // which it sets to `election_timeout_max`, lasts. With etcd's
            // [T, 2T) range that lease is 2T and the first pre-vote after a
            // leader dies is always refused, so failover took 2T to 4T.
            // [T/2, T) makes the lease T, like etcd's check-quorum lease: a
            // follower's first pre-vote may come early and be refused, its
            // retry one timeout later lands in [T, 2T) after the last
            // heartbeat, when every lease has run out, as in etcd.
            election_timeout_min: election_ms / 2,
            election_timeout_max: election_ms,
            // No heartbeat to a follower that acknowledged replication within
            // one interval: under load, appends are the heartbeats.
            heartbeat_min_interval: Some(heartbeat_ms),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: t.catchup_entries,
            // A member that rejoins after a partition must not depose a
            // healthy leader (etcd's --pre-vote, on by default since 3.5).
            enable_pre_vote: Some(true),
            // A restarted leader stands for election like any member, as in
            // Raft and etcd. openraft's default restores its leadership in
            // the same term, but its log may have lost a tail the followers
            // already hold (it replicates before its own append is written),
            // and it would then write different entries under the same log
            // ids: acknowledged writes lost (robustness campaign, seed 102).
            enable_leader_restore: Some(false),
            install_snapshot_timeout: 60_000,
            ..Default::default()
        }
        .validate()
        .map_err(fatal)?;
        let factory = Factory {
            transport: opts.transport.clone(),
        };
        let inline_appends = log.inline_appends();
        let raft = Raft::new(opts.member_id, Arc::new(config), factory, log, sm.clone())
            .await
            .map_err(fatal)?;
        if let Bootstrap::New(members) = &opts.bootstrap {
            // Every initial member proposes the same membership; openraft
            // accepts that from all of them, and only an uninitialized
            // member acts on it. Not awaited here: the caller must go on to
            // serve its peer port, or members starting together would wait
            // on each other's elections with no one listening.
            if !raft.is_initialized().await.map_err(fatal)? {
                let (raft, members) = (raft.clone(), members.clone());
                tokio::spawn(async move {
                    if let Err(e) = raft.initialize(members).await {
                        tracing::warn!(error = %e, "raft initialize");
                    }
                });
            }
        }
        raft_events::start(raft.server_metrics(), raft.metrics(), opts.member_id);
        // Server metrics change only with the state and membership, not with
        // every write as `metrics()` does: no wake-up per write.
        solo_member::start(raft.server_metrics(), opts.member_id, inline_appends);
        let contact = Arc::new(LeaderContact::default());
        // Only the metrics: a `Raft` clone here would keep the core alive.
        let reachable_leader = leader_liveness::start(
            raft.metrics(),
            raft.server_metrics(),
            opts.member_id,
            t.election,
            t.heartbeat,
            contact.clone(),
        );
        let locator = LeaderLocator {
            reachable_leader: reachable_leader.clone(),
            metrics: raft.metrics(),
            transport: opts.transport,
        };
        let forwarder = Forwarder::start(locator.clone(), waiters.clone(), opts.request_timeout);
        let reads = ReadQueues::start(&raft, &locator, opts.request_timeout);
        Ok(Replica {
            raft,
            locator,
            forwarder,
            contact,
            reachable_leader,
            id: opts.member_id,
            sm,
            waiters,
            // Forwarded writes are matched to their waiter by (origin,
            // request id) when applied; a count restarting at 1 on every boot
            // could match an entry this member forwarded before a restart.
            // Starting from the boot time in ns makes that reuse impossible.
            next_request: AtomicU64::new(boot_nanos()),
            state,
            request_timeout: opts.request_timeout,
            membership_changes: tokio::sync::Mutex::new(()),
            reads,
        })
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let is_learner = !membership.voter_ids().any(|v| v == self.id);
        RaftStatus {
            leader: self.leader(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_leader: m.state == ServerState::Leader,
            is_learner,
            members: member_list(membership),
        }
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The leader, while it is reachable (heard from, or for the leader: it
    /// heard from a quorum, within an election timeout); `None` otherwise.
    pub fn leader(&self) -> Option<u64> {
        *self.reachable_leader.borrow()
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Waits on openraft's metrics until `pick` finds what it looks for.
    /// `None` when the Raft core stopped.
    pub(super) async fn wait_metrics<T>(
        &self,
        pick: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(v) = pick(&rx.borrow_watched()) {
                return Some(v);
            }
            rx.changed().await.ok()?;
        }
    }

    /// Resolves with the reachable leader once it differs from `last` (a new
    /// leader, or none); `None` when the Raft core stopped.
    pub async fn leader_change(&self, last: Option<u64>) -> Option<Option<u64>> {
        let mut rx = self.reachable_leader.clone();
        let now = *rx.wait_for(|l| *l != last).await.ok()?;
        Some(now)
    }

    /// A client for the current leader, or `NoLeader`. On every forwarded
    /// request: copies only the leader's URLs, not the membership.
    pub fn leader_peer(&self) -> Result<Peer> {
        self.locator.leader_peer()
    }

    /// Resolves once some leader is known, or fails with `NoLeader`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let mut rx = self.reachable_leader.clone();
        let wait = async move { rx.wait_for(Option::is_some).await.ok().and_then(|l| *l) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(l)) => Ok(l),
            _ => Err(StoreError::NoLeader),
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Resolves once the Raft core has stopped on a fault (a storage error,
    /// or a panic: its metrics sender gone while it reported running);
    /// never on a clean shutdown.
    pub async fn storage_fault(&self) -> StorageFault {
        // Woken by the server metrics, which change rarely and close when the
        // core ends; the running state is read from the full metrics.
        let mut changes = self.raft.server_metrics();
        let rx = self.raft.metrics();
        let mut ended = false;
        loop {
            match &rx.borrow_watched().running_state {
                Err(Fatal::Stopped) => break,
                Err(f) => return StorageFault::new(f.to_string()),
                Ok(()) if ended => {
                    return StorageFault::new("the Raft core ended unexpectedly".into())
                }
                Ok(()) => {}
            }
            // Fails once the core's task has ended: its last report says how.
            ended = changes.changed().await.is_err();
        }
        std::future::pending().await
    }
}

fn boot_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1)
}
