//! The storage layer of the store wing: etcd's revisioned MVCC keyspace kept
//! in SQLite, with separate read and write transactions, written only by
//! `apply::writer`, one thread that applies plain log entries in order.
//! Nothing here knows about Raft or request semantics: a membership is
//! opaque bytes the replication wing encodes.

pub(crate) mod alarms;
pub(crate) mod apply_state;
pub(crate) mod checkpointer;
pub(crate) mod cluster_version;
pub(crate) mod compactor;
pub(crate) mod defragment;
pub mod etcd_snapshot;
pub(crate) mod file_size;
pub(crate) mod hash_kv;
pub(crate) mod history;
pub(crate) mod key_index;
pub(crate) mod key_range;
pub(crate) mod membership_blob;
pub(crate) mod metrics;
pub(crate) mod migration;
pub(crate) mod prev_kv_interest;
pub(crate) mod read_txn;
pub(crate) mod readers;
pub(crate) mod schema;
pub(crate) mod snapshot;
pub(crate) mod txn_read;
pub(crate) mod write_txn;

pub use apply_state::ApplyState;
pub use hash_kv::KvHash;
pub use history::HistoryRead;
pub use key_range::{prefix_end, KeyRange};
pub use metrics::StoreMetrics;
pub use migration::MigrationGate;
pub use prev_kv_interest::{PrevKvInterest, PrevKvWanted};
pub use read_txn::ReadTxn;
pub use txn_read::TxnRead;
pub use write_txn::WriteTxn;
