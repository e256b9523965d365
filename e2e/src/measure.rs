//! What the benchmark binaries measure alike: a process's peak memory,
//! percentiles, a migration's copy timed to the `following` phase, and a
//! probe's write arriving on a watch.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use etcd_client::{EventType, WatchStream};

use crate::migrator::{self, Migrator};

/// VmHWM (peak resident set) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The copy's line: keys, time, rate, the migrator's peak RSS.
pub fn copy_line(keys: i64, took: Duration, peak_kib: u64) -> String {
    format!(
        "copy: {keys} keys in {:.1} s = {:.0} keys/s; migrator peak RSS {:.1} MiB",
        took.as_secs_f64(),
        keys as f64 / took.as_secs_f64(),
        peak_kib as f64 / 1024.0
    )
}

/// The follow's line: the load's rate, the lag's percentiles (`lag`
/// sorted), the migrator's peak RSS.
pub fn follow_line(writes: u64, took: Duration, lag: &[Duration], peak_kib: u64) -> String {
    format!(
        "follow: {:.0} writes/s for {:.0} s; lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes); migrator peak RSS {:.1} MiB",
        writes as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        percentile(lag, 0.5).as_secs_f64() * 1e3,
        percentile(lag, 0.99).as_secs_f64() * 1e3,
        lag.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lag.len(),
        peak_kib as f64 / 1024.0
    )
}

/// Waits (an hour at most) until the migration into `to` follows, sampling
/// the migrator's peak RSS: (the status then, the peak in KiB).
pub async fn until_following(m: &mut Migrator, to: &str) -> Result<(serde_json::Value, u64)> {
    let pid = m.pid().unwrap_or_default();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        ensure!(Instant::now() < deadline, "the copy took over an hour");
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        ensure!(m.is_running(), "the migrator exited: {}", m.log());
        let s = migrator::status(to).await?;
        if s["phase"] == "following" {
            return Ok((s, peak));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (30 s at most) for a PUT at revision `rev` or later on `events`.
pub async fn put_arrives(events: &mut WatchStream, rev: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "probe at {rev} never reached the target");
        let Ok(msg) = tokio::time::timeout(left, events.message()).await else {
            continue;
        };
        let Some(resp) = msg? else {
            bail!("the target's watch ended");
        };
        if resp.events().iter().any(|e| {
            e.event_type() == EventType::Put && e.kv().is_some_and(|kv| kv.mod_revision() >= rev)
        }) {
            return Ok(());
        }
    }
}
