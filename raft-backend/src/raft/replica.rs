//! The one place the rest of Cairn meets openraft: propose a write, wait for
//! a linearizable read point, inspect and change the membership, and handle
//! the Raft messages that arrive from peers. Upgrading openraft touches this
//! module tree (`raft/`) only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer as pb;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::raft::{
    AppendEntriesResponse, StreamAppendError, TransferLeaderRequest, VoteRequest,
};
use openraft::{ChangeMembers, Config, ReadPolicy, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use super::codec;
use super::forwarder::{Forwarder, LeaderLocator};
use super::leader_liveness::{self, LeaderContact};
use super::log_store::LogStore;
use super::network::{Factory, Peer, PeerTransport};
use super::state_machine::{Raft, SnapshotData, StateMachine};
use super::types::{LogCommand, MemberInfo, Membership, Snapshot, StoredMembership, TypeConfig};
use super::waiters::Waiters;
use crate::command::{Command, CommandOutput};
use crate::error::{Result, StoreError};
use crate::mvcc::ApplyState;

/// Timing and log retention, under etcd's flag names where etcd has one.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// --heartbeat-interval.
    pub heartbeat: Duration,
    /// --election-timeout: a follower that has not heard from the leader for
    /// [t, 2t) wins a pre-vote and campaigns, as in etcd.
    pub election: Duration,
    /// --snapshot-count: entries applied between state-machine snapshots.
    pub snapshot_count: u64,
    /// --snapshot-catchup-entries: entries kept behind a snapshot for slow followers.
    pub catchup_entries: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(1000),
            snapshot_count: 10_000,
            catchup_entries: 5_000,
        }
    }
}

/// How this member comes to be part of a cluster.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A new cluster: every initial member starts with the same membership.
    New(BTreeMap<u64, MemberInfo>),
    /// Joining a running cluster, which added this member first; or a restart.
    Existing,
}

#[derive(Clone)]
pub struct ReplicaOptions {
    pub member_id: u64,
    pub timing: RaftTiming,
    pub transport: Arc<PeerTransport>,
    pub bootstrap: Bootstrap,
    /// How long a write accepted here may take to be applied here.
    pub request_timeout: Duration,
}

/// A point-in-time view of this member's Raft state.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied: u64,
    pub is_leader: bool,
    pub is_learner: bool,
    pub members: Vec<(u64, MemberInfo, bool)>,
}

pub struct Replica {
    raft: Raft,
    id: u64,
    sm: StateMachine,
    waiters: Waiters,
    locator: LeaderLocator,
    forwarder: Forwarder,
    next_request: AtomicU64,
    state: watch::Receiver<ApplyState>,
    request_timeout: Duration,
    /// When a leader was last heard from, and the leader that is reachable
    /// (see `leader_liveness`).
    contact: Arc<LeaderContact>,
    reachable_leader: watch::Receiver<Option<u64>>,
    /// openraft refuses a membership change while another is uncommitted;
    /// changes on this leader (member add/promote, a member publishing its
    /// URLs) queue here instead of failing each other.
    membership_changes: tokio::sync::Mutex<()>,
}

fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("raft: {e}"))
}

/// Maps a peer's gRPC refusal back to the store error it stands for.
pub(crate) fn from_status(s: tonic::Status) -> StoreError {
    match s.code() {
        tonic::Code::FailedPrecondition => StoreError::NoLeader,
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists => {
            StoreError::Membership(s.message().to_string())
        }
        tonic::Code::DeadlineExceeded => StoreError::Timeout,
        tonic::Code::Aborted => StoreError::LeaderChanged,
        _ => StoreError::NoLeader,
    }
}

