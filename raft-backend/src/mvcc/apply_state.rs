//! The counters every applied batch moves (current and compact revision,
//! applied log index and term), persisted in `meta` in the batch's own
//! transaction so that they never disagree with the data.

use rusqlite::Connection;

use crate::error::Result;
use crate::mvcc::migration::{self, MigrationGate};
use crate::mvcc::schema::{get_meta, meta, set_meta};

/// The counters the apply loop keeps in memory and persists with every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyState {
    pub current_rev: i64,
    pub compact_rev: i64,
    pub applied_index: u64,
    pub applied_term: u64,
    /// The migration's phase (`migration` table), which client writes are
    /// checked against; written by the migration commands themselves, not
    /// by `persist`.
    pub migration: MigrationGate,
}

impl ApplyState {
    pub fn load(conn: &Connection) -> Result<Self> {
        Ok(ApplyState {
            current_rev: get_meta(conn, meta::CURRENT_REV)?,
            compact_rev: get_meta(conn, meta::COMPACT_REV)?,
            applied_index: get_meta(conn, meta::APPLIED_INDEX)? as u64,
            applied_term: get_meta(conn, meta::APPLIED_TERM)? as u64,
            migration: migration::gate(conn)?,
        })
    }

    pub fn persist(&self, conn: &Connection) -> Result<()> {
        set_meta(conn, meta::CURRENT_REV, self.current_rev)?;
        set_meta(conn, meta::COMPACT_REV, self.compact_rev)?;
        set_meta(conn, meta::APPLIED_INDEX, self.applied_index as i64)?;
        set_meta(conn, meta::APPLIED_TERM, self.applied_term as i64)?;
        Ok(())
    }
}
