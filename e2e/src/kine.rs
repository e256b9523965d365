//! kine's database as k3s leaves it, for the migration tests: the schema
//! exactly as kine v0.16.4 creates it, and rows written with kine's own SQL
//! (k3s-io/kine v0.16.4: `pkg/drivers/sqlite/sqlite.go` and
//! `pkg/drivers/pgsql/pgsql.go` for the schemas and the compaction,
//! `pkg/drivers/generic/generic.go` for the inserts and fill records,
//! `pkg/logstructured` for what each change writes). Over SQLite (a file in
//! WAL mode, as kine opens it) or PostgreSQL (a database of its own on the
//! test server).
//!
//! The writer keeps every row it wrote, so that a test knows what kine's
//! table said at each revision even after a compaction deleted rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::dump::Kv;

/// kine v0.16.4's SQLite schema (`pkg/drivers/sqlite/sqlite.go`).
pub const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kine
			(
				id INTEGER PRIMARY KEY AUTOINCREMENT,
				name TEXT,
				created INTEGER,
				deleted INTEGER,
				create_revision INTEGER,
				prev_revision INTEGER,
				lease INTEGER,
				value BLOB,
				old_value BLOB
			)",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_id_compact_rev_key_with_prev_revision_index ON kine(id, name, prev_revision) WHERE name != 'compact_rev_key' AND prev_revision != 0",
];

/// kine v0.16.4's PostgreSQL schema (`pkg/drivers/pgsql/pgsql.go`).
pub const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kine
 			(
				id BIGSERIAL PRIMARY KEY,
				name text COLLATE \"C\",
				created INTEGER,
				deleted INTEGER,
				create_revision BIGINT,
				prev_revision BIGINT,
 				lease INTEGER,
 				value bytea,
 				old_value bytea
 			);",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_list_query_index on kine(name, id DESC, deleted)",
];

/// kine's insert (`InsertLastInsertIDSQL` / `InsertSQL`), SQLite's parameters.
const SQLITE_INSERT: &str = "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
    SELECT ?, ?, ?, ?, ?, ?, ?, (SELECT value FROM kine WHERE id = ?) AS old_value";
const POSTGRES_INSERT: &str = "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
    SELECT $1, $2, $3, $4, $5, $6, $7, (SELECT value FROM kine WHERE id = $8) AS old_value RETURNING id";
/// kine's fill record (`FillSQL`, `Fill`).
const SQLITE_FILL: &str = "INSERT INTO kine(id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
    VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)";
const POSTGRES_FILL: &str = "INSERT INTO kine(id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
    VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// kine's compaction (`CompactSQL` of each driver, then `UpdateCompactSQL`).
const SQLITE_COMPACT: &str = "DELETE FROM kine AS kv
    WHERE kv.id IN (
        SELECT kp.prev_revision AS id FROM kine AS kp
        WHERE kp.name != 'compact_rev_key' AND kp.prev_revision != 0 AND kp.id <= ?1
        UNION
        SELECT kd.id AS id FROM kine AS kd WHERE kd.deleted != 0 AND kd.id <= ?1)";
const POSTGRES_COMPACT: &str = "DELETE FROM kine AS kv
    USING (
        SELECT kp.prev_revision AS id FROM kine AS kp
        WHERE kp.name != 'compact_rev_key' AND kp.prev_revision != 0 AND kp.id <= $1
        UNION
        SELECT kd.id AS id FROM kine AS kd WHERE kd.deleted != 0 AND kd.id <= $1
    ) AS ks
    WHERE kv.id = ks.id";
const SQLITE_SET_COMPACT: &str =
    "UPDATE kine SET prev_revision = ?1 WHERE name = 'compact_rev_key'";
const POSTGRES_SET_COMPACT: &str =
    "UPDATE kine SET prev_revision = $1 WHERE name = 'compact_rev_key'";

/// One row as the writer wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenRow {
    pub id: i64,
    pub name: String,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: i64,
    pub prev_revision: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

enum Db {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(tokio_postgres::Client),
}

/// A kine database and everything written to it.
pub struct KineStore {
    db: Db,
    /// What `cairn migrate --from` takes.
    pub url: String,
    log: Mutex<Vec<WrittenRow>>,
    /// The last id [`KineStore::bulk_create`] wrote (its rows are not logged).
    bulk_last: Mutex<i64>,
    /// PostgreSQL: the server's admin URL and this store's database, dropped by
    /// [`KineStore::drop_database`].
    owned_db: Option<(String, String)>,
}

