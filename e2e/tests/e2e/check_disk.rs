//! `cairn check disk` on this machine: figures that make sense, whatever
//! the verdict (CI's disk decides that). This VM has no device-mapper
//! (no /dev/mapper, no dm-delay) to slow a disk with, so a slow disk is
//! made with the `slow_fsync` fail point, which adds a sleep after every
//! fdatasync the check and the Raft log make: the check must then say the
//! disk is too slow, and a member must warn at start.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_e2e::binaries::cairn_bin;
use cairn_e2e::migrator::run_cairn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_disk_reports_sane_percentiles_and_a_verdict() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("m0.cairn");
    let out = run_cairn(
        &[
            "check",
            "disk",
            "--data-dir",
            &data_dir.display().to_string(),
            "--count",
            "100",
            "-w",
            "json",
        ],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        out.code == 0 || out.code == 1,
        "exit {}: {}",
        out.code,
        out.all()
    );
    let r: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).with_context(|| out.all())?;
    let f = |k: &str| r[k].as_f64().unwrap_or(-1.0);
    ensure!(r["count"] == 100, "{r}");
    ensure!(
        0.0 < f("p50_ms") && f("p50_ms") <= f("p99_ms") && f("p99_ms") <= f("max_ms"),
        "{r}"
    );
    // The verdict follows etcd's guidance, and the exit code the verdict.
    let fast = f("p99_ms") < 10.0;
    ensure!(r["fast_enough"] == fast && (out.code == 0) == fast, "{r}");
    // The data dir does not exist yet: its parent was measured, and left clean.
    ensure!(r["dir"] == dir.path().display().to_string(), "{r}");
    ensure!(
        std::fs::read_dir(dir.path())?.count() == 0,
        "scratch file left behind"
    );
    eprintln!("cairn check disk on this machine: {r}");
    Ok(())
}

/// `cairn check disk` with every fdatasync 15 ms slower: p99 over etcd's
/// 10 ms, exit 1; and a member started on such a disk logs the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_is_reported_and_warned_about_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let slow = [(cairn_e2e::failpoints::ENV, "slow_fsync=sleep(15)")];
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(cairn_bin()?)
            .args(["check", "disk", "--data-dir"])
            .arg(dir.path())
            .args(["--count", "40", "-w", "json"])
            .envs(slow)
            .output(),
    )
    .await
    .context("check disk did not finish in 30 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {stdout}",
        out.status.code()
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).context("json")?;
    ensure!(
        r["fast_enough"] == false && r["p99_ms"].as_f64().unwrap_or(0.0) >= 15.0,
        "{r}"
    );

    // A member on the same slow disk warns once it has measured.
    let port = cairn_e2e::ports::free_port()?;
    let peer = cairn_e2e::ports::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(cairn_bin()?)
        .arg(format!("--data-dir={}", dir.path().join("m").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .envs(slow)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Some(l) = lines.next_line().await? {
            if l.contains("fdatasync p99 is over etcd's 10 ms guidance") {
                return Ok::<_, anyhow::Error>(l);
            }
        }
        anyhow::bail!("the member's log ended without the slow-disk warning")
    })
    .await
    .context("no slow-disk warning within 30 s")??;
    child.kill().await?;
    ensure!(found.contains("warn") || found.contains("WARN"), "{found}");
    Ok(())
}
