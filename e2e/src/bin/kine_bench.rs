//! The kine migration benchmark (issue 16's figures), with real processes
//! and databases on this machine:
//!
//! 1. fills kine's table (`--source sqlite|postgres`) with `--rows` create
//!    rows of `--value-size` bytes, as kine writes them, and compacts there,
//!    so that the copy starts at the top;
//! 2. starts a one-member Cairn target and `cairn migrate start`, and times
//!    the copy (keys/s) while sampling the migrator's peak RSS;
//! 3. while following, writes `--rate` kine updates/s and measures the lag:
//!    every 100 ms a probe row, timed from its commit to its event arriving
//!    from the target's watch;
//! 4. stops the writers ("k3s stopped") and times `cairn migrate cutover`.
//!
//! Run (PostgreSQL from `scripts/test.sh`'s setup, or any URL whose user may
//! create databases, in `CAIRN_TEST_POSTGRES`):
//! `cargo build --release -p cairn-shim && CAIRN_BIN=target/release/cairn
//! cargo run --release -p cairn-e2e --bin kine_bench -- --source sqlite --rows 1000000`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::kine::{fresh_db_name, test_postgres, KineStore};
use cairn_e2e::measure::{copy_line, follow_line, peak_rss_kib, put_arrives, until_following};
use cairn_e2e::migrator::{self, field, Migrator};
use cairn_e2e::{Kind, Member, MemberOptions};
use etcd_client::{GetOptions, WatchOptions};

struct Args {
    source: String,
    rows: usize,
    value_size: usize,
    rate: u64,
    follow: Duration,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        source: "sqlite".into(),
        rows: 100_000,
        value_size: 1024,
        rate: 500,
        follow: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (flag.clone(), it.next().context("a flag without its value")?),
        };
        match name.as_str() {
            "--source" => a.source = value,
            "--rows" => a.rows = value.parse()?,
            "--value-size" => a.value_size = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            "--follow-secs" => a.follow = Duration::from_secs(value.parse()?),
            other => bail!(
                "unknown flag {other}; flags: --source --rows --value-size --rate --follow-secs"
            ),
        }
    }
    Ok(a)
}

/// Kine updates at `rate`/s over 500 keys, from 4 writers.
async fn paced_load(store: Arc<KineStore>, rate: u64, stop: Arc<AtomicBool>) -> Result<u64> {
    const WORKERS: u64 = 4;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let store = store.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * WORKERS / rate.max(1)));
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 10_000_000 {
                tick.tick().await;
                let key = format!("/registry/load/{w}-{}", n % 125);
                let value = format!("{{\"generation\":{n}}}");
                if store.exists(&key) {
                    store.update(&key, value.as_bytes(), 0).await?;
                } else {
                    store.create(&key, value.as_bytes(), 0).await?;
                }
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// Lag samples: a probe row every 100 ms, timed until the target's watch delivers it.
async fn measure_lag(
    store: &KineStore,
    target: &etcd_client::Client,
    span: Duration,
) -> Result<Vec<Duration>> {
    let mut tc = target.clone();
    let (_w, mut events) = tc
        .watch(
            "/bench/probe",
            Some(WatchOptions::new().with_start_revision(0)),
        )
        .await?;
    let mut samples = Vec::new();
    let end = Instant::now() + span;
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let rev = if store.exists("/bench/probe") {
            store
                .update("/bench/probe", format!("{n}").as_bytes(), 0)
                .await?
        } else {
            store
                .create("/bench/probe", format!("{n}").as_bytes(), 0)
                .await?
        };
        let committed = Instant::now();
        put_arrives(&mut events, rev).await?;
        samples.push(committed.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-kine-bench-")
        .tempdir()?;
    let store = match args.source.as_str() {
        "sqlite" => KineStore::sqlite(&dir.path().join("state.db")).await?,
        "postgres" => {
            KineStore::postgres(&test_postgres()?, &fresh_db_name("kine_bench"), "").await?
        }
        other => bail!("--source {other}: sqlite or postgres"),
    };
    let store = Arc::new(store);
    let filled = Instant::now();
    let last = store
        .bulk_create("/registry/bench/", args.rows, args.value_size)
        .await?;
    store.compact(last).await?;
    println!(
        "kine on {}: {} rows of {} bytes in {:.1} s, compacted at {last}",
        args.source,
        args.rows,
        args.value_size,
        filled.elapsed().as_secs_f64()
    );

    let opts = MemberOptions {
        quota_backend_bytes: Some(16 << 30),
        ready_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let target = Member::start_with(Kind::Cairn, opts).await?;
    let to = target.endpoint();
    let target_client = target.client().await?;

    let copy_start = Instant::now();
    let mut m = Migrator::start(&store.url, &to, &[])?;
    let pid = m.pid().context("migrator pid")?;
    let (following, mut peak) = until_following(&mut m, &to).await?;
    let copy = copy_start.elapsed();
    let keys = field(&following, "keys_copied");
    let held = target_client
        .clone()
        .get(
            "/registry/bench/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    ensure!(
        held == args.rows as i64,
        "the target holds {held} keys after the copy, not {}",
        args.rows
    );
    println!("{}", copy_line(keys, copy, peak));

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(paced_load(store.clone(), args.rate, stop.clone()));
    let load_start = Instant::now();
    let mut lag = measure_lag(&store, &target_client, args.follow).await?;
    stop.store(true, Ordering::SeqCst);
    let writes = load.await??;
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    lag.sort();
    println!("{}", follow_line(writes, load_start.elapsed(), &lag, peak));

    // k3s stopped: nothing writes any more.
    let cut_start = Instant::now();
    let cut = migrator::run(
        &[
            "cutover",
            &format!("--from={}", store.url),
            &format!("--to={to}"),
            "--still=1s",
        ],
        Duration::from_secs(600),
    )
    .await?;
    ensure!(cut.code == 0, "cutover failed: {}", cut.all());
    for line in cut
        .all()
        .lines()
        .filter(|l| l.contains("took") || l.contains("verify at") || l.contains(" INFO "))
    {
        println!("cutover says: {}", line.trim());
    }
    println!(
        "cutover: {:.2} s in all (of which 1 s the still check)",
        cut_start.elapsed().as_secs_f64()
    );
    let status = m.wait_exit(Duration::from_secs(60)).await?;
    ensure!(status.success(), "migrate start ended {status}");
    drop(m);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.drop_database().await?;
    }
    Ok(())
}
