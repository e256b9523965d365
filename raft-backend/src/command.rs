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
use cairn_proto::migrate::{
    AbortRequest, BeginRequest, CutoverRequest, ImportBaseRequest, ImportRevisionsRequest,
    MigrationState,
};
use cairn_proto::mvccpb::Event;
use cairn_proto::peer::{ClusterVersionSet, DowngradeInfoSet};

use crate::versions::VersionState;

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
    // Live migration from etcd (docs/design.md, "Live migration from etcd";
    // `mvcc::migration`): each carries the migration service's request as
    // the migrator sent it, and answers with the migration's state after it.
    /// Starts importing into an empty store, confirms the import under way
    /// from the same source, or (`restart`) wipes it and starts again.
    MigrationBegin(BeginRequest),
    /// One page of the copy of the source's state at its start revision.
    ImportBase(ImportBaseRequest),
    /// Whole source revisions after the copy, with their numbers, create
    /// revisions and versions; then lease drops and the source's compaction.
    ImportRevisions(ImportRevisionsRequest),
    /// Ends the import at the expected revision; writes pass from then on.
    MigrationCutover(CutoverRequest),
    /// Gives the import up; writes stay refused.
    MigrationAbort(AbortRequest),
    // The cluster version and downgrades (`versions`): proposed by the
    // leader's version monitor and by Maintenance.Downgrade, which check
    // them first; applied as they come, as etcd applies its own.
    ClusterVersionSet(ClusterVersionSet),
    DowngradeInfoSet(DowngradeInfoSet),
}

impl Command {
    /// A migration command (refused or not, it never counts as a client write).
    pub fn is_migration(&self) -> bool {
        matches!(
            self,
            Command::MigrationBegin(_)
                | Command::ImportBase(_)
                | Command::ImportRevisions(_)
                | Command::MigrationCutover(_)
                | Command::MigrationAbort(_)
        )
    }
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
    /// A migration command's answer: the migration's state after it, as
    /// the service reports it (`target_revision` filled in).
    Migration(MigrationState),
    /// The versions after a ClusterVersionSet or DowngradeInfoSet.
    Versions(VersionState),
}

/// The events of one revision.
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
