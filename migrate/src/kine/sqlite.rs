//! kine over SQLite (k3s's default, `/var/lib/rancher/k3s/server/db/state.db`),
//! read-only through rusqlite while k3s keeps writing: kine runs SQLite in
//! WAL mode, where a reader's transaction is a snapshot that never blocks
//! the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::kine::db::{check_columns, no_kine_table, BaseEntry, BasePage, Heads, RowsPage};
use crate::kine::row::Row;

/// How long a read waits on a lock before it fails (kine's own busy timeout is 30s).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const HEADS: &str = "SELECT (SELECT COALESCE(MAX(id), 0) FROM kine), \
     (SELECT COALESCE(MAX(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key')";

/// The latest row of each name after ?1 at revision ?2, ?3 names at most,
/// with the incarnation's remaining rows and whether its create row remains.
const BASE_PAGE: &str = "
SELECT k.id, k.name, k.created, k.deleted, k.create_revision, k.prev_revision, k.lease, k.value,
  (SELECT COUNT(*) FROM kine AS v
     WHERE v.name = k.name
       AND v.id >= (CASE WHEN k.created != 0 THEN k.id ELSE k.create_revision END)
       AND v.id <= k.id),
  EXISTS (SELECT 1 FROM kine AS c
     WHERE c.id = (CASE WHEN k.created != 0 THEN k.id ELSE k.create_revision END))
FROM (SELECT MAX(id) AS id FROM kine WHERE name > ?1 AND id <= ?2
      GROUP BY name ORDER BY name LIMIT ?3) AS m
JOIN kine AS k ON k.id = m.id
ORDER BY k.name";

const ROWS_AFTER: &str =
    "SELECT id, name, created, deleted, create_revision, prev_revision, lease, value \
     FROM kine WHERE id > ?1 ORDER BY id LIMIT ?2";

const COUNT_AT: &str = "SELECT COUNT(*) FROM \
     (SELECT MAX(id) AS id FROM kine WHERE id <= ?1 GROUP BY name) AS m \
     JOIN kine AS k ON k.id = m.id WHERE k.deleted = 0 AND k.name != 'compact_rev_key'";

/// A kine SQLite file, open read-only.
pub struct SqliteKine {
    conn: Arc<Mutex<Connection>>,
    /// `sqlite://<path>`.
    pub db: String,
    /// The file's canonical path: the source's identity, whichever way
    /// `--from` spelled it.
    pub identity: String,
    /// "kine on SQLite" (the file does not say which SQLite kine links).
    pub version: String,
}

/// A key or value column: TEXT or BLOB as its bytes, NULL as empty.
fn bytes(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    }
}

fn int(v: ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Integer(i) => i,
        _ => 0,
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        name: bytes(r.get_ref(1)?),
        created: int(r.get_ref(2)?) != 0,
        deleted: int(r.get_ref(3)?) != 0,
        create_revision: int(r.get_ref(4)?),
        prev_revision: int(r.get_ref(5)?),
        lease: int(r.get_ref(6)?),
        value: bytes(r.get_ref(7)?),
    })
}

/// A name bound as TEXT, so that it compares with the stored TEXT names
/// byte by byte (SQLite's BINARY collation, etcd's key order).
struct Text<'a>(&'a [u8]);

impl rusqlite::ToSql for Text<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