pub fn to_status(e: &StoreError) -> tonic::Status {
    match e {
        StoreError::NoLeader => tonic::Status::failed_precondition("not leader"),
        StoreError::Membership(m) => tonic::Status::invalid_argument(m.clone()),
        StoreError::Timeout => tonic::Status::deadline_exceeded("request timed out"),
        StoreError::LeaderChanged => tonic::Status::aborted("leader changed"),
        other => tonic::Status::internal(other.to_string()),
    }
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
            install_snapshot_timeout: 60_000,
            ..Default::default()
        }
        .validate()
        .map_err(fatal)?;
        let factory = Factory {
            transport: opts.transport.clone(),
        };
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
        let contact = Arc::new(LeaderContact::default());
        // Only the metrics: a `Raft` clone here would keep the core alive.
        let reachable_leader = leader_liveness::start(
            raft.metrics(),
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
        })
    }

    pub fn member_id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        RaftStatus {
            leader: self.leader(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_leader: m.state == ServerState::Leader,
            is_learner: !voters.contains(&self.id),
            members: membership
                .nodes()
                .map(|(id, n)| (*id, n.clone(), !voters.contains(id)))
                .collect(),
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
    async fn wait_metrics<T>(
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

    fn membership(&self) -> Membership {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone()
    }

    /// A client for the current leader, or `NoLeader`. On every forwarded
    /// request: copies only the leader's URLs, not the membership.
    pub fn leader_peer(&self) -> Result<Peer> {
        self.locator.leader_peer()
    }

    /// Proposes `cmd` and resolves with its result once it is applied on
    /// this member, so that a read here afterwards sees it.
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput> {
        if self.is_leader() {
            let lc = LogCommand {
                origin: self.id,
                request_id: 0,
                cmd,
            };
            return match self.raft.client_write(lc).await {
                Ok(resp) => resp.data.unwrap_or(Err(StoreError::Stopped)),
                Err(e) => Err(write_error(e)),
            };
        }
        if self.leader().is_none() {
            return Err(StoreError::NoLeader);
        }
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (registration, rx) = self.waiters.register(request_id);
        let command = codec::command_to_pb(&LogCommand {
            origin: self.id,
            request_id,
            cmd,
        });
        self.forwarder.forward(request_id, command)?;
        let out = tokio::time::timeout(self.request_timeout, rx).await;
        drop(registration);
        match out {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// The leader's side of a batch of forwarded writes: commit and apply
    /// them here, in order; one outcome per write.
    pub async fn handle_propose_many(
        &self,
        commands: Vec<pb::Command>,
    ) -> std::result::Result<Vec<pb::ProposeOutcome>, tonic::Status> {
        let lcs = commands
            .into_iter()
            .map(codec::command_from_pb)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        let n = lcs.len();
        let mut results = self
            .raft
            .client_write_many(lcs)
            .await
            .map_err(|e| to_status(&fatal(e)))?;
        let mut outcomes = Vec::with_capacity(n);
        use futures::StreamExt;
        while let Some(r) = results.next().await {
            let outcome = match r {
                Ok(Ok(resp)) => pb::ProposeOutcome {
                    index: resp.log_id.index,
                    ..Default::default()
                },
                Ok(Err(e)) => {
                    let s = to_status(&client_write_error(e));
                    pb::ProposeOutcome {
                        index: 0,
                        error_code: s.code() as i32,
                        error_message: s.message().to_string(),
                    }
                }
                // The Raft core stopped: whether these committed is unknown.
                Err(e) => return Err(to_status(&fatal(e))),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

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

    /// Applies a membership change on the leader, or forwards it there.
    pub async fn change_member(
        &self,
        kind: pb::MemberChangeKind,
        member: pb::Member,
    ) -> Result<Membership> {
        if !self.is_leader() {
            let peer = self.leader_peer()?;
            let resp = peer
                .client
                .clone()
                .change_member(peer.request(
                    pb::MemberChangeRequest {
                        kind: kind as i32,
                        member: Some(member),
                    },
                    Some(self.request_timeout),
                ))
                .await
                .map_err(from_status)?
                .into_inner();
            // As etcd answers a member change only once the accepting member
            // applied it: a MemberList here right after sees the change.
            self.read_barrier().await?;
            return codec::membership_from_pb(resp.membership.unwrap_or_default())
                .map_err(|e| StoreError::Storage(e.to_string()));
        }
        // Held until the change commits: that is what it serializes.
        let _one_at_a_time = self.membership_changes.lock().await;
        let (id, info) = codec::member_from_pb(member);
        let current = self.membership();
        let exists = current.nodes().any(|(n, _)| *n == id);
        let is_voter = current.voter_ids().any(|v| v == id);
        let change: ChangeMembers<u64, MemberInfo> = match kind {
            pb::MemberChangeKind::MemberAdd => {
                ChangeMembers::AddVoters(BTreeMap::from([(id, info)]))
            }
            pb::MemberChangeKind::MemberAddLearner => {
                ChangeMembers::AddNodes(BTreeMap::from([(id, info)]))
            }
            pb::MemberChangeKind::MemberRemove => {
                if !exists {
                    return Err(StoreError::Membership("member not found".into()));
                }
                if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                }
            }
            pb::MemberChangeKind::MemberUpdate | pb::MemberChangeKind::MemberPublish => {
                let old = current
                    .nodes()
                    .find(|(n, _)| **n == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| StoreError::Membership("member not found".into()))?;
                let mut new = old.clone();
                if kind == pb::MemberChangeKind::MemberUpdate {
                    new.peer_urls = info.peer_urls;
                } else {
                    new.name = info.name;
                    new.client_urls = info.client_urls;
                }
                if new == old {
                    return Ok(current);
                }
                ChangeMembers::SetNodes(BTreeMap::from([(id, new)]))
            }
            pb::MemberChangeKind::MemberPromote => {
                if !exists {
                    return Err(StoreError::Membership("member not found".into()));
                }
                if is_voter {
                    return Err(StoreError::Membership(
                        "can only promote a learner member".into(),
                    ));
                }
                // etcd's rule: a learner becomes a voter only once it holds 90%
                // of the leader's log, so that it cannot stall commits.
                let (leader_last, learner_match) = {
                    let m = self.raft.metrics();
                    let m = m.borrow_watched();
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index)
                        .unwrap_or(0);
                    (m.last_log_index.unwrap_or(0), matched)
                };
                if (learner_match as f64) < leader_last as f64 * 0.9 {
                    return Err(StoreError::Membership(
                        "can only promote a learner member which is in sync with leader".into(),
                    ));
                }
                ChangeMembers::AddVoterIds(BTreeSet::from([id]))
            }
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(self.membership()),
            Err(e) => Err(match e.api_error() {
                Some(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader,
                Some(other) => StoreError::Membership(other.to_string()),
                None => StoreError::Stopped,
            }),
        }
    }

    /// Hands leadership to `target` (etcd's MoveLeader) and waits for it to take over.
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        if !self.membership().voter_ids().any(|v| v == target) {
            return Err(StoreError::Membership("bad leader transferee".into()));
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(fatal)?;
        let wait = self.wait_metrics(|m| (m.current_leader == Some(target)).then_some(()));
        match tokio::time::timeout(self.request_timeout, wait).await {
            Ok(Some(())) => Ok(()),
            _ => Err(StoreError::Timeout),
        }
    }

    pub fn membership_pb(&self) -> pb::Membership {
        codec::membership_to_pb(&self.membership())
    }

    // ---- Raft messages from peers ----

    pub async fn handle_vote(
        &self,
        req: pb::VoteRequest,
        pre: bool,
    ) -> Result<pb::VoteResponse, tonic::Status> {
        let rpc = VoteRequest::<TypeConfig> {
            vote: codec::vote_from_pb(req.vote).map_err(bad)?,
            last_log_id: codec::opt_log_id_from_pb(req.last_log_id),
            leadership_transfer: req.leadership_transfer,
        };
        let resp = if pre {
            self.raft.pre_vote(rpc).await
        } else {
            self.raft.vote(rpc).await
        }
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(pb::VoteResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: codec::opt_log_id_to_pb(resp.last_log_id.as_ref()),
        })
    }

    pub async fn handle_append(
        &self,
        req: pb::AppendEntriesRequest,
    ) -> Result<pb::AppendEntriesResponse, tonic::Status> {
        let rpc = codec::append_request_from_pb(req).map_err(bad)?;
        let resp = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.contact.touch();
        }
        Ok(codec::append_response_to_pb(resp))
    }

    /// Serves a leader's replication stream: each request goes to Raft as it
    /// arrives, and the answers go back in order as the entries are stored.
    /// The stream ends at the first refusal (conflict, higher vote), as
    /// openraft ends it, or when the leader hangs up.
    pub fn handle_stream_append<S>(
        &self,
        requests: S,
    ) -> futures::stream::BoxStream<'static, Result<pb::StreamAppendResponse, tonic::Status>>
    where
        S: futures::Stream<Item = Result<pb::AppendEntriesRequest, tonic::Status>> + Send + 'static,
    {
        use futures::StreamExt;
        // A request that cannot be decoded ends the input: the leader sees
        // fewer answers than requests and starts a new stream from what was
        // acknowledged.
        let requests = tokio_stream::StreamExt::map_while(requests, |r| {
            match codec::append_request_from_pb(r.ok()?) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed request on a replication stream");
                    None
                }
            }
        });
        let contact = self.contact.clone();
        self.raft
            .stream_append(requests)
            .map(move |r| match r {
                Ok(result) => {
                    if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                        contact.touch();
                    }
                    Ok(codec::stream_append_result_to_pb(&result))
                }
                Err(fatal) => Err(tonic::Status::unavailable(fatal.to_string())),
            })
            .boxed()
    }

    /// Where an incoming snapshot's data is written before it is installed.
    pub fn snapshot_receive_path(&self) -> std::path::PathBuf {
        self.sm.receive_path()
    }

    pub async fn handle_snapshot(
        &self,
        head: pb::SnapshotHead,
        path: std::path::PathBuf,
    ) -> Result<pb::SnapshotResponse, tonic::Status> {
        let vote = codec::vote_from_pb(head.vote).map_err(bad)?;
        let meta_pb = head.meta.unwrap_or_default();
        let last_log_id = codec::opt_log_id_from_pb(meta_pb.last_log_id);
        let last_membership: StoredMembership =
            codec::stored_membership_from_pb(meta_pb).map_err(bad)?;
        let snapshot = Snapshot {
            meta: openraft::storage::SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: SnapshotData::Received(path),
        };
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        self.contact.touch();
        Ok(pb::SnapshotResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
        })
    }

    pub async fn handle_transfer_leader(
        &self,
        req: pb::TransferLeaderRequest,
    ) -> Result<pb::TransferLeaderResponse, tonic::Status> {
        let from = codec::vote_from_pb(req.from_leader).map_err(bad)?;
        let rpc = TransferLeaderRequest::<TypeConfig>::new(
            from,
            req.to_node_id,
            codec::opt_log_id_from_pb(req.last_log_id),
        );
        let resp = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        if let Err(e) = resp {
            return Err(tonic::Status::failed_precondition(e.to_string()));
        }
        Ok(pb::TransferLeaderResponse { vote: None })
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn boot_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1)
}

/// What a failed `client_write` means to the proposer.
fn write_error(
    e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> StoreError {
    match e.api_error() {
        Some(e) => client_write_error(e.clone()),
        None => StoreError::Stopped,
    }
}

fn client_write_error(e: ClientWriteError<TypeConfig>) -> StoreError {
    match e {
        ClientWriteError::ForwardToLeader(_) => StoreError::NoLeader,
        ClientWriteError::LogEntryDiscarded(_) => StoreError::LeaderChanged,
        other => StoreError::Storage(other.to_string()),
    }
}

fn bad(e: codec::DecodeError) -> tonic::Status {
    tonic::Status::invalid_argument(e.to_string())
}

impl Replica {
    /// Resolves once some leader is known, or fails with `NoLeader`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let mut rx = self.reachable_leader.clone();
        let wait = async move { rx.wait_for(Option::is_some).await.ok().and_then(|l| *l) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(l)) => Ok(l),
            _ => Err(StoreError::NoLeader),
        }
    }
}
