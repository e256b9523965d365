//! The on-disk layout of the MVCC store and the connection settings it relies on.
//!
//! `history` holds every revision of every key, tombstones included, until
//! compaction removes it. Rows are only appended (the row id grows in apply
//! order), and each links to the previous row of its key (`prev`, a watch
//! event's prev_kv). Which row holds a key as of a revision is looked up in
//! memory (`KeyIndex`, built from this table at open), as etcd does, so a
//! write touches only pages at the end of the table.
//!
//! Because rows are appended in apply order, and revisions only grow, row ids
//! order the rows by revision too: a read of the changes since a revision
//! finds its first row by bisecting the row ids (`history::events_between`).
//! Version 3 stores written before this kept an index on `rev`
//! (`history_rev`) for that. It cost every commit one more 4 KiB page in the
//! WAL, which showed in the put tail. It is dropped at open.
//! The layout is otherwise unchanged, so the version stays 3: a binary from
//! before reads a store without the index (and creates it again at its next
//! open), and this one reads a store with it.
//!
//! The `migration` table (one row, live migration from etcd: see
//! `mvcc::migration`) came later, also without a new version: it is created
//! at open if missing, and a binary from before never reads it. Rows a
//! migration copied have ids `mod_revision << 24 | n` rather than the next
//! id, which keeps ids in revision order; a binary from before reads them
//! alike.
//!
//! Version 1 also indexed history by `(key, rev)`, and versions 1 and 2 kept
//! a `live` table (key -> newest row): each cost every write a B-tree leaf
//! rewritten at a random place, which the checkpoints then wrote back and the
//! Raft log's fdatasync queued behind.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Result, StoreError};

/// Bumped whenever the layout changes; a data dir written by a newer layout is refused.
pub const SCHEMA_VERSION: i64 = 3;

