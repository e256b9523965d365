//! The deterministic write commands that go through the log, and their results.
//!
//! Every member applies the same commands in the same order and so reaches the
//! same revisions; nothing in a command depends on local time or state outside
//! the store.

use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::Event;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Alarm(AlarmRequest),
    /// The ID and TTL are final: the proposer chose the ID and applied the
    /// minimum TTL, so every member applies the same lease.
    LeaseGrant(LeaseGrantRequest),
    /// Deletes the lease and, in one revision, every key attached to it.
    /// Expiry uses this same command.
    LeaseRevoke(LeaseRevokeRequest),
    /// Replays one revision recorded elsewhere (live migration from etcd),
    /// keeping its revision number and every key's create revision and version.
    Import(ImportRevision),
}

/// All changes a source store made at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRevision {
    /// Must be greater than the store's current revision.
    pub revision: i64,
    /// PUT events carry complete key-values (create_revision, version, lease,
    /// mod_revision == `revision`); DELETE events need only the key.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// `compact_revision` is what a caller asking for `physical` waits for.
    Compact {
        response: CompactionResponse,
        compact_revision: i64,
    },
    Alarm(AlarmResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Import {
        revision: i64,
    },
}

/// The events one applied command produced, all at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// What one group commit made durable, in apply order; the watch hub's feed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppliedBatch {
    pub revisions: Vec<RevisionEvents>,
    /// The store's revision after the batch.
    pub current_revision: i64,
    /// The state was replaced by a snapshot from the leader: there are no
    /// events to give, and watchers must re-read what they need from history.
    pub reset: bool,
    /// Every event carries its prev_kv. Without a watcher that wants them
    /// (see `PrevKvInterest`), puts that update a key come without it.
    pub prev_kv_complete: bool,
}
