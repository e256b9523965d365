//! `cairn bench`: a load generator for any etcd-v3 gRPC server.
//!
//! It drives Cairn and etcd with the very same generated tonic client
//! (`cairn_proto::etcdserverpb::kv_client::KvClient`), so that the numbers of
//! the two can be compared: `scripts/bench.sh` runs it against both and prints
//! the ratios; `docs/benchmarks.md` records results.
//!
//! Model, like etcd's own `benchmark` tool (`--conns`/`--clients`): `clients`
//! concurrent workers, each with one request in flight at a time, spread round
//! robin over `conns` HTTP/2 connections (spread round robin over the
//! endpoints). Workloads:
//!
//! * `put`: puts of `--val-size`-byte values to keys drawn uniformly from a key
//!   space of `--key-space` keys.
//! * `range`: first populates every key of the key space (not measured), then
//!   single-key Range requests on uniformly drawn keys, linearizable by default
//!   or serializable with `--consistency s`. A response without exactly one
//!   key-value counts as an error.
//! * `watch`: watch fan-out (see the `watch` submodule): `--watchers` watchers
//!   on one prefix, over `--conns` connections, then a paced writer puts
//!   `--rate` values per second under the prefix for `--duration`; reports the
//!   delivery latency of every event to every watcher, and counts missing,
//!   duplicated and out-of-order events as errors.
//!
//! Each run has three phases: populate (range only), warm-up (`--warmup`
//! requests, not measured) and the measured phase, which ends after `--total`
//! requests or `--duration`, whichever comes first. Every phase is also bounded
//! by the whole-run `--time-limit` and every request by `--request-timeout`, so
//! a run always ends. Failed requests are counted per gRPC code and reported;
//! when their share passes `--max-error-rate` the run aborts with an error.
//!
//! Reported: successful requests per second over the measured phase's wall
//! time, and latency of successful requests (HdrHistogram, microsecond
//! resolution, 3 significant digits) at p50/p90/p99/p99.9 and max.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

mod watch;

/// Highest latency the histograms track exactly (60 s, in microseconds);
/// anything slower is recorded as this value.
const HIST_MAX_US: u64 = 60_000_000;
/// Completed requests (of a phase) before the error-rate check may abort.
const ERROR_CHECK_MIN_SAMPLES: u64 = 100;

/// Arguments of `cairn bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated client URLs of the server(s) to load, e.g.
    /// http://127.0.0.1:2379. Connections are spread over them round robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        env = "CAIRN_BENCH_ENDPOINTS"
    )]
    pub endpoints: Vec<String>,

    /// Workload: `put` (random-key puts), `range` (single-key reads of keys
    /// populated first) or `watch` (watch fan-out: --watchers watchers on one
    /// prefix, a writer at --rate puts/s).
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,

    /// Number of gRPC (HTTP/2) connections.
    #[arg(long, default_value_t = 10)]
    pub conns: usize,

    /// Number of concurrent clients, each with one request in flight; spread
    /// round robin over the connections.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Measured requests (successful or not) to issue. Default 100000 unless
    /// --duration is given; with both, whichever is reached first ends the run.
    #[arg(long)]
    pub total: Option<u64>,

    /// Length of the measured phase, e.g. 30s, 500ms, 2m (a bare number means
    /// seconds).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Warm-up requests issued before measuring (same workload, not measured).
    #[arg(long, default_value_t = 2000)]
    pub warmup: u64,

    /// Hard cap on the whole run (populate, warm-up and measurement); the
    /// measured phase is cut short, and flagged, if it would pass it.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub time_limit: Duration,

    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub request_timeout: Duration,

    /// Size of each key in bytes: --key-prefix followed by the key's index,
    /// zero-padded to fill the size.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,

    /// Prefix of every key.
    #[arg(long, default_value = "")]
    pub key_prefix: String,

    /// Number of distinct keys; each request picks one uniformly at random.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,

    /// Size of each value in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,

    /// Range consistency: `l` (linearizable, etcd's default) or `s`
    /// (serializable). Only for --workload range.
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,

    /// Do not populate the key space before a range run (use keys already
    /// written by an earlier run with the same key options).
    #[arg(long)]
    pub skip_populate: bool,

    /// Abort when more than this fraction of completed requests failed
    /// (checked once a phase has at least 100 completions).
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,

    /// Seed of the key chooser and value bytes, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// watch: number of watchers, all on --watch-prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,

    /// watch: watchers per bidirectional Watch stream. 1 (the default) opens
    /// one gRPC stream per watcher; streams are spread round robin over
    /// --conns connections.
    #[arg(long, default_value_t = 1)]
    pub watchers_per_stream: usize,

    /// watch: the prefix every watcher watches and every write goes under.
    #[arg(long, default_value = "/fanout/")]
    pub watch_prefix: String,

    /// watch: writes per second (paced on a fixed schedule; up to --clients
    /// writes in flight). The writer issues --rate x --duration writes (10 s
    /// when --duration is not given), or --total if smaller.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,

    /// watch: deadline for every watcher's Created response.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub create_timeout: Duration,

    /// watch: after the last write, how long to wait for events still due.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,

    /// watch: PID of the server (on this machine) whose resident memory to
    /// sample from /proc/PID/status: before the watchers, after they are all
    /// created, and the peak.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Print the result as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What the clients do.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Puts to random keys.
    Put,
    /// Single-key Range requests on random, previously written keys.
    Range,
    /// Watch fan-out: many watchers on one prefix, a paced writer under it.
    Watch,
}

