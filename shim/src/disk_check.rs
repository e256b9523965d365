//! `cairn check disk`: is the data dir's disk fast enough for the Raft log?
//!
//! Every write waits on the log's fdatasync, so its latency bounds a
//! write's. etcd's guidance is a 99th percentile of WAL fdatasync under
//! 10 ms (its `etcd_disk_wal_fsync_duration_seconds`; the fio recipe that
//! measures it, `fio --rw=write --ioengine=sync --fdatasync=1 --size=22m
//! --bs=2300`, is from "Using Fio to Tell Whether Your Storage is Fast
//! Enough for Etcd", IBM Cloud blog, 2019). This does the same without fio:
//! appends of 2 to 8 KiB (a WAL record or a group commit's batch) to a
//! scratch file in the data dir, each followed by fdatasync, timed one by one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

/// etcd's bound for the 99th percentile of WAL fdatasync.
pub const P99_LIMIT: Duration = Duration::from_millis(10);

/// The sizes of the appends, in turn.
const SIZES: [usize; 4] = [2 << 10, 4 << 10, 6 << 10, 8 << 10];

/// `cairn check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(subcommand)]
    pub command: CheckCommand,
}

/// What `cairn check` checks.
#[derive(clap::Subcommand, Debug)]
pub enum CheckCommand {
    /// Measure fdatasync latency of WAL-sized appends in the data dir's filesystem against etcd's guidance (p99 < 10 ms).
    Disk(DiskArgs),
}

/// `-w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `cairn check disk`.
#[derive(Args, Debug)]
pub struct DiskArgs {
    /// The data dir (or any directory on its filesystem); the nearest existing parent is measured if it does not exist yet.
    #[arg(long, value_name = "DIR", default_value = "default.cairn")]
    pub data_dir: PathBuf,
    /// Appends to time, at most.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub count: u32,
    /// Stop after this many seconds even if fewer appends were timed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub max_seconds: f64,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: Output,
}

/// Why the disk could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum DiskCheckError {
    #[error("no existing directory at or above {0}")]
    NoDirectory(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The figures and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The directory the scratch file was in.
    pub dir: PathBuf,
    /// Appends timed.
    pub count: usize,
    /// Bytes written.
    pub bytes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// p99 under [`P99_LIMIT`].
    pub fast_enough: bool,
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Figures from the timed appends.
pub fn report(dir: &Path, mut samples: Vec<Duration>, bytes: u64) -> Report {
    samples.sort();
    let p99 = quantile(&samples, 0.99);
    Report {
        dir: dir.to_path_buf(),
        count: samples.len(),
        bytes,
        p50_ms: ms(quantile(&samples, 0.50)),
        p99_ms: ms(p99),
        max_ms: ms(samples.last().copied().unwrap_or_default()),
        fast_enough: !samples.is_empty() && p99 < P99_LIMIT,
    }
}

/// Removes the scratch file however the measurement ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The directory to measure: `dir`, or its nearest existing parent.
pub fn existing_dir(dir: &Path) -> Result<PathBuf, DiskCheckError> {
    let start = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| DiskCheckError::Io {
                what: "cannot read the current directory",
                path: dir.to_path_buf(),
                source,
            })?
            .join(dir)
    };
    start
        .ancestors()
        .find(|p| p.is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| DiskCheckError::NoDirectory(dir.to_path_buf()))
}

/// Times up to `count` appends with fdatasync in `dir`, for at most `limit`.
pub fn measure(dir: &Path, count: u32, limit: Duration) -> Result<Report, DiskCheckError> {
    let dir = existing_dir(dir)?;
    let path = dir.join(format!(".cairn-check-disk-{}", std::process::id()));
    let io = |what: &'static str| {
        let path = path.clone();
        move |source| DiskCheckError::Io { what, path, source }
    };
    let mut file: File = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io("cannot create the scratch file"))?;
    let _scratch = Scratch(path.clone());
    let buf = vec![0x5au8; SIZES[SIZES.len() - 1]];
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count as usize);
    let mut bytes = 0u64;
    for i in 0..count as usize {
        if started.elapsed() >= limit {
            break;
        }
        let n = SIZES[i % SIZES.len()];
        let t = Instant::now();
        file.write_all(&buf[..n]).map_err(io("cannot write"))?;
        file.sync_data().map_err(io("cannot fdatasync"))?;
        // The log's own `slow_fsync=sleep(ms)` fail point: a test slows
        // this disk as it slows the log's, to see the slow verdict.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("slow_fsync");
        samples.push(t.elapsed());
        bytes += n as u64;
    }
    Ok(report(&dir, samples, bytes))
}

fn table(r: &Report) -> String {
    format!(
        "directory  {}\nappends    {} ({} KiB, 2-8 KiB each, fdatasync after each)\np50        {:.3} ms\np99        {:.3} ms\nmax        {:.3} ms\nverdict    {}\n",
        r.dir.display(),
        r.count,
        r.bytes >> 10,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        if r.fast_enough {
            format!("PASS: p99 {:.3} ms is under etcd's 10 ms guidance", r.p99_ms)
        } else {
            format!(
                "FAIL: p99 {:.3} ms is not under etcd's 10 ms guidance: writes will wait on this disk (use a local SSD, and keep other I/O off it)",
                r.p99_ms
            )
        }
    )
}

/// Runs `cairn check ...`; returns the exit code: 0 fast enough, 1 too slow, 2 could not measure.
pub fn run(args: CheckArgs) -> i32 {
    let CheckCommand::Disk(a) = args.command;
    let limit =
        Duration::try_from_secs_f64(a.max_seconds.max(0.1)).unwrap_or(Duration::from_secs(10));
    match measure(&a.data_dir, a.count, limit) {
        Ok(r) => {
            match a.write_out {
                Output::Table => print!("{}", table(&r)),
                Output::Json => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            }
            if r.fast_enough {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
        let r = report(Path::new("/x"), s, 0);
        assert!(r.fast_enough == (r.p99_ms < 10.0));
        assert!(!r.fast_enough);
    }

    #[test]
    fn a_run_in_a_temp_dir_gives_ordered_figures_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = measure(&dir.path().join("not-yet"), 20, Duration::from_secs(10)).unwrap();
        assert_eq!(r.dir, dir.path());
        assert_eq!(r.count, 20);
        assert!(
            r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms,
            "{r:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
