//! Migration from kine (k3s's datastore) into a real Cairn, from a real
//! SQLite file and a real PostgreSQL server, while a writer keeps writing
//! rows the way kine writes them: creates, updates, deletes, TTLs, fill
//! records, a hole in the ids, compactions. The migrator runs as the
//! `cairn` binary and is killed -9 during the copy and during following.
//! After the cutover, Cairn must answer at every revision what kine's table
//! said there, through etcd's API. Each case runs against both databases.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_e2e::compare::kvs_at;
use cairn_e2e::kine::{fresh_db_name, test_postgres, Expected, KineStore};
use cairn_e2e::migrator::{self, Migrator};
use cairn_e2e::wait::{wait_until, Poll};
use cairn_e2e::Member;
use cairn_migrate::target::Target;
use cairn_proto::migrate::{MigrationState, Phase};
use common::{cfg, start_target, wait_state};
use etcd_client::{Client, GetOptions};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Where kine keeps its table in a case.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A kine database of `backend`, and the temp dir a SQLite file lives in.
async fn kine_store(backend: Backend) -> Result<(KineStore, tempfile::TempDir)> {
    let dir = tempfile::Builder::new().prefix("cairn-kine-").tempdir()?;
    let store = match backend {
        Backend::Sqlite => KineStore::sqlite(&dir.path().join("state.db")).await?,
        // TLS as an HA k3s asks for it; Debian's server has ssl on.
        Backend::Postgres => {
            KineStore::postgres(&test_postgres()?, &fresh_db_name("kine"), "sslmode=require")
                .await?
        }
    };
    Ok((store, dir))
}

