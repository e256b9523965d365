//! Replication: the Raft log (openraft) in front of the MVCC store, and the
//! whole peer protocol, client (`network`, `forwarder`, `propose_stream`)
//! and server (`peer_server`) side by side.
//!
//! Write path: `Replica::propose` → leader's log (`log_store`, group commit)
//! → replicated and committed → `state_machine` → the store's writer
//! (`apply::writer`) → SQLite → applied-event stream. Every openraft type
//! stays inside this module tree.

pub(crate) mod codec;
mod error_map;
mod forwarder;
mod leader_liveness;
mod lease_forward;
pub(crate) mod log_file;
mod log_store;
mod member_releases;
mod membership;
pub(crate) mod membership_error;
mod network;
mod options;
mod peer_handlers;
mod peer_server;
mod propose;
mod propose_stream;
mod raft_events;
mod read_batch;
mod read_index;
mod replica;
mod solo_member;
mod state_machine;
mod types;
mod waiters;

pub use log_file::LOG_DIR;
pub(crate) use log_store::LogStore;
pub use membership_error::MembershipError;
pub use network::PeerTransport;
pub use options::{Bootstrap, MemberList, RaftStatus, RaftTiming, ReplicaOptions};
pub use peer_server::{LeaseAuthority, PeerService};
pub(crate) use replica::Replica;
pub(crate) use state_machine::{check_membership_blob, member_list_of_blob, StateMachine};
pub use types::MemberInfo;
pub(crate) use waiters::Waiters;
