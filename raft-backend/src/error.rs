//! Errors the store can return. Each client-visible variant corresponds to one
//! etcd error; the shim maps them to gRPC status codes and etcd's exact messages
//! in a single place.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::replication::membership_error::MembershipError;

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
    /// A client write while a migration imports (phase COPYING or
    /// FOLLOWING). The words after "etcdserver: " (see `mvcc::migration`).
    #[error("cairn is importing from etcd cluster {source_cluster_id:x} (phase {phase}); writes are refused until cutover")]
    MigrationImporting {
        source_cluster_id: u64,
        phase: &'static str,
    },
    /// A client write after the import was aborted.
    #[error("cairn's import from etcd cluster {source_cluster_id:x} was aborted; this cluster holds a partial copy and refuses writes")]
    MigrationAborted { source_cluster_id: u64 },
    /// MigrationBegin on a store that holds data. The words after "cairn: ".
    #[error("target is not empty (revision {revision}); a migration needs an empty Cairn cluster")]
    MigrationNotEmpty { revision: i64 },
    /// MigrationBegin from a source other than the one being imported.
    #[error("target is importing from etcd cluster {importing:x}, not {requested:x}")]
    MigrationOtherSource { importing: u64, requested: u64 },
    /// An import call in a phase that does not take it.
    #[error("no import in progress (phase {phase})")]
    MigrationWrongPhase { phase: &'static str },
    /// An import call whose position does not match the store's; it
    /// changed nothing.
    #[error("migration out of step: {holds}, request starts after {names}")]
    MigrationOutOfStep { holds: String, names: String },
    /// A migration request that no position makes valid (keys out of
    /// order, a revision below the copy's, ...).
    #[error("invalid migration request: {0}")]
    MigrationInvalid(String),
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
    /// A storage fault the store itself detected; the message says what.
    #[error("storage: {0}")]
    Storage(String),
    /// A SQLite call failed.
    #[error("storage: {0}")]
    Sqlite(#[source] Cause<rusqlite::Error>),
    /// A file operation failed; `context` says which.
    #[error("storage: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Cause<std::io::Error>,
    },
    /// Written data could not be decoded: the data dir is damaged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A store (data dir or snapshot) a later release wrote, in a schema
    /// this one cannot read: refused before anything is changed.
    #[error(
        "the store has schema version {found}, written by a newer Cairn; Cairn {release} reads schema versions {oldest}..={newest}: run a release that reads it (docs/design.md, \"Versions\")"
    )]
    NewerSchema {
        found: i64,
        release: &'static str,
        oldest: i64,
        newest: i64,
    },
    /// This member's release may not serve in its cluster (an older
    /// release without a downgrade to it); refused at start.
    #[error("{0}")]
    ReleaseRefused(String),
    /// A cluster version or downgrade target that is no release version.
    #[error("invalid version {0:?}")]
    InvalidVersion(String),
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
            StoreError::Storage(_)
                | StoreError::Sqlite(_)
                | StoreError::Io { .. }
                | StoreError::Corrupt(_)
                | StoreError::NewerSchema { .. }
                | StoreError::Stopped
        )
    }

    /// A file operation's failure, with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source: Cause(Arc::new(source)),
        }
    }

    /// For a storage fault or corrupt data, what went wrong, without the
    /// variant's prefix: what a client is told after "etcdserver: storage: ".
    pub fn storage_detail(&self) -> Option<String> {
        match self {
            StoreError::Storage(m) | StoreError::Corrupt(m) => Some(m.clone()),
            StoreError::Sqlite(e) => Some(e.to_string()),
            StoreError::Io { context, source } => Some(format!("{context}: {source}")),
            StoreError::NewerSchema { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Cause(Arc::new(e)))
    }
}

/// The underlying error of a storage fault, shared so that `StoreError`
/// stays `Clone` (one fault answers every request of its batch). Two causes
/// are equal when they say the same.
#[derive(Debug)]
pub struct Cause<E>(Arc<E>);

impl<E> Clone for Cause<E> {
    fn clone(&self) -> Self {
        Cause(self.0.clone())
    }
}

impl<E: fmt::Display> fmt::Display for Cause<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for Cause<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E: fmt::Display> PartialEq for Cause<E> {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl<E: fmt::Display> Eq for Cause<E> {}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn storage_faults_keep_their_source_and_their_message() {
        let sqlite = rusqlite::Error::InvalidQuery;
        let text = sqlite.to_string();
        let e = StoreError::from(sqlite);
        // The message clients get is what it was when the cause was a string.
        assert_eq!(e.to_string(), format!("storage: {text}"));
        assert_eq!(e.storage_detail(), Some(text.clone()));
        assert_eq!(e.source().map(|s| s.to_string()), Some(text));
        assert!(e.is_storage_fault());
        assert_eq!(e.clone(), e);

        let io = std::io::Error::other("disk on fire");
        let e = StoreError::io("sync installed snapshot", io);
        assert_eq!(
            e.to_string(),
            "storage: sync installed snapshot: disk on fire"
        );
        assert_eq!(
            e.storage_detail().as_deref(),
            Some("sync installed snapshot: disk on fire")
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        assert!(e.is_storage_fault());
        assert_eq!(StoreError::Compacted.storage_detail(), None);
    }
}