/// The test server's URL (a user that may create databases), from
/// `$CAIRN_TEST_POSTGRES`, which `scripts/test.sh` sets after it installs
/// and starts PostgreSQL.
pub fn test_postgres() -> Result<String> {
    std::env::var("CAIRN_TEST_POSTGRES").context(
        "CAIRN_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which installs and starts PostgreSQL on 127.0.0.1 and sets it",
    )
}

/// The name of a fresh PostgreSQL database for one test.
pub fn fresh_db_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{:x}", n & 0xffff_ffff)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KineStore {
    /// A new kine SQLite file at `path`, opened as kine opens it (WAL,
    /// synchronous NORMAL), with its schema and kine's first row, the
    /// compaction bookkeeping (`compactStart`).
    pub async fn sqlite(path: &Path) -> Result<KineStore> {
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        anyhow::ensure!(mode == "wal", "journal mode {mode}");
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        for stmt in SQLITE_SCHEMA {
            conn.execute_batch(stmt)?;
        }
        let store = KineStore {
            db: Db::Sqlite(Mutex::new(conn)),
            url: format!("sqlite://{}", path.display()),
            log: Mutex::new(Vec::new()),
            bulk_last: Mutex::new(0),
            owned_db: None,
        };
        store
            .insert("compact_rev_key", true, false, 0, 0, 0, Some(b""))
            .await?;
        Ok(store)
    }

    /// A new database `name` on the server at `admin_url` (a URL whose user
    /// may create databases), with kine's schema and first row. `url_query`
    /// is appended to the URL the migrator gets (`sslmode=require`).
    pub async fn postgres(admin_url: &str, name: &str, url_query: &str) -> Result<KineStore> {
        let (admin, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let url = with_database(admin_url, name);
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for stmt in POSTGRES_SCHEMA {
            client.batch_execute(stmt).await?;
        }
        let store = KineStore {
            db: Db::Postgres(client),
            url: if url_query.is_empty() {
                url
            } else {
                format!("{url}?{url_query}")
            },
            log: Mutex::new(Vec::new()),
            bulk_last: Mutex::new(0),
            owned_db: Some((admin_url.to_string(), name.to_string())),
        };
        store
            .insert("compact_rev_key", true, false, 0, 0, 0, Some(b""))
            .await?;
        Ok(store)
    }

    /// Drops a PostgreSQL store's database (a test that passed, a
    /// benchmark that ended); a SQLite file goes with its temp dir.
    pub async fn drop_database(self) -> Result<()> {
        let Some((admin_url, name)) = self.owned_db.clone() else {
            return Ok(());
        };
        drop(self);
        let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// kine's Insert: one row, its id the new revision.
    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        name: &str,
        created: bool,
        deleted: bool,
        create_revision: i64,
        prev_revision: i64,
        lease: i64,
        value: Option<&[u8]>,
    ) -> Result<i64> {
        let id = match &self.db {
            Db::Sqlite(c) => {
                let c = lock(c);
                c.execute(
                    SQLITE_INSERT,
                    rusqlite::params![
                        name,
                        created as i64,
                        deleted as i64,
                        create_revision,
                        prev_revision,
                        lease,
                        value,
                        prev_revision
                    ],
                )?;
                c.last_insert_rowid()
            }
            Db::Postgres(c) => {
                let row = c
                    .query_one(
                        POSTGRES_INSERT,
                        &[
                            &name,
                            &(created as i32),
                            &(deleted as i32),
                            &create_revision,
                            &prev_revision,
                            &(lease as i32),
                            &value,
                            &prev_revision,
                        ],
                    )
                    .await?;
                row.try_get(0)?
            }
        };
        lock(&self.log).push(WrittenRow {
            id,
            name: name.to_string(),
            created,
            deleted,
            create_revision,
            prev_revision,
            lease,
            value: value.unwrap_or_default().to_vec(),
        });
        Ok(id)
    }

    /// The key's latest row the writer wrote.
    fn latest(&self, name: &str) -> Option<WrittenRow> {
        lock(&self.log)
            .iter()
            .rev()
            .find(|r| r.name == name)
            .cloned()
    }

    /// kine's Create: fails if the key exists.
    pub async fn create(&self, key: &str, value: &[u8], ttl: i64) -> Result<i64> {
        let prev = match self.latest(key) {
            Some(r) if !r.deleted => bail!("{key} exists"),
            Some(r) => r.id,
            None => 0,
        };
        self.insert(key, true, false, 0, prev, ttl, Some(value))
            .await
    }

    /// kine's Update of the key's current row.
    pub async fn update(&self, key: &str, value: &[u8], ttl: i64) -> Result<i64> {
        let Some(prev) = self.latest(key).filter(|r| !r.deleted) else {
            bail!("{key} does not exist")
        };
        let create = if prev.created {
            prev.id
        } else {
            prev.create_revision
        };
        self.insert(key, false, false, create, prev.id, ttl, Some(value))
            .await
    }

    /// kine's Delete (also what its TTL loop does when a key expires).
    pub async fn delete(&self, key: &str) -> Result<i64> {
        let Some(prev) = self.latest(key).filter(|r| !r.deleted) else {
            bail!("{key} does not exist")
        };
        self.insert(key, false, true, 0, prev.id, 0, None).await
    }

    /// kine's Update of `key`, in a PostgreSQL transaction left open: its
    /// id is taken, its row not yet visible, as while kine's insert waits
    /// to commit. [`HeldUpdate::commit`] ends it.
    pub async fn hold_update(&self, key: &str, value: &[u8]) -> Result<HeldUpdate> {
        let Some((admin_url, name)) = &self.owned_db else {
            bail!("a held transaction needs a PostgreSQL store");
        };
        let Some(prev) = self.latest(key).filter(|r| !r.deleted) else {
            bail!("{key} does not exist")
        };
        let (client, conn) =
            tokio_postgres::connect(&with_database(admin_url, name), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("BEGIN").await?;
        let create = if prev.created {
            prev.id
        } else {
            prev.create_revision
        };
        let id: i64 = client
            .query_one(
                POSTGRES_INSERT,
                &[
                    &key,
                    &0i32,
                    &0i32,
                    &create,
                    &prev.id,
                    &0i32,
                    &Some(value),
                    &prev.id,
                ],
            )
            .await?
            .try_get(0)?;
        Ok(HeldUpdate {
            client,
            row: WrittenRow {
                id,
                name: key.to_string(),
                created: false,
                deleted: false,
                create_revision: create,
                prev_revision: prev.id,
                lease: 0,
                value: value.to_vec(),
            },
        })
    }

    /// Whether the key exists now.
    pub fn exists(&self, key: &str) -> bool {
        self.latest(key).is_some_and(|r| !r.deleted)
    }

    /// kine's fill record at `id` (an id that no row took).
    pub async fn fill(&self, id: i64) -> Result<()> {
        let name = format!("gap-{id}");
        match &self.db {
            Db::Sqlite(c) => {
                lock(c).execute(
                    SQLITE_FILL,
                    rusqlite::params![id, name, 0, 1, 0, 0, 0, None::<Vec<u8>>, None::<Vec<u8>>],
                )?;
            }
            Db::Postgres(c) => {
                c.execute(
                    POSTGRES_FILL,
                    &[
                        &id,
                        &name,
                        &0i32,
                        &1i32,
                        &0i64,
                        &0i64,
                        &0i32,
                        &None::<Vec<u8>>,
                        &None::<Vec<u8>>,
                    ],
                )
                .await?;
            }
        }
        lock(&self.log).push(WrittenRow {
            id,
            name,
            created: false,
            deleted: true,
            create_revision: 0,
            prev_revision: 0,
            lease: 0,
            value: Vec::new(),
        });
        Ok(())
    }

    /// Takes the next id without a row, as a transaction that rolled back
    /// leaves a hole in a PostgreSQL sequence; on SQLite, moves
    /// AUTOINCREMENT's counter past it. Returns the id.
    pub async fn skip_id(&self) -> Result<i64> {
        match &self.db {
            Db::Sqlite(c) => {
                let c = lock(c);
                let next: i64 = c.query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
                    [],
                    |r| r.get(0),
                )?;
                c.execute(
                    "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'kine'",
                    [next + 1],
                )?;
                Ok(next + 1)
            }
            Db::Postgres(c) => Ok(c
                .query_one("SELECT nextval('kine_id_seq')", &[])
                .await?
                .try_get(0)?),
        }
    }

    /// kine's compaction to `to`, in one transaction as kine runs it.
    pub async fn compact(&self, to: i64) -> Result<u64> {
        let deleted = match &self.db {
            Db::Sqlite(c) => {
                let mut c = lock(c);
                let tx = c.transaction()?;
                let n = tx.execute(SQLITE_COMPACT, [to])?;
                tx.execute(SQLITE_SET_COMPACT, [to])?;
                tx.commit()?;
                n as u64
            }
            Db::Postgres(c) => {
                c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    .await?;
                let n = c.execute(POSTGRES_COMPACT, &[&to]).await?;
                c.execute(POSTGRES_SET_COMPACT, &[&to]).await?;
                c.batch_execute("COMMIT").await?;
                n
            }
        };
        Ok(deleted)
    }

    /// Creates `n` keys `<prefix><i>` of `value_size` bytes fast (kine's
    /// create rows, in large transactions; PostgreSQL through COPY), for
    /// benchmarks. These rows are not kept in the writer's log: a test
    /// reads them back from the table. Returns the last id.
    pub async fn bulk_create(&self, prefix: &str, n: usize, value_size: usize) -> Result<i64> {
        let value = vec![b'v'; value_size];
        let last = match &self.db {
            Db::Sqlite(c) => {
                let mut c = lock(c);
                for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
                    let tx = c.transaction()?;
                    {
                        let mut stmt = tx.prepare(SQLITE_INSERT)?;
                        for i in chunk {
                            stmt.execute(rusqlite::params![
                                format!("{prefix}{i:08}"),
                                1,
                                0,
                                0,
                                0,
                                0,
                                value,
                                0
                            ])?;
                        }
                    }
                    tx.commit()?;
                }
                c.last_insert_rowid()
            }
            Db::Postgres(c) => {
                use tokio_postgres::types::Type;
                let sink = c
                    .copy_in("COPY kine (name, created, deleted, create_revision, prev_revision, lease, value) FROM STDIN BINARY")
                    .await?;
                let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(
                    sink,
                    &[
                        Type::TEXT,
                        Type::INT4,
                        Type::INT4,
                        Type::INT8,
                        Type::INT8,
                        Type::INT4,
                        Type::BYTEA,
                    ],
                );
                let mut writer = std::pin::pin!(writer);
                for i in 0..n {
                    let name = format!("{prefix}{i:08}");
                    writer
                        .as_mut()
                        .write(&[&name, &1i32, &0i32, &0i64, &0i64, &0i32, &value.as_slice()])
                        .await?;
                }
                writer.as_mut().finish().await?;
                c.query_one("SELECT MAX(id) FROM kine", &[])
                    .await?
                    .try_get(0)?
            }
        };
        let mut bulk = lock(&self.bulk_last);
        *bulk = (*bulk).max(last);
        Ok(last)
    }

    /// The newest row's id.
    pub fn current(&self) -> i64 {
        let logged = lock(&self.log).iter().map(|r| r.id).max().unwrap_or(0);
        logged.max(*lock(&self.bulk_last))
    }

    /// Every row written, in id order.
    pub fn rows(&self) -> Vec<WrittenRow> {
        let mut rows = lock(&self.log).clone();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// The SQLite file, if that is the database.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }
}

