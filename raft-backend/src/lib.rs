//! Cairn's replicated, revisioned store, in two wings:
//!
//! - the store wing, with no Raft in it: `mvcc` (etcd's MVCC keyspace in
//!   SQLite: read and write transactions, the key index, compaction,
//!   snapshots of the file), `txn` (request semantics over it, as etcd's
//!   `etcdserver/txn`), and `apply` (the one writer thread, which applies
//!   plain (index, term, payload) entries in order);
//! - the replication wing, `replication`: openraft, the log, and the whole
//!   peer protocol, client and server side by side. Its state machine is the
//!   one adapter from openraft's apply to `apply::writer`.
//!
//! [`Store`] is the one façade the rest of Cairn uses. A write flows one way:
//! [`Store::propose`] → `replication` (leader's log, commit) → `apply` →
//! `txn` → `mvcc` → the applied-event stream ([`Store::subscribe`]).

mod apply;
mod command;
mod error;
mod fault;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handoff;
mod mvcc;
mod replication;
mod store;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testing;
mod txn;
mod version_monitor;
pub mod versions;

pub use command::{AppliedBatch, Command, CommandOutput, RevisionEvents};
pub use error::{Cause, Result, StoreError};
pub use fault::StorageFault;
pub use mvcc::schema::{DOWNGRADE_TO_V1_FOR_TESTS, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};
pub use mvcc::{
    prefix_end, HistoryRead, KeyRange, KvHash, PrevKvInterest, PrevKvWanted, StoreMetrics,
};
pub use mvcc::{ApplyState, MigrationGate};
pub use replication::{
    Bootstrap, LeaseAuthority, MemberInfo, MemberList, MembershipError, PeerService, PeerTransport,
    RaftStatus, RaftTiming, ReplicaOptions, LOG_DIR,
};
pub use store::{Store, StoreStatus, DB_FILE};

/// etcd's snapshot format, both ways (see `mvcc::etcd_snapshot`): the
/// offline side (`cairn snapshot restore` and `status`) uses these; the
/// online side is [`Store::write_etcd_snapshot`].
pub mod etcd_snapshot {
    pub use crate::mvcc::etcd_snapshot::export::{EtcdSnapshotFile, Exported};
    pub use crate::mvcc::etcd_snapshot::file::{SnapshotError, SnapshotFile, HASH_LEN};
    pub use crate::mvcc::etcd_snapshot::import::{import, ImportOptions, Imported};
    pub use crate::mvcc::etcd_snapshot::layout::EtcdMember;
    pub use crate::mvcc::etcd_snapshot::status::{status, SnapshotStatus};
}
pub use txn::{is_txn_readonly, txn_has_put};
