//! Robustness campaigns: a Kubernetes-shaped load on a Cairn cluster while
//! faults drawn from a seed hit it (kill -9, partitions, SIGSTOP pauses,
//! restarts of every member, member changes, a full disk, slow fsyncs), then
//! checks of everything the clients saw against what a correct store allows.
//!
//! * [`schedule`]: the fault kinds and a seed's schedule.
//! * [`faults`]: injecting them ([`faults::Injector`]).
//! * [`load`], [`watchers`], [`reference`]: the load, the watch streams, and
//!   the reference watcher that collects every event of the run.
//! * [`shared`]: what those tasks share and record.
//! * The checks, each usable on its own (and by [`self_check`], which plants
//!   anomalies in good histories and requires every one caught):
//!   [`history`] (the reference history on its own),
//!   [`crate::linearizability`] (the KV history), [`acked`] (acknowledged
//!   writes), [`reads`] (reads at a revision), [`watch_check`] (each
//!   stream), [`leases`], [`converge`] (members agree at the end).
//!
//! Run one with the `robustness` binary (`cargo run -p cairn-e2e --bin
//! robustness -- --help`), or [`run`] from a test. Like every cluster test it
//! needs a `cairn` built with fail points (see [`crate::failpoints`]).

pub mod acked;
pub mod converge;
pub mod faults;
pub mod history;
pub mod leases;
pub mod load;
pub mod reads;
pub mod reference;
pub mod schedule;
pub mod self_check;
pub mod shared;
pub mod watch_check;
pub mod watchers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ELECTION_MS};
use crate::linearizability::{check, CheckResult, Output};
use faults::Injector;
use schedule::{Fault, Kind};
use shared::Shared;

/// Each member's filesystem with `disk-full` among the faults: room for
/// two Raft log segments (64 MiB each, preallocated) and the store.
pub const DISK_BYTES: u64 = 256 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// How long the load (and the faults) run.
    pub duration: Duration,
    pub members: usize,
    pub faults: Vec<Kind>,
    /// Load clients and watchers.
    pub workers: usize,
    pub watchers: usize,
}

impl Config {
    pub fn new(seed: u64, duration: Duration) -> Config {
        Config {
            seed,
            duration,
            members: 3,
            faults: schedule::ALL.to_vec(),
            workers: 6,
            watchers: 6,
        }
    }
}

/// One thing a check found wrong.
#[derive(Clone, Debug)]
pub struct Anomaly {
    pub check: &'static str,
    pub detail: String,
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub schedule: Vec<Fault>,
    /// The faults as they ran, with times.
    pub log: Vec<String>,
    pub injected: BTreeMap<Kind, usize>,
    /// Requests sent by the load, and answered.
    pub sent: u64,
    pub answered: u64,
    /// Operations in the linearizability history, and of those answered.
    pub kv_ops: usize,
    pub kv_answered: usize,
    pub events: usize,
    pub streams: usize,
    pub stream_items: usize,
    pub reads: usize,
    pub acked: usize,
    pub compactions: u64,
    /// The longest time between two successful writes' answers: how long
    /// the cluster took no write.
    pub longest_write_gap: Duration,
    /// When that gap began, from the start of the load.
    pub longest_write_gap_at: Duration,
    pub anomalies: Vec<Anomaly>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn faults(&self) -> usize {
        self.injected.values().sum()
    }

    /// One line: the figures of the run.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .injected
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
            .collect();
        format!(
            "seed {}: {} in {:.0?}: {} requests ({} answered), {} KV ops checked for linearizability \
             ({} answered), {} acknowledged writes, {} reads at a revision, {} events, \
             {} watch streams ({} items), {} compactions, {} faults [{}], longest without a write {:.1?} (at {:.1?}), {} anomalies",
            self.seed,
            if self.ok() { "PASS" } else { "FAIL" },
            self.elapsed,
            self.sent,
            self.answered,
            self.kv_ops,
            self.kv_answered,
            self.acked,
            self.reads,
            self.events,
            self.streams,
            self.stream_items,
            self.compactions,
            self.faults(),
            kinds.join(" "),
            self.longest_write_gap,
            self.longest_write_gap_at,
            self.anomalies.len()
        )
    }

    /// Everything needed to reproduce and investigate a failure: the seed,
    /// the schedule, what ran, and each anomaly with its excerpt.
    pub fn failure(&self) -> String {
        let mut out = format!(
            "robustness campaign FAILED: seed {} (rerun: robustness --seed {} ...)\nschedule:\n",
            self.seed, self.seed
        );
        for f in &self.schedule {
            let _ = writeln!(out, "  {f}");
        }
        out.push_str("what ran:\n");
        for l in &self.log {
            let _ = writeln!(out, "  {l}");
        }
        let _ = writeln!(out, "{} anomalies:", self.anomalies.len());
        for a in self.anomalies.iter().take(20) {
            let _ = writeln!(out, "[{}] {}", a.check, a.detail);
        }
        out
    }
}