/// An update whose PostgreSQL transaction is still open.
pub struct HeldUpdate {
    client: tokio_postgres::Client,
    row: WrittenRow,
}

impl HeldUpdate {
    /// The id the row took.
    pub fn id(&self) -> i64 {
        self.row.id
    }

    /// Commits it; the row joins `store`'s log.
    pub async fn commit(self, store: &KineStore) -> Result<()> {
        self.client.batch_execute("COMMIT").await?;
        lock(&store.log).push(self.row);
        Ok(())
    }
}

/// `postgres://u:p@h:port/db?x` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, _query) = url.split_once('?').unwrap_or((url, ""));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    match base[scheme_end..].find('/') {
        Some(i) => format!("{}/{db}", &base[..scheme_end + i]),
        None => format!("{base}/{db}"),
    }
}

/// What the migration must leave at each revision, from every row written.
pub struct Expected {
    rows: Vec<WrittenRow>,
    /// Each key's latest row at or below the import's start revision, where
    /// the key was live there.
    start_rows: HashMap<String, i64>,
}

impl Expected {
    /// `start`: the import's start revision (kine's compact revision then).
    pub fn new(rows: Vec<WrittenRow>, start: i64) -> Expected {
        let mut at_start: HashMap<String, Option<i64>> = HashMap::new();
        for w in rows.iter().filter(|w| w.id <= start) {
            at_start.insert(w.name.clone(), (!w.deleted).then_some(w.id));
        }
        let start_rows = at_start
            .into_iter()
            .filter_map(|(k, v)| v.map(|id| (k, id)))
            .collect();
        Expected { rows, start_rows }
    }

