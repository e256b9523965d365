//! The command line of `cairn bench` and its validation.

use std::time::Duration;

use anyhow::bail;

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

    /// The client of the put and range workloads: `generated` (Cairn's own
    /// tonic client) or `etcd-client` (the independent Rust crate; needs a
    /// cairn built with the `bench-etcd-client` feature). Watch runs use the
    /// generated client.
    #[arg(long, value_enum, default_value_t = BenchClient::Generated)]
    pub client: BenchClient,

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

    /// put, range: PIDs of the server's processes on this machine (one per
    /// member), whose CPU time is read from /proc/PID/stat at the start and
    /// the end of the measured phase, for the server's CPU per operation.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,

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

/// Which client library issues the requests.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchClient {
    /// Cairn's generated tonic client (cairn-proto).
    Generated,
    /// The `etcd-client` crate, a client we did not write.
    EtcdClient,
}

impl BenchClient {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BenchClient::Generated => "generated",
            BenchClient::EtcdClient => "etcd-client",
        }
    }
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::Watch => "watch",
        }
    }
}

impl Consistency {
    pub(crate) fn name(self) -> &'static str {
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

pub(crate) fn validate(args: &BenchArgs) -> anyhow::Result<()> {
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
        // Its own flags are checked by `watch::validate`; keys are its own too.
        return Ok(());
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