/// Consistency of Range requests.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (goes through the leader / read index).
    #[value(name = "l", alias = "linearizable")]
    L,
    /// Serializable (answered from the local member's state).
    #[value(name = "s", alias = "serializable")]
    S,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::Watch => "watch",
        }
    }
}

impl Consistency {
    fn name(self) -> &'static str {
        match self {
            Consistency::L => "linearizable",
            Consistency::S => "serializable",
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// SplitMix64: small, fast, good enough to pick keys; avoids a `rand` dependency.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias < 2^-40 for
    /// any key space a benchmark would use).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Key layout shared by all clients.
struct Keys {
    prefix: Vec<u8>,
    width: usize,
}

impl Keys {
    fn key(&self, idx: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + self.width);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(format!("{idx:0width$}", width = self.width).as_bytes());
        k
    }
}

/// What one request of a phase does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    /// Put key number `ticket` (populating the key space in order).
    Populate,
    /// Put a random key.
    Put,
    /// Range a random key.
    Range,
}

/// Counters shared by the clients of one phase.
#[derive(Default)]
struct PhaseShared {
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    abort: AtomicBool,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    first_errors: Mutex<Vec<String>>,
}

/// Why a phase stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Count,
    Duration,
    TimeLimit,
    Errors,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Count => "count",
            Stop::Duration => "duration",
            Stop::TimeLimit => "time_limit",
            Stop::Errors => "error_rate",
        }
    }
}

struct PhaseResult {
    ok: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    first_errors: Vec<String>,
    elapsed: Duration,
    hist: Histogram<u64>,
    stop: Stop,
}

