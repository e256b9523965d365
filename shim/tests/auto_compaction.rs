//! `--auto-compaction-mode` and `--auto-compaction-retention` in a real
//! member: the compact revision moves where etcd's compactor would put it.
//! (The schedule itself, against etcd's, is unit-tested on a paused clock in
//! `compactor::periodic` and `compactor::revision`.)

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_run, free_port, wait_healthy, Cairn};

/// A one-member store with `flags` and `env`, healthy: (process, host:port).
fn spawn(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> (Cairn, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let log = dir.join("cairn.log");
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--data-dir",
            "data",
            "--listen-peer-urls",
            "http://127.0.0.1:0",
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(flags)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Cairn { child, log };
    wait_healthy(&mut server, &addr, &[]);
    (server, addr)
}

/// Writes `n` keys; the revision after the last.
fn put_many(addr: &str, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        let out = etcdctl_run(
            &[
                "--endpoints",
                addr,
                "-w",
                "json",
                "put",
                &format!("k{i}"),
                "v",
            ],
            None,
        );
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rev = json["header"]["revision"].as_i64().unwrap();
    }
    rev
}

/// Whether `revision` is the compact revision: readable, and the one below
/// it compacted.
fn compacted_to(addr: &str, revision: i64) -> bool {
    let get = |rev: i64| {
        etcdctl_run(
            &["--endpoints", addr, "get", "k0", &format!("--rev={rev}")],
            None,
        )
    };
    let below = get(revision - 1);
    let at = get(revision);
    let below_err = String::from_utf8_lossy(&below.stderr);
    at.status.success() && below_err.contains("required revision has been compacted")
}

/// Waits until the compact revision is `revision`.
fn wait_compacted_to(server: &Cairn, addr: &str, revision: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !compacted_to(addr, revision) {
        assert!(
            Instant::now() < deadline,
            "not compacted to {revision} within {limit:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Revision mode, retention 5: every check compacts to the current revision
/// minus 5, and the member logs one line per compaction. etcd checks every
/// 5 minutes; the test-only variable shortens that to a second.
#[test]
fn revision_mode_keeps_the_last_n_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
        ],
        &[("CAIRN_TEST_REVISION_COMPACTION_INTERVAL", "1s")],
    );
    let rev = put_many(&addr, 12);
    wait_compacted_to(&server, &addr, rev - 5, Duration::from_secs(20));
    let rev = put_many(&addr, 4);
    wait_compacted_to(&server, &addr, rev - 5, Duration::from_secs(20));
    let log = server.log_text();
    let line = format!("revision={}", rev - 5);
    assert!(
        log.lines()
            .any(|l| l.contains("completed auto revision compaction") && l.contains(&line)),
        "no compaction line for {line}:\n{log}"
    );
}

/// Periodic mode, retention 2s (etcd: sample every 200 ms, compact every
/// 2 s to the revision of 2 s before): once writes stop, the compact
/// revision reaches the last one.
#[test]
fn periodic_mode_compacts_to_the_revision_one_retention_ago() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = spawn(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
        &[],
    );
    let rev = put_many(&addr, 10);
    wait_compacted_to(&server, &addr, rev, Duration::from_secs(20));
}
