//! `cairn migrate` as a user runs it: the `cairn` binary (build it first:
//! `cargo build --bins --features cairn-shim/failpoints`), its output and
//! exit codes, from a real etcd 3.5 into a real Cairn (both started by the
//! e2e harness).

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::binaries::cairn_bin;
use cairn_e2e::migrator::{field, wait_status};
use cairn_e2e::{Kind, Member};
use cairn_proto::migrate::Phase;
use common::{cfg, current_revision, start_target, target_client, wait_state};

/// Runs `cairn migrate <args>` to completion (bounded).
async fn migrate(args: &[&str]) -> Result<Output> {
    let bin = cairn_bin()?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("migrate")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("cairn migrate did not finish in 60s")??;
    Ok(out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn the_whole_migration_from_the_command_line() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let etcd = Member::start(Kind::Etcd).await?;
        let cairn = start_target().await?;
        let mut c = etcd.client().await?;
        let mut t = cairn.client().await?;
        for i in 0..200 {
            c.put(format!("/registry/k{i:03}"), format!("v{i}"), None).await?;
        }
        let rev = current_revision(&mut c).await?;
        c.compact(rev - 50, None).await?;
        let (from, to) = (etcd.endpoint(), cairn.endpoint());

        // Before anything: status of an untouched target; verify refuses.
        let out = migrate(&["status", "--to", &to, "-w", "json"]).await?;
        ensure!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(v["phase"], "none");

        let mut start = tokio::process::Command::new(cairn_bin()?)
            .args(["migrate", "start", "--from", &from, "--to", &to])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        wait_status(&to, "the copy to complete", Duration::from_secs(30), |s| {
            s["phase"] == "following"
        })
        .await?;
        c.put("/registry/later", "v", None).await?;
        let last = rev + 1;
        wait_status(&to, "the target to catch up", Duration::from_secs(30), |s| {
            field(s, "target_revision") >= last
        })
        .await?;

        let out = migrate(&["status", "--to", &to, "-w", "json"]).await?;
        let stdout = text(&out.stdout);
        println!("{stdout}");
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout)?;
        assert_eq!(v["phase"], "following");
        assert_eq!(v["target_revision"], last);
        assert_eq!(v["start_revision"], rev - 50);
        assert_eq!(v["compact_revision"], rev - 50);
        assert_eq!(v["history"], "full");
        let out = migrate(&["status", "--to", &to]).await?;
        let table = text(&out.stdout);
        println!("{table}");
        assert!(table.lines().any(|l| l == "phase              following"), "{table}");
        assert_eq!(table.lines().count(), 11);

        let out = migrate(&["verify", "--from", &from, "--to", &to]).await?;
        let stdout = text(&out.stdout);
        println!("{stdout}");
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert_eq!(
            stdout.lines().last().unwrap_or_default(),
            format!("verify at revision {last}: 201 keys on the source, 201 on the target, 0 differences, hashkv equal: OK")
        );

        let out = migrate(&["cutover", "--from", &from, "--to", &to, "--timeout", "30s"]).await?;
        let stdout = text(&out.stdout);
        println!("{stdout}");
        println!("{}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout.contains(&format!("cutover complete: the target took over at revision {last}\n")));
        assert!(stdout.contains("write unavailability (fence to switch): "));
        assert!(stdout.lines().any(|l| l == format!("--etcd-servers={to}")), "{stdout}");
        assert!(stdout.contains(&format!("no write reached the source after revision {last}")));

        // The running migrator sees the cutover and ends.
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = start.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = start.kill().await;
                bail!("start did not end after the cutover");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let out = start.wait_with_output().await?;
        println!("{}", text(&out.stdout));
        assert!(status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("the target at {to} was cut over at revision {last}; the migration is complete")
        );

        // A difference: exit 1, named. The two sides part after the switch:
        // with the fence lifted, each takes a different value of one key at
        // the next revision.
        let (src, _) = cairn_migrate::source::Source::connect(&cfg(&from), None).await?;
        src.unfence_all().await?;
        c.put("/registry/k007", "v7", None).await?;
        t.put("/registry/k007", "corrupted", None).await?;
        let next = (last + 1).to_string();
        let out = migrate(&["verify", "--from", &from, "--to", &to, "--revision", &next]).await?;
        let stdout = text(&out.stdout);
        println!("{stdout}");
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout.lines().any(|l| l == "differs: /registry/k007: value: source 2 bytes, target 9 bytes"), "{stdout}");
        // Could not tell: exit 2.
        let out = migrate(&["verify", "--from", "http://127.0.0.1:1", "--to", &to]).await?;
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).starts_with("error: cannot reach the source at http://127.0.0.1:1: "), "{}", text(&out.stderr));
        // Nothing to abort after a cutover.
        let out = migrate(&["abort", "--to", &to]).await?;
        assert_eq!(out.status.code(), Some(1));
        println!("{}", text(&out.stderr));
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// Not a test: the copy rate and the migrator's peak RSS for
/// `CAIRN_MIGRATE_BENCH_KEYS` (default 100,000) keys of 1 KiB, from etcd into
/// a one-member Cairn (so it measures the migrator, etcd and Cairn together).
/// `cargo test -p cairn-migrate --release --test cli -- --ignored --nocapture`
/// (with a release `cairn`: `cargo build --release --bins`).
#[tokio::test]
#[ignore]
async fn copy_rate_and_rss() -> Result<()> {
    let n: usize = std::env::var("CAIRN_MIGRATE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let etcd = cairn_e2e::Member::start_with(
        Kind::Etcd,
        cairn_e2e::MemberOptions {
            quota_backend_bytes: Some(8 << 30),
            ..Default::default()
        },
    )
    .await?;
    let cairn = cairn_e2e::Member::start_with(
        Kind::Cairn,
        cairn_e2e::MemberOptions {
            quota_backend_bytes: Some(8 << 30),
            ..Default::default()
        },
    )
    .await?;
    let value = "x".repeat(1024);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut c = etcd.client().await?;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(32) {
                c.put(format!("/registry/bench/k{i:08}"), value.clone(), None)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("seeded {n} keys in {:?}", t.elapsed());
    let mut c = etcd.client().await?;
    let rev = current_revision(&mut c).await?;
    c.compact(rev, None).await?;
    let (tgt, _) = target_client(&cairn).await?;
    let t = Instant::now();
    let mut start = tokio::process::Command::new(cairn_bin()?)
        .args([
            "migrate",
            "start",
            "--from",
            &etcd.endpoint(),
            "--to",
            &cairn.endpoint(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = start.id().context("no pid")?;
    wait_state::<()>(
        &tgt,
        None,
        "the copy to complete",
        Duration::from_secs(600),
        |s| s.phase == Phase::Following as i32,
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    let _ = start.kill().await;
    println!(
        "copied {n} keys of 1 KiB in {secs:.2}s: {:.0} keys/s; migrator peak RSS {hwm}",
        n as f64 / secs
    );
    Ok(())
}

/// Not a test: shows what `cairn migrate start` draws on a terminal (runs it
/// under `script`, a pseudo-terminal), for a look by eye. Small pages
/// (`--page-keys 20`) make the copy last long enough to watch.
/// `cargo test -p cairn-migrate --test cli -- --ignored --nocapture terminal`
#[tokio::test]
#[ignore]
async fn terminal_progress_bar() -> Result<()> {
    let etcd = Member::start(Kind::Etcd).await?;
    let cairn = start_target().await?;
    let mut c = etcd.client().await?;
    for i in 0..3000 {
        c.put(format!("/registry/k{i:05}"), "x".repeat(1024), None)
            .await?;
    }
    let rev = current_revision(&mut c).await?;
    c.compact(rev, None).await?;
    let (tgt, _) = target_client(&cairn).await?;
    let cmd = format!(
        "{} migrate start --from {} --to {} --page-keys 20",
        cairn_bin()?.display(),
        etcd.endpoint(),
        cairn.endpoint()
    );
    let child = tokio::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    wait_state::<()>(&tgt, None, "the copy", Duration::from_secs(60), |s| {
        s.phase == Phase::Following as i32
    })
    .await?;
    for i in 0..50 {
        c.put(format!("/registry/later{i}"), "v", None).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (src, _) = cairn_migrate::source::Source::connect(&cfg(&etcd.endpoint()), None).await?;
    cairn_migrate::cutover::run_cutover(
        &src,
        &tgt,
        Duration::from_secs(30),
        cairn_migrate::cutover::VerifyMode::Full,
    )
    .await?;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await??;
    let shown = text(&out.stdout)
        .replace('\r', "\n")
        .replace('\u{1b}', "<ESC>");
    println!("{shown}");
    Ok(())
}

/// Not a test: the lag of `cairn migrate start` (release build) behind a
/// source taking ~1,000 kube-shaped Txns/s for 10 s, from each write's
/// acknowledgement by etcd to a watcher of the target receiving that
/// revision (what a kube-apiserver switched to Cairn would see).
/// `cargo test -p cairn-migrate --release --test cli -- --ignored --nocapture lag`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn follow_lag() -> Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
    let etcd = Member::start(Kind::Etcd).await?;
    let cairn = start_target().await?;
    let mut c = etcd.client().await?;
    for i in 0..1000 {
        c.put(format!("/registry/pods/ns/p{i:04}"), "x".repeat(1000), None)
            .await?;
    }
    let (tgt, _) = target_client(&cairn).await?;
    let mut start = tokio::process::Command::new(cairn_bin()?)
        .args([
            "migrate",
            "start",
            "--from",
            &etcd.endpoint(),
            "--to",
            &cairn.endpoint(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let st = wait_state::<()>(&tgt, None, "the copy", Duration::from_secs(60), |s| {
        s.phase == Phase::Following as i32
    })
    .await?;
    // A watcher of the target's whole keyspace records when each revision arrives.
    let mut t = cairn.client().await?;
    let (_watcher, mut stream) = t
        .watch(
            vec![0u8],
            Some(
                WatchOptions::new()
                    .with_range(vec![0u8])
                    .with_start_revision(st.target_revision + 1),
            ),
        )
        .await?;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let watching = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            for e in resp.events() {
                if let Some(kv) = e.kv() {
                    let _ = seen_tx.send((kv.mod_revision(), at));
                }
            }
        }
    });
    // 10 writers, each 100 Txns/s, for 10 s.
    let mut tasks = Vec::new();
    for w in 0..10u64 {
        let mut c = etcd.client().await?;
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..1000u64 {
                tick.tick().await;
                let key = format!("/registry/pods/ns/p{:04}", (w * 100 + i) % 1000);
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::NotEqual,
                        -1,
                    )])
                    .and_then(vec![TxnOp::put(key, "y".repeat(1000), None)]);
                let r = c.txn(txn).await?;
                let rev = r.header().map(|h| h.revision()).unwrap_or_default();
                acks.push((rev, Instant::now()));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    let last = acks.iter().map(|a| a.0).max().unwrap_or_default();
    wait_state::<()>(&tgt, None, "catching up", Duration::from_secs(30), |s| {
        s.target_revision >= last
    })
    .await?;
    let mut seen = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains_key(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "the target's watcher never saw revision {last}"
        );
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some((rev, at))) => {
                seen.entry(rev).or_insert(at);
            }
            Ok(None) => bail!("the target's watch ended"),
            Err(_) => {}
        }
    }
    watching.abort();
    let mut lags: Vec<f64> = acks
        .iter()
        .filter_map(|(rev, at)| {
            seen.get(rev)
                .map(|i: &Instant| i.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} writes: lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lags.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let _ = start.kill().await;
    Ok(())
}
