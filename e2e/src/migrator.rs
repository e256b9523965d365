//! `cairn migrate` as a user runs it: a long-lived `start` process that a test
//! can kill -9 and start again with the same arguments, and one-shot
//! `status`, `verify`, `cutover` and `abort` runs with a hard time limit.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::binaries::cairn_bin;
use crate::wait::{wait_until, Poll};

/// A `cairn migrate start` process, its arguments kept for restarts.
pub struct Migrator {
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Migrator {
    /// Spawns `cairn migrate start --from <from> --to <to> <extra...>`, its
    /// output appended to a log file of its own.
    pub fn start(from: &str, to: &str, extra: &[&str]) -> Result<Migrator> {
        let mut args = vec![
            "migrate".to_string(),
            "start".to_string(),
            format!("--from={from}"),
            format!("--to={to}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = tempfile::Builder::new()
            .prefix("cairn-e2e-migrator-")
            .tempdir()
            .context("creating migrator temp dir")?;
        let mut m = Migrator {
            args,
            dir,
            child: None,
            starts: 0,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.starts += 1;
        writeln!(
            log,
            "===== start {}: cairn {}",
            self.starts,
            self.args.join(" ")
        )?;
        let child = Command::new(cairn_bin()?)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning cairn migrate start")?;
        self.child = Some(child);
        Ok(())
    }

    /// The log file (stdout and stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("migrator.log")
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().context("reaping the killed migrator")?;
        }
        Ok(())
    }

    /// Kills the process if it runs and starts it again with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// The exit status once the process has ended on its own, within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("the migrator is not running");
            };
            if let Some(status) = child.try_wait().context("waiting for the migrator")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the migrator still runs after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id while it runs (the benchmark reads its memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Migrator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The test harness shows a test's output only when it fails.
        let log = self.log();
        let tail = &log[log.floor_char_boundary(log.len().saturating_sub(6000))..];
        eprintln!("----- migrator log tail -----\n{tail}\n-----------------------------");
    }
}

/// What one `cairn migrate ...` run printed, and how it ended.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// Both streams, for failure messages and substring checks.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cairn migrate <args...>` to its end, killed after `timeout`.
pub async fn run(args: &[&str], timeout: Duration) -> Result<RunOutput> {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    run_cairn(&all, timeout).await
}

/// Runs `cairn <args...>` (any one-shot subcommand) to its end, killed after `timeout`.
pub async fn run_cairn(args: &[&str], timeout: Duration) -> Result<RunOutput> {
    let what = format!("cairn {}", args.join(" "));
    let child = tokio::process::Command::new(cairn_bin()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    Ok(RunOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `cairn migrate status --to <to> -w json`, parsed.
pub async fn status(to: &str) -> Result<serde_json::Value> {
    let out = run(
        &["status", &format!("--to={to}"), "-w", "json"],
        Duration::from_secs(20),
    )
    .await?;
    if out.code != 0 {
        bail!("migrate status exited {}: {}", out.code, out.all());
    }
    serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("migrate status printed no JSON object: {}", out.stdout))
}

/// A field of a status object as an integer (0 when absent).
pub fn field(status: &serde_json::Value, name: &str) -> i64 {
    status.get(name).and_then(|v| v.as_i64()).unwrap_or(0)
}

/// Waits until the target's status satisfies `pred`; returns that status.
pub async fn wait_status(
    to: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_until(what, timeout, Duration::from_millis(100), || async {
        let s = status(to).await?;
        Ok(if pred(&s) {
            Poll::Ready(s)
        } else {
            Poll::NotYet(s.to_string())
        })
    })
    .await
}
