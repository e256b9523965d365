//! Live migration from etcd into Cairn and rolling-upgrade safety checks.
//!
//! Nothing lives here yet: the store's import path
//! (`cairn_raft_backend::Command::Import`) is the seam this crate will use to
//! replay a source etcd's history while keeping every revision number.
