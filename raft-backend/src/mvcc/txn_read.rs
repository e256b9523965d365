//! What every transaction on the store can read, whether it only reads
//! (`ReadTxn`) or also writes (`WriteTxn`), as etcd's `mvcc.TxnRead` is
//! shared by `storeTxnRead` and `storeTxnWrite`.
//!
//! Which row holds a key as of a revision comes from the in-memory
//! `KeyIndex`; the rows themselves from SQLite. The two transaction types
//! differ only in how they ask the index: a reader checks that its SQLite
//! snapshot and the index are still of one generation, the writer owns every
//! change to both.

use cairn_proto::mvccpb::KeyValue;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::mvcc::key_index::Version;
use crate::mvcc::key_range::KeyRange;

pub trait TxnRead {
    /// The connection whose transaction this one reads.
    fn conn(&self) -> &Connection;

    /// The revision a read through this transaction observes.
    fn current_rev(&self) -> i64;

    /// Reads below this revision are refused (-1 before the first compaction).
    fn compact_rev(&self) -> i64;

    /// The key's newest version at or below `rev` (tombstones included).
    fn version_at(&self, key: &[u8], rev: i64) -> Result<Option<Version>>;

    /// The rows of every key of `kr` live at `rev`, in key order, at most `limit`.
    fn ids_at(&self, kr: &KeyRange, rev: i64, limit: Option<usize>) -> Result<Vec<i64>>;

    /// The number of keys of `kr` live at `rev`.
    fn count_at(&self, kr: &KeyRange, rev: i64) -> Result<i64>;

    /// The newest live version of one key.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.live_version(key)? {
            Some(v) => self.row(v.id, true).map(Some),
            None => Ok(None),
        }
    }

    /// The index entry of the key's newest live version.
    fn live_version(&self, key: &[u8]) -> Result<Option<Version>> {
        Ok(self
            .version_at(key, self.current_rev())?
            .filter(|v| !v.tombstone))
    }

    /// One history row, with or without its value.
    fn row(&self, id: i64, with_value: bool) -> Result<KeyValue> {
        let sql = if with_value {
            "SELECT key, create_rev, rev, version, lease, value FROM history WHERE id = ?1"
        } else {
            "SELECT key, create_rev, rev, version, lease, NULL FROM history WHERE id = ?1"
        };
        self.conn()
            .prepare_cached(sql)?
            .query_row([id], row_to_kv)
            .optional()?
            // The index named a row this snapshot lacks: they disagree.
            .ok_or_else(|| StoreError::Corrupt(format!("history row {id} is missing")))
    }

    /// Every key of `kr` as it was at `rev`, in key order, at most `limit`.
    fn fetch(
        &self,
        kr: &KeyRange,
        rev: i64,
        limit: Option<i64>,
        with_values: bool,
    ) -> Result<Vec<KeyValue>> {
        let limit = limit.map(|l| l.max(0) as usize);
        self.ids_at(kr, rev, limit)?
            .into_iter()
            .map(|id| self.row(id, with_values))
            .collect()
    }

    /// Live keys attached to lease `id`, in key order: the rows that carry
    /// the lease and are still their key's newest.
    fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id, key FROM history WHERE lease = ?1 AND lease != 0")?;
        let rows = stmt.query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let cur = self.current_rev();
        let mut keys = Vec::new();
        for row in rows {
            let (row_id, key) = row?;
            if self
                .version_at(&key, cur)?
                .is_some_and(|v| v.id == row_id && !v.tombstone)
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Every lease, as (id, granted TTL in seconds).
    fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id, ttl FROM leases ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// A history row's key-value, from columns key, create_rev, rev, version,
/// lease, value (NULL for a tombstone or when the value was not read).
pub(crate) fn row_to_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        create_revision: r.get(1)?,
        mod_revision: r.get(2)?,
        version: r.get(3)?,
        lease: r.get(4)?,
        value: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
    })
}