    /// kine's keys at revision `r` with every field as Cairn maps them
    /// (lease = the put's revision when it had a TTL). Versions: exact for
    /// keys created after the start revision; a key live at the start,
    /// whose earlier rows the compaction there removed, counts its row
    /// there as version 1 if it was the creation and 2 otherwise, then one
    /// more per put.
    pub fn at(&self, r: i64) -> Vec<Kv> {
        let mut keys: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
        for row in self.rows.iter().filter(|w| w.id <= r) {
            if row.name == "compact_rev_key" || (row.deleted && row.prev_revision == 0) {
                continue;
            }
            // kine serves kube-apiserver's compaction key under its own
            // name, "<version>|<value>" (kine's pkg/server/compact.go).
            let apiserver = row.name == "compact_rev_key_apiserver";
            let key = if apiserver {
                b"compact_rev_key".to_vec()
            } else {
                row.name.clone().into_bytes()
            };
            if row.deleted {
                keys.remove(&key);
                continue;
            }
            let (version, value) = if apiserver {
                let text = String::from_utf8_lossy(&row.value).into_owned();
                let (v, val) = text.split_once('|').unwrap_or((text.as_str(), "0"));
                (v.parse().unwrap_or(0), val.as_bytes().to_vec())
            } else if row.created {
                (1, row.value.clone())
            } else if self.start_rows.get(&row.name) == Some(&row.id) {
                (2, row.value.clone())
            } else {
                let previous = keys.get(&key).unwrap_or_else(|| {
                    panic!("the writer's log updates {} before creating it", row.name)
                });
                (previous.version + 1, row.value.clone())
            };
            keys.insert(
                key.clone(),
                Kv {
                    key,
                    value,
                    create_revision: if row.created {
                        row.id
                    } else {
                        row.create_revision
                    },
                    mod_revision: row.id,
                    version,
                    lease: if row.lease > 0 { row.id } else { 0 },
                },
            );
        }
        keys.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: i64,
        name: &str,
        created: bool,
        deleted: bool,
        create: i64,
        prev: i64,
    ) -> WrittenRow {
        WrittenRow {
            id,
            name: name.into(),
            created,
            deleted,
            create_revision: create,
            prev_revision: prev,
            lease: 0,
            value: vec![id as u8],
        }
    }