/// Everything the clients need, shared.
struct Ctx {
    clients: Vec<KvClient<Channel>>,
    keys: Keys,
    value: Vec<u8>,
    key_space: u64,
    serializable: bool,
    request_timeout: Duration,
    max_error_rate: f64,
    seed: u64,
    quiet: bool,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Runs one phase: every client issues requests until `limit` requests were
/// issued in all, `deadline` passes, or the error rate aborts it.
async fn run_phase(
    ctx: &Arc<Ctx>,
    name: &'static str,
    op: Op,
    limit: Option<u64>,
    deadline: Instant,
    deadline_stop: Stop,
    record: bool,
) -> PhaseResult {
    let shared = Arc::new(PhaseShared::default());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(ctx.clients.len());
    for (i, client) in ctx.clients.iter().enumerate() {
        let ctx = Arc::clone(ctx);
        let shared = Arc::clone(&shared);
        let mut client = client.clone();
        let salt = match op {
            Op::Populate => 1,
            Op::Put => 2,
            Op::Range => 3,
        } + if record { 16 } else { 0 };
        let mut rng = Rng(ctx
            .seed
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add(salt << 32)
            .wrapping_add(i as u64));
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            loop {
                if shared.abort.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let ticket = shared.issued.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| ticket >= l) {
                    break;
                }
                let idx = match op {
                    Op::Populate => ticket,
                    Op::Put | Op::Range => rng.below(ctx.key_space),
                };
                let key = ctx.keys.key(idx);
                let t0 = Instant::now();
                let res = tokio::time::timeout(ctx.request_timeout, async {
                    match op {
                        Op::Populate | Op::Put => client
                            .put(PutRequest {
                                key,
                                value: ctx.value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                            .map_err(|s| (format!("{:?}", s.code()), s.message().to_string())),
                        Op::Range => {
                            match client
                                .range(RangeRequest {
                                    key,
                                    serializable: ctx.serializable,
                                    ..Default::default()
                                })
                                .await
                            {
                                Ok(resp) => {
                                    let n = resp.get_ref().kvs.len();
                                    if n == 1 {
                                        Ok(())
                                    } else {
                                        Err((
                                            "WrongResult".to_string(),
                                            format!("range of one key returned {n} kvs"),
                                        ))
                                    }
                                }
                                Err(s) => Err((format!("{:?}", s.code()), s.message().to_string())),
                            }
                        }
                    }
                })
                .await;
                let took = t0.elapsed();
                let res = res.unwrap_or_else(|_| {
                    Err((
                        "ClientTimeout".to_string(),
                        format!("no answer within {:?}", ctx.request_timeout),
                    ))
                });
                match res {
                    Ok(()) => {
                        if record {
                            let us = (took.as_micros() as u64).clamp(1, HIST_MAX_US);
                            hist.saturating_record(us);
                        }
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((kind, msg)) => {
                        let errors = shared.errors.fetch_add(1, Ordering::Relaxed) + 1;
                        *shared
                            .error_kinds
                            .lock()
                            .unwrap()
                            .entry(kind.clone())
                            .or_insert(0) += 1;
                        {
                            let mut first = shared.first_errors.lock().unwrap();
                            if first.len() < 5 {
                                first.push(format!("{kind}: {msg}"));
                            }
                        }
                        let done = shared.ok.load(Ordering::Relaxed) + errors;
                        if done >= ERROR_CHECK_MIN_SAMPLES
                            && errors as f64 > ctx.max_error_rate * done as f64
                        {
                            shared.abort.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            hist
        }));
    }

    // Progress on stderr every 5 s while the clients run.
    let progress = (!ctx.quiet).then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let ok = shared.ok.load(Ordering::Relaxed);
                let err = shared.errors.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (ok - last.0) as f64 / (now - last.1).as_secs_f64();
                last = (ok, now);
                eprintln!(
                    "bench: {name}: {ok} ok, {err} errors, {rate:.0} ok/s, {:.0}s",
                    (now - start).as_secs_f64()
                );
            }
        })
    });

    let mut hist = new_hist();
    for t in tasks {
        match t.await {
            Ok(h) => hist.add(&h).expect("same histogram bounds"),
            Err(e) => {
                // A panicking client is a bug in this module, not a server error;
                // still account for it so that it is not silent.
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared
                    .first_errors
                    .lock()
                    .unwrap()
                    .push(format!("client task failed: {e}"));
                *shared
                    .error_kinds
                    .lock()
                    .unwrap()
                    .entry("ClientPanic".into())
                    .or_insert(0) += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    let issued = shared.issued.load(Ordering::Relaxed);
    let stop = if shared.abort.load(Ordering::Relaxed) {
        Stop::Errors
    } else if limit.is_some_and(|l| issued >= l) {
        Stop::Count
    } else {
        deadline_stop
    };
    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let error_kinds = std::mem::take(&mut *shared.error_kinds.lock().unwrap());
    let first_errors = std::mem::take(&mut *shared.first_errors.lock().unwrap());
    PhaseResult {
        ok,
        errors,
        error_kinds,
        first_errors,
        elapsed,
        hist,
        stop,
    }
}

/// Fails with a readable message when a phase aborted on errors.
fn check_phase(name: &str, r: &PhaseResult) -> anyhow::Result<()> {
    if r.stop == Stop::Errors {
        bail!(
            "{name} aborted: {} of {} requests failed ({:?}); first errors: {}",
            r.errors,
            r.ok + r.errors,
            r.error_kinds,
            r.first_errors.join(" | ")
        );
    }
    Ok(())
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.endpoints.iter().all(|e| e.trim().is_empty()) {
        bail!("--endpoints is empty");
    }
    if args.conns == 0 || args.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    if args.key_space == 0 {
        bail!("--key-space must be at least 1");
    }
    if args.total == Some(0) {
        bail!("--total must be at least 1");
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be positive");
    }
    if args.request_timeout.is_zero() || args.time_limit.is_zero() {
        bail!("--request-timeout and --time-limit must be positive");
    }
    if !(0.0..=1.0).contains(&args.max_error_rate) {
        bail!("--max-error-rate must be within 0..=1");
    }
    if args.workload == Workload::Watch {
        return watch::validate(args);
    }
    let digits = (args.key_space - 1).to_string().len();
    if args.key_size < args.key_prefix.len() + digits {
        bail!(
            "--key-size {} is too small for --key-prefix {:?} ({} bytes) plus {} digits of --key-space {}",
            args.key_size,
            args.key_prefix,
            args.key_prefix.len(),
            digits,
            args.key_space
        );
    }
    Ok(())
}

/// Best effort: the server's version and identity from Maintenance.Status.
async fn server_status(channel: Channel) -> serde_json::Value {
    let mut m = MaintenanceClient::new(channel);
    match tokio::time::timeout(Duration::from_secs(5), m.status(StatusRequest {})).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let h = r.header.unwrap_or_default();
            serde_json::json!({
                "version": r.version,
                "db_size": r.db_size,
                "cluster_id": format!("{:x}", h.cluster_id),
                "member_id": format!("{:x}", h.member_id),
                "revision": h.revision,
            })
        }
        Ok(Err(s)) => {
            serde_json::json!({ "status_error": format!("{:?}: {}", s.code(), s.message()) })
        }
        Err(_) => serde_json::json!({ "status_error": "timeout" }),
    }
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat`; `None` where that does not exist. Lets the comparison
/// script tell how much of the machine the load generator itself took.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Runs `cairn bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let run_start = Instant::now();
    let hard_deadline = run_start + args.time_limit;
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();

    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        channels.push(connect(&endpoints[i % endpoints.len()]).await?);
    }
    let server = server_status(channels[0].clone()).await;

    // Fail fast, with the server's own words, when it cannot even answer one request.
    {
        let mut c = KvClient::new(channels[0].clone());
        tokio::time::timeout(
            args.request_timeout,
            c.range(RangeRequest {
                key: b"\0cairn-bench-probe".to_vec(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| anyhow!("probe Range: no answer within {:?}", args.request_timeout))?
        .map_err(|s| anyhow!("probe Range failed: {:?}: {}", s.code(), s.message()))?;
    }

    if args.workload == Workload::Watch {
        return watch::run(&args, endpoints, channels, server, run_start).await;
    }

    let mut rng = Rng(args.seed ^ 0xA076_1D64_78BD_642F);
    let value: Vec<u8> = (0..args.val_size)
        .map(|_| b'a' + rng.below(26) as u8)
        .collect();
    let clients = (0..args.clients)
        .map(|i| KvClient::new(channels[i % channels.len()].clone()))
        .collect();
    let ctx = Arc::new(Ctx {
        clients,
        keys: Keys {
            prefix: args.key_prefix.as_bytes().to_vec(),
            width: args.key_size - args.key_prefix.len(),
        },
        value,
        key_space: args.key_space,
        serializable: args.consistency == Consistency::S,
        request_timeout: args.request_timeout,
        max_error_rate: args.max_error_rate,
        seed: args.seed,
        quiet: args.quiet,
    });
    let say = |msg: String| {
        if !args.quiet {
            eprintln!("bench: {msg}");
        }
    };

    let op = match args.workload {
        Workload::Put => Op::Put,
        Workload::Range => Op::Range,
        Workload::Watch => unreachable!("handled above"),
    };

    let mut populate = None;
    if args.workload == Workload::Range && !args.skip_populate {
        say(format!(
            "populating {} keys of {} bytes with {}-byte values",
            args.key_space, args.key_size, args.val_size
        ));
        let r = run_phase(
            &ctx,
            "populate",
            Op::Populate,
            Some(args.key_space),
            hard_deadline,
            Stop::TimeLimit,
            false,
        )
        .await;
        check_phase("populate", &r)?;
        if r.ok < args.key_space {
            bail!(
                "populate wrote only {} of {} keys ({} puts failed: {:?}; stopped by {}, --time-limit {:?})",
                r.ok,
                args.key_space,
                r.errors,
                r.error_kinds,
                r.stop.name(),
                args.time_limit
            );
        }
        populate = Some(r);
    }

    let mut warm = None;
    if args.warmup > 0 {
        say(format!(
            "warm-up: {} {} requests",
            args.warmup,
            args.workload.name()
        ));
        let r = run_phase(
            &ctx,
            "warm-up",
            op,
            Some(args.warmup),
            hard_deadline,
            Stop::TimeLimit,
            false,
        )
        .await;
        check_phase("warm-up", &r)?;
        warm = Some(r);
    }

    let total = match (args.total, args.duration) {
        (None, None) => Some(100_000),
        (t, _) => t,
    };
    let now = Instant::now();
    let (deadline, deadline_stop) = match args.duration {
        Some(d) if now + d <= hard_deadline => (now + d, Stop::Duration),
        _ => (hard_deadline, Stop::TimeLimit),
    };
    say(format!(
        "measuring: {} {} requests{}, {} clients over {} connections",
        total.map_or("unlimited".to_string(), |t| t.to_string()),
        args.workload.name(),
        args.duration
            .map_or(String::new(), |d| format!(" or {:?}", d)),
        args.clients,
        args.conns
    ));
    let cpu_before = process_cpu_seconds();
    let r = run_phase(&ctx, "measure", op, total, deadline, deadline_stop, true).await;
    let cpu_after = process_cpu_seconds();

    let ops_per_sec = r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let h = &r.hist;
    let lat = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let error_rate = if r.ok + r.errors == 0 {
        0.0
    } else {
        r.errors as f64 / (r.ok + r.errors) as f64
    };
    let result = serde_json::json!({
        "workload": args.workload.name(),
        "endpoints": endpoints,
        "server": server,
        "conns": args.conns,
        "clients": args.clients,
        "key_size": args.key_size,
        "key_prefix": args.key_prefix,
        "key_space": args.key_space,
        "val_size": args.val_size,
        "consistency": (args.workload == Workload::Range).then(|| args.consistency.name()),
        "seed": args.seed,
        "populated": populate.as_ref().map(|p| p.ok),
        "populate_s": populate.as_ref().map(|p| p.elapsed.as_secs_f64()),
        "warmup": warm.as_ref().map_or(0, |w| w.ok + w.errors),
        "total": total,
        "duration_s": args.duration.map(|d| d.as_secs_f64()),
        "stopped_by": r.stop.name(),
        "ok": r.ok,
        "errors": r.errors,
        "error_rate": error_rate,
        "error_kinds": r.error_kinds,
        "first_errors": r.first_errors,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "ops_per_sec": ops_per_sec,
        "client_cpu_s": cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        "client_cpu_total_s": cpu_after,
        "latency_us": {
            "min": if h.is_empty() { 0 } else { h.min() },
            "mean": if h.is_empty() { 0.0 } else { h.mean() },
            "p50": lat(0.50),
            "p90": lat(0.90),
            "p99": lat(0.99),
            "p99_9": lat(0.999),
            "max": if h.is_empty() { 0 } else { h.max() },
        },
    });

    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} against {} ({})",
            args.workload.name(),
            endpoints.join(","),
            server["version"].as_str().unwrap_or("version unknown")
        );
        println!(
            "  {} clients over {} conns, key space {} x {} B, values {} B{}",
            args.clients,
            args.conns,
            args.key_space,
            args.key_size,
            args.val_size,
            if args.workload == Workload::Range {
                format!(", {}", args.consistency.name())
            } else {
                String::new()
            }
        );
        println!(
            "  requests: {} ok, {} errors in {:.3} s (stopped by {})",
            r.ok,
            r.errors,
            r.elapsed.as_secs_f64(),
            r.stop.name()
        );
        println!("  throughput: {ops_per_sec:.1} ops/s");
        println!("  latency ms: {}", latency_summary_ms(h));
        if r.errors > 0 {
            println!("  errors by kind: {:?}", r.error_kinds);
            for e in &r.first_errors {
                println!("    {e}");
            }
        }
    }
    check_phase("measurement", &r)?;
    if r.stop == Stop::TimeLimit {
        say(format!(
            "warning: measurement cut short by --time-limit {:?}",
            args.time_limit
        ));
    }
    if r.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

