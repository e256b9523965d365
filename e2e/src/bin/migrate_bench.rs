//! The migration benchmark (issue 15's targets), with real processes on
//! this machine:
//!
//! 1. fills an etcd 3.5.1 with `--keys` keys of `--value-size` bytes and
//!    compacts it, so that the copy starts at the current revision;
//! 2. starts a Cairn target of `--members` members (release build, no test
//!    proxies) and `cairn migrate start`, and times the copy (keys/s) while
//!    sampling the migrator's peak RSS (VmHWM);
//! 3. while following, drives `--rate` kube-shaped writes/s on the source and
//!    measures the lag: every 100 ms a probe put on the source, timed from its
//!    acknowledgement to its event arriving from the target's watch;
//! 4. runs `cairn migrate cutover` while a writer puts every 5 ms, first to
//!    the source and, once the source refuses, to the target: the write
//!    unavailability is from the last write the source took to the first the
//!    target took, and is printed beside the cutover's own figure.
//!
//! Run: `cargo build --release -p cairn-shim && CAIRN_BIN=target/release/cairn
//! cargo run --release -p cairn-e2e --bin migrate_bench -- --keys 1000000`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::binaries::cairn_bin;
use cairn_e2e::measure::{copy_line, follow_line, peak_rss_kib, put_arrives, until_following};
use cairn_e2e::migrator::{self, field, wait_status, Migrator};
use cairn_e2e::ports::free_port;
use cairn_e2e::source_load::fill_keys;
use cairn_e2e::{Kind, Member, MemberOptions};
use etcd_client::{Client, CompactionOptions, Compare, CompareOp, Txn, TxnOp, WatchOptions};

struct Args {
    keys: usize,
    value_size: usize,
    members: usize,
    rate: u64,
    follow: Duration,
    /// `cairn migrate cutover --verify` (hash, full or none).
    cutover_verify: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        keys: 1_000_000,
        value_size: 1024,
        members: 3,
        rate: 1000,
        follow: Duration::from_secs(30),
        cutover_verify: "hash".to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (flag.clone(), it.next().context("a flag without its value")?),
        };
        match name.as_str() {
            "--keys" => a.keys = value.parse()?,
            "--value-size" => a.value_size = value.parse()?,
            "--members" => a.members = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            "--follow-secs" => a.follow = Duration::from_secs(value.parse()?),
            "--cutover-verify" => a.cutover_verify = value,
            other => bail!(
                "unknown flag {other}; flags: --keys --value-size --members --rate --follow-secs --cutover-verify"
            ),
        }
    }
    Ok(a)
}

