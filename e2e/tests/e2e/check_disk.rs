//! `cairn check disk` on this machine: figures that make sense, whatever
//! the verdict (CI's disk decides that). Slowing a disk on purpose (a
//! device-mapper delay target, a FUSE layer) needs privileges CI does not
//! have, so the slow verdict is covered by the unit tests' figures only.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
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
