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

use std::collections::HashMap;

use cairn_proto::mvccpb::KeyValue;
use prost::Message;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, StoreError};

/// etcd's `HashKVResponse` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// -1 before the first compaction, as etcd reports it.
    pub compact_revision: i64,
    pub hash_revision: i64,
}

/// One history row, as the hash needs it.
struct Row {
    key: Vec<u8>,
    rev: i64,
    sub: i64,
    create_rev: i64,
    version: i64,
    lease: i64,
    value: Option<Vec<u8>>,
    tombstone: bool,
}

const ROW_COLUMNS: &str = "key, rev, sub, create_rev, version, lease, value, tombstone";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        key: r.get(0)?,
        rev: r.get(1)?,
        sub: r.get(2)?,
        create_rev: r.get(3)?,
        version: r.get(4)?,
        lease: r.get(5)?,
        value: r.get(6)?,
        tombstone: r.get(7)?,
    })
}

/// The hash of everything up to `revision` (0: the current revision), as
/// etcd 3.6's `HashByRev` defines it, on the history `conn` reads at
/// `current_rev` and `compact_rev`. A revision below the compact revision
/// is refused, as is one in the future (etcd 3.5.0 to 3.5.9 also refused
/// the compact revision itself; 3.5.10 and later hash it).
///
/// Which rows at or below the compact revision count is etcd's rule, quirk
/// included. There, the rows compaction kept (each key's newest version at
/// the compact revision, unless a tombstone) count if they are still their
/// key's newest version at the hashed revision; but if no key at all is
/// live at the hashed revision, all of them count.
pub fn hash_kv(
    conn: &Connection,
    revision: i64,
    current_rev: i64,
    compact_rev: i64,
) -> Result<KvHash> {
    if revision > 0 && revision < compact_rev {
        return Err(StoreError::Compacted);
    }
    if revision > current_rev {
        return Err(StoreError::FutureRev);
    }
    let upto = if revision == 0 { current_rev } else { revision };
    let mut crc = crc32c::crc32c(b"key");
    let hashed = |hash| KvHash {
        hash,
        compact_revision: compact_rev,
        hash_revision: upto,
    };
    if upto < 1 {
        // etcd hashes no revision then, only the bucket name.
        return Ok(hashed(crc));
    }
    // First pass, over the row ids, keys and tombstone marks up to `upto`:
    // each key's newest row at the compact revision and at `upto`.
    let mut at_compact: HashMap<Vec<u8>, (i64, bool)> = HashMap::new();
    let mut at_upto: HashMap<Vec<u8>, (i64, bool)> = HashMap::new();
    {
        let mut scan = conn.prepare("SELECT id, key, rev, tombstone FROM history ORDER BY id")?;
        let mut rows = scan.query([])?;
        while let Some(r) = rows.next()? {
            let (id, key, rev, tombstone): (i64, Vec<u8>, i64, bool) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if rev > upto {
                break;
            }
            if rev <= compact_rev {
                at_compact.insert(key.clone(), (id, tombstone));
            }
            at_upto.insert(key, (id, tombstone));
        }
    }
    let any_live = at_upto.values().any(|(_, tombstone)| !tombstone);
    let mut early: Vec<i64> = at_compact
        .iter()
        .filter(|(_, (_, tombstone))| !tombstone)
        .filter(|(key, (id, _))| !any_live || at_upto.get(*key).is_some_and(|(n, _)| n == id))
        .map(|(_, (id, _))| *id)
        .collect();
    early.sort_unstable();
    let mut hash_row = |r: &Row| {
        let mut key = Vec::with_capacity(18);
        key.extend_from_slice(&r.rev.to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&r.sub.to_be_bytes());
        let value = if r.tombstone {
            key.push(b't');
            KeyValue {
                key: r.key.clone(),
                ..Default::default()
            }
        } else {
            KeyValue {
                key: r.key.clone(),
                create_revision: r.create_rev,
                mod_revision: r.rev,
                version: r.version,
                value: r.value.clone().unwrap_or_default(),
                lease: r.lease,
            }
        };
        crc = crc32c::crc32c_append(crc, &key);
        crc = crc32c::crc32c_append(crc, &value.encode_to_vec());
    };
    // Second pass: those rows, then every row after the compact revision.
    let mut by_id = conn.prepare(&format!("SELECT {ROW_COLUMNS} FROM history WHERE id = ?1"))?;
    for id in early {
        if let Some(r) = by_id.query_row([id], row).optional()? {
            hash_row(&r);
        }
    }
    let mut scan = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS} FROM history WHERE rev > ?1 AND rev <= ?2 ORDER BY id"
    ))?;
    let mut rows = scan.query([compact_rev, upto])?;
    while let Some(r) = rows.next()? {
        hash_row(&row(r)?);
    }
    Ok(hashed(crc))
}
