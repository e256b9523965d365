//! Disk full and disk errors (docs/reliability.md, "Disk full and disk
//! errors"): a member whose storage fails exits with status 1 and a message
//! naming the fault and its data dir, loses no acknowledged write, and
//! serves again once restarted (after space is freed).
//!
//! The full disk is a real one: a tmpfs mounted under the member's data dir,
//! filled with a file (root only; skipped, saying so, otherwise). The failed
//! write is the `raft_log_write_error` fail point, set at runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::failpoints;
use cairn_e2e::tmpfs::{self, Tmpfs};
use cairn_e2e::{connect_with, ClientTimeouts, Kind, Member, MemberOptions};

/// Upper bound on writes while waiting for the member to stop.
const MAX_PUTS: usize = 20_000;

fn timeouts() -> ClientTimeouts {
    ClientTimeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
    }
}

/// Puts fresh keys of `value_bytes` until the member exits (or `within`
/// passes: an error). Returns the acknowledged (key, value) pairs and the
/// last error a put saw.
async fn put_until_exit(
    member: &mut Member,
    prefix: &str,
    value_bytes: usize,
    within: Duration,
) -> Result<(BTreeMap<String, String>, String)> {
    let mut acked = BTreeMap::new();
    let mut last_err = String::new();
    let deadline = Instant::now() + within;
    let mut client = connect_with(&member.endpoint(), timeouts()).await?;
    for i in 0..MAX_PUTS {
        if member.exit_status().is_some() {
            return Ok((acked, last_err));
        }
        ensure!(
            Instant::now() < deadline,
            "the member still runs {within:?} into the fault ({} puts acknowledged, last error {last_err:?})\n{}",
            acked.len(),
            member.describe()
        );
        let key = format!("{prefix}{i:05}");
        let value = format!("{key}:{}", "v".repeat(value_bytes));
        match client.put(key.clone(), value.clone(), None).await {
            Ok(_) => {
                acked.insert(key, value);
            }
            Err(e) => {
                last_err = e.to_string();
                // Give the member a moment to finish exiting.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    bail!("{MAX_PUTS} puts and the member still runs")
}

/// Waits for the process to exit on its own; its status code.
async fn wait_exit(member: &mut Member, within: Duration) -> Result<Option<i32>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = member.exit_status() {
            return Ok(status.code());
        }
        ensure!(
            Instant::now() < deadline,
            "still running {within:?} later\n{}",
            member.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged key is there with its value.
async fn check_acked(member: &Member, acked: &BTreeMap<String, String>) -> Result<()> {
    let mut client = connect_with(&member.endpoint(), timeouts()).await?;
    for (key, value) in acked {
        let resp = client.get(key.as_str(), None).await?;
        let got = resp.kvs().first().map(|kv| kv.value_str().unwrap_or("?"));
        ensure!(
            got == Some(value.as_str()),
            "acknowledged {key} lost or changed: {:?}",
            got.map(|g| &g[..g.len().min(40)])
        );
    }
    Ok(())
}

/// The data dir is a symlink into a tmpfs of its own (a mount point cannot
/// be removed, and the harness removes the data dir if it retries a start).
fn data_dir_on(tmpfs: &Tmpfs, data_dir: &Path) -> Result<()> {
    let target = tmpfs.path().join("data");
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::create_dir(&target)?;
    std::os::unix::fs::symlink(&target, data_dir).context("symlinking the data dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_on_a_full_disk_exits_naming_enospc_and_comes_back_once_space_is_freed(
) -> Result<()> {
    if !tmpfs::can_mount() {
        eprintln!("skipped: mounting a tmpfs to fill needs root");
        return Ok(());
    }
    let mnt = tempfile::tempdir()?;
    let fs = Tmpfs::mount(mnt.path(), tmpfs::MIN_BYTES)?;
    let mut member = Member::start_prepared(Kind::Cairn, MemberOptions::default(), |dir, _| {
        data_dir_on(&fs, dir)
    })
    .await?;
    let mut before = BTreeMap::new();
    {
        let mut client = connect_with(&member.endpoint(), timeouts()).await?;
        for i in 0..20 {
            let (k, v) = (format!("before/{i:02}"), format!("value {i}"));
            client.put(k.clone(), v.clone(), None).await?;
            before.insert(k, v);
        }
    }
    let filled = fs.fill()?;
    eprintln!("filled the tmpfs with {} MiB", filled >> 20);

    // Writes go on until the store needs a page the disk has not: then the
    // member exits, saying why and where.
    let (acked, last_err) =
        put_until_exit(&mut member, "full/", 4096, Duration::from_secs(60)).await?;
    let code = wait_exit(&mut member, Duration::from_secs(10)).await?;
    let log = member.log_tail(8000);
    let data_dir = member.data_dir().display().to_string();
    ensure!(code == Some(1), "exit code {code:?}\n{log}");
    ensure!(
        log.contains("cairn: no space left on device (ENOSPC) under the data dir")
            && log.contains(&data_dir)
            && log.contains("free space there and restart this member"),
        "the exit message does not say ENOSPC, the data dir and what to do:\n{log}"
    );
    eprintln!(
        "{} puts acknowledged on the full disk; the last failed with {last_err:?}",
        acked.len()
    );

    // Still full: a restart stops again, saying the same.
    ensure!(
        member.restart().await.is_err(),
        "started on a full disk\n{}",
        member.describe()
    );
    let log = member.log_tail(4000);
    ensure!(
        log.matches("no space left on device (ENOSPC)").count() >= 1,
        "the restart on a full disk does not say ENOSPC:\n{log}"
    );

    // Space freed: a restart serves again, with every acknowledged write.
    fs.free()?;
    member.restart().await?;
    check_acked(&member, &before).await?;
    check_acked(&member, &acked).await?;
    let mut client = connect_with(&member.endpoint(), timeouts()).await?;
    client.put("after", "freed", None).await?;
    let alarms = client
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await?;
    ensure!(
        alarms.alarms().is_empty(),
        "a full filesystem raised {} alarm(s)",
        alarms.alarms().len()
    );
    member.kill9()?;
    drop(member);
    drop(fs);
    Ok(())
}

/// A failed log write or fsync is never retried as if it had worked: the
/// member stops at once, and a restart finds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_raft_log_write_stops_the_member_and_loses_nothing_acknowledged() -> Result<()> {
    let mut member = Member::start(Kind::Cairn).await?;
    let mut acked = BTreeMap::new();
    {
        let mut client = connect_with(&member.endpoint(), timeouts()).await?;
        for i in 0..50 {
            let (k, v) = (format!("k/{i:02}"), format!("value {i}"));
            client.put(k.clone(), v.clone(), None).await?;
            acked.insert(k, v);
        }
    }
    if let Err(e) = failpoints::set(
        member.client_port(),
        failpoints::RAFT_LOG_WRITE_ERROR,
        "return(eio)",
    )
    .await
    {
        bail!(
            "setting the fail point: {e:#}; build cairn with \
             `cargo build -p cairn-shim --bin cairn --features cairn-shim/failpoints`"
        );
    }
    let (more, last_err) =
        put_until_exit(&mut member, "after/", 16, Duration::from_secs(30)).await?;
    ensure!(
        more.is_empty(),
        "writes acknowledged after the log write failed: {more:?}"
    );
    let code = wait_exit(&mut member, Duration::from_secs(10)).await?;
    let log = member.log_tail(8000);
    ensure!(code == Some(1), "exit code {code:?}\n{log}");
    ensure!(
        log.contains("cairn: storage fault under the data dir")
            && log.contains("raft log append failed: Input/output error"),
        "the exit message does not say what failed:\n{log}"
    );
    eprintln!("the put during the fault failed with {last_err:?}");
    // Fail points live in the process: the restart writes normally.
    member.restart().await?;
    check_acked(&member, &acked).await?;
    let mut client = connect_with(&member.endpoint(), timeouts()).await?;
    client.put("after", "restart", None).await?;
    Ok(())
}
