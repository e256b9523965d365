//! kine over PostgreSQL ("HA" k3s with `--datastore-endpoint=postgres://…`),
//! read through tokio-postgres. Every read is one REPEATABLE READ, READ
//! ONLY transaction: a snapshot, like SQLite's read transactions. Names
//! compare and sort with `COLLATE "C"`, byte by byte as etcd orders keys
//! (kine declares the column so since v0.11; older tables are not).

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel};

use crate::error::{Error, Result};
use crate::kine::db::{check_columns, no_kine_table, BaseEntry, BasePage, Heads, RowsPage};
use crate::kine::row::Row;
use crate::kine::source_url::redact_password;
use crate::kine::tls::split_tls;

const HEADS: &str = "SELECT (SELECT COALESCE(MAX(id), 0)::bigint FROM kine), \
     (SELECT COALESCE(MAX(prev_revision), 0)::bigint FROM kine WHERE name = 'compact_rev_key')";

const COLUMNS: &str =
    "k.id::bigint, convert_to(k.name, 'UTF8'), k.created::bigint, k.deleted::bigint, \
     k.create_revision::bigint, k.prev_revision::bigint, k.lease::bigint, k.value";

/// The latest row id of each name after $1 at revision $2, $3 names at most.
const PAGE_IDS: &str = "SELECT MAX(id)::bigint FROM kine
      WHERE name COLLATE \"C\" > $1::text AND id <= $2::bigint
      GROUP BY name ORDER BY name COLLATE \"C\" LIMIT $3::bigint";

/// Those rows, with the incarnation's remaining rows and whether its create row remains.
fn page_rows_sql() -> String {
    format!(
        "SELECT {COLUMNS},
  (SELECT COUNT(*) FROM kine AS v
     WHERE v.name = k.name
       AND v.id >= (CASE WHEN k.created != 0 THEN k.id ELSE k.create_revision END)
       AND v.id <= k.id)::bigint,
  EXISTS (SELECT 1 FROM kine AS c
     WHERE c.id = (CASE WHEN k.created != 0 THEN k.id ELSE k.create_revision END))
FROM kine AS k WHERE k.id = ANY($1::bigint[])"
    )
}

fn rows_after_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM kine AS k WHERE k.id > $1::bigint ORDER BY k.id LIMIT $2::bigint"
    )
}

const COUNT_AT: &str = "SELECT COUNT(*)::bigint FROM \
     (SELECT MAX(id) AS id FROM kine WHERE id <= $1::bigint GROUP BY name) AS m \
     JOIN kine AS k ON k.id = m.id WHERE k.deleted = 0 AND k.name != 'compact_rev_key'";

/// A kine PostgreSQL database.
pub struct PgKine {
    client: Mutex<Client>,
    /// What a lost connection is made again with.
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Where the database lives, without the URL's spelling: the source's
    /// identity (host, port, database).
    pub identity: String,
    /// The URL without its password.
    pub db: String,
    /// "kine on PostgreSQL 15.x".
    pub version: String,
}

fn read_row(r: &tokio_postgres::Row) -> std::result::Result<Row, tokio_postgres::Error> {
    Ok(Row {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created: r.try_get::<_, Option<i64>>(2)?.unwrap_or(0) != 0,
        deleted: r.try_get::<_, Option<i64>>(3)?.unwrap_or(0) != 0,
        create_revision: r.try_get::<_, Option<i64>>(4)?.unwrap_or(0),
        prev_revision: r.try_get::<_, Option<i64>>(5)?.unwrap_or(0),
        lease: r.try_get::<_, Option<i64>>(6)?.unwrap_or(0),
        value: r.try_get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
    })
}

impl PgKine {
    /// Connects (TLS as the URL asks) and checks kine's table.
    pub async fn connect(url: &str) -> Result<PgKine> {
        let db = redact_password(url);
        let wish = split_tls(url)?;
        let mut config: tokio_postgres::Config = wish
            .url
            .parse()
            .map_err(|e| Error::BadInput(format!("the PostgreSQL URL {db} does not parse: {e}")))?;
        config.ssl_mode(wish.ssl_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let tls = wish.connector()?;
        let client = open(&config, &tls, &db).await?;
        let fail = |e: tokio_postgres::Error| classify(&db, e);
        let tables: Vec<String> = client
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY table_name",
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(fail)?;
        if !tables.iter().any(|t| t == "kine") {
            return Err(no_kine_table(&db, &tables));
        }
        let columns: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'kine' ORDER BY ordinal_position",
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(fail)?;
        check_columns(&db, &columns)?;
        let server: String = client
            .query_one("SHOW server_version", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(fail)?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let identity = format!(
            "postgres://{}:{:?}/{}",
            hosts.join(","),
            config.get_ports(),
            config.get_dbname().unwrap_or_default()
        );
        Ok(PgKine {
            client: Mutex::new(client),
            config,
            tls,
            identity,
            version: format!("kine on PostgreSQL {server}"),
            db,
        })
    }

    /// The client, connected again first if the connection was lost (a
    /// PostgreSQL restart, a network cut): the reads that failed on it are
    /// retried by [`crate::kine::db::KineDb`].
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            tracing::warn!(db = %self.db, "the connection to kine's PostgreSQL was lost; connecting again");
            *client = open(&self.config, &self.tls, &self.db)
                .await
                .map_err(|e| match e {
                    Error::Kine { db, detail } => Error::KineBusy { db, detail },
                    other => other,
                })?;
        }
        Ok(client)
    }