/// Runs a case against each backend, each in its own test.
macro_rules! both_backends {
    ($case:ident) => {
        mod $case {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() -> Result<()> {
                tokio::time::timeout(TEST_TIMEOUT, super::$case(Backend::Sqlite)).await?
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> Result<()> {
                tokio::time::timeout(TEST_TIMEOUT, super::$case(Backend::Postgres)).await?
            }
        }
    };
}

fn value(i: u64) -> Vec<u8> {
    format!("{{\"kind\":\"Pod\",\"generation\":{i}}}").into_bytes()
}

/// State at the start: creates, updates, deletes, TTL keys, and a
/// compaction that removes rows (so the copy starts at kine's compact
/// revision, with versions counted from what remains).
async fn seed(k: &KineStore, keys: u64) -> Result<()> {
    for i in 0..keys {
        k.create(&format!("/registry/pods/ns/p{i:05}"), &value(i), 0)
            .await?;
    }
    for i in (0..keys).step_by(3) {
        k.update(&format!("/registry/pods/ns/p{i:05}"), &value(i + 1), 0)
            .await?;
        if i % 2 == 0 {
            // Twice before the compaction: the version the copy counts is a
            // lower bound (2) of the true one (3).
            k.update(&format!("/registry/pods/ns/p{i:05}"), &value(i + 7), 0)
                .await?;
        }
    }
    // kube-apiserver's compaction key, as kine stores it.
    k.create("compact_rev_key_apiserver", b"1|1", 0).await?;
    for i in (0..keys).step_by(10) {
        k.delete(&format!("/registry/pods/ns/p{i:05}")).await?;
    }
    for i in 0..20 {
        // Events: kube-apiserver gives them an hour.
        k.create(&format!("/registry/events/ns/e{i}"), b"event", 3600)
            .await?;
    }
    let c = k.current();
    k.compact(c - 5).await?;
    for i in (1..keys.min(40)).filter(|i| i % 10 != 0) {
        k.update(&format!("/registry/pods/ns/p{i:05}"), &value(i + 2), 0)
            .await?;
    }
    Ok(())
}

/// Keeps writing as kube-apiserver writes through kine, until `stop`.
async fn writer(k: Arc<KineStore>, stop: tokio::sync::watch::Receiver<bool>) -> Result<u64> {
    let mut n = 0;
    for i in 0..20_000u64 {
        if *stop.borrow() {
            break;
        }
        let key = format!("/registry/pods/ns/p{:05}", 1000 + i % 50);
        if k.exists(&key) {
            if i % 4 == 0 {
                k.delete(&key).await?;
            } else {
                k.update(&key, &value(i), 0).await?;
            }
        } else {
            k.create(&key, &value(i), 0).await?;
        }
        if i % 300 == 150 {
            // kube-apiserver's compaction Txn, as kine writes it.
            let version = 2 + i / 300;
            let rev = k.current();
            k.update(
                "compact_rev_key_apiserver",
                format!("{version}|{rev}").as_bytes(),
                0,
            )
            .await?;
        }
        if i % 25 == 0 {
            // A lease kine's TTL loop ends with a delete.
            let lease_key = format!("/registry/leases/kube-node-lease/n{i}");
            k.create(&lease_key, b"held", 40).await?;
            k.delete(&lease_key).await?;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(n)
}

/// Waits (a minute at most) until the target's migration state satisfies
/// `pred`; the migrator's log tail on failure.
async fn wait_target(
    tgt: &Target,
    m: &Migrator,
    what: &str,
    pred: impl Fn(&MigrationState) -> bool,
) -> Result<MigrationState> {
    wait_state(
        tgt,
        None::<&mut tokio::task::JoinHandle<()>>,
        what,
        Duration::from_secs(60),
        pred,
    )
    .await
    .with_context(|| context(m))
}

/// `cairn migrate cutover --from <from> --to <to> <extra...>`.
async fn cutover(from: &str, to: &str, extra: &[&str]) -> Result<migrator::RunOutput> {
    let mut args = vec![
        "cutover".to_string(),
        format!("--from={from}"),
        format!("--to={to}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    migrator::run(&args, Duration::from_secs(60)).await
}

async fn target_state(tgt: &Target) -> Result<MigrationState> {
    Ok(tgt.state().await?)
}

/// The migrator's log and the target's state, for failure messages.
fn context(m: &Migrator) -> String {
    let log = m.log();
    log[log.floor_char_boundary(log.len().saturating_sub(3000))..].to_string()
}

async fn live_migration_keeps_every_revision(backend: Backend) -> Result<()> {
    common::init_tracing();
    let cairn = start_target().await?;
    let (tgt, _) = Target::connect(&cfg(&cairn.endpoint())).await?;
    let (store, _dir) = kine_store(backend).await?;
    let store = Arc::new(store);
    seed(&store, 1500).await?;

    // Small pages: the copy takes long enough to be killed in.
    let mut m = Migrator::start(&store.url, &cairn.endpoint(), &["--page-keys=10"])?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writing = tokio::spawn(writer(store.clone(), stop_rx));

    wait_target(&tgt, &m, "the copy under way", |s| {
        s.phase == Phase::Copying as i32 && s.keys_copied > 100
    })
    .await?;
    m.kill9()?;
    let copied = target_state(&tgt).await?.keys_copied;
    m.restart()?;
    wait_target(&tgt, &m, "following after a resumed copy", |s| {
        s.phase == Phase::Following as i32
    })
    .await?;
    ensure!(
        copied < 1500,
        "the copy ended before the kill ({copied} keys)"
    );

    // kill -9 while following, and rerun.
    let at = store.current();
    wait_target(&tgt, &m, "following past the copy", |s| {
        s.target_revision >= at
    })
    .await?;
    m.kill9()?;
    m.restart()?;

    // A compaction while following, to a revision the target holds.
    let c = store.current() - 20;
    wait_target(&tgt, &m, "the target past the compaction", |s| {
        s.target_revision >= c
    })
    .await?;
    store.compact(c).await?;

    // A hole in the ids: the writer pauses; an id is taken without a row
    // (a rolled-back transaction); rows after it are written. The target
    // must stop before the hole until kine's fill record closes it.
    stop_tx.send(true)?;
    let written = writing.await??;
    ensure!(written > 0, "the writer wrote nothing");
    let hole = store.skip_id().await?;
    for i in 0..3 {
        store
            .update("/registry/pods/ns/p00001", &value(9000 + i), 0)
            .await?;
    }
    wait_target(&tgt, &m, "the target at the hole", |s| {
        s.target_revision >= hole - 1
    })
    .await?;
    for _ in 0..10 {
        let s = target_state(&tgt).await?;
        ensure!(
            s.target_revision == hole - 1,
            "the target passed the hole at {hole}: {}",
            common::show(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.fill(hole).await?;
    let last_write = store.current();
    wait_target(&tgt, &m, "the target past the fill record", |s| {
        s.target_revision >= last_write
    })
    .await?;

    // status and verify, as for an etcd source, while following.
    let st = migrator::status(&cairn.endpoint()).await?;
    ensure!(st["phase"] == "following", "status: {st}");
    let verified = migrator::run(
        &[
            "verify",
            &format!("--from={}", store.url),
            &format!("--to={}", cairn.endpoint()),
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        verified.code == 0
            && verified.stdout.contains("0 differences")
            && verified.stdout.contains(": OK"),
        "verify exited {}: {}",
        verified.code,
        verified.all()
    );

    // Keys with TTLs that must expire on Cairn after the cutover, as kine
    // would have expired them, and one that must not yet.
    store.create("/registry/leases/short", b"held", 2).await?;
    store
        .create("/registry/events/ns/long", b"event", 3600)
        .await?;

    // "k3s is stopped": nothing writes. Cut over.
    let out = cutover(
        &store.url,
        &cairn.endpoint(),
        &["--still=1s", "--watch-after=500ms"],
    )
    .await?;
    ensure!(
        out.code == 0,
        "cutover exited {}: {}\n{}",
        out.code,
        out.all(),
        context(&m)
    );
    ensure!(out.stdout.contains("cutover complete"), "{}", out.all());
    ensure!(
        out.stdout.contains("no row reached kine after revision"),
        "{}",
        out.all()
    );
    let status = m.wait_exit(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "migrate start exited {status}: {}",
        context(&m)
    );

    let final_state = target_state(&tgt).await?;
    ensure!(
        final_state.phase == Phase::CutOver as i32,
        "{}",
        common::show(&final_state)
    );
    let end = store.current();
    ensure!(
        final_state.target_revision == end,
        "cut over at {}, kine's last revision {end}",
        final_state.target_revision
    );

    let mut client = cairn.client().await?;
    compare_every_revision(&mut client, &store, final_state.start_revision, c, end).await?;
    check_ttls(&mut client).await?;
    drop(m);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.drop_database().await?;
    }
    Ok(())
}

/// Cairn at every revision from kine's compact revision `compact` to
/// `end` against what kine's table said there; below it, refused as compacted.
async fn compare_every_revision(
    client: &mut Client,
    store: &KineStore,
    start: i64,
    compact: i64,
    end: i64,
) -> Result<()> {
    let expected = Expected::new(store.rows(), start);
    for r in compact..=end {
        let got = kvs_at(client, r).await?;
        let want = expected.at(r);
        if got != want {
            let first = want
                .iter()
                .zip(&got)
                .position(|(w, g)| w != g)
                .unwrap_or(want.len().min(got.len()));
            anyhow::bail!(
                "at revision {r}: Cairn holds {} keys, kine {}; first difference at #{first}: Cairn {:?}, kine {:?}",
                got.len(),
                want.len(),
                got.get(first),
                want.get(first)
            );
        }
    }
    let below = client
        .get(
            "/registry/pods/ns/p00001",
            Some(GetOptions::new().with_revision(compact - 1)),
        )
        .await;
    ensure!(
        below.as_ref().is_err_and(|e| e
            .to_string()
            .contains("required revision has been compacted")),
        "a read below kine's compact revision {compact}: {below:?}"
    );
    Ok(())
}

/// The 2-second key expires on Cairn; the hour-long one stays.
async fn check_ttls(client: &mut Client) -> Result<()> {
    wait_until(
        "the 2s TTL key expires on Cairn",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let mut c = client.clone();
            async move {
                let n = c.get("/registry/leases/short", None).await?.kvs().len();
                Ok(if n == 0 {
                    Poll::Ready(())
                } else {
                    Poll::NotYet("still there".into())
                })
            }
        },
    )
    .await?;
    let long = client.get("/registry/events/ns/long", None).await?;
    ensure!(long.kvs().len() == 1, "the hour-long TTL key expired");
    let lease = long.kvs()[0].lease();
    let ttl = client.lease_time_to_live(lease, None).await?;
    ensure!(
        ttl.granted_ttl() == 3600 && ttl.ttl() > 3500,
        "lease {lease}: granted {}, left {}",
        ttl.granted_ttl(),
        ttl.ttl()
    );
    Ok(())
}

both_backends!(live_migration_keeps_every_revision);

/// `cairn migrate start --from <from>` against a target, expected to fail
/// at once with `message`.
async fn refused(target: &Member, from: &str, message: &str) -> Result<()> {
    let out = migrator::run(
        &[
            "start",
            &format!("--from={from}"),
            &format!("--to={}", target.endpoint()),
        ],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(out.code == 1, "exit {} for {from}: {}", out.code, out.all());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    ensure!(
        lines.len() == 1 && lines[0].contains(message),
        "for {from}, wanted one error line with {message:?}: {}",
        out.all()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sqlite_files_get_one_clear_error() -> Result<()> {
    let target = start_target().await?;
    let dir = tempfile::tempdir()?;
    let path = |n: &str| dir.path().join(n);
    let url = |n: &str| format!("sqlite://{}", path(n).display());

    refused(&target, &url("missing.db"), "cannot read the file").await?;

    std::fs::write(path("garbage.db"), vec![0x42u8; 8192])?;
    refused(&target, &url("garbage.db"), "is not an SQLite database").await?;

    let other = rusqlite::Connection::open(path("other.db"))?;
    other.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")?;
    drop(other);
    refused(
        &target,
        &url("other.db"),
        "has no table kine: it is not kine's database (its tables: users)",
    )
    .await?;

    let newer = rusqlite::Connection::open(path("newer.db"))?;
    for stmt in cairn_e2e::kine::SQLITE_SCHEMA {
        newer.execute_batch(stmt)?;
    }
    newer.execute_batch("ALTER TABLE kine ADD COLUMN tenant TEXT")?;
    drop(newer);
    refused(
        &target,
        &url("newer.db"),
        "column(s) tenant that kine v0.16.4 does not write",
    )
    .await?;

    // A file another process holds an exclusive lock on (a rollback
    // journal, where an exclusive lock shuts readers out).
    let locked = rusqlite::Connection::open(path("locked.db"))?;
    for stmt in cairn_e2e::kine::SQLITE_SCHEMA {
        locked.execute_batch(stmt)?;
    }
    locked.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO kine(name) VALUES ('x');",
    )?;
    refused(&target, &url("locked.db"), "stayed locked for 5s").await?;
    drop(locked);

    // etcd's TLS flags make no sense for kine: said so, nothing started.
    let out = migrator::run(
        &[
            "start",
            &format!("--from=sqlite://{}", path("newer.db").display()),
            "--from-cacert=/ca.pem",
            &format!("--to={}", target.endpoint()),
        ],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        out.code == 1 && out.stderr.contains("--from-cacert is for an etcd source"),
        "{}",
        out.all()
    );
    let (tgt, st) = Target::connect(&cfg(&target.endpoint())).await?;
    ensure!(
        st.phase == Phase::None as i32,
        "a refused start began an import: {}",
        common::show(&tgt.state().await?)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_the_login_is_one_clear_error() -> Result<()> {
    let target = start_target().await?;
    let admin = test_postgres()?;
    let store = KineStore::postgres(&admin, &fresh_db_name("kine"), "").await?;
    let wrong = store.url.replacen(":cairn@", ":not-the-password@", 1);
    ensure!(
        wrong != store.url,
        "the test server's URL {admin} has no password to get wrong"
    );
    refused(&target, &wrong, "PostgreSQL refused user").await?;
    let missing = cairn_e2e::kine::with_database(&admin, "no_such_kine_db");
    refused(&target, &missing, "no such database").await?;
    let not_kine = cairn_e2e::kine::with_database(&admin, "postgres");
    refused(&target, &not_kine, "it is not kine's database").await?;
    store.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_gives_the_import_up_and_leaves_kine_alone() -> Result<()> {
    let target = start_target().await?;
    let (tgt, _) = Target::connect(&cfg(&target.endpoint())).await?;
    let (store, _dir) = kine_store(Backend::Sqlite).await?;
    seed(&store, 50).await?;
    let mut m = Migrator::start(&store.url, &target.endpoint(), &[])?;
    wait_target(&tgt, &m, "following", |s| {
        s.phase == Phase::Following as i32
    })
    .await?;
    let rows_before = store.current();
    let out = migrator::run(
        &[
            "abort",
            &format!("--to={}", target.endpoint()),
            &format!("--from={}", store.url),
        ],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        out.code == 0 && out.stdout.contains("kine is not fenced by the migrator"),
        "{}",
        out.all()
    );
    let status = m.wait_exit(Duration::from_secs(30)).await?;
    ensure!(
        !status.success(),
        "migrate start went on after the abort: {}",
        context(&m)
    );
    ensure!(m.log().contains("aborted"), "{}", context(&m));
    ensure!(target_state(&tgt).await?.phase == Phase::Aborted as i32);
    // kine itself is untouched and still takes writes.
    store
        .update("/registry/pods/ns/p00001", b"after", 0)
        .await?;
    ensure!(store.current() == rows_before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_no_row_can_fill_any_more_is_imported_as_an_empty_revision() -> Result<()> {
    let target = start_target().await?;
    let (tgt, _) = Target::connect(&cfg(&target.endpoint())).await?;
    let (store, _dir) = kine_store(Backend::Sqlite).await?;
    seed(&store, 50).await?;
    let mut m = Migrator::start(&store.url, &target.endpoint(), &[])?;
    // A transaction took an id and rolled back, and kine restarted before
    // it filled the hole (a restarted kine polls from its newest id on and
    // never fills a hole below it).
    let hole = store.skip_id().await?;
    store
        .update("/registry/pods/ns/p00001", b"after the hole", 0)
        .await?;
    wait_target(&tgt, &m, "the target at the hole", |s| {
        s.phase == Phase::Following as i32 && s.target_revision == hole - 1
    })
    .await?;
    // Not past it while a row could still come (at least 5 s)...
    for _ in 0..10 {
        let s = target_state(&tgt).await?;
        ensure!(
            s.target_revision == hole - 1,
            "the target passed the hole at once: {}",
            common::show(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...then past it as a revision that changes no key.
    let last = store.current();
    wait_target(&tgt, &m, "the target past the permanent hole", |s| {
        s.target_revision == last
    })
    .await?;
    ensure!(
        m.log()
            .contains(&format!("kine's revision {hole} has no row")),
        "{}",
        context(&m)
    );
    let mut client = target.client().await?;
    ensure!(
        kvs_at(&mut client, hole).await? == kvs_at(&mut client, hole - 1).await?,
        "revision {hole} changed a key"
    );
    let out = cutover(
        &store.url,
        &target.endpoint(),
        &["--still=300ms", "--watch-after=100ms"],
    )
    .await?;
    ensure!(out.code == 0, "{}\n{}", out.all(), context(&m));
    ensure!(
        m.wait_exit(Duration::from_secs(30)).await?.success(),
        "{}",
        context(&m)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_whose_transaction_is_still_open_is_waited_for() -> Result<()> {
    let target = start_target().await?;
    let (tgt, _) = Target::connect(&cfg(&target.endpoint())).await?;
    let (store, _dir) = kine_store(Backend::Postgres).await?;
    seed(&store, 50).await?;
    let m = Migrator::start(&store.url, &target.endpoint(), &[])?;
    wait_target(&tgt, &m, "following", |s| {
        s.phase == Phase::Following as i32
    })
    .await?;
    // kine's insert took id H and has not committed; a later one has.
    let held = store
        .hold_update("/registry/pods/ns/p00002", b"held")
        .await?;
    let h = held.id();
    store
        .update("/registry/pods/ns/p00003", b"later", 0)
        .await?;
    wait_target(&tgt, &m, "the target at the open id", |s| {
        s.target_revision == h - 1
    })
    .await?;
    // Past the 5 s after which a hole no transaction can fill is taken for
    // good, the target still waits: the transaction is open.
    for _ in 0..65 {
        let s = target_state(&tgt).await?;
        ensure!(
            s.target_revision == h - 1,
            "the target passed id {h} while its transaction was open: {}",
            common::show(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.commit(&store).await?;
    let last = store.current();
    wait_target(&tgt, &m, "the target past the committed row", |s| {
        s.target_revision == last
    })
    .await?;
    let mut client = target.client().await?;
    let at_h = client
        .get(
            "/registry/pods/ns/p00002",
            Some(GetOptions::new().with_revision(h)),
        )
        .await?;
    ensure!(
        at_h.kvs()
            .first()
            .is_some_and(|kv| kv.value() == b"held" && kv.mod_revision() == h),
        "revision {h} on the target: {:?}",
        at_h.kvs()
    );
    drop(m);
    store.drop_database().await
}
