//! The real etcdctl 3.5 `watch` and `lease` commands against Cairn, with the
//! same commands run against a real etcd and the outputs compared (exit
//! code, stdout, and the `Error:`/`watch was canceled` lines of stderr).
//!
//! Normalised: lease ids (server-chosen, so different on each side) are
//! replaced by placeholders in order of grant; `remaining(Ns)` of
//! `lease timetolive` is checked to be within 2 s of the granted TTL and then
//! replaced; lists etcd prints in Go map order (`lease list`, attached keys)
//! are sorted; JSON headers lose cluster_id, member_id and raft_term;
//! `lease keep-alive`'s repeated identical lines (their number depends on
//! timing) are collapsed.
//!
//! `etcdctl watch` does not exit by itself: each run is read until its
//! output is complete (a condition on stdout, with a deadline), then killed.
//! The members run with a 500 ms progress-notify interval for
//! `watch --progress-notify`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::binaries::etcdctl_bin;
use cairn_e2e::etcdctl::strip_header_ids;
use cairn_e2e::etcdctl::{etcdctl, CtlOutput};
use cairn_e2e::raw::*;
use cairn_e2e::Member;
use cairn_proto::etcdserverpb as pb;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::util::*;

/// What an etcdctl run produced; `code` is None if it was killed because
/// its output was complete (a running `watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs etcdctl until it exits or `done(stdout)` holds (then kills it), with
/// a deadline. Stdin (if given) is written and kept open until the end.
async fn ctl_until(
    endpoint: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<Run> {
    let what = format!("etcdctl {}", args.join(" "));
    let mut child = Command::new(etcdctl_bin()?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await?;
        input.flush().await?;
    }
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let err = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let (o2, e2) = (out.clone(), err.clone());
    let ro = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = so.read(&mut buf).await {
            if n == 0 {
                break;
            }
            o2.lock().await.extend_from_slice(&buf[..n]);
        }
    });
    let re = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = se.read(&mut buf).await {
            if n == 0 {
                break;
            }
            e2.lock().await.extend_from_slice(&buf[..n]);
        }
    });
    let start = Instant::now();
    let mut code = None;
    let mut finished = false;
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait()? {
            code = Some(status.code().unwrap_or(-1));
            finished = true;
            break;
        }
        if done(&String::from_utf8_lossy(&out.lock().await)) {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling with a deadline
    }
    // What the command had printed when its output was judged complete; a
    // command that keeps running (watch) would otherwise print more below.
    let complete = out.lock().await.clone();
    if finished && code.is_none() {
        // Give a command that is about to exit (lease keep-alive after the
        // revoke) a moment, so its exit code does not depend on who was faster.
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            code = Some(status.code().unwrap_or(-1));
        }
    }
    if code.is_none() {
        let _ = child.kill().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ro).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), re).await;
    drop(input);
    let stdout = if finished && code.is_none() {
        complete
    } else {
        out.lock().await.clone()
    };
    let run = Run {
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&err.lock().await).into_owned(),
    };
    ensure!(
        finished,
        "{what}: output incomplete after {timeout:?}: {run:?}"
    );
    Ok(run)
}

