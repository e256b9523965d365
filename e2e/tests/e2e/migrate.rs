//! Live migration from a running etcd 3.5 into Cairn (`cairn migrate`), with
//! real processes: the source keeps taking kube-shaped writes through the
//! copy and the following, and afterwards both sides must agree key by key,
//! by HashKV and by the watch events they give, at every revision since the
//! copy's start.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_e2e::cluster::Cluster;
use cairn_e2e::compare::{events_between, expect_same_at, hash_at, kvs_at};
use cairn_e2e::migrator::{self, field, wait_status, Migrator};
use cairn_e2e::source_load::{LoadOptions, SourceLoad};
use cairn_e2e::{expect_grpc_error, Kind, Member};
use etcd_client::{AlarmAction, AlarmType, Client, PutOptions, Txn, TxnOp};

const STEP: Duration = Duration::from_secs(60);

/// History on the source before the migrator starts: creates, updates,
/// deletes and multi-op Txns, a long-lived lease with keys, and a
/// compaction, so that the copy starts at a compact revision with history
/// after it. Returns the compact revision.
///
/// `key_ordered`: the multi-put Txns before the compaction put their keys in
/// key order. The copy can only order keys that share a revision by key
/// (etcd exposes no sub-revision of its compacted past), so otherwise the
/// HashKVs cannot agree, and verify must say why.
async fn seed_history(source: &mut Client, keys: usize, key_ordered: bool) -> Result<i64> {
    let long = source.lease_grant(600, None).await?.id();
    for i in 0..keys {
        let key = format!("/registry/pods/ns{}/p{i:05}", i % 7);
        source.put(key.as_str(), format!("spec-{i}"), None).await?;
        if i % 3 == 0 {
            source
                .put(key.as_str(), format!("spec-{i}-b"), None)
                .await?;
        }
        if i % 11 == 0 {
            source.delete(key.as_str(), None).await?;
        }
        if i % 13 == 0 {
            // Several keys in one revision. Their sub-revision order is in
            // HashKV, and etcd exposes it only through a watch: for the
            // revisions the copy starts from (compacted), the copy orders
            // them by key, as this Txn puts them.
            let mut puts = vec![
                TxnOp::put(format!("/registry/events/e{i}"), "b", None),
                TxnOp::put(format!("/registry/leases/l{i}"), "a", None),
            ];
            if !key_ordered {
                puts.reverse();
            }
            puts.push(TxnOp::delete(
                format!("/registry/pods/ns0/p{:05}", i / 2),
                None,
            ));
            let t = Txn::new().and_then(puts);
            source.txn(t).await?;
        }
        if i % 17 == 0 {
            source
                .put(
                    format!("/registry/masterleases/m{i}"),
                    "ip",
                    Some(PutOptions::new().with_lease(long)),
                )
                .await?;
        }
    }
    let rev = source
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision();
    let compact = rev - (keys as i64) / 2;
    source.compact(compact, None).await?;
    // History after the compaction: updates of keys copied at the start.
    for i in 0..keys / 4 {
        let key = format!("/registry/pods/ns{}/p{i:05}", i % 7);
        source
            .put(key.as_str(), format!("spec-{i}-c"), None)
            .await?;
    }
    Ok(compact)
}

fn start_load(client: Client, seed: u64) -> SourceLoad {
    SourceLoad::start(
        client,
        LoadOptions {
            seed,
            ..Default::default()
        },
    )
}

/// How many alarms the store reports (the migrator's fence is NOSPACE).
async fn alarms(c: &mut Client) -> Result<usize> {
    let r = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .context("alarm list")?;
    Ok(r.alarms().len())
}

async fn current_revision(c: &mut Client) -> Result<i64> {
    Ok(c.get("x", None)
        .await?
        .header()
        .context("header")?
        .revision())
}

