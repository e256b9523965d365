//! What a member is started with (timing, bootstrap, transport) and the
//! Raft state it reports: plain values, no openraft types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::network::PeerTransport;
use super::types::{MemberInfo, Membership};

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
    pub members: MemberList,
}

/// Every member as (id, record, is a learner), as clients list them.
pub type MemberList = Vec<(u64, MemberInfo, bool)>;

/// The membership as clients list it.
pub(super) fn member_list(m: &Membership) -> MemberList {
    let voters: BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, n)| (*id, n.clone(), !voters.contains(id)))
        .collect()
}