/// The comparable part of a run: exit code, stdout with JSON lines
/// normalised, the error lines of stderr.
fn comparable(r: &Run) -> (Option<i32>, String, Vec<String>) {
    let stdout = r
        .stdout
        .lines()
        .filter(|l| {
            !(l.starts_with("\"ClusterID\" : ")
                || l.starts_with("\"MemberID\" : ")
                || l.starts_with("\"RaftTerm\" : "))
        })
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(mut v) if l.starts_with('{') => {
                strip_header_ids(&mut v);
                v.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let errors = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error:") || l.starts_with("watch was canceled"))
        .map(str::to_string)
        .collect();
    (r.code, stdout, errors)
}

struct Duo {
    etcd: Member,
    cairn: Member,
    diffs: Vec<String>,
    steps: usize,
}

impl Duo {
    fn record(
        &mut self,
        what: &str,
        e: (Option<i32>, String, Vec<String>),
        c: (Option<i32>, String, Vec<String>),
    ) {
        self.steps += 1;
        if std::env::var_os("CAIRN_E2E_VERBOSE").is_some() {
            eprintln!("$ {what}\n  etcd : {e:?}\n  cairn: {c:?}");
        }
        if e != c {
            self.diffs.push(format!(
                "{what}\n  etcd : code {:?} stdout {:?} errors {:?}\n  cairn: code {:?} stdout {:?} errors {:?}",
                e.0, e.1, e.2, c.0, c.1, c.2
            ));
        }
    }

    /// The verdict of a run: its own error, or the differences it collected.
    /// Either way a failure keeps both members' data dirs and logs.
    fn conclude(mut self, run: Result<()>) -> Result<()> {
        if let Err(e) = run {
            self.etcd.keep_on_drop();
            self.cairn.keep_on_drop();
            return Err(e);
        }
        self.finish()
    }

    fn finish(mut self) -> Result<()> {
        if self.diffs.is_empty() {
            return Ok(());
        }
        self.etcd.keep_on_drop();
        self.cairn.keep_on_drop();
        bail!(
            "{} of {} etcdctl runs differ between etcd and cairn:\n\n{}\n\ncairn log: {}",
            self.diffs.len(),
            self.steps,
            self.diffs.join("\n\n"),
            self.cairn.log_path().display()
        )
    }
}

async fn start_duo() -> Result<Duo> {
    let (ea, ca) = progress_interval_args("500ms");
    let ea: Vec<&str> = ea.iter().map(String::as_str).collect();
    let ca: Vec<&str> = ca.iter().map(String::as_str).collect();
    let (etcd, cairn) = start_pair(&ea, &ca, None).await?;
    Ok(Duo {
        etcd,
        cairn,
        diffs: Vec::new(),
        steps: 0,
    })
}

async fn ctl(m: &Member, args: &[&str]) -> Result<CtlOutput> {
    etcdctl(&m.host_port(), args, None).await
}

fn sv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs etcdctl on etcd (`args[0]`) and Cairn (`args[1]`) concurrently.
async fn both(
    endpoints: &[String; 2],
    args: [Vec<String>; 2],
    stdin: Option<&str>,
    timeout: Duration,
    done: fn(&str) -> bool,
) -> Result<(Run, Run)> {
    let a0: Vec<&str> = args[0].iter().map(String::as_str).collect();
    let a1: Vec<&str> = args[1].iter().map(String::as_str).collect();
    let (e, c) = tokio::join!(
        ctl_until(&endpoints[0], &a0, stdin, timeout, done),
        ctl_until(&endpoints[1], &a1, stdin, timeout, done)
    );
    Ok((e.context("etcd")?, c.context("cairn")?))
}

fn never(_: &str) -> bool {
    false
}

// ---------------------------------------------------------------------------

fn lines(s: &str) -> usize {
    s.lines().count()
}

fn json_events(s: &str) -> usize {
    s.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["Events"].as_array().map(|a| a.len()).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_matches_etcd() -> Result<()> {
    let mut duo = start_duo().await?;
    let r = watch_runs(&mut duo).await;
    duo.conclude(r)
}

async fn watch_runs(duo: &mut Duo) -> Result<()> {
    // The same writes on both (a lease with a client-chosen id, so the
    // events' lease field is the same).
    for m in [&duo.etcd, &duo.cairn] {
        let ch = channel(m).await?;
        lease_client(&ch)
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 3600,
                id: 0x77,
            })
            .await?;
        for args in [
            vec!["put", "a/1", "v1"],
            vec!["put", "a/2", "v2"],
            vec!["put", "a/1", "v1b"],
            vec!["del", "a/2"],
            vec!["put", "b/1", "x"],
            vec!["put", "--lease=77", "a/3", "leased"],
        ] {
            let o = ctl(m, &args).await?;
            ensure!(o.code == 0, "{} etcdctl {args:?}: {o:?}", m.kind());
        }
    }
    let t = Duration::from_secs(20);
    type Done = fn(&str) -> bool;
    let runs: Vec<(Vec<&str>, Option<&str>, Done)> = vec![
        // 5 events of 3 lines.
        (vec!["watch", "--prefix", "a/", "--rev", "2"], None, |s| {
            lines(s) >= 15
        }),
        // + prev_kv (2 lines) for the update and the delete.
        (
            vec!["watch", "--prefix", "a/", "--rev", "2", "--prev-kv"],
            None,
            |s| lines(s) >= 19,
        ),
        (
            vec!["watch", "--prefix", "a/", "--rev", "2", "-w", "json"],
            None,
            |s| json_events(s) >= 5,
        ),
        (
            vec!["watch", "a/1", "--rev", "2", "--prev-kv", "-w", "fields"],
            None,
            |s| s.matches("\"Type\"").count() >= 2,
        ),
        (vec!["watch", "a/", "b/", "--rev", "2"], None, |s| {
            lines(s) >= 15
        }),
        (
            vec!["watch", "--rev", "2", "a/1", "--", "echo", "exec-ran"],
            None,
            |s| s.matches("exec-ran").count() >= 2,
        ),
        (vec!["watch", "-i"], Some("watch b/1 --rev 2\n"), |s| {
            lines(s) >= 3
        }),
        (
            vec!["watch", "c/", "--prefix", "--progress-notify"],
            None,
            |s| s.contains("progress notify:"),
        ),
    ];
    let eps = [duo.etcd.host_port(), duo.cairn.host_port()];
    for (args, stdin, done) in &runs {
        let (e, c) = both(&eps, [sv(args), sv(args)], *stdin, t, *done).await?;
        let what = format!("etcdctl {} {stdin:?}", args.join(" "));
        duo.record(&what, comparable(&e), comparable(&c));
    }
    // A watch from a compacted revision: etcdctl reports the cancel and exits.
    for m in [&duo.etcd, &duo.cairn] {
        let o = ctl(m, &["compaction", "5"]).await?;
        ensure!(o.code == 0, "{} compaction: {o:?}", m.kind());
    }
    let args = sv(&["watch", "a/1", "--rev", "3"]);
    let (e, c) = both(&eps, [args.clone(), args], None, t, never).await?;
    duo.record(
        "etcdctl watch a/1 --rev 3 (compacted at 5)",
        comparable(&e),
        comparable(&c),
    );
    Ok(())
}

