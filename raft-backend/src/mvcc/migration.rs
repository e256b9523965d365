//! The `migration` table: one row with the state of a live migration from
//! etcd (docs/design.md, "Live migration from etcd"), written only by the
//! migration commands (`apply::migration`), in the same transaction as the
//! data each brings, so that the resume point never disagrees with the data.
//!
//! Also the two store-level writes only an import does: a copied key-value
//! stored with a row id of its own revision's range (`insert_base_row`),
//! and the wipe a restarted import begins with (`wipe`).

use cairn_proto::migrate::{MigrationState, Phase};
use cairn_proto::mvccpb::KeyValue;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::mvcc::key_index::{KeyIndex, Version};
use crate::mvcc::schema::{meta, set_meta};

/// A copied row's id is `mod_revision << BASE_ID_SHIFT | n`, n counting
/// the rows already copied at that revision: row ids keep ordering rows by
/// revision although the copy comes in key order.
pub const BASE_ID_SHIFT: u32 = 24;
/// Revisions whose shifted ids still fit in an `i64`.
pub const MAX_BASE_REVISION: i64 = (1 << (63 - BASE_ID_SHIFT)) - 1;

/// What apply needs of the migration on every client write: whether writes
/// pass, and what to say when they do not. Kept in `ApplyState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrationGate {
    /// A `cairn_proto::migrate::Phase`.
    pub phase: i32,
    pub source_cluster_id: u64,
}

impl MigrationGate {
    pub fn of(state: &MigrationState) -> Self {
        MigrationGate {
            phase: state.phase,
            source_cluster_id: state.source_cluster_id,
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::try_from(self.phase).unwrap_or(Phase::None)
    }

    /// COPYING or FOLLOWING.
    pub fn importing(&self) -> bool {
        matches!(self.phase(), Phase::Copying | Phase::Following)
    }

    /// Refuses a client write (Put, DeleteRange, a writing Txn, Compact,
    /// LeaseGrant, LeaseRevoke, a keep-alive) while importing or after an abort.
    pub fn check_write(&self) -> Result<()> {
        match self.phase() {
            Phase::Copying | Phase::Following => Err(StoreError::MigrationImporting {
                source_cluster_id: self.source_cluster_id,
                phase: self.phase().as_str_name(),
            }),
            Phase::Aborted => Err(StoreError::MigrationAborted {
                source_cluster_id: self.source_cluster_id,
            }),
            Phase::None | Phase::CutOver => Ok(()),
        }
    }
}

const COLUMNS: &str = "phase, source_cluster_id, source_version, start_revision, compact_revision,
    keys_copied, bytes_copied, copy_resume_after, source_revision, source_seen_unix_ms,
    phase_since_unix_ms, history_none, shared_revision_keys";

/// The stored state; phase NONE (and zeros) if no migration was ever begun.
/// `target_revision` is left 0: it is the store's current revision, the
/// caller's to fill in from the same snapshot.
pub fn load(conn: &Connection) -> Result<MigrationState> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM migration WHERE id = 1"))?
        .query_row([], |r| {
            Ok(MigrationState {
                phase: r.get(0)?,
                // Stored as the same 64 bits.
                source_cluster_id: r.get::<_, i64>(1)? as u64,
                source_version: r.get(2)?,
                start_revision: r.get(3)?,
                compact_revision: r.get(4)?,
                target_revision: 0,
                keys_copied: r.get(5)?,
                bytes_copied: r.get(6)?,
                copy_resume_after: r.get(7)?,
                source_revision: r.get(8)?,
                source_seen_unix_ms: r.get(9)?,
                phase_since_unix_ms: r.get(10)?,
                history_none: r.get(11)?,
                shared_revision_keys: r.get(12)?,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

pub fn save(conn: &Connection, s: &MigrationState) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO migration (id, {COLUMNS})
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
        s.phase,
        s.source_cluster_id as i64,
        s.source_version,
        s.start_revision,
        s.compact_revision,
        s.keys_copied,
        s.bytes_copied,
        s.copy_resume_after,
        s.source_revision,
        s.source_seen_unix_ms,
        s.phase_since_unix_ms,
        s.history_none,
        s.shared_revision_keys,
    ])?;
    Ok(())
}

pub fn gate(conn: &Connection) -> Result<MigrationGate> {
    Ok(MigrationGate::of(&load(conn)?))
}

/// Whether the store holds nothing a migration could collide with: no
/// history row and no lease.
pub fn store_is_empty(conn: &Connection) -> Result<bool> {
    let any: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM history) OR EXISTS (SELECT 1 FROM leases)",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(any.is_none())
}

/// The first free n of revision `rev`'s id range (see `BASE_ID_SHIFT`).
pub fn next_base_slot(conn: &Connection, rev: i64) -> Result<i64> {
    let lo = rev << BASE_ID_SHIFT;
    let hi = (rev + 1) << BASE_ID_SHIFT;
    let max: Option<i64> = conn
        .prepare_cached("SELECT max(id) FROM history WHERE id >= ?1 AND id < ?2")?
        .query_row([lo, hi], |r| r.get(0))?;
    Ok(max.map_or(0, |m| m - lo + 1))
}

/// Stores one copied key-value as the row `kv.mod_revision << BASE_ID_SHIFT
/// | n`, with `n` as its sub-revision, and records it in the key index.
/// The key must have no row yet (the copy holds each key once).
pub fn insert_base_row(conn: &Connection, index: &KeyIndex, kv: &KeyValue, n: i64) -> Result<()> {
    let id = (kv.mod_revision << BASE_ID_SHIFT) | n;
    conn.prepare_cached(
        "INSERT INTO history (id, key, rev, sub, create_rev, version, lease, value, tombstone, prev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, NULL)",
    )?
    .execute(params![
        id,
        kv.key,
        kv.mod_revision,
        n,
        kv.create_revision,
        kv.version,
        kv.lease,
        kv.value
    ])?;
    index.push(
        &kv.key,
        Version {
            rev: kv.mod_revision,
            id,
            tombstone: false,
            create_rev: kv.create_revision,
            version: kv.version,
        },
    );
    Ok(())
}

/// Removes every key version and lease, in the caller's transaction; the
/// key index is emptied at once (readers under way are told to start
/// again). The caller puts the revision counters back to an empty store's
/// (`ApplyState`, persisted with the transaction); physical compaction's
/// progress, which `ApplyState` does not hold, is reset here. Alarms and the
/// membership stay.
pub fn wipe(conn: &Connection, index: &KeyIndex) -> Result<()> {
    conn.execute_batch("DELETE FROM history; DELETE FROM leases;")?;
    set_meta(conn, meta::COMPACT_DONE_REV, -1)?;
    index.clear();
    Ok(())
}

/// Creates or updates a lease as the source holds it.
pub fn upsert_lease(conn: &Connection, id: i64, ttl: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO leases (id, ttl) VALUES (?1, ?2)")?
        .execute(params![id, ttl])?;
    Ok(())
}

/// Removes a lease the source no longer holds (its keys' deletes came as
/// events); one the target never had is no error.
pub fn drop_lease(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM leases WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