/// The oldest schema this build opens (and upgrades in place, `migrate`).
pub const OLDEST_SCHEMA_VERSION: i64 = 1;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS history (
    id         INTEGER PRIMARY KEY,
    key        BLOB    NOT NULL,
    rev        INTEGER NOT NULL,
    sub        INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL,
    value      BLOB,
    tombstone  INTEGER NOT NULL,
    prev       INTEGER
);
CREATE INDEX IF NOT EXISTS history_lease ON history (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id  INTEGER PRIMARY KEY,
    ttl INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_state (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS migration (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    phase               INTEGER NOT NULL,
    source_cluster_id   INTEGER NOT NULL,
    source_version      TEXT    NOT NULL,
    start_revision      INTEGER NOT NULL,
    compact_revision    INTEGER NOT NULL,
    keys_copied         INTEGER NOT NULL,
    bytes_copied        INTEGER NOT NULL,
    copy_resume_after   BLOB    NOT NULL,
    source_revision     INTEGER NOT NULL,
    source_seen_unix_ms INTEGER NOT NULL,
    phase_since_unix_ms INTEGER NOT NULL,
    history_none        INTEGER NOT NULL,
    shared_revision_keys INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS alarms (
    member_id INTEGER NOT NULL,
    alarm     INTEGER NOT NULL,
    PRIMARY KEY (member_id, alarm)
) WITHOUT ROWID;
";

/// Names of the integer values kept in `meta`.
pub mod meta {
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// The newest revision; 1 in an empty store, as in etcd.
    pub const CURRENT_REV: &str = "current_rev";
    /// Reads below this revision fail; -1 until the first compaction, as in etcd.
    pub const COMPACT_REV: &str = "compact_rev";
    /// Physical compaction has removed everything it must up to this revision.
    pub const COMPACT_DONE_REV: &str = "compact_done_rev";
    /// Index of the last applied log entry.
    pub const APPLIED_INDEX: &str = "applied_index";
    /// Term of the last applied log entry.
    pub const APPLIED_TERM: &str = "applied_term";
}

/// SQLite's WAL file beside the database at `path`.
pub fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Forces everything committed to the store at `path` onto disk: its WAL,
/// then its main file (a checkpoint may be copying frames into it).
pub fn sync_to_disk(path: &Path) -> std::io::Result<()> {
    for file in [wal_path(path), path.to_path_buf()] {
        match std::fs::File::open(&file) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How much of the file every connection maps (SQLite caps it at 2 GiB).
const MMAP_SIZE: i64 = 1 << 30;

/// Opens the database for the single writer, creating and initialising it if new.
pub fn open_writer(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    // A WAL that grew (a long reader held its frames) is cut back to this
    // when it next starts over.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    // The version first: a store a newer release wrote is refused before
    // this one's DDL touches it.
    let has_meta: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    let version: Option<i64> = if has_meta {
        conn.query_row(
            "SELECT value FROM meta WHERE name = ?1",
            [meta::SCHEMA_VERSION],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    if let Some(v) = version.filter(|v| *v > SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema {
            found: v,
            release: env!("CARGO_PKG_VERSION"),
            oldest: OLDEST_SCHEMA_VERSION,
            newest: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(DDL)?;
    match version {
        None => {
            let tx = conn.unchecked_transaction()?;
            for (name, value) in [
                (meta::SCHEMA_VERSION, SCHEMA_VERSION),
                (meta::CURRENT_REV, 1),
                (meta::COMPACT_REV, -1),
                (meta::COMPACT_DONE_REV, -1),
                (meta::APPLIED_INDEX, 0),
                (meta::APPLIED_TERM, 0),
            ] {
                set_meta(&tx, name, value)?;
            }
            tx.commit()?;
        }
        Some(v) if v < SCHEMA_VERSION => migrate(&mut conn)?,
        Some(_) => {}
    }
    // A no-op once gone; it writes only on the first open after an upgrade
    // (or after a binary from before opened the store again).
    conn.execute_batch("DROP INDEX IF EXISTS history_rev;")?;
    Ok(conn)
}

/// Rewrites an older store in place, in one transaction. From version 1:
/// links every row to its key's previous row and drops the `(key, rev)`
/// index; from 1 and 2: drops `live`. Stores received as snapshots from an
/// older leader come through here too.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another connection may have migrated it while this one waited.
    let from = get_meta(&tx, meta::SCHEMA_VERSION)?;
    if from >= SCHEMA_VERSION {
        return Ok(());
    }
    tracing::info!("upgrading the store from schema version {from} to {SCHEMA_VERSION}");
    if from == 1 {
        tx.execute_batch(
            "ALTER TABLE history ADD COLUMN prev INTEGER;
             UPDATE history SET prev = (
                 SELECT p.id FROM history p
                 WHERE p.key = history.key AND p.rev <= history.rev AND p.id < history.id
                 ORDER BY p.rev DESC, p.id DESC LIMIT 1);
             DROP INDEX IF EXISTS history_key_rev;",
        )?;
    }
    tx.execute_batch("DROP TABLE IF EXISTS live;")?;
    set_meta(&tx, meta::SCHEMA_VERSION, SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Turns a current store into version 1's layout, for the upgrade tests.
#[doc(hidden)]
pub const DOWNGRADE_TO_V1_FOR_TESTS: &str = "
    CREATE INDEX history_key_rev ON history (key, rev);
    CREATE TABLE live (key BLOB PRIMARY KEY, hid INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO live (key, hid)
        SELECT h.key, h.id FROM history h
        WHERE h.tombstone = 0 AND h.id = (SELECT max(h2.id) FROM history h2 WHERE h2.key = h.key);
    ALTER TABLE history DROP COLUMN prev;
    UPDATE meta SET value = 1 WHERE name = 'schema_version';";

/// Opens a connection that only reads; WAL mode lets it run beside the writer.
pub fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: commits reach the OS but are not fsynced one by one. The Raft
    // log (raft-log/, fdatasync per group) is what makes a write durable before it
    // is acknowledged; after a power loss the store may restart at an older
    // applied index, still consistent (the WAL is atomic), and replication
    // re-applies the log from there. The log is only purged behind a state
    // that `sync_to_disk` has made durable (the log store syncs before it purges).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread so that no commit pays for one.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Clean pages are read through mmap, so the private page cache mostly
    // holds dirty ones and stays small. A large one costs at every commit:
    // SQLite parks a page at the locking page's number while it rebalances a
    // B-tree, and the commit then scans the whole cache to drop pages past
    // the end of the file.
    conn.pragma_update(None, "cache_size", -8192)?;
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // rusqlite keeps 16 prepared statements by default; the store uses more,
    // and re-preparing on every eviction costs more than the query.
    conn.set_prepared_statement_cache_capacity(128);
    // The bundled SQLite has STAT4, which recompiles a statement whenever a
    // rebound parameter might change its plan: on every request here. Our
    // plans never depend on the values, so pin them.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

pub fn get_meta(conn: &Connection, name: &str) -> Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("meta value {name} is missing")))
}

pub fn set_meta(conn: &Connection, name: &str, value: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
        .execute(rusqlite::params![name, value])?;
    Ok(())
}

/// Bytes the database file occupies, and bytes in pages that hold data.
pub fn db_size(conn: &Connection) -> Result<(i64, i64)> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok((pages * page_size, (pages - free) * page_size))
}
