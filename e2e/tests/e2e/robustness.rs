//! Short robustness campaigns on every test run: three seeds, each a
//! 15-second Kubernetes-shaped load with faults, checked whole (see
//! `cairn_e2e::robustness`); and the `robustness` binary's self-check of
//! the checkers. Long campaigns run with the binary (docs/reliability.md).
//!
//! The seeds are chosen so that their first 15 seconds draw every fault
//! kind between them: 104 (member change, pause, restart of all; the seed
//! that found lost writes after a restart of all), 107 (kill, member change,
//! restart of all) and 119 (kill, member change, partition, pause).

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_e2e::robustness::{self, Config};

/// One short campaign; the failure report (seed, schedule, anomalies with
/// their excerpts) is the error.
async fn campaign(seed: u64) -> Result<()> {
    let report = robustness::run(&Config::new(seed, Duration::from_secs(15))).await?;
    eprintln!("{}", report.summary());
    ensure!(report.ok(), "{}", report.failure());
    // A run that injected nothing, or whose clients got nothing done, proves nothing.
    ensure!(
        report.faults() >= 2 && report.kv_answered >= 100 && report.streams >= 5,
        "too little happened: {}",
        report.summary()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_seed_104() -> Result<()> {
    campaign(104).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_seed_107() -> Result<()> {
    campaign(107).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_seed_119() -> Result<()> {
    campaign(119).await
}

/// The campaign's checks catch the bug ReadIndex batching must not have:
/// with the fail point, a member answers linearizable reads with the index
/// of a round that started before they arrived, and a follower then serves
/// reads that miss writes already acknowledged. Pauses make followers lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_served_from_an_earlier_read_index_round_is_caught() -> Result<()> {
    use cairn_e2e::cluster::{Cluster, ELECTION_MS};
    use cairn_e2e::failpoints::READ_INDEX_STALE_ROUND;
    use cairn_e2e::robustness::schedule::{self, Kind};

    let mut cfg = Config::new(31, Duration::from_secs(10));
    cfg.faults = vec![Kind::Pause];
    let cluster = Cluster::start_with_failpoints(3, &[READ_INDEX_STALE_ROUND]).await?;
    let faults = schedule::draw(
        cfg.seed,
        &cfg.faults,
        20,
        Duration::from_millis(ELECTION_MS),
    );
    let report = robustness::run_with(&cfg, cluster, move |inj, until| {
        Box::pin(async move { inj.run(&faults, until).await })
    })
    .await?;
    eprintln!("{}", report.summary());
    for a in report.anomalies.iter().take(3) {
        eprintln!("[{}] {}", a.check, a.detail);
    }
    ensure!(
        report
            .anomalies
            .iter()
            .any(|a| a.check == "linearizability"),
        "the planted stale reads went unnoticed: {}",
        report.failure()
    );
    Ok(())
}

fn robustness_bin(args: &[&str]) -> Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_robustness"))
        .args(args)
        .output()
        .context("running robustness")
}

#[test]
fn self_check_catches_every_planted_anomaly() -> Result<()> {
    let out = robustness_bin(&["--self-check"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{}\n{stdout}", out.status);
    for planted in [
        "stale read",
        "lost write",
        "reordered watch event",
        "duplicated watch event",
        "progress notification ahead of an event",
    ] {
        ensure!(
            stdout.contains(&format!("ok     {planted}")),
            "{planted} not caught:\n{stdout}"
        );
    }
    Ok(())
}

/// The disk faults: a full filesystem (a tmpfs per member, root only:
/// skipped otherwise, saying so) and slow fsyncs, with kills. Seed 205's
/// first faults draw each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_disk_faults_seed_205() -> Result<()> {
    if !cairn_e2e::tmpfs::can_mount() {
        eprintln!("skipped: the disk-full fault mounts a tmpfs, which needs root");
        return Ok(());
    }
    let mut cfg = Config::new(205, Duration::from_secs(15));
    cfg.faults = robustness::schedule::parse_kinds("disk-full,slow-disk,kill")?;
    let report = robustness::run(&cfg).await?;
    eprintln!("{}", report.summary());
    ensure!(report.ok(), "{}", report.failure());
    ensure!(
        report.injected.len() == 3 && report.kv_answered >= 100,
        "too little happened: {}",
        report.summary()
    );
    Ok(())
}
