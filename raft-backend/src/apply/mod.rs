//! Applying the log: one writer thread folds the committed entries queued for
//! it into one SQLite transaction (`writer`), applying each command with etcd's
//! request semantics (`apply_command`, over `txn` and `mvcc`). Entries arrive
//! as plain (index, term, payload); nothing here knows about Raft.

pub(crate) mod apply_command;
pub(crate) mod migration;
pub(crate) mod writer;
