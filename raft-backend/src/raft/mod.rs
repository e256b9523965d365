//! Replication: the Raft log (openraft) in front of the MVCC store.
//!
//! Write path: `Replica::propose` → leader's log (`log_store`, group commit)
//! → replicated and committed → `state_machine` → the store's writer
//! (`mvcc::writer`) → SQLite → applied-event stream. Every openraft type
//! stays inside this module tree.

pub mod codec;
mod forwarder;
mod leader_liveness;
mod log_file;
mod log_store;
pub mod network;
mod propose_stream;
mod replica;
mod state_machine;
mod types;
mod waiters;

pub use log_file::LOG_DIR;
pub(crate) use log_store::LogStore;
pub use network::{Peer, PeerTransport};
pub use replica::{to_status, Bootstrap, RaftStatus, RaftTiming, Replica, ReplicaOptions};
pub(crate) use state_machine::StateMachine;
pub use types::MemberInfo;
pub(crate) use waiters::Waiters;