// ---------------------------------------------------------------------------

/// Lease ids in order of first appearance (as etcdctl prints them, %016x).
#[derive(Default)]
struct Ids(Vec<String>);

impl Ids {
    fn learn_from_grant(&mut self, stdout: &str) -> Result<String> {
        // "lease 694d7c5c5d2b1a0b granted with TTL(60s)"
        let id = stdout
            .split_whitespace()
            .nth(1)
            .filter(|_| stdout.starts_with("lease "))
            .with_context(|| format!("not a grant: {stdout:?}"))?
            .to_string();
        self.0.push(id.clone());
        Ok(id)
    }

    fn normalize(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (i, id) in self.0.iter().enumerate() {
            s = s.replace(id, &format!("<L{}>", i + 1));
            let short = id.trim_start_matches('0');
            if !short.is_empty() && short != id {
                s = s.replace(short, &format!("<L{}>", i + 1));
            }
            // JSON output prints ids in decimal.
            if let Ok(n) = i64::from_str_radix(id, 16) {
                s = s.replace(&n.to_string(), &format!("<L{}>", i + 1));
            }
        }
        s
    }
}

/// Normalises timing-dependent and map-ordered parts of lease output.
fn lease_output(ids: &Ids, r: &Run) -> Result<(Option<i32>, String, Vec<String>)> {
    let (code, stdout, errors) = comparable(r);
    let mut out = Vec::new();
    let mut listed = Vec::new();
    for line in ids.normalize(&stdout).lines() {
        let mut l = line.to_string();
        // "granted with TTL(60s), remaining(59s)"
        if let (Some(a), Some(b)) = (l.find("TTL("), l.find("remaining(")) {
            let ttl: i64 = l[a + 4..]
                .split('s')
                .next()
                .unwrap_or("")
                .parse()
                .unwrap_or(-1);
            let rest = &l[b + 10..];
            let rem: i64 = rest.split('s').next().unwrap_or("").parse().unwrap_or(-100);
            let ok = rem <= ttl && rem >= ttl - 2;
            let end = b + 10 + rest.find(')').unwrap_or(0);
            l = format!(
                "{}remaining({}){}",
                &l[..b],
                if ok {
                    "<ttl-2..ttl>".to_string()
                } else {
                    format!("{rem}s: OUT OF RANGE")
                },
                &l[end + 1..]
            );
        }
        // "attached keys([k1 k2])"
        if let Some(a) = l.find("attached keys([") {
            let inner_start = a + "attached keys([".len();
            if let Some(len) = l[inner_start..].find("])") {
                let mut keys: Vec<&str> = l[inner_start..inner_start + len].split(' ').collect();
                keys.sort();
                l = format!(
                    "{}{}{}",
                    &l[..inner_start],
                    keys.join(" "),
                    &l[inner_start + len..]
                );
            }
        }
        if l.starts_with("<L") && !l.contains(' ') {
            listed.push(l); // a `lease list` line
            continue;
        }
        if out.last() != Some(&l) {
            out.push(l);
        }
    }
    listed.sort();
    out.extend(listed);
    Ok((
        code,
        out.join("\n"),
        errors.iter().map(|e| ids.normalize(e)).collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_matches_etcd() -> Result<()> {
    let mut duo = start_duo().await?;
    let r = lease_runs(&mut duo).await;
    duo.conclude(r)
}

async fn lease_runs(duo: &mut Duo) -> Result<()> {
    let (mut ie, mut ic) = (Ids::default(), Ids::default());
    let t = Duration::from_secs(20);
    let endpoints = [duo.etcd.host_port(), duo.cairn.host_port()];

    // Grants: a 60 s lease, a 1 s one (raised to the 2 s minimum).
    let mut l60 = Vec::new();
    let mut l2 = Vec::new();
    for ttl in ["60", "1"] {
        let a = sv(&["lease", "grant", ttl]);
        let (e, c) = both(&endpoints, [a.clone(), a], None, t, never).await?;
        let (ide, idc) = (
            ie.learn_from_grant(&e.stdout)?,
            ic.learn_from_grant(&c.stdout)?,
        );
        duo.record(
            &format!("lease grant {ttl}"),
            lease_output(&ie, &e)?,
            lease_output(&ic, &c)?,
        );
        if ttl == "60" {
            l60 = vec![ide, idc];
        } else {
            l2 = vec![ide, idc];
        }
    }
    // Keep the 2 s lease alive from now on (it is used for keep-alive below).
    let ka_args: Vec<Vec<String>> = (0..2)
        .map(|i| vec!["lease".into(), "keep-alive".into(), l2[i].clone()])
        .collect();
    let ka = {
        let (a, b) = (ka_args[0].clone(), ka_args[1].clone());
        let (ea, eb) = (endpoints[0].clone(), endpoints[1].clone());
        tokio::spawn(async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            let done = |s: &str| s.contains("expired or revoked");
            tokio::join!(
                ctl_until(&ea, &a, None, Duration::from_secs(40), done),
                ctl_until(&eb, &b, None, Duration::from_secs(40), done)
            )
        })
    };

    // Steps with per-side arguments (the lease id differs).
    type ArgsFor = Box<dyn Fn(&str) -> Vec<String>>;
    let steps: Vec<(&str, ArgsFor)> = vec![
        (
            "put --lease=<L1> k1 v1",
            Box::new(|id: &str| {
                vec![
                    "put".into(),
                    format!("--lease={id}"),
                    "k1".into(),
                    "v1".into(),
                ]
            }),
        ),
        (
            "put --lease=<L1> k2 v2",
            Box::new(|id: &str| {
                vec![
                    "put".into(),
                    format!("--lease={id}"),
                    "k2".into(),
                    "v2".into(),
                ]
            }),
        ),
        (
            "lease timetolive <L1>",
            Box::new(|id: &str| vec!["lease".into(), "timetolive".into(), id.into()]),
        ),
        (
            "lease timetolive <L1> --keys",
            Box::new(|id: &str| {
                vec![
                    "lease".into(),
                    "timetolive".into(),
                    id.into(),
                    "--keys".into(),
                ]
            }),
        ),
        (
            "lease list",
            Box::new(|_: &str| vec!["lease".into(), "list".into()]),
        ),
        (
            "lease keep-alive --once <L1>",
            Box::new(|id: &str| {
                vec![
                    "lease".into(),
                    "keep-alive".into(),
                    "--once".into(),
                    id.into(),
                ]
            }),
        ),
        (
            "get k1 -w json",
            Box::new(|_: &str| vec!["get".into(), "k1".into(), "-w".into(), "json".into()]),
        ),
        (
            "lease revoke <L1>",
            Box::new(|id: &str| vec!["lease".into(), "revoke".into(), id.into()]),
        ),
        (
            "get --prefix k",
            Box::new(|_: &str| vec!["get".into(), "--prefix".into(), "k".into()]),
        ),
        (
            "lease revoke <L1> (again)",
            Box::new(|id: &str| vec!["lease".into(), "revoke".into(), id.into()]),
        ),
        (
            "lease timetolive <L1> (revoked)",
            Box::new(|id: &str| vec!["lease".into(), "timetolive".into(), id.into()]),
        ),
        (
            "lease keep-alive --once <L1> (revoked)",
            Box::new(|id: &str| {
                vec![
                    "lease".into(),
                    "keep-alive".into(),
                    "--once".into(),
                    id.into(),
                ]
            }),
        ),
        (
            "lease revoke 123abc (unknown)",
            Box::new(|_: &str| vec!["lease".into(), "revoke".into(), "123abc".into()]),
        ),
    ];
    for (what, args) in &steps {
        let (e, c) = both(&endpoints, [args(&l60[0]), args(&l60[1])], None, t, never).await?;
        duo.record(
            &format!("etcdctl {what}"),
            lease_output(&ie, &e)?,
            lease_output(&ic, &c)?,
        );
    }
    // The keep-alive of the 2 s lease has been running for a while: the
    // lease is alive; revoking it ends `lease keep-alive`.
    let per = |cmd: &str, i: usize| sv(&["lease", cmd, &l2[i]]);
    let (e, c) = both(
        &endpoints,
        [per("timetolive", 0), per("timetolive", 1)],
        None,
        t,
        never,
    )
    .await?;
    duo.record(
        "etcdctl lease timetolive <L2> (kept alive)",
        lease_output(&ie, &e)?,
        lease_output(&ic, &c)?,
    );
    let (e, c) = both(
        &endpoints,
        [per("revoke", 0), per("revoke", 1)],
        None,
        t,
        never,
    )
    .await?;
    duo.record(
        "etcdctl lease revoke <L2>",
        lease_output(&ie, &e)?,
        lease_output(&ic, &c)?,
    );
    let (e, c) = ka.await?;
    duo.record(
        "etcdctl lease keep-alive <L2> (until revoked)",
        lease_output(&ie, &e.context("etcd keep-alive")?)?,
        lease_output(&ic, &c.context("cairn keep-alive")?)?,
    );
    let a = sv(&["lease", "list"]);
    let (e, c) = both(&endpoints, [a.clone(), a], None, t, never).await?;
    duo.record(
        "etcdctl lease list (none left)",
        lease_output(&ie, &e)?,
        lease_output(&ic, &c)?,
    );
    Ok(())
}