/// Waits until the source has no lease left but `keep`: a lease the load
/// granted expires within seconds, and its DELETEs are a source write
/// that must not race the fence in a test that wants none.
async fn wait_leases_gone(source: &mut Client, keep: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = source.leases().await?.leases().len();
        if n <= keep {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{n} leases still on the source after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks what a finished migration must leave: the same revision, the same
/// key-values and HashKV at the end and at revisions since the copy's start,
/// the same events for a watcher resuming at any of them, the same reads
/// refused below the compact revision, and leases with their IDs and TTLs.
async fn check_migrated(
    source: &mut Client,
    target: &mut Client,
    start: i64,
    end: i64,
) -> Result<()> {
    ensure!(
        current_revision(target).await? == end,
        "target revision is not the source's last ({end})"
    );
    // etcd answers no HashKV at exactly its compact revision: start above.
    let span = (end - start - 1).max(1);
    let points = [
        start + 1,
        start + 1 + span / 3,
        start + 1 + 2 * span / 3,
        end,
    ];
    for rev in points {
        expect_same_at(source, target, rev, "source vs target").await?;
    }
    for rev in [start, start + span / 2] {
        let (s, t) = (
            events_between(source, rev + 1, end).await?,
            events_between(target, rev + 1, end).await?,
        );
        ensure!(
            s == t,
            "a watcher resuming at {rev} sees {} events on the source and {} on the target; first difference: {:?}",
            s.len(),
            t.len(),
            s.iter().zip(t.iter()).find(|(a, b)| a != b)
        );
    }
    if start > 1 {
        let below = |c: &mut Client| {
            let mut c = c.clone();
            async move {
                expect_grpc_error(
                    "range below the compact revision",
                    c.get(
                        "x",
                        Some(etcd_client::GetOptions::new().with_revision(start - 1)),
                    )
                    .await,
                )
            }
        };
        let (s, t) = (below(source).await?, below(target).await?);
        ensure!(s == t, "a read below the compact revision: {s} vs {t}");
    }
    let (mut sl, mut tl): (Vec<i64>, Vec<i64>) = (
        source
            .leases()
            .await?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect(),
        target
            .leases()
            .await?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect(),
    );
    sl.sort();
    tl.sort();
    ensure!(sl == tl, "leases: source {sl:?}, target {tl:?}");
    for id in sl {
        let (s, t) = (
            source.lease_time_to_live(id, None).await?,
            target.lease_time_to_live(id, None).await?,
        );
        ensure!(
            s.granted_ttl() == t.granted_ttl(),
            "lease {id:x}: granted TTL {} on the source, {} on the target",
            s.granted_ttl(),
            t.granted_ttl()
        );
    }
    Ok(())
}

/// The whole path on a 1-member target: a live source with history,
/// compaction, leases and multi-op Txns; the target refuses writes until
/// cutover; the cutover fences the source; a write accepted after the fence
/// is imported or reported; afterwards everything matches and the target
/// takes writes at the next revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_member_target_keeps_every_revision() -> Result<()> {
    let source_member = Member::start(Kind::Etcd).await?;
    let target_member = Member::start(Kind::Cairn).await?;
    let (from, to) = (source_member.endpoint(), target_member.endpoint());
    let mut source = source_member.client().await?;
    let mut target = target_member.client().await?;
    let compact = seed_history(&mut source, 600, true).await?;

    let load = start_load(source.clone(), 7);
    let mut m = Migrator::start(&from, &to, &[])?;
    let following = wait_status(&to, "the copy to finish", STEP, |s| {
        s["phase"] == "following"
    })
    .await?;
    ensure!(
        field(&following, "start_revision") == compact,
        "the copy started at {} rather than the source's compact revision {compact}: {following}",
        field(&following, "start_revision")
    );
    // Let the source move on while the target follows it.
    let mid = current_revision(&mut source).await? + 200;
    wait_status(&to, "the target to follow past the copy", STEP, |s| {
        field(s, "target_revision") >= mid
    })
    .await?;

    // The target refuses client writes, naming the migration.
    let refused = expect_grpc_error("put while importing", target.put("k", "v", None).await)?;
    ensure!(
        refused.code == "FailedPrecondition" && refused.message.contains("importing"),
        "a write while importing: {refused}"
    );

    let report = load.stop().await?;
    ensure!(report.acknowledged > 100, "the load barely ran: {report:?}");
    wait_leases_gone(&mut source, 1).await?;

    // A delete sent as soon as the fence is up: it passes a NOSPACE fence,
    // so the cutover must either import it or report it.
    let mut deleter = source.clone();
    let victim = "/registry/pods/ns1/p00001";
    let fence_watch = tokio::spawn(async move {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if alarms(&mut deleter).await? > 0 {
                let r = deleter.delete(victim, None).await?;
                return Ok::<_, anyhow::Error>(r.header().context("header")?.revision());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::bail!("the source was never fenced")
    });
    let cut = migrator::run(
        &["cutover", &format!("--from={from}"), &format!("--to={to}")],
        STEP,
    )
    .await?;
    ensure!(cut.code == 0, "cutover failed: {}", cut.all());
    ensure!(
        cut.stdout
            .lines()
            .any(|l| l.trim() == format!("--etcd-servers={to}")),
        "cutover did not print the kube-apiserver flag: {}",
        cut.all()
    );
    let status = m.wait_exit(STEP).await?;
    ensure!(
        status.success(),
        "migrate start ended {status}: {}",
        m.log()
    );
    let delete_rev = fence_watch.await??;

    // A put on the fenced source fails.
    let fenced = expect_grpc_error("put on the fenced source", source.put("k", "v", None).await)?;
    ensure!(
        fenced.message.contains("database space exceeded"),
        "the fenced source answered {fenced}"
    );
    let target_rev = current_revision(&mut target).await?;
    let source_rev = current_revision(&mut source).await?;
    if delete_rev > target_rev {
        ensure!(
            cut.all().contains(&format!("at revision {delete_rev}")),
            "a delete at {delete_rev}, after the switch at {target_rev}, was not reported: {}",
            cut.all()
        );
        ensure!(
            source_rev == delete_rev && target_rev == delete_rev - 1,
            "reported delete at {delete_rev}: source at {source_rev}, target at {target_rev}"
        );
        ensure!(
            target.get(victim, None).await?.kvs().len() == 1,
            "the target lost a key whose delete came after the switch"
        );
    } else {
        ensure!(
            target_rev == source_rev,
            "target {target_rev}, source {source_rev}"
        );
    }
    check_migrated(&mut source, &mut target, compact, target_rev).await?;

    let after = target.put("after/cutover", "v", None).await?;
    ensure!(
        after.header().map(|h| h.revision()) == Some(target_rev + 1),
        "the first write after cutover got revision {:?}, not {}",
        after.header().map(|h| h.revision()),
        target_rev + 1
    );
    Ok(())
}

/// A 3-member target loses a member during the copy, and the migrator is
/// killed (-9) twice while copying and twice while following; each rerun
/// resumes where the target stands, and the result is what an uninterrupted
/// run gives: the source, revision for revision, on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrator_and_target_member_killed_the_result_is_the_same() -> Result<()> {
    let source_member = Member::start(Kind::Etcd).await?;
    let mut cluster = Cluster::start(3, &[]).await?;
    let from = source_member.endpoint();
    let to = (0..3)
        .map(|i| cluster.endpoint(i))
        .collect::<Vec<_>>()
        .join(",");
    let mut source = source_member.client().await?;
    let compact = seed_history(&mut source, 3000, true).await?;

    // Small pages, so that the copy lasts long enough to be interrupted.
    let mut m = Migrator::start(&from, &to, &["--page-keys=20"])?;
    let mut copied = 0;
    for round in 0..2 {
        let s = wait_status(&to, "the copy to advance", STEP, |s| {
            s["phase"] == "copying" && field(s, "keys_copied") > copied
        })
        .await?;
        copied = field(&s, "keys_copied");
        m.kill9()?;
        if round == 0 {
            // A minority of the target goes down during the copy.
            cluster.kill9(2)?;
        }
        let after = migrator::status(&to).await?;
        ensure!(
            field(&after, "keys_copied") >= copied,
            "the target lost copied keys: {after}"
        );
        m.restart()?;
    }
    let load = start_load(source.clone(), 11);
    wait_status(&to, "the copy to finish", STEP, |s| {
        s["phase"] == "following"
    })
    .await?;
    cluster.restart(2)?;
    for _ in 0..2 {
        let at = migrator::status(&to).await?;
        let next = field(&at, "target_revision") + 20;
        wait_status(&to, "the target to follow", STEP, |s| {
            field(s, "target_revision") >= next
        })
        .await?;
        m.kill9()?;
        m.restart()?;
    }
    let report = load.stop().await?;
    ensure!(report.acknowledged > 50, "the load barely ran: {report:?}");
    wait_leases_gone(&mut source, 1).await?;
    let end = current_revision(&mut source).await?;
    wait_status(&to, "the target to reach the source", STEP, |s| {
        field(s, "target_revision") == end
    })
    .await?;
    let cut = migrator::run(
        &["cutover", &format!("--from={from}"), &format!("--to={to}")],
        STEP,
    )
    .await?;
    ensure!(cut.code == 0, "cutover failed: {}", cut.all());
    let status = m.wait_exit(STEP).await?;
    ensure!(
        status.success(),
        "migrate start ended {status}: {}",
        m.log()
    );
    cluster.wait_all_ready(STEP).await?;
    let mut leader = cluster.client(0).await?;
    check_migrated(&mut source, &mut leader, compact, end).await?;
    // Every member holds the same data (serializable reads of each).
    let want = kvs_at(&mut source, end).await?;
    for i in 0..3 {
        let mut c = cluster.client(i).await?;
        let got = kvs_at(&mut c, end).await?;
        ensure!(got == want, "member {i} differs from the source at {end}");
        let (h, _) = hash_at(&mut c, end).await?;
        let (hs, _) = hash_at(&mut source, end).await?;
        ensure!(h == hs, "member {i}: HashKV {h} vs source {hs}");
    }
    Ok(())
}

/// `migrate verify` agrees with the test's own comparison while the source
/// takes writes, and says why HashKV cannot agree when a multi-put Txn
/// before the compaction put its keys out of key order; `abort` leaves the
/// source untouched and the target refusing writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_while_the_source_writes_then_abort() -> Result<()> {
    let source_member = Member::start(Kind::Etcd).await?;
    let target_member = Member::start(Kind::Cairn).await?;
    let (from, to) = (source_member.endpoint(), target_member.endpoint());
    let mut source = source_member.client().await?;
    let mut target = target_member.client().await?;
    seed_history(&mut source, 300, false).await?;
    let load = start_load(source.clone(), 3);
    let mut m = Migrator::start(&from, &to, &[])?;
    // Above the copy's start: etcd answers no HashKV at its compact revision.
    let s = wait_status(&to, "following past the copy", STEP, |s| {
        s["phase"] == "following" && field(s, "target_revision") > field(s, "start_revision") + 50
    })
    .await?;
    let rev = field(&s, "target_revision");
    let out = migrator::run(
        &[
            "verify",
            &format!("--from={from}"),
            &format!("--to={to}"),
            &format!("--revision={rev}"),
        ],
        STEP,
    )
    .await?;
    ensure!(
        out.code == 0,
        "verify at {rev} found differences: {}",
        out.all()
    );
    ensure!(
        out.stdout.contains("not comparable") && out.stdout.contains("share a revision"),
        "verify did not say why HashKV cannot agree: {}",
        out.all()
    );
    ensure!(
        kvs_at(&mut source, rev).await? == kvs_at(&mut target, rev).await?,
        "verify passed, but the key-values at {rev} differ"
    );
    load.stop().await?;

    let out = migrator::run(&["abort", &format!("--to={to}")], STEP).await?;
    ensure!(out.code == 0, "abort failed: {}", out.all());
    let status = m.wait_exit(STEP).await?;
    ensure!(
        !status.success(),
        "migrate start should fail after an abort"
    );
    let s = migrator::status(&to).await?;
    ensure!(s["phase"] == "aborted", "after abort: {s}");
    let refused = expect_grpc_error("put after abort", target.put("k", "v", None).await)?;
    ensure!(
        refused.code == "FailedPrecondition" && refused.message.contains("aborted"),
        "a write after abort: {refused}"
    );
    ensure!(
        alarms(&mut source).await? == 0,
        "abort left an alarm on the source"
    );
    source.put("still/writable", "v", None).await?;
    Ok(())
}

