//! The cluster membership as the store keeps it: opaque bytes in the
//! `raft_state` table, written in the same transaction as the entry that
//! changed it, so that a snapshot carries the membership its rows belong
//! to. The replication wing encodes and decodes them.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;

const MEMBERSHIP: &str = "membership";

/// The membership recorded in the store (None before the first one).
pub fn load(conn: &Connection) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT value FROM raft_state WHERE name = ?1",
            [MEMBERSHIP],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn save(conn: &Connection, blob: &[u8]) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO raft_state (name, value) VALUES (?1, ?2)")?
        .execute(params![MEMBERSHIP, blob])?;
    Ok(())
}
