//! Running the real etcdctl 3.5 (`ETCDCTL_API=3`) against a member.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::binaries::etcdctl_bin;

/// What one etcdctl invocation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtlOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Hard limit for a single etcdctl run (it also gets --command-timeout).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `etcdctl --endpoints <endpoint> <args...>`, feeding `stdin` if given.
/// `endpoint` is `127.0.0.1:port` or `http://127.0.0.1:port`.
pub async fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<CtlOutput> {
    let bin = etcdctl_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("etcdctl --endpoints={endpoint} {}", args.join(" "));
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("etcdctl stdin")?;
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let out = tokio::time::timeout(CTL_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {CTL_TIMEOUT:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    Ok(CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Removes cluster_id, member_id and raft_term from every header object of
/// etcdctl's JSON output (it writes both "header" and "Header"): the only
/// fields in which two correct servers may differ.
pub fn strip_header_ids(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k.eq_ignore_ascii_case("header") {
                    if let Value::Object(h) = child {
                        h.remove("cluster_id");
                        h.remove("member_id");
                        h.remove("raft_term");
                    }
                }
                strip_header_ids(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_header_ids),
        _ => {}
    }
}