    #[test]
    fn the_expected_state_follows_kines_rows() {
        let rows = vec![
            row(1, "compact_rev_key", true, false, 0, 0),
            row(2, "a", true, false, 0, 0),
            row(3, "a", false, false, 2, 2),
            row(4, "b", true, false, 0, 0),
            row(5, "gap-5", false, true, 0, 0),
            row(6, "b", false, true, 0, 4),
            row(7, "a", false, false, 2, 3),
        ];
        // Started at 1: every version exact.
        let from1 = Expected::new(rows.clone(), 1);
        let at6 = from1.at(6);
        assert_eq!(at6.len(), 1);
        assert_eq!(
            (at6[0].create_revision, at6[0].mod_revision, at6[0].version),
            (2, 3, 2)
        );
        assert_eq!(from1.at(7)[0].version, 3);
        // Started at 3, after a compaction there: a's row 3 counts as 2.
        assert_eq!(Expected::new(rows.clone(), 3).at(7)[0].version, 3);
        // Started at 4: b's creation is its row there.
        let from4 = Expected::new(rows, 4);
        assert_eq!(from4.at(4).len(), 2);
        assert_eq!(from4.at(4)[1].version, 1);
    }

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "k1"),
            "postgres://u:p@h:5432/k1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432", "k1"),
            "postgres://u:p@h:5432/k1"
        );
    }
}
