//! Errors the store can return. Each client-visible variant corresponds to one
//! etcd error; the shim maps them to gRPC status codes and etcd's exact messages
//! in a single place.

use thiserror::Error;

use crate::raft::membership_error::MembershipError;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// An import tried to write at or below the store's current revision.
    #[error("import revision {got} is not after the current revision {current}")]
    ImportOutOfOrder { got: i64, current: i64 },
    /// No leader is known (election in progress, or this member is cut off
    /// from a quorum).
    #[error("no leader")]
    NoLeader,
    /// The leader changed while the request was in flight; its outcome is unknown.
    #[error("leader changed")]
    LeaderChanged,
    /// The request was accepted but not applied here in time; its outcome is unknown.
    #[error("request timed out")]
    Timeout,
    /// A snapshot replaced the store while the read was under way.
    #[error("the store was replaced by a snapshot during the read")]
    Reopened,
    /// The apply loop is gone (shutdown or a fatal storage fault).
    #[error("store is stopped")]
    Stopped,
    /// A storage fault; the message carries the underlying cause.
    #[error("storage: {0}")]
    Storage(String),
    /// Written data could not be decoded: the data dir is damaged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A membership change was refused; its message is etcd's.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The leader failed a request forwarded to it; its message, as the
    /// leader's own client would have seen it.
    #[error("{0}")]
    Remote(String),
}

impl StoreError {
    /// A storage fault, as opposed to a refusal of the request: the batch it
    /// happened in cannot be trusted and is rolled back whole.
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(_) | StoreError::Corrupt(_) | StoreError::Stopped
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
