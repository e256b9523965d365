//! Applies one command to the state machine inside the writer's transaction.

use cairn_proto::etcdserverpb::{
    CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};
use rusqlite::Connection;

use crate::command::{Command, CommandOutput, RevisionEvents};
use crate::error::{Result, StoreError};
use crate::mvcc::alarms::{apply_alarm, nospace};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::cluster_version;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::txn_read::TxnRead;
use crate::mvcc::write_txn::WriteTxn;
use crate::txn::{self, is_txn_readonly, txn_has_put};
use crate::versions::MinorVersion;

/// What applying one command produced.
pub struct Applied {
    pub output: CommandOutput,
    /// The revisions the command created, oldest first, each with its
    /// events: one for a client write that changed something, none for
    /// one that did not, any number for an import.
    pub events: Vec<RevisionEvents>,
    /// Set when the command scheduled a compaction.
    pub compacted_to: Option<i64>,
    /// The command changed history other than by appending revisions (a
    /// migration wiped the store, or its copy completed): watchers must
    /// re-read what they need, as after a snapshot install.
    pub reset: bool,
}

/// A client write, refused while a migration imports or after it was
/// aborted (`MigrationGate::check_write`).
fn is_client_write(cmd: &Command) -> bool {
    match cmd {
        Command::Put(_)
        | Command::DeleteRange(_)
        | Command::Compact(_)
        | Command::LeaseGrant(_)
        | Command::LeaseRevoke(_) => true,
        Command::Txn(t) => !is_txn_readonly(t),
        _ => false,
    }
}

/// Applies `cmd` to `conn`, updating `state` only on success.
///
/// Every command checks everything that can refuse it before it writes (as
/// etcd's applier does), so a refused command has written nothing and needs no
/// rollback. An error after a write is a storage fault, reported as such so
/// that the caller rolls the whole batch back.
///
/// `prev_values`: whether put events carry the previous kv of the key they
/// update (see `PrevKvInterest`).
pub fn apply(
    conn: &Connection,
    index: &KeyIndex,
    state: &mut ApplyState,
    cmd: &Command,
    prev_values: bool,
) -> Result<Applied> {
    if cmd.is_migration() {
        return crate::apply::migration::apply(conn, index, state, cmd, prev_values);
    }
    // The gate first: it is in memory, and a Txn's kind is a walk of it.
    if let Err(refused) = state.migration.check_write() {
        if is_client_write(cmd) {
            return Err(refused);
        }
    }
    let mut next = *state;
    let mut wtx = WriteTxn::new(conn, index, next.current_rev, next.compact_rev);
    if !prev_values {
        wtx.skip_prev_values();
    }
    let result = apply_to(conn, &mut wtx, &mut next, cmd);
    let (output, compacted_to) = match result {
        Ok(out) => out,
        Err(e) if e.is_storage_fault() || !wtx.has_changes() => return Err(e),
        // Every refusal is checked before the first write (txn/); one
        // after it is a bug, and under Raft a fault that stops this member.
        Err(e) => {
            return Err(StoreError::Storage(format!(
                "command refused after writing ({e}): a missing pre-check"
            )))
        }
    };
    let events = if wtx.has_changes() {
        let revision = wtx.current_rev();
        next.current_rev = revision;
        vec![RevisionEvents {
            revision,
            events: wtx.into_events(),
        }]
    } else {
        Vec::new()
    };
    *state = next;
    Ok(Applied {
        output,
        events,
        compacted_to,
        reset: false,
    })
}

fn apply_to<'c>(
    conn: &'c Connection,
    wtx: &mut WriteTxn<'c>,
    state: &mut ApplyState,
    cmd: &Command,
) -> Result<(CommandOutput, Option<i64>)> {
    let mut compacted_to = None;
    let output = match cmd {
        Command::Put(p) => {
            if nospace(conn)? {
                return Err(StoreError::NoSpace);
            }
            CommandOutput::Put(txn::put(wtx, p)?)
        }
        Command::DeleteRange(d) => CommandOutput::DeleteRange(txn::delete_range(wtx, d)?),
        Command::Txn(t) => {
            if txn_has_put(t) && nospace(conn)? {
                return Err(StoreError::NoSpace);
            }
            CommandOutput::Txn(txn::txn(wtx, t)?)
        }
        Command::Compact(c) => {
            if c.revision <= state.compact_rev {
                return Err(StoreError::Compacted);
            }
            if c.revision > state.current_rev {
                return Err(StoreError::FutureRev);
            }
            state.compact_rev = c.revision;
            compacted_to = Some(c.revision);
            CommandOutput::Compact {
                response: CompactionResponse {
                    header: Some(ResponseHeader {
                        revision: state.current_rev,
                        ..Default::default()
                    }),
                },
                compact_revision: c.revision,
            }
        }
        Command::Alarm(a) => CommandOutput::Alarm(apply_alarm(conn, a)?),
        Command::LeaseGrant(g) => {
            if nospace(conn)? {
                return Err(StoreError::NoSpace);
            }
            txn::lease_grant(wtx, g.id, g.ttl)?;
            CommandOutput::LeaseGrant(LeaseGrantResponse {
                header: Some(ResponseHeader::default()),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })
        }
        Command::LeaseRevoke(r) => {
            txn::lease_revoke(wtx, r.id)?;
            CommandOutput::LeaseRevoke(LeaseRevokeResponse {
                header: Some(ResponseHeader {
                    revision: wtx.current_rev(),
                    ..Default::default()
                }),
            })
        }
        Command::ClusterVersionSet(c) => {
            let v = MinorVersion::parse(&c.version)
                .ok_or_else(|| StoreError::InvalidVersion(c.version.clone()))?;
            cluster_version::set_cluster(conn, v)?;
            let ours = MinorVersion::this_release();
            if ours < v {
                // The leader raises it only once every member reported a
                // release at least as new, so this member was replaced by an
                // older one since: etcd stops such a member
                // (MustDetectDowngrade); it is refused at its next start.
                tracing::error!(cluster_version = %v, release = %ours,
                    "the cluster version is above this member's release: it must be upgraded");
            }
            CommandOutput::Versions(cluster_version::load(conn)?)
        }
        Command::DowngradeInfoSet(d) => {
            let target = if d.enabled {
                Some(
                    MinorVersion::parse(&d.target_version)
                        .ok_or_else(|| StoreError::InvalidVersion(d.target_version.clone()))?,
                )
            } else {
                None
            };
            cluster_version::set_downgrade(conn, target)?;
            CommandOutput::Versions(cluster_version::load(conn)?)
        }
        // Applied by `apply` before this.
        Command::MigrationBegin(_)
        | Command::ImportBase(_)
        | Command::ImportRevisions(_)
        | Command::MigrationCutover(_)
        | Command::MigrationAbort(_) => {
            return Err(StoreError::Storage(
                "a migration command reached client apply".into(),
            ))
        }
    };
    Ok((output, compacted_to))
}
