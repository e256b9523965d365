//! Cairn's revisioned store: an MVCC keyspace with etcd's revision semantics,
//! kept in SQLite, written only by applying log commands in order.
//!
//! Write path: [`Store::propose`] → Raft log (openraft, group commit) →
//! committed → apply → SQLite.
//! Every applied batch is published to subscribers (the watch hub) from the
//! apply loop itself, never by polling.

mod apply;
mod command;
mod error;
mod mvcc;
mod replication;
mod store;
mod txn;

pub use command::{AppliedBatch, Command, CommandOutput, ImportRevision, RevisionEvents};
pub use error::{Cause, Result, StoreError};
pub use mvcc::schema::DOWNGRADE_TO_V1_FOR_TESTS;
pub use mvcc::ApplyState;
pub use mvcc::{
    prefix_end, HistoryRead, KeyRange, KvHash, PrevKvInterest, PrevKvWanted, StoreMetrics,
};
pub use replication::{
    Bootstrap, LeaseAuthority, MemberInfo, MemberList, MembershipError, Peer, PeerService,
    PeerTransport, RaftStatus, RaftTiming, ReplicaOptions, LOG_DIR,
};
pub use store::{Store, StoreStatus, DB_FILE};
pub use txn::{is_txn_readonly, txn_has_put};
