//! Applies one command to the state machine inside the writer's transaction.

use cairn_proto::etcdserverpb::{
    CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};
use cairn_proto::mvccpb::event::EventType;
use rusqlite::Connection;

use crate::command::{Command, CommandOutput, ImportRevision};
use crate::error::{Result, StoreError};
use crate::mvcc::alarms::{apply_alarm, nospace};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::txn_read::TxnRead;
use crate::mvcc::write_txn::WriteTxn;
use crate::txn::{self, txn_has_put};

/// What applying one command produced.
pub struct Applied {
    pub output: CommandOutput,
    /// Set when the command created a new revision.
    pub events: Option<(i64, Vec<cairn_proto::mvccpb::Event>)>,
    /// Set when the command scheduled a compaction.
    pub compacted_to: Option<i64>,
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
    if let Command::Import(imp) = cmd {
        // An imported revision moves the counter even if it changed nothing
        // here, so that later imports keep the source's numbering.
        next.current_rev = imp.revision;
    }
    let events = if wtx.has_changes() {
        let rev = wtx.current_rev();
        next.current_rev = rev;
        Some((rev, wtx.into_events()))
    } else {
        None
    };
    *state = next;
    Ok(Applied {
        output,
        events,
        compacted_to,
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
        Command::Import(imp) => {
            if imp.revision <= state.current_rev {
                return Err(StoreError::ImportOutOfOrder {
                    got: imp.revision,
                    current: state.current_rev,
                });
            }
            // Writes through a write txn land one above its base revision, so base
            // it just below the revision being imported.
            *wtx = WriteTxn::new(conn, wtx.index(), imp.revision - 1, state.compact_rev);
            import(wtx, imp)?;
            CommandOutput::Import {
                revision: imp.revision,
            }
        }
    };
    Ok((output, compacted_to))
}

fn import(wtx: &mut WriteTxn<'_>, imp: &ImportRevision) -> Result<()> {
    for ev in &imp.events {
        let kv = ev.kv.clone().unwrap_or_default();
        let prev = wtx.get(&kv.key)?;
        if ev.r#type == EventType::Delete as i32 {
            if let Some(prev) = prev {
                wtx.record_delete(prev, imp.revision)?;
            }
        } else {
            let kv = cairn_proto::mvccpb::KeyValue {
                mod_revision: imp.revision,
                ..kv
            };
            wtx.record_put(kv, prev)?;
        }
    }
    Ok(())
}