/// Each bad input gets one clear error, and the target is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_are_refused_with_nothing_done() -> Result<()> {
    let source_a = Member::start(Kind::Etcd).await?;
    let source_b = Member::start(Kind::Etcd).await?;
    let target_cluster = Cluster::start(1, &[]).await?;
    let to = target_cluster.endpoint(0);
    let nowhere = format!("http://127.0.0.1:{}", cairn_e2e::ports::free_port()?);
    let start = |from: String, to: String| async move {
        migrator::run(
            &["start", &format!("--from={from}"), &format!("--to={to}")],
            STEP,
        )
        .await
    };
    let none = |s: &serde_json::Value| s["phase"] == "none";
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "unreachable source",
            nowhere.clone(),
            to.clone(),
            "cannot reach the source",
        ),
        (
            "unreachable target",
            source_a.endpoint(),
            nowhere.clone(),
            "cannot reach the target",
        ),
        (
            "target is etcd",
            source_a.endpoint(),
            source_b.endpoint(),
            "is not Cairn",
        ),
        (
            "source is not etcd v3",
            target_cluster.members[0].peer_url(),
            to.clone(),
            "is not etcd v3",
        ),
        (
            "TLS to a plain source",
            source_a.endpoint().replace("http://", "https://"),
            to.clone(),
            "TLS",
        ),
    ];
    for (what, from, target, want) in cases {
        let out = start(from, target).await?;
        ensure!(
            out.code != 0 && out.all().contains(want),
            "{what}: expected an error containing {want:?}, got exit {}: {}",
            out.code,
            out.all()
        );
        let s = migrator::status(&to).await?;
        ensure!(none(&s), "{what} left the target changed: {s}");
    }

    // A target with data of its own.
    let mut t = target_cluster.client(0).await?;
    let other = Cluster::start(1, &[]).await?;
    let mut o = other.client(0).await?;
    o.put("mine", "v", None).await?;
    let out = start(source_a.endpoint(), other.endpoint(0)).await?;
    ensure!(
        out.code != 0 && out.all().contains("target is not empty"),
        "a target with data: exit {}: {}",
        out.code,
        out.all()
    );

    // A target already importing from another source.
    let mut a = source_a.client().await?;
    let at = a
        .put("from/a", "v", None)
        .await?
        .header()
        .context("header")?
        .revision();
    let mut m = Migrator::start(&source_a.endpoint(), &to, &[])?;
    wait_status(&to, "following a", STEP, |s| {
        s["phase"] == "following" && field(s, "target_revision") >= at
    })
    .await?;
    m.kill9()?;
    let out = start(source_b.endpoint(), to.clone()).await?;
    ensure!(
        out.code != 0 && out.all().contains("is importing from etcd cluster"),
        "a second source: exit {}: {}",
        out.code,
        out.all()
    );
    ensure!(
        t.get("from/a", None).await?.kvs().len() == 1,
        "the first import was disturbed"
    );
    Ok(())
}
