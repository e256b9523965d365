//! Cairn's revisioned store: an MVCC keyspace with etcd's revision semantics,
//! kept in SQLite, written only by applying log commands in order.
//!
//! Write path: [`Store::propose`] → Raft log (openraft, group commit) →
//! committed → apply → SQLite.
//! Every applied batch is published to subscribers (the watch hub) from the
//! apply loop itself, never by polling.

mod apply;
mod checkpointer;
mod command;
mod compactor;
mod error;
mod file_size;
mod hash_kv;
mod key_index;
mod key_range;
mod metrics;
mod prev_kv_interest;
mod raft;
mod readers;
mod schema;
mod store;
mod view;

pub use apply::ApplyState;
pub use command::{AppliedBatch, Command, CommandOutput, ImportRevision, RevisionEvents};
pub use error::{Result, StoreError};
pub use hash_kv::KvHash;
pub use key_range::{prefix_end, KeyRange};
pub use metrics::StoreMetrics;
pub use prev_kv_interest::{PrevKvInterest, PrevKvWanted};
pub use raft::{
    Bootstrap, LeaseAuthority, MemberInfo, MemberList, MembershipError, Peer, PeerService,
    PeerTransport, RaftStatus, RaftTiming, ReplicaOptions, LOG_DIR,
};
pub use schema::DOWNGRADE_TO_V1_FOR_TESTS;
pub use store::{Store, StoreStatus, DB_FILE};
pub use view::{is_txn_readonly, txn_has_put, HistoryRead};