/// A Cairn cluster started as an operator would (README's flags), with no
/// test proxy between the members.
struct Target {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Target {
    async fn start(n: usize) -> Result<Target> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-migrate-bench-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut t = Target {
            children: Vec::new(),
            endpoints: Vec::new(),
            dir,
        };
        for (i, (c, p)) in ports.iter().enumerate() {
            let client = format!("http://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let log = std::fs::File::create(t.dir.path().join(format!("m{i}.log")))?;
            let child = Command::new(cairn_bin()?)
                .args([
                    format!("--name=m{i}"),
                    format!(
                        "--data-dir={}",
                        t.dir.path().join(format!("m{i}")).display()
                    ),
                    format!("--listen-client-urls={client}"),
                    format!("--advertise-client-urls={client}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".to_string(),
                    "--quota-backend-bytes=17179869184".to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()?;
            t.children.push(child);
            t.endpoints.push(client);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for e in &t.endpoints {
            loop {
                ensure!(Instant::now() < deadline, "{e} did not become ready");
                if let Ok(mut c) = Client::connect([e.as_str()], None).await {
                    if c.get("ready", None).await.is_ok() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(t)
    }

    fn to(&self) -> String {
        self.endpoints.join(",")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn fill(source: &Client, keys: usize, value_size: usize) -> Result<i64> {
    let rev = fill_keys(source, keys, value_size).await?;
    let mut c = source.clone();
    // Physical: etcd's compaction of a million keys runs in the background
    // for a while and slows its reads; the copy is timed on a settled source.
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await?;
    Ok(rev)
}

/// Kube-shaped updates (a Txn on the mod_revision just read) at `rate`/s.
async fn paced_load(source: Client, rate: u64, stop: Arc<AtomicBool>) -> Result<u64> {
    const WORKERS: u64 = 8;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut c = source.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * WORKERS / rate.max(1)));
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 10_000_000 {
                tick.tick().await;
                let key = format!("/registry/load/{w}-{}", n % 500);
                let m = c
                    .get(key.as_str(), None)
                    .await?
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.mod_revision());
                let t = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, m)])
                    .and_then([TxnOp::put(key.as_str(), format!("v{n}"), None)]);
                c.txn(t).await?;
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

/// Lag samples: a probe put on the source every 100 ms, timed until the
/// target's watch delivers it.
async fn measure_lag(source: &Client, target: &Client, span: Duration) -> Result<Vec<Duration>> {
    let mut tc = target.clone();
    let (_w, mut events) = tc
        .watch(
            "/bench/probe",
            Some(WatchOptions::new().with_start_revision(0)),
        )
        .await?;
    let mut sc = source.clone();
    let mut samples = Vec::new();
    let end = Instant::now() + span;
    while Instant::now() < end {
        let put = sc.put("/bench/probe", "p", None).await?;
        let acked = Instant::now();
        let rev = put.header().context("header")?.revision();
        put_arrives(&mut events, rev).await?;
        samples.push(acked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(samples)
}

/// Puts every 5 ms to the source until it refuses, then to the target until
/// it accepts: (last source success, first target success).
async fn switch_writer(source: Client, target: Client) -> Result<Duration> {
    let (mut s, mut t) = (source, target);
    let mut last_ok = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0u64;
    loop {
        ensure!(Instant::now() < deadline, "the source was never fenced");
        n += 1;
        match s.put("/bench/switch", format!("{n}"), None).await {
            Ok(_) => last_ok = Instant::now(),
            // The fence; any other failure is retried, not taken for it.
            Err(e) if e.to_string().contains("database space exceeded") => break,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        ensure!(Instant::now() < deadline, "the target never took a write");
        if t.put("/bench/switch", format!("{n}"), None).await.is_ok() {
            return Ok(last_ok.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let opts = MemberOptions {
        quota_backend_bytes: Some(16 << 30),
        ready_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let source_member = Member::start_with(Kind::Etcd, opts).await?;
    let source = source_member.client().await?;
    let filled = Instant::now();
    let compact = fill(&source, args.keys, args.value_size).await?;
    println!(
        "source: {} keys of {} bytes in {:.1} s, compacted at {compact}",
        args.keys,
        args.value_size,
        filled.elapsed().as_secs_f64()
    );
    let target = Target::start(args.members).await?;
    let to = target.to();
    let target_client = Client::connect(target.endpoints.clone(), None).await?;

    let copy_start = Instant::now();
    let mut m = Migrator::start(&source_member.endpoint(), &to, &[])?;
    let pid = m.pid().context("migrator pid")?;
    let (following, mut peak) = until_following(&mut m, &to).await?;
    let copy = copy_start.elapsed();
    let keys = field(&following, "keys_copied");
    // The target's own count, not the migrator's word for it.
    let held = target_client
        .clone()
        .get(
            "/registry/bench/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?
        .count();
    ensure!(
        held == args.keys as i64,
        "the target holds {held} keys after the copy, not {}",
        args.keys
    );
    println!("{}", copy_line(keys, copy, peak));

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(paced_load(source.clone(), args.rate, stop.clone()));
    let load_start = Instant::now();
    let mut lag = measure_lag(&source, &target_client, args.follow).await?;
    stop.store(true, Ordering::SeqCst);
    let writes = load.await??;
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    lag.sort();
    println!("{}", follow_line(writes, load_start.elapsed(), &lag, peak));

    let switch = tokio::spawn(switch_writer(source.clone(), target_client.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut = migrator::run(
        &[
            "cutover",
            &format!("--from={}", source_member.endpoint()),
            &format!("--to={to}"),
            &format!("--verify={}", args.cutover_verify),
        ],
        Duration::from_secs(300),
    )
    .await?;
    ensure!(cut.code == 0, "cutover failed: {}", cut.all());
    let unavailable = switch.await??;
    for line in cut.all().lines().filter(|l| l.contains("unavailab")) {
        println!("cutover says: {}", line.trim());
    }
    println!(
        "cutover: a client's writes were refused for {:.0} ms (last source write to first target write)",
        unavailable.as_secs_f64() * 1e3
    );
    let _ = wait_status(&to, "cut-over", Duration::from_secs(30), |s| {
        s["phase"] == "cut-over"
    })
    .await?;
    let status = m.wait_exit(Duration::from_secs(60)).await?;
    ensure!(status.success(), "migrate start ended {status}");
    Ok(())
}
