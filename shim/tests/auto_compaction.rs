//! `--auto-compaction-mode` and `--auto-compaction-retention` in a real
//! member: the compact revision moves where etcd's compactor would put it.
//! (The schedule itself, against etcd's, is unit-tested on a paused clock in
//! `compactor::periodic` and `compactor::revision`.)

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl_run, spawn_cluster_env, spawn_single_env};

const INTERVAL_ENV: (&str, &str) = ("CAIRN_TEST_REVISION_COMPACTION_INTERVAL", "1s");

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
fn wait_compacted_to(log: &dyn Fn() -> String, addr: &str, revision: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !compacted_to(addr, revision) {
        assert!(
            Instant::now() < deadline,
            "{addr} not compacted to {revision} within {limit:?}:\n{}",
            log()
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
    let (server, addr, _) = spawn_single_env(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
        ],
        &[INTERVAL_ENV],
    );
    let rev = put_many(&addr, 12);
    wait_compacted_to(
        &|| server.log_text(),
        &addr,
        rev - 5,
        Duration::from_secs(20),
    );
    let rev = put_many(&addr, 4);
    wait_compacted_to(
        &|| server.log_text(),
        &addr,
        rev - 5,
        Duration::from_secs(20),
    );
    let log = server.log_text();
    let line = format!("\"revision\":{}", rev - 5);
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
    let (server, addr, _) = spawn_single_env(
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
    wait_compacted_to(&|| server.log_text(), &addr, rev, Duration::from_secs(20));
}

/// Three members, revision mode: only the leader compacts (one member logs
/// compactions, and it is the leader), and every member reaches the same
/// compact revision, through the log.
#[test]
fn only_the_leader_compacts_and_every_member_follows() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=3",
    ]
    .map(String::from);
    let cluster = spawn_cluster_env(dir.path(), "http", &flags, &[INTERVAL_ENV]);
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("m{i}/cairn.log"))).unwrap_or_default()
    };
    let all_logs = || {
        (0..3)
            .map(|i| format!("m{i}:\n{}", log(i)))
            .collect::<String>()
    };
    let leader_before = leader_index(&cluster.endpoints);
    let rev = put_many(&cluster.endpoints[0], 8);
    for ep in &cluster.endpoints {
        wait_compacted_to(&all_logs, ep, rev - 3, Duration::from_secs(20));
    }
    let leader_after = leader_index(&cluster.endpoints);
    let compacting: Vec<usize> = (0..3)
        .filter(|i| log(*i).contains("completed auto revision compaction"))
        .collect();
    // Leadership may move on a loaded machine; whoever compacted must have
    // led, and with one leader throughout, only it compacted.
    let leaders = if leader_before == leader_after {
        vec![leader_before]
    } else {
        vec![leader_before, leader_after]
    };
    assert!(
        !compacting.is_empty() && compacting.iter().all(|i| leaders.contains(i)),
        "members that compacted {compacting:?}, leaders {leaders:?}:\n{}",
        all_logs()
    );
}

/// Which of `endpoints` leads, by `etcdctl endpoint status`.
fn leader_index(endpoints: &[String]) -> usize {
    let out = etcdctl_run(
        &[
            "--endpoints",
            &endpoints.join(","),
            "-w",
            "json",
            "endpoint",
            "status",
        ],
        None,
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leader = status[0]["Status"]["leader"].as_u64();
    (0..endpoints.len())
        .find(|i| status[*i]["Status"]["header"]["member_id"].as_u64() == leader)
        .unwrap_or_else(|| panic!("no leader in {status}"))
}