    /// PostgreSQL's transaction horizon now: (xmin, xmax) of a fresh
    /// snapshot. Every transaction that could still commit a row has an
    /// id at or above xmin; once xmin reaches an earlier xmax, every
    /// transaction open at that earlier moment has ended.
    pub async fn horizon(&self) -> Result<(i64, i64)> {
        let client = self.client().await?;
        let r = client
            .query_one(
                "SELECT txid_snapshot_xmin(txid_current_snapshot()), txid_snapshot_xmax(txid_current_snapshot())",
                &[],
            )
            .await
            .map_err(|e| classify(&self.db, e))?;
        Ok((
            r.try_get(0).map_err(|e| classify(&self.db, e))?,
            r.try_get(1).map_err(|e| classify(&self.db, e))?,
        ))
    }

    pub async fn heads(&self) -> Result<Heads> {
        let client = self.client().await?;
        let r = client
            .query_one(HEADS, &[])
            .await
            .map_err(|e| classify(&self.db, e))?;
        heads_of(&r).map_err(|e| classify(&self.db, e))
    }

    pub async fn base_page(&self, at: i64, after: &[u8], limit: i64) -> Result<BasePage> {
        let after = String::from_utf8_lossy(after).into_owned();
        let mut client = self.client().await?;
        let res: std::result::Result<BasePage, tokio_postgres::Error> = async {
            let tx = snapshot(&mut client).await?;
            let heads = heads_of(&tx.query_one(HEADS, &[]).await?)?;
            // The planner estimates that a page needs every name after
            // `after` and hashes or sorts them all (200 ms a page at 100k
            // keys: a quadratic copy); walked in the (name, id) index's
            // order, a page stops after `limit` names (2 ms). Only for
            // this query: the rows' own query wants the defaults. That
            // estimate's cost also makes PostgreSQL JIT-compile the query,
            // 130 ms a page at 1M keys, for a query that runs in 2 ms.
            tx.batch_execute(
                "SET LOCAL jit = off; SET LOCAL enable_hashagg = off; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off",
            )
            .await?;
            let ids: Vec<i64> = tx
                .query(PAGE_IDS, &[&after, &at, &limit])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            // The rows by id through the primary key, even where the
            // statistics are stale (a table just loaded looks small to the
            // planner, which then scans all of it for every page).
            tx.batch_execute("RESET enable_hashagg; RESET enable_sort; SET LOCAL enable_seqscan = off")
                .await?;
            let rows = tx.query(&page_rows_sql(), &[&ids]).await?;
            tx.commit().await?;
            let mut scanned = rows
                .iter()
                .map(|r| {
                    Ok(BaseEntry {
                        row: read_row(r)?,
                        puts: r.try_get(8)?,
                        has_create: r.try_get(9)?,
                    })
                })
                .collect::<std::result::Result<Vec<_>, tokio_postgres::Error>>()?;
            scanned.sort_by(|a, b| a.row.name.cmp(&b.row.name));
            Ok(BasePage::from_scanned(scanned, limit, heads))
        }
        .await;
        res.map_err(|e| classify(&self.db, e))
    }

    pub async fn rows_after(&self, after: i64, limit: i64) -> Result<RowsPage> {
        let mut client = self.client().await?;
        let res: std::result::Result<RowsPage, tokio_postgres::Error> = async {
            let tx = snapshot(&mut client).await?;
            let heads = heads_of(&tx.query_one(HEADS, &[]).await?)?;
            let rows = tx.query(&rows_after_sql(), &[&after, &limit]).await?;
            tx.commit().await?;
            let rows = rows
                .iter()
                .map(read_row)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RowsPage { rows, heads })
        }
        .await;
        res.map_err(|e| classify(&self.db, e))
    }

    pub async fn count_at(&self, at: i64) -> Result<i64> {
        let client = self.client().await?;
        client
            .query_one(COUNT_AT, &[&at])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| classify(&self.db, e))
    }
}

/// Connects, the connection driven by a task of its own.
async fn open(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    db: &str,
) -> Result<Client> {
    let user = config.get_user().unwrap_or("(none)").to_string();
    let (client, connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| connect_error(db, &user, e))?;
    let conn_db = db.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(db = %conn_db, error = %e, "the connection to kine's PostgreSQL ended");
        }
    });
    Ok(client)
}

async fn snapshot(
    client: &mut Client,
) -> std::result::Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

fn heads_of(r: &tokio_postgres::Row) -> std::result::Result<Heads, tokio_postgres::Error> {
    Ok(Heads {
        current: r.try_get(0)?,
        compact: r.try_get(1)?,
    })
}

/// A lost connection or a serialization conflict is worth a retry; the rest is not.
fn classify(db: &str, e: tokio_postgres::Error) -> Error {
    let passing = e.is_closed()
        || matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        );
    let detail = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => crate::error::chain(&e),
    };
    if passing {
        Error::KineBusy {
            db: db.to_string(),
            detail,
        }
    } else {
        Error::Kine {
            db: db.to_string(),
            detail: format!("a read failed: {detail}"),
        }
    }
}

fn connect_error(db: &str, user: &str, e: tokio_postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(d)
            if *d.code() == SqlState::INVALID_PASSWORD
                || *d.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            format!("PostgreSQL refused user {user}: {}", d.message())
        }
        Some(d) if *d.code() == SqlState::INVALID_CATALOG_NAME => {
            format!("no such database: {}", d.message())
        }
        Some(d) => format!("cannot connect: {}: {}", d.code().code(), d.message()),
        None => format!("cannot connect: {}", crate::error::chain(&e)),
    };
    Error::Kine {
        db: db.to_string(),
        detail,
    }
}
