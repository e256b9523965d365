//! `robustness`: runs robustness campaigns against a Cairn cluster (see
//! `cairn_e2e::robustness`), or the checkers' self-check.
//!
//! ```text
//! robustness --seed S --duration 60s --members 3 --faults kill,partition,pause,restart-all,member-change [--runs N]
//! robustness --seed S --duration 30s --faults disk-full,slow-disk,kill [--runs N]   (disk-full: as root)
//! robustness --self-check
//! ```
//!
//! Exit status: 0 when every run passed (or every planted anomaly was
//! caught), 1 when one found an anomaly, 2 on a usage or harness error.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cairn_e2e::robustness::{self, schedule, Config};

const USAGE: &str = "usage: robustness [--seed S] [--duration 60s] [--members 3] \
[--faults kill,partition,pause,restart-all,member-change] [--runs N] [--workers N] [--watchers N]
       robustness --self-check

--faults defaults to the five above; disk-full (each member's data dir on a tmpfs
of its own, filled; needs root to mount) and slow-disk (slow Raft log fsyncs)
are asked for by name.

--runs N runs seeds S, S+1, ... S+N-1 one after another and prints their totals.
The cluster's `cairn` is $CAIRN_BIN, else target/<profile>/cairn; it must be
built with fail points: cargo build --release -p cairn-shim --features failpoints";

enum Mode {
    SelfCheck,
    Campaign { cfg: Config, runs: u64 },
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().with_context(|| format!("duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("duration {s:?}: the unit must be ms, s or m"),
    })
}

fn parse(args: &[String]) -> Result<Mode> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut cfg = Config::new(seed, Duration::from_secs(60));
    let mut runs = 1;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--self-check" {
            return Ok(Mode::SelfCheck);
        }
        if flag == "--help" || flag == "-h" {
            bail!("{USAGE}");
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--seed" => cfg.seed = value.parse().context("--seed")?,
            "--duration" => cfg.duration = parse_duration(value)?,
            "--members" => cfg.members = value.parse().context("--members")?,
            "--faults" => cfg.faults = schedule::parse_kinds(value)?,
            "--runs" => runs = value.parse().context("--runs")?,
            "--workers" => cfg.workers = value.parse().context("--workers")?,
            "--watchers" => cfg.watchers = value.parse().context("--watchers")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    Ok(Mode::Campaign { cfg, runs })
}

fn self_check() -> ExitCode {
    let cases = robustness::self_check::run();
    let mut all = true;
    for c in &cases {
        println!("{} {}", if c.right { "ok    " } else { "MISSED" }, c.name);
        if !c.right {
            println!("  the checkers said: {}", c.said);
            all = false;
        }
    }
    if all {
        println!("self-check: all {} cases judged right", cases.len());
        ExitCode::SUCCESS
    } else {
        println!("self-check FAILED");
        ExitCode::from(1)
    }
}

async fn campaigns(cfg: Config, runs: u64) -> Result<bool> {
    let (mut passed, mut sent, mut answered, mut faults, mut anomalies) = (0, 0, 0, 0, 0);
    for n in 0..runs {
        let cfg = Config {
            seed: cfg.seed + n,
            ..cfg.clone()
        };
        let report = robustness::run(&cfg).await?;
        println!("{}", report.summary());
        if !report.ok() {
            println!("{}", report.failure());
        } else {
            passed += 1;
        }
        sent += report.sent;
        answered += report.answered;
        faults += report.faults();
        anomalies += report.anomalies.len();
    }
    if runs > 1 {
        println!(
            "total: {runs} runs of {:?} (seeds {}..={}), {passed} passed, {sent} requests \
             ({answered} answered), {faults} faults injected, {anomalies} anomalies",
            cfg.duration,
            cfg.seed,
            cfg.seed + runs - 1
        );
    }
    Ok(passed == runs)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cfg, runs) = match parse(&args) {
        Ok(Mode::SelfCheck) => return self_check(),
        Ok(Mode::Campaign { cfg, runs }) => (cfg, runs),
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(campaigns(cfg, runs)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("robustness: {e:#}");
            ExitCode::from(2)
        }
    }
}