/// Runs one campaign. An `Err` is a harness failure (the cluster would not
/// start); everything the cluster did wrong is in the report's anomalies.
pub async fn run(cfg: &Config) -> Result<Report> {
    faults::check_members(cfg.members)?;
    let start = Instant::now();
    let extra = ["--snapshot-count=2000"];
    let cluster = if cfg.faults.contains(&Kind::DiskFull) {
        // Each member on a filesystem of its own, to fill.
        Cluster::start_on_tmpfs(cfg.members, &extra, DISK_BYTES).await?
    } else {
        Cluster::start(cfg.members, &extra).await?
    };
    // Enough faults for the duration: each takes at least half a second.
    let n = (cfg.duration.as_millis() / 500) as usize + 1;
    let schedule = schedule::draw(cfg.seed, &cfg.faults, n, Duration::from_millis(ELECTION_MS));
    let faults = schedule.clone();
    let mut report = run_with(cfg, cluster, move |inj, until| {
        Box::pin(async move { inj.run(&faults, until).await })
    })
    .await?;
    report.schedule = schedule;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Runs the load and every check on `cluster` while `drive` acts on it:
/// the fault schedule, or a scripted scenario (a rolling upgrade). `drive`
/// gets the injector and the end of the load (`cfg.duration` from now; the
/// load goes on to `drive`'s end if that is later); its error is a
/// `recovery` anomaly.
pub async fn run_with<F>(cfg: &Config, cluster: Cluster, drive: F) -> Result<Report>
where
    F: for<'a> FnOnce(
            &'a mut Injector,
            Instant,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>
        + Send,
{
    let start = Instant::now();
    let shared = Arc::new(Shared::default());
    let mut inj = Injector::new(cluster, shared.clone());
    let mut report = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let mut c = inj.cluster.client(0).await?;
    let lease = c.lease_grant(3660, None).await.context("the long lease")?;
    shared.long_lease.store(lease.id(), Ordering::SeqCst);

    let (until_tx, until_rx) = tokio::sync::watch::channel(i64::MAX);
    let reference = tokio::spawn(reference::reference(
        shared.clone(),
        until_rx,
        Duration::from_secs(60),
    ));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for id in 0..cfg.workers {
        tasks.push(tokio::spawn(load::worker(id, cfg.seed, shared.clone())));
    }
    for id in 0..cfg.watchers {
        tasks.push(tokio::spawn(watchers::watcher(
            id,
            cfg.seed,
            shared.clone(),
        )));
    }
    tasks.push(tokio::spawn(load::compactor(
        cfg.seed,
        Duration::from_secs(2),
        shared.clone(),
    )));

    let until = Instant::now() + cfg.duration;
    let mut anomalies = Vec::new();
    if let Err(e) = drive(&mut inj, until).await {
        anomalies.push(Anomaly {
            check: "recovery",
            detail: format!("{e:#}"),
        });
    }
    // Load alone for whatever is left of the duration.
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    shared.stop();
    for t in tasks {
        // Every task ends within a request timeout of the stop flag.
        if tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .is_err()
        {
            anomalies.push(Anomaly {
                check: "harness",
                detail: "a load task did not stop within 30 s".into(),
            });
        }
    }
    report.log = std::mem::take(&mut inj.log);
    report.injected = inj.injected.clone();

    let checked = finish(&mut inj, &shared, until_tx, reference, &mut report).await;
    match checked {
        Ok(found) => anomalies.extend(found),
        Err(e) => anomalies.push(Anomaly {
            check: "harness",
            detail: format!("{e:#}"),
        }),
    }
    report.anomalies = anomalies;
    report.sent = shared.sent.load(Ordering::Relaxed);
    report.answered = shared.answered.load(Ordering::Relaxed);
    report.compactions = shared.compactions.load(Ordering::Relaxed);
    (report.longest_write_gap, report.longest_write_gap_at) =
        longest_write_gap(&shared.rec.history());
    report.elapsed = start.elapsed();
    if !report.ok() {
        inj.cluster.keep();
        for i in inj.cluster.running() {
            eprintln!("m{i} log: {}", inj.cluster.members[i].log_path().display());
        }
    }
    Ok(report)
}

/// The longest time between consecutive answers of successful writes
/// (from the first to the last), and when it started (from the history's
/// origin, about when the load started).
pub fn longest_write_gap(ops: &[crate::linearizability::Operation]) -> (Duration, Duration) {
    let mut rets: Vec<u128> = ops
        .iter()
        .filter(|o| matches!(o.output, Output::Written { .. }))
        .map(|o| o.ret)
        .collect();
    rets.sort_unstable();
    let nanos = |n: u128| Duration::from_nanos(n.min(u64::MAX as u128) as u64);
    rets.windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .map_or((Duration::ZERO, Duration::ZERO), |(gap, at)| {
            (nanos(gap), nanos(at))
        })
}

/// Heals, lets the short leases expire, collects the reference history up
/// to the final revision, and runs every check.
async fn finish(
    inj: &mut Injector,
    shared: &Shared,
    until: tokio::sync::watch::Sender<i64>,
    reference: JoinHandle<Result<history::History>>,
    report: &mut Report,
) -> Result<Vec<Anomaly>> {
    let mut found = Vec::new();
    let f = &mut found;
    inj.heal_all().await?;
    if let Err(e) = inj.cluster.wait_all_ready(faults::RECOVERY).await {
        add(
            f,
            "recovery",
            vec![format!("after healing every fault: {e:#}")],
        );
        until.send_replace(0);
        return Ok(found);
    }
    let serving = inj.serving();
    let first = *serving.first().context("no member serving")?;
    let mut c = inj.cluster.client(first).await?;
    if let Some(left) = leases::wait_short_leases_expired(&mut c).await? {
        add(f, "leases", vec![left]);
    }
    let last = c.get("health", None).await.context("the final revision")?;
    let final_rev = last.header().map_or(0, |h| h.revision());
    until.send_replace(final_rev);
    // Linearizability needs only the clients' records: checked even when
    // the reference history could not be collected.
    let kv = shared.rec.history();
    report.kv_ops = kv.len();
    report.kv_answered = kv
        .iter()
        .filter(|o| !matches!(o.output, Output::Unknown))
        .count();
    match check(&kv, Duration::from_secs(120)) {
        CheckResult::Ok => {}
        CheckResult::Illegal { key, detail } => {
            add(f, "linearizability", vec![format!("key {key:?}: {detail}")])
        }
        CheckResult::Unknown => add(
            f,
            "linearizability",
            vec![format!(
                "inconclusive: the checker timed out on {} operations",
                kv.len()
            )],
        ),
    }

    let h = match reference.await.context("the reference watcher task")? {
        Ok(h) => h,
        Err(e) => {
            add(f, "reference history", vec![format!("{e:#}")]);
            return Ok(found);
        }
    };
    report.events = h.events().len();
    add(f, "reference history", h.validate());
    if h.last_rev() != final_rev {
        add(
            f,
            "reference history",
            vec![format!(
                "its last event is at revision {}, the store's revision is {final_rev}",
                h.last_rev()
            )],
        );
    }

    let acked = shared.take(&shared.acked);
    report.acked = acked.len();
    add(f, "acknowledged writes", acked::check_acked(&h, &acked));
    let reads = shared.take(&shared.reads);
    report.reads = reads.len();
    add(f, "reads at a revision", reads::check_reads(&h, &reads));
    let streams = shared.take(&shared.streams);
    report.streams = streams.len();
    report.stream_items = streams.iter().map(|s| s.seen.len()).sum();
    add(
        f,
        "watch",
        streams
            .iter()
            .filter_map(|s| watch_check::check_stream(&h, s).err())
            .collect(),
    );
    let end = h
        .states_at(&[final_rev])
        .pop()
        .map(|s| s.1)
        .unwrap_or_default();
    let live = shared.take(&shared.live_lease_keys);
    add(f, "leases", leases::check_live_keys(&end, &live));
    add(
        f,
        "convergence",
        converge::check_converged(&inj.cluster, &serving, final_rev, &end).await?,
    );
    Ok(found)
}

fn add(found: &mut Vec<Anomaly>, check: &'static str, details: Vec<String>) {
    found.extend(details.into_iter().map(|detail| Anomaly { check, detail }));
}
