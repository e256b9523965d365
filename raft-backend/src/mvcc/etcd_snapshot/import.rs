//! Building a new Cairn store from an etcd snapshot or backend file: the
//! offline migration etcd → Cairn, and Cairn's own restore.
//!
//! Every revision of etcd's `key` bucket becomes a history row with its
//! original revision, create revision and version, so every resourceVersion
//! stays valid; the compaction marks become the compact revision (a
//! compaction etcd had scheduled but not finished is finished by Cairn's
//! compactor when the store opens), leases keep their IDs and TTLs.
//!
//! The store starts with no applied log entry and no membership: the member
//! that opens it bootstraps its Raft group as a new member does, and every
//! member restored from the same file starts from the same state.
//! Members, alarms and auth state of the old cluster are not carried over,
//! as etcdutl's restore drops its members.

use std::collections::HashMap;
use std::path::Path;

use cairn_proto::mvccpb::KeyValue;
use prost::Message;
use rusqlite::params;

use crate::error::StoreError;
use crate::mvcc::etcd_snapshot::file::{SnapshotError, SnapshotFile};
use crate::mvcc::etcd_snapshot::layout::{self, Lease};
use crate::mvcc::schema::{self, meta};

/// Rows per SQLite transaction (bounds the page cache's dirty pages).
const BATCH: u64 = 50_000;

/// etcdutl's `--bump-revision` and `--mark-compacted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Added to the snapshot's revision, so that the restored store's next
    /// write is above any revision a client saw from a newer state.
    pub bump_revision: u64,
    /// Compact at the (bumped) revision, so that watchers and lists of
    /// older revisions start again rather than miss what was lost.
    pub mark_compacted: bool,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub revision: i64,
    pub compact_revision: i64,
    /// History rows (the `key` bucket's entries).
    pub revisions: u64,
    pub leases: u64,
    /// The source had auth enabled: its users and roles are not carried
    /// over (Cairn has no auth yet), so the restored store has none.
    pub auth_was_enabled: bool,
}

/// Writes the snapshot's state into a new store at `db_path`.
pub fn import(
    snap: &SnapshotFile,
    db_path: &Path,
    opts: ImportOptions,
) -> Result<Imported, SnapshotError> {
    if db_path.exists() {
        return Err(SnapshotError::Store(StoreError::Storage(format!(
            "{} already exists",
            db_path.display()
        ))));
    }
    let mut conn = schema::open_writer(db_path)?;
    let bolt = |e| snap.bolt_error(e);
    let sql = |e: rusqlite::Error| SnapshotError::Store(e.into());
    // A new file nobody else opens, whose atomicity is the caller's (a
    // staging directory renamed into place once complete, after a sync):
    // no journal and no syncs while it fills; WAL mode again at the end.
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(sql)?;

    let finished = snap.compact_mark(layout::FINISHED_COMPACT)?;
    let scheduled = snap.compact_mark(layout::SCHEDULED_COMPACT)?;
    let mut compact = finished.max(scheduled).unwrap_or(-1);
    let compact_done = finished.unwrap_or(-1);

    let key_bucket = snap
        .db
        .bucket(layout::KEY)
        .map_err(bolt)?
        .ok_or_else(|| snap.malformed("backend", "no key bucket"))?;
    // The newest row of each key so far, for the next row's `prev`.
    let mut newest: HashMap<Vec<u8>, i64> = HashMap::new();
    let (mut rows, mut last_rev) = (0u64, 0i64);
    let mut tx = conn.transaction().map_err(sql)?;
    for entry in key_bucket.entries() {
        let entry = entry.map_err(bolt)?;
        let (main, sub, tombstone) = layout::parse_revision_key(&entry.key).ok_or_else(|| {
            snap.malformed("key bucket key", format!("{} bytes", entry.key.len()))
        })?;
        let kv = KeyValue::decode(entry.value.as_slice())
            .map_err(|e| snap.malformed("mvccpb.KeyValue", format!("revision {main}: {e}")))?;
        if main < last_rev {
            return Err(snap.malformed("key bucket", "revisions out of order"));
        }
        last_rev = main;
        if kv.key.is_empty() {
            // Not a key's revision: the marker etcdutl's --bump-revision
            // leaves at the bumped revision. It still counts as the
            // newest revision (above), as it does for etcd.
            continue;
        }
        let prev = newest.get(&kv.key).copied();
        let (create_rev, version, lease) = if tombstone {
            (0, 0, 0)
        } else {
            (kv.create_revision, kv.version, kv.lease)
        };
        tx.prepare_cached(
            "INSERT INTO history (key, rev, sub, create_rev, version, lease, value, tombstone, prev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(sql)?
        .execute(params![
            kv.key,
            main,
            sub,
            create_rev,
            version,
            lease,
            if tombstone { None } else { Some(&kv.value) },
            tombstone,
            prev
        ])
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        newest.insert(kv.key, id);
        rows += 1;
        if rows % BATCH == 0 {
            tx.commit().map_err(sql)?;
            tx = conn.transaction().map_err(sql)?;
        }
    }

    let mut leases = 0u64;
    if let Some(bucket) = snap.db.bucket(layout::LEASE).map_err(bolt)? {
        for entry in bucket.entries() {
            let entry = entry.map_err(bolt)?;
            let lease = Lease::decode(entry.value.as_slice())
                .map_err(|e| snap.malformed("leasepb.Lease", e.to_string()))?;
            tx.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?1, ?2)")
                .map_err(sql)?
                .execute(params![lease.id, lease.ttl])
                .map_err(sql)?;
            leases += 1;
        }
    }

    let auth_was_enabled = snap
        .value(layout::AUTH, layout::AUTH_ENABLED)?
        .is_some_and(|v| v.first() == Some(&1));

    // etcd's rule: the revision is the newest stored one, or the compact
    // revision if compaction removed everything after it.
    let mut current = last_rev.max(compact).max(1);
    if opts.bump_revision > 0 {
        current = current.saturating_add(opts.bump_revision as i64);
    }
    if opts.mark_compacted {
        compact = current;
    }
    for (name, value) in [
        (meta::CURRENT_REV, current),
        (meta::COMPACT_REV, compact),
        (meta::COMPACT_DONE_REV, compact_done),
        (meta::APPLIED_INDEX, 0),
        (meta::APPLIED_TERM, 0),
    ] {
        schema::set_meta(&tx, name, value)?;
    }
    tx.commit().map_err(sql)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(sql)?;
    checkpoint(&conn)?;
    drop(conn);
    schema::sync_to_disk(db_path).map_err(|error| SnapshotError::Io {
        context: format!("sync {}", db_path.display()),
        error,
    })?;
    Ok(Imported {
        revision: current,
        compact_revision: compact,
        revisions: rows,
        leases,
        auth_was_enabled,
    })
}

fn checkpoint(conn: &rusqlite::Connection) -> Result<(), SnapshotError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| SnapshotError::Store(e.into()))
}
