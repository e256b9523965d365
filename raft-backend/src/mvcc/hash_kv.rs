//! HashKV: a checksum of the MVCC history up to a revision that equals
//! etcd's for the same history, so that members can be compared with each
//! other (`etcdctl endpoint hashkv --cluster`) and a Cairn copy with the
//! etcd cluster it came from.
//!
//! etcd computes CRC-32C over its backend's `key` bucket: the bucket name,
//! then for each stored revision in order its bucket key (main and sub
//! revision, 8 bytes big-endian each around a `_`, and a `t` for a
//! tombstone) and its value (the `mvccpb.KeyValue`, only the key for a
//! tombstone). Every revision after the compact revision counts, up to the
//! revision asked for; of those at or below it, the rule is in `hash_kv`.
//! Cairn's history rows hold the same revisions, so the same bytes are
//! rebuilt from them.

use cairn_proto::mvccpb::KeyValue;
use prost::Message;
use rusqlite::OptionalExtension;

use crate::error::{Result, StoreError};
use crate::mvcc::history::first_row_from;
use crate::mvcc::read_txn::ReadTxn;
use crate::mvcc::txn_read::{row_to_kv, TxnRead};

/// etcd's `HashKVResponse` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// -1 before the first compaction, as etcd reports it.
    pub compact_revision: i64,
    pub hash_revision: i64,
}

/// A history row as `row_to_kv` reads it, then its tombstone mark and sub-revision.
const ROW_COLUMNS: &str = "key, create_rev, rev, version, lease, value, tombstone, sub";

/// The hash of everything up to `revision` (0: the current revision), as
/// etcd 3.6's `HashByRev` defines it, on `txn`'s snapshot. A revision below
/// the compact revision is refused, as is one in the future (etcd 3.5.0 to
/// 3.5.9 also refused the compact revision itself; 3.5.10 and later hash it).
///
/// Which rows at or below the compact revision count is etcd's rule, quirk
/// included. There, the rows compaction kept (each key's newest version at
/// the compact revision, unless a tombstone) count if they are still their
/// key's newest version at the hashed revision; but if no key at all is
/// live at the hashed revision, all of them count.
pub fn hash_kv(txn: &ReadTxn<'_>, revision: i64) -> Result<KvHash> {
    let (current_rev, compact_rev) = (txn.current_rev(), txn.compact_rev());
    if revision > 0 && revision < compact_rev {
        return Err(StoreError::Compacted);
    }
    if revision > current_rev {
        return Err(StoreError::FutureRev);
    }
    let upto = if revision == 0 { current_rev } else { revision };
    let mut hash = Hasher::default();
    // Below revision 1 etcd hashes no revision, only the bucket name.
    if upto >= 1 {
        let conn = txn.conn();
        let mut by_id =
            conn.prepare(&format!("SELECT {ROW_COLUMNS} FROM history WHERE id = ?1"))?;
        for id in counted_at_compaction(txn, compact_rev, upto)? {
            if let Some((kv, tombstone, sub)) = by_id.query_row([id], read_row).optional()? {
                hash.row(kv, tombstone, sub);
            }
        }
        // Row order is revision order (see `schema`).
        if let Some(first) = first_row_from(txn.conn(), compact_rev + 1)? {
            let mut scan = conn.prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM history WHERE id >= ?1 ORDER BY id"
            ))?;
            let mut rows = scan.query([first])?;
            while let Some(r) = rows.next()? {
                let (kv, tombstone, sub) = read_row(r)?;
                if kv.mod_revision > upto {
                    break;
                }
                hash.row(kv, tombstone, sub);
            }
        }
    }
    Ok(KvHash {
        hash: hash.crc,
        compact_revision: compact_rev,
        hash_revision: upto,
    })
}

/// The ids, in row order, of the rows at or below the compact revision that
/// etcd's hash counts when hashing up to `upto` (the rule in `hash_kv`),
/// from the key index rather than a scan of the rows.
fn counted_at_compaction(txn: &ReadTxn<'_>, compact_rev: i64, upto: i64) -> Result<Vec<i64>> {
    if compact_rev < 1 {
        return Ok(Vec::new());
    }
    let mut any_live = false;
    // (id, still the key's newest version at `upto`)
    let mut kept: Vec<(i64, bool)> = Vec::new();
    txn.newest_at_each(compact_rev, upto, |at_compact, at_upto| {
        any_live |= at_upto.is_some_and(|v| !v.tombstone);
        if let Some(v) = at_compact.filter(|v| !v.tombstone) {
            kept.push((v.id, at_upto.is_some_and(|u| u.id == v.id)));
        }
    })?;
    let mut ids: Vec<i64> = kept
        .into_iter()
        .filter(|(_, newest)| !any_live || *newest)
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(KeyValue, bool, i64)> {
    Ok((row_to_kv(r)?, r.get(6)?, r.get(7)?))
}

/// CRC-32C over what etcd's `key` bucket holds, starting with its name.
struct Hasher {
    crc: u32,
    buf: Vec<u8>,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            crc: crc32c::crc32c(b"key"),
            buf: Vec::new(),
        }
    }
}

impl Hasher {
    /// One revision: its bucket key (main and sub revision, big-endian
    /// around `_`, then `t` for a tombstone) and its value (the key-value;
    /// the key alone for a tombstone).
    fn row(&mut self, kv: KeyValue, tombstone: bool, sub: i64) {
        self.buf.clear();
        self.buf.extend_from_slice(&kv.mod_revision.to_be_bytes());
        self.buf.push(b'_');
        self.buf.extend_from_slice(&sub.to_be_bytes());
        if tombstone {
            self.buf.push(b't');
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.buf.clear();
        let value = if tombstone {
            KeyValue {
                key: kv.key,
                ..Default::default()
            }
        } else {
            kv
        };
        // Encoding into a Vec cannot fail.
        let _ = value.encode(&mut self.buf);
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
    }
}