impl SqliteKine {
    /// Opens `path` read-only and checks kine's table.
    pub async fn open(path: &Path) -> Result<SqliteKine> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|e| Error::Inconsistent(format!("the SQLite reader task failed: {e}")))?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().map_err(|_| {
                Error::Inconsistent("the SQLite connection's lock is poisoned".into())
            })?;
            f(&guard).map_err(|e| classify(&db, e))
        })
        .await
        .map_err(|e| Error::Inconsistent(format!("the SQLite reader task failed: {e}")))?
    }

    pub async fn heads(&self) -> Result<Heads> {
        self.with(heads).await
    }

    pub async fn base_page(&self, at: i64, after: &[u8], limit: i64) -> Result<BasePage> {
        let after = after.to_vec();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let heads = heads(&tx)?;
            let mut stmt = tx.prepare_cached(BASE_PAGE)?;
            let scanned = stmt
                .query_map(rusqlite::params![Text(&after), at, limit], |r| {
                    Ok(BaseEntry {
                        row: read_row(r)?,
                        puts: r.get(8)?,
                        has_create: r.get::<_, i64>(9)? != 0,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(BasePage::from_scanned(scanned, limit, heads))
        })
        .await
    }

    pub async fn rows_after(&self, after: i64, limit: i64) -> Result<RowsPage> {
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let heads = heads(&tx)?;
            let mut stmt = tx.prepare_cached(ROWS_AFTER)?;
            let rows = stmt
                .query_map(rusqlite::params![after, limit], read_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(RowsPage { rows, heads })
        })
        .await
    }

    pub async fn count_at(&self, at: i64) -> Result<i64> {
        self.with(move |c| c.query_row(COUNT_AT, [at], |r| r.get(0)))
            .await
    }
}

fn heads(c: &Connection) -> rusqlite::Result<Heads> {
    c.query_row(HEADS, [], |r| {
        Ok(Heads {
            current: r.get(0)?,
            compact: r.get(1)?,
        })
    })
}

/// A lock held past the busy timeout is worth a retry; anything else is
/// the file's fault.
fn classify(db: &str, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::KineBusy {
            db: db.to_string(),
            detail: format!(
                "the file stayed locked for {}s (another process holds an exclusive lock): {e}",
                BUSY_TIMEOUT.as_secs()
            ),
        },
        Some(ErrorCode::NotADatabase) => Error::Kine {
            db: db.to_string(),
            detail: format!("is not an SQLite database: {e}"),
        },
        _ => Error::Kine {
            db: db.to_string(),
            detail: format!("a read failed: {e}"),
        },
    }
}

fn open_blocking(path: &PathBuf) -> Result<SqliteKine> {
    let db = format!("sqlite://{}", path.display());
    let fail = |detail: String| Error::Kine {
        db: db.clone(),
        detail,
    };
    match std::fs::metadata(path) {
        Err(e) => return Err(fail(format!("cannot read the file: {e}"))),
        Ok(m) if m.is_dir() => {
            return Err(fail(
                "is a directory; give kine's file (k3s: /var/lib/rancher/k3s/server/db/state.db)"
                    .into(),
            ))
        }
        Ok(_) => {}
    }
    // Read-only: the migrator never writes to k3s's file. A WAL file's
    // readers still need its -shm index, which k3s keeps beside it.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open it read-only: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail(format!("cannot set a busy timeout: {e}")))?;
    let first = |e: rusqlite::Error| match classify(&db, e) {
        // At the start a lock is no passing matter to retry around: say so.
        Error::KineBusy { db, detail } => Error::Kine { db, detail },
        other => other,
    };
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(first)?;
    let tables: Vec<String> = tables
        .into_iter()
        .filter(|t| !t.starts_with("sqlite_"))
        .collect();
    if !tables.iter().any(|t| t == "kine") {
        return Err(no_kine_table(&db, &tables));
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('kine') ORDER BY cid")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(first)?;
    check_columns(&db, &columns)?;
    let journal: Option<String> = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .optional()
        .map_err(first)?;
    if journal.as_deref() != Some("wal") {
        tracing::warn!(
            journal_mode = journal.as_deref().unwrap_or("unknown"),
            "kine's SQLite file is not in WAL mode (kine sets WAL): reads may wait on k3s's writes"
        );
    }
    let version = "kine on SQLite".to_string();
    let identity = std::fs::canonicalize(path)
        .map(|p| format!("sqlite://{}", p.display()))
        .unwrap_or_else(|_| db.clone());
    Ok(SqliteKine {
        conn: Arc::new(Mutex::new(conn)),
        db,
        identity,
        version,
    })
}
