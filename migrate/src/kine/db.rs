//! Reading kine's table, over SQLite or PostgreSQL: each read one snapshot
//! (one read transaction) that also names the table's current and compact
//! revisions, so that a page can never be mixed with a compaction.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::kine::postgres::PgKine;
use crate::kine::row::Row;
use crate::kine::source_url::KineUrl;
use crate::kine::sqlite::SqliteKine;

/// The table's revisions in one snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    /// The newest row's id (0 for an empty table).
    pub current: i64,
    /// kine's compact revision (`compact_rev_key.prev_revision`; 0: never compacted).
    pub compact: i64,
}

/// A key as the table holds it at a revision, with what its version is counted from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseEntry {
    /// The key's latest row at or below the revision.
    pub row: Row,
    /// The incarnation's rows that remain up to that row.
    pub puts: i64,
    /// Whether the incarnation's create row remains.
    pub has_create: bool,
}

/// One page of the key space at a revision, in key order.
#[derive(Clone, Debug, Default)]
pub struct BasePage {
    /// The live keys of the page (deleted keys, fill records and kine's
    /// bookkeeping left out).
    pub entries: Vec<BaseEntry>,
    /// The last name the page scanned (live or not): the next page starts after it.
    pub scanned_to: Option<Vec<u8>>,
    /// Whether names remain after `scanned_to`.
    pub more: bool,
    pub heads: Heads,
}

impl BasePage {
    /// A page from the names a read of at most `limit` names scanned, in
    /// name order: its live keys, where the next page starts, whether it may.
    pub fn from_scanned(scanned: Vec<BaseEntry>, limit: i64, heads: Heads) -> BasePage {
        let more = scanned.len() as i64 >= limit;
        let scanned_to = scanned.last().map(|e| e.row.name.clone());
        BasePage {
            entries: live_entries(scanned),
            scanned_to,
            more,
            heads,
        }
    }
}

/// Rows after an id, in id order, with the snapshot's heads.
#[derive(Clone, Debug, Default)]
pub struct RowsPage {
    pub rows: Vec<Row>,
    pub heads: Heads,
}

/// Attempts of a read that failed for a passing reason.
const RETRIES: u32 = 8;

/// A kine database, read-only.
pub enum KineDb {
    Sqlite(SqliteKine),
    Postgres(Box<PgKine>),
}

impl KineDb {
    /// Opens the database and checks that it holds kine's table as this
    /// migrator knows it.
    pub async fn open(url: &KineUrl) -> Result<KineDb> {
        match url {
            KineUrl::Sqlite { path } => Ok(KineDb::Sqlite(SqliteKine::open(path).await?)),
            KineUrl::Postgres { url } => {
                Ok(KineDb::Postgres(Box::new(PgKine::connect(url).await?)))
            }
        }
    }

    /// The database as errors and logs name it.
    pub fn name(&self) -> &str {
        match self {
            KineDb::Sqlite(d) => &d.db,
            KineDb::Postgres(d) => &d.db,
        }
    }

    /// What `cairn migrate status` shows as the source's version.
    pub fn version(&self) -> &str {
        match self {
            KineDb::Sqlite(d) => &d.version,
            KineDb::Postgres(d) => &d.version,
        }
    }

    /// A stable number for this database, in place of etcd's cluster ID:
    /// the target refuses to resume an import from another source. From
    /// where the database lives (the file's canonical path; host, port and
    /// database), not from how `--from` spells it.
    pub fn source_id(&self) -> u64 {
        let identity = match self {
            KineDb::Sqlite(d) => &d.identity,
            KineDb::Postgres(d) => &d.identity,
        };
        fnv1a(identity.as_bytes())
    }

    /// A mark of the transactions open now (PostgreSQL: its snapshot's
    /// xmax; SQLite has none: a reader's snapshot never misses a row that
    /// commits later with a lower id, as one writer at a time takes ids in
    /// order and a rolled-back one returns its id).
    pub async fn open_transactions(&self) -> Result<Option<i64>> {
        match self {
            KineDb::Sqlite(_) => Ok(None),
            KineDb::Postgres(d) => {
                let (_, xmax) = self
                    .retry("reading PostgreSQL's transaction horizon", || d.horizon())
                    .await?;
                Ok(Some(xmax))
            }
        }
    }

    /// Whether every transaction open at `mark` has ended (committed its
    /// rows, or rolled back and left its ids empty for good).
    pub async fn ended(&self, mark: Option<i64>) -> Result<bool> {
        match (self, mark) {
            (KineDb::Postgres(d), Some(xmax)) => {
                let (xmin, _) = self
                    .retry("reading PostgreSQL's transaction horizon", || d.horizon())
                    .await?;
                Ok(xmin >= xmax)
            }
            _ => Ok(true),
        }
    }

