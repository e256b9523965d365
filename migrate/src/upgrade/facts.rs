//! What the probe observed of a cluster: the member list, two Status
//! samples of every member about a second apart, `/health` and `/version`
//! of each, and the alarm list. The checks decide from this alone, so they
//! are pure functions a unit test can feed.

use std::time::Duration;

use crate::upgrade::version::CairnMember;

/// One Maintenance.Status answer, the fields the checks use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Server version (`3.5.1`; Cairn answers the etcd API version it serves).
    pub version: String,
    /// Backend size in bytes.
    pub db_size: i64,
    /// Bytes in use (0 when not reported).
    pub db_size_in_use: i64,
    /// The leader this member knows (0: none).
    pub leader: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Last log index.
    pub raft_index: u64,
    /// Last applied index.
    pub applied: u64,
    /// Errors the member reports (alarms, Cairn's import note).
    pub errors: Vec<String>,
    /// Whether the member says it is a learner.
    pub is_learner: bool,
    /// Storage version (etcd 3.6+; empty before).
    pub storage_version: String,
    /// Backend quota in bytes (etcd 3.6+, Cairn; 0 before).
    pub db_size_quota: i64,
    /// Downgrade in progress, and to which version (etcd 3.6+).
    pub downgrade: Option<(bool, String)>,
}

/// `/health` as a member answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `"health": "true"` and status 200.
    pub ok: bool,
    /// The reason it gave when not healthy.
    pub reason: String,
}

/// One member of the member list and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFacts {
    /// Member ID.
    pub id: u64,
    /// Name (empty for a member that has not started yet).
    pub name: String,
    /// Client URLs it advertises (empty: not started yet).
    pub client_urls: Vec<String>,
    /// A learner per the member list.
    pub is_learner: bool,
    /// Status at the start of the window.
    pub first: Result<Sample, String>,
    /// Status at its end.
    pub second: Result<Sample, String>,
    /// `/health`.
    pub health: Result<Health, String>,
    /// The `cairn` object of `/version`: Some only for a Cairn member.
    pub cairn: Option<CairnMember>,
}

impl MemberFacts {
    /// The name, or the ID in hex for a member without one.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{:x}", self.id)
        } else {
            self.name.clone()
        }
    }

    /// The latest Status that answered.
    pub fn latest(&self) -> Option<&Sample> {
        self.second.as_ref().or(self.first.as_ref()).ok()
    }

    /// Why this member could not be asked or did not answer, if so.
    pub fn unreachable(&self) -> Option<String> {
        if self.client_urls.is_empty() {
            return Some("has not started (no client URL in the member list)".into());
        }
        match (&self.first, &self.second) {
            (Ok(_), Ok(_)) => None,
            (Err(e), _) | (_, Err(e)) => Some(format!("did not answer Status: {e}")),
        }
    }
}

/// Everything observed of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The member list, in its order, with each member's answers.
    pub members: Vec<MemberFacts>,
    /// Cluster-wide alarms: (member id, alarm name), or why they could not be listed.
    pub alarms: Result<Vec<(u64, String)>, String>,
    /// How far apart the two Status samples were taken.
    pub window: Duration,
}

impl ClusterFacts {
    /// Whether the members are Cairn (every one that answered `/version` says so).
    pub fn is_cairn(&self) -> bool {
        self.members.iter().any(|m| m.cairn.is_some())
    }

    /// The index of the member with `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }
}
