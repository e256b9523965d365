//! Writing the store, as one read transaction sees it, as etcd's backend
//! file: what `Maintenance.Snapshot` streams and `etcdutl snapshot restore`
//! turns back into an etcd member.
//!
//! The `key` bucket holds what etcd's would after the same history: every
//! revision above the compact revision, and at or below it each key's
//! version as of the compact revision unless that is a tombstone. Rows are
//! read in id order, which is revision order (see `schema`), and written as
//! they come: memory stays at a page per tree level. Only while physical
//! compaction still lags behind the compact revision are the ids of the rows
//! it will keep gathered first (from the key index, as HashKV does), since
//! the rows at or below it then include versions it will remove.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_bbolt::{BoltError, DbWriter};
use cairn_proto::etcdserverpb::AlarmMember;
use cairn_proto::mvccpb::KeyValue;
use prost::Message;

use crate::error::{Result, StoreError};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::etcd_snapshot::layout::{self, EtcdMember, Lease};
use crate::mvcc::read_txn::ReadTxn;
use crate::mvcc::txn_read::{row_to_kv, TxnRead};

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub revision: i64,
    pub compact_revision: i64,
    /// Entries of the `key` bucket.
    pub revisions: u64,
    /// The file's size in bytes.
    pub size: u64,
}

/// An export's file, removed when dropped (once streamed, or when the
/// stream is abandoned): the snapshot is a transfer, not something kept.
#[derive(Debug)]
pub struct EtcdSnapshotFile {
    pub path: std::path::PathBuf,
    pub exported: Exported,
}

impl Drop for EtcdSnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bolt(e: BoltError) -> StoreError {
    match e {
        BoltError::KeyOrder { bucket } => StoreError::Corrupt(format!(
            "history rows out of revision order while writing bucket {bucket}"
        )),
        e => StoreError::Storage(format!("write etcd snapshot: {e}")),
    }
}

/// Writes a new bbolt file at `path` holding `txn`'s view of the store.
/// `state` and `compact_done` are read in the same transaction; `members`
/// is the membership the view belongs to.
pub fn export(
    txn: &ReadTxn<'_>,
    state: &ApplyState,
    compact_done: i64,
    members: &[EtcdMember],
    path: &Path,
) -> Result<Exported> {
    let (current, compact) = (txn.current_rev(), txn.compact_rev());
    let mut w = DbWriter::create(path).map_err(bolt)?;
    let revisions = write_key_bucket(&mut w, txn, compact_done)?;

    let mut meta: BTreeMap<&[u8], Vec<u8>> = BTreeMap::new();
    meta.insert(
        layout::CONSISTENT_INDEX,
        layout::u64_be(state.applied_index).to_vec(),
    );
    meta.insert(layout::TERM, layout::u64_be(state.applied_term).to_vec());
    if compact > 0 {
        let mark = layout::revision_key(compact, 0, false);
        meta.insert(layout::SCHEDULED_COMPACT, mark.clone());
        meta.insert(layout::FINISHED_COMPACT, mark);
    }
    meta.insert(layout::CONF_STATE, layout::conf_state_json(members));
    meta.insert(
        layout::STORAGE_VERSION,
        layout::STORAGE_VERSION_WRITTEN.as_bytes().to_vec(),
    );
    write_sorted(&mut w, layout::META, meta.into_iter())?;

    let conn = txn.conn();
    let mut b = w.bucket(layout::LEASE).map_err(bolt)?;
    // Lease IDs are positive, so their order is their big-endian bytes' order.
    let mut stmt = conn.prepare("SELECT id, ttl FROM leases ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (id, ttl): (i64, i64) = (r.get(0)?, r.get(1)?);
        let lease = Lease {
            id,
            ttl,
            remaining_ttl: 0,
        };
        b.put(&layout::u64_be(id as u64), &lease.encode_to_vec())
            .map_err(bolt)?;
    }
    b.finish().map_err(bolt)?;

    let members_sorted: BTreeMap<Vec<u8>, Vec<u8>> =
        members.iter().map(|m| (m.key(), m.json())).collect();
    write_sorted(&mut w, layout::MEMBERS, members_sorted.into_iter())?;
    write_sorted(
        &mut w,
        layout::MEMBERS_REMOVED,
        std::iter::empty::<(&[u8], Vec<u8>)>(),
    )?;
    write_sorted(
        &mut w,
        layout::CLUSTER,
        [(
            layout::CLUSTER_VERSION,
            layout::CLUSTER_VERSION_WRITTEN.as_bytes().to_vec(),
        )]
        .into_iter(),
    )?;
    let alarms: BTreeMap<Vec<u8>, Vec<u8>> = crate::mvcc::alarms::list_alarms(conn)?
        .into_iter()
        .map(|a: AlarmMember| (a.encode_to_vec(), Vec::new()))
        .collect();
    write_sorted(&mut w, layout::ALARM, alarms.into_iter())?;
    // Auth as etcd has it before auth is ever enabled.
    write_sorted(
        &mut w,
        layout::AUTH,
        [(layout::AUTH_REVISION, layout::u64_be(1).to_vec())].into_iter(),
    )?;
    write_sorted(
        &mut w,
        layout::AUTH_USERS,
        std::iter::empty::<(&[u8], Vec<u8>)>(),
    )?;
    write_sorted(
        &mut w,
        layout::AUTH_ROLES,
        std::iter::empty::<(&[u8], Vec<u8>)>(),
    )?;

    let size = w.finish(state.applied_index.max(1) + 1).map_err(bolt)?;
    Ok(Exported {
        revision: current,
        compact_revision: compact,
        revisions,
        size,
    })
}