    /// Waits until every transaction open now has ended, so that no row at
    /// or below the current revision can still appear.
    pub async fn settle(&self, within: Duration) -> Result<()> {
        let mark = self.open_transactions().await?;
        let deadline = std::time::Instant::now() + within;
        for _ in 0..u32::MAX {
            if self.ended(mark).await? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Timeout(format!(
            "a transaction open on {} stayed open {within:?}: kine's rows below its newest may still change",
            self.name()
        )))
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=RETRIES {
            match call().await {
                Err(e @ Error::KineBusy { .. }) if attempt < RETRIES => {
                    tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                other => return other,
            }
        }
        Err(Error::Timeout(format!(
            "{what} in {} kept failing",
            self.name()
        )))
    }

    /// The current and compact revisions.
    pub async fn heads(&self) -> Result<Heads> {
        self.retry("reading kine's revisions", || async {
            match self {
                KineDb::Sqlite(d) => d.heads().await,
                KineDb::Postgres(d) => d.heads().await,
            }
        })
        .await
    }

    /// Up to `limit` names after `after` at revision `at`.
    pub async fn base_page(&self, at: i64, after: &[u8], limit: i64) -> Result<BasePage> {
        self.retry("reading a page of kine's keys", || async {
            match self {
                KineDb::Sqlite(d) => d.base_page(at, after, limit).await,
                KineDb::Postgres(d) => d.base_page(at, after, limit).await,
            }
        })
        .await
    }

    /// Up to `limit` rows with an id above `after`.
    pub async fn rows_after(&self, after: i64, limit: i64) -> Result<RowsPage> {
        self.retry("reading kine's newest rows", || async {
            match self {
                KineDb::Sqlite(d) => d.rows_after(after, limit).await,
                KineDb::Postgres(d) => d.rows_after(after, limit).await,
            }
        })
        .await
    }

    /// The number of live keys at revision `at`.
    pub async fn count_at(&self, at: i64) -> Result<i64> {
        self.retry("counting kine's keys", || async {
            match self {
                KineDb::Sqlite(d) => d.count_at(at).await,
                KineDb::Postgres(d) => d.count_at(at).await,
            }
        })
        .await
    }
}

/// Keeps the live keys of a scanned page: deleted keys and kine's
/// bookkeeping are not keys at that revision.
pub fn live_entries(scanned: Vec<BaseEntry>) -> Vec<BaseEntry> {
    scanned
        .into_iter()
        .filter(|e| e.row.change() == crate::kine::row::Change::Put)
        .collect()
}

/// The columns kine v0.16.4 creates (`pkg/drivers/sqlite/sqlite.go`,
/// `pkg/drivers/pgsql/pgsql.go`); every kine since v0.4 has had these.
pub const KINE_COLUMNS: [&str; 9] = [
    "id",
    "name",
    "created",
    "deleted",
    "create_revision",
    "prev_revision",
    "lease",
    "value",
    "old_value",
];

/// Checks a `kine` table's columns; the error names what differs.
pub fn check_columns(db: &str, columns: &[String]) -> Result<()> {
    let missing: Vec<&str> = KINE_COLUMNS
        .iter()
        .copied()
        .filter(|c| !columns.iter().any(|have| have == c))
        .collect();
    let extra: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| !KINE_COLUMNS.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Kine {
            db: db.to_string(),
            detail: format!(
                "table kine lacks column(s) {}: not a kine schema this migrator knows (it reads the schema of kine v0.4 through v0.16.4)",
                missing.join(", ")
            ),
        });
    }
    if !extra.is_empty() {
        return Err(Error::Kine {
            db: db.to_string(),
            detail: format!(
                "table kine has column(s) {} that kine v0.16.4 does not write: a newer kine schema this migrator does not know",
                extra.join(", ")
            ),
        });
    }
    Ok(())
}

/// The message for a database without table `kine`, given its tables.
pub fn no_kine_table(db: &str, tables: &[String]) -> Error {
    let detail = if tables.iter().any(|t| t == "key_value") {
        "holds kine's old table key_value (k3s 1.0 and older), not table kine: start k3s once with a current release, which moves it into table kine".to_string()
    } else if tables.is_empty() {
        "has no tables: it is not kine's database".to_string()
    } else {
        format!(
            "has no table kine: it is not kine's database (its tables: {})",
            tables.join(", ")
        )
    };
    Error::Kine {
        db: db.to_string(),
        detail,
    }
}

/// FNV-1a, 64 bits: a stable source ID from the database's name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kine_columns_pass_and_others_are_named() {
        assert!(check_columns("db", &cols(&KINE_COLUMNS)).is_ok());
        let e = check_columns("db", &cols(&["id", "name", "value"])).unwrap_err();
        assert!(
            e.to_string().contains("lacks column(s) created, deleted"),
            "{e}"
        );
        let mut more = cols(&KINE_COLUMNS);
        more.push("tenant".into());
        let e = check_columns("db", &more).unwrap_err();
        assert!(e.to_string().contains("column(s) tenant"), "{e}");
    }

    #[test]
    fn a_database_without_kine_says_what_it_holds() {
        let e = no_kine_table("x.db", &cols(&["key_value"]));
        assert!(e.to_string().contains("old table key_value"), "{e}");
        let e = no_kine_table("x.db", &cols(&["users", "orders"]));
        assert_eq!(
            e.to_string(),
            "kine database x.db: has no table kine: it is not kine's database (its tables: users, orders)"
        );
    }

    #[test]
    fn source_ids_are_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