/// "p50 … p90 … p99 … p99.9 … max … (mean …)" in milliseconds, from a
/// microsecond histogram: the one latency line every workload prints.
pub(crate) fn latency_summary_ms(h: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
        ms(q(0.5)),
        ms(q(0.9)),
        ms(q(0.99)),
        ms(q(0.999)),
        ms(if h.is_empty() { 0 } else { h.max() }),
        if h.is_empty() { 0.0 } else { h.mean() / 1000.0 }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn keys_are_fixed_size() {
        let k = Keys {
            prefix: b"b/".to_vec(),
            width: 6,
        };
        assert_eq!(k.key(42), b"b/000042".to_vec());
        assert_eq!(k.key(999_999).len(), 8);
    }

    #[test]
    fn rng_below_stays_in_range_and_covers_it() {
        let mut r = Rng(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            let t = process_cpu_seconds().expect("/proc/self/stat");
            assert!(t >= 0.0);
        }
    }

    #[test]
    fn key_size_is_validated() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            b: BenchArgs,
        }
        let ok = Cli::parse_from(["x"]).b;
        assert!(validate(&ok).is_ok());
        assert_eq!(ok.workload, Workload::Put);
        assert_eq!(ok.consistency, Consistency::L);
        let small = Cli::parse_from(["x", "--key-size", "4"]).b;
        assert!(validate(&small).is_err());
        let s = Cli::parse_from([
            "x",
            "--consistency",
            "serializable",
            "--endpoints",
            "http://a:1,http://b:2",
        ])
        .b;
        assert_eq!(s.consistency, Consistency::S);
        assert_eq!(s.endpoints.len(), 2);
    }
}