fn write_sorted<K: AsRef<[u8]>>(
    w: &mut DbWriter,
    bucket: &[u8],
    entries: impl Iterator<Item = (K, Vec<u8>)>,
) -> Result<()> {
    let mut b = w.bucket(bucket).map_err(bolt)?;
    for (k, v) in entries {
        b.put(k.as_ref(), &v).map_err(bolt)?;
    }
    b.finish().map_err(bolt)
}

/// The `key` bucket (see the module comment); returns its entry count.
fn write_key_bucket(w: &mut DbWriter, txn: &ReadTxn<'_>, compact_done: i64) -> Result<u64> {
    let (current, compact) = (txn.current_rev(), txn.compact_rev());
    // Only when physical compaction lags: the ids it will keep.
    let mut kept: Vec<i64> = Vec::new();
    let physical_done = compact < 1 || compact_done >= compact;
    if !physical_done {
        txn.newest_at_each(compact, compact, |at, _| {
            if let Some(v) = at.filter(|v| !v.tombstone) {
                kept.push(v.id);
            }
        })?;
        kept.sort_unstable();
    }
    let mut b = w.bucket(layout::KEY).map_err(bolt)?;
    let mut stmt = txn.conn().prepare(
        "SELECT key, create_rev, rev, version, lease, value, tombstone, sub, id
         FROM history ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    let mut value = Vec::new();
    while let Some(r) = rows.next()? {
        let kv = row_to_kv(r)?;
        let tombstone: bool = r.get(6)?;
        let sub: i64 = r.get(7)?;
        let id: i64 = r.get(8)?;
        if kv.mod_revision > current {
            // Not in this view (its transaction sees no later commit; kept as a guard).
            break;
        }
        if kv.mod_revision <= compact {
            let stays = if physical_done {
                !tombstone
            } else {
                kept.binary_search(&id).is_ok()
            };
            if !stays {
                continue;
            }
        }
        let rev = kv.mod_revision;
        value.clear();
        if tombstone {
            KeyValue {
                key: kv.key,
                ..Default::default()
            }
            .encode(&mut value)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        } else {
            kv.encode(&mut value)
                .map_err(|e| StoreError::Storage(e.to_string()))?;
        }
        b.put(&layout::revision_key(rev, sub, tombstone), &value)
            .map_err(bolt)?;
        n += 1;
    }
    b.finish().map_err(bolt)?;
    Ok(n)
}
