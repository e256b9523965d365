//! The openraft type configuration and the two application types it carries:
//! the command in a log entry and the member record in the membership.

use std::fmt;

use crate::command::{Command, CommandOutput};
use crate::error::StoreError;

/// A member as the Raft membership records it: enough for any member to reach
/// it (peer URLs) and to list it to clients (name, client URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.name, self.peer_urls)
    }
}

/// One write as it sits in the log. `origin` and `request_id` identify the
/// member and request that accepted it, so that a member which forwarded a
/// write to the leader can answer its client when it applies the entry itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCommand {
    pub origin: u64,
    pub request_id: u64,
    pub cmd: Command,
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}/{}", self.origin, self.request_id)
    }
}

/// What applying a normal entry produced, returned to a leader-local proposer.
/// Blank and membership entries carry `None`.
pub type ApplyReply = Option<std::result::Result<CommandOutput, StoreError>>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = LogCommand,
        R = ApplyReply,
        NodeId = u64,
        Node = MemberInfo,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<LogCommand, u64, MemberInfo>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, MemberInfo>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot<SD> = openraft::alias::SnapshotOf<TypeConfig, SD>;
