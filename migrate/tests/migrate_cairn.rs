//! The whole migrator (start: copy and follow; cutover; verify; abort)
//! from a real etcd 3.5 into a real Cairn (one member, started by the e2e
//! harness), while a writer keeps changing the source: puts, deletes,
//! multi-op Txns, leases that expire, compactions. Interrupted runs resume
//! where the target stands. The target is read through its public APIs
//! only: the Migration service's State, etcd's KV, Lease and HashKV.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_e2e::proxy::Proxy;
use cairn_e2e::{Kind, Member};
use cairn_migrate::kvread::PAGE_KEYS;
use cairn_migrate::source::{Source, SourceInfo};
use cairn_migrate::target::Target;
use cairn_proto::migrate::{MigrationState, Phase};
use common::{
    cfg, current_revision as src_rev, same_at, same_kvs_at, show, start_target, wait_state,
};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Small pages: a copy of a few thousand keys takes a hundred calls or more,
/// long enough to be interrupted.
const SMALL_PAGES: i64 = 20;

/// Runs a test's body, failed if it takes over [`TEST_TIMEOUT`].
async fn timed(body: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .context("test timed out")?
}

/// A source etcd 3.5, an empty Cairn target, and a client of each.
async fn pair() -> Result<(Member, Member, Client, Client)> {
    let etcd = Member::start(Kind::Etcd).await?;
    let cairn = start_target().await?;
    let (c, t) = (etcd.client().await?, cairn.client().await?);
    Ok((etcd, cairn, c, t))
}

async fn sides(etcd: &Member, cairn: &Member) -> Result<(Source, SourceInfo, Target)> {
    common::init_tracing();
    let (tgt, _) = Target::connect(&cfg(&cairn.endpoint())).await?;
    let (src, info) = Source::connect(&cfg(&etcd.endpoint()), None).await?;
    Ok((src, info, tgt))
}

type Run = tokio::task::JoinHandle<cairn_migrate::Result<MigrationState>>;

fn spawn_start(
    src: &Source,
    info: &SourceInfo,
    tgt: &Target,
    history_none: bool,
    page_keys: i64,
) -> Run {
    let (src, info, tgt) = (src.clone(), info.clone(), tgt.clone());
    tokio::spawn(async move {
        cairn_migrate::start::run_start(&src, &info, &tgt, history_none, page_keys).await
    })
}

fn following(s: &MigrationState) -> bool {
    s.phase == Phase::Following as i32
}

async fn cutover(src: &Source, tgt: &Target) -> Result<cairn_migrate::cutover::CutoverDone> {
    Ok(cairn_migrate::cutover::run_cutover(
        src,
        tgt,
        Duration::from_secs(30),
        cairn_migrate::cutover::VerifyMode::Full,
    )
    .await?)
}

/// `keys` keys of `value_len` bytes, one put each.
async fn seed(c: &mut Client, keys: usize, value_len: usize) -> Result<()> {
    let value = "x".repeat(value_len);
    for i in 0..keys {
        c.put(format!("/registry/pods/ns/p{i:05}"), value.clone(), None)
            .await?;
    }
    Ok(())
}

/// The same keys as [`seed`], 100 to a Txn (fast). A Txn's keys share its
/// revision, and the copy (which sees no sub-revisions) orders them by key:
/// these Txns put them in key order, so HashKVs still compare.
async fn seed_txns(c: &mut Client, keys: usize, value_len: usize) -> Result<()> {
    let value = "x".repeat(value_len);
    let mut i = 0;
    while i < keys {
        let ops: Vec<TxnOp> = (i..keys.min(i + 100))
            .map(|j| TxnOp::put(format!("/registry/pods/ns/p{j:05}"), value.clone(), None))
            .collect();
        i += ops.len();
        c.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

/// Puts, deletes, kube-shaped Txns and short leases until `stop`.
async fn writer(mut c: Client, stop: tokio::sync::watch::Receiver<bool>) -> Result<u64> {
    let mut n = 0u64;
    for i in 0..100_000u64 {
        if *stop.borrow() {
            break;
        }
        let key = format!("/registry/pods/ns/p{:05}", i % 200);
        match i % 5 {
            0 | 1 => {
                c.put(key, format!("w{i}"), None).await?;
            }
            2 => {
                c.delete(key, None).await?;
            }
            3 => {
                // A kube-shaped update: compare the mod revision, then put two keys and delete one.
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::NotEqual,
                        -1,
                    )])
                    .and_then(vec![
                        TxnOp::put(key.clone(), format!("t{i}"), None),
                        TxnOp::put(format!("/registry/events/ns/e{i}"), "event", None),
                        TxnOp::delete(
                            format!("/registry/events/ns/e{}", i.saturating_sub(10)),
                            None,
                        ),
                    ]);
                c.txn(txn).await?;
            }
            _ => {
                if i % 20 == 4 {
                    // A lease that expires while the migrator follows.
                    let l = c.lease_grant(3, None).await?.id();
                    c.put(
                        format!("/registry/leases/l{i}"),
                        "held",
                        Some(PutOptions::new().with_lease(l)),
                    )
                    .await?;
                }
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(n)
}

#[tokio::test]
async fn migrates_a_live_source_and_cuts_over() -> Result<()> {
    timed(async {
        let (etcd, cairn, mut c, mut t) = pair().await?;
        seed(&mut c, 500, 200).await?;
        let long = c.lease_grant(600, None).await?.id();
        for i in 0..20 {
            c.put(
                format!("/registry/leased/k{i}"),
                "v",
                Some(PutOptions::new().with_lease(long)),
            )
            .await?;
        }
        for i in 0..100 {
            c.put(format!("/registry/pods/ns/p{i:05}"), "again", None)
                .await?;
        }
        for i in 100..150 {
            c.delete(format!("/registry/pods/ns/p{i:05}"), None).await?;
        }
        let rev = src_rev(&mut c).await?;
        c.compact(rev - 100, None).await?;
        let compact = rev - 100;

        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(writer(etcd.client().await?, stop_rx));
        let mut start = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        let st = wait_state(
            &tgt,
            Some(&mut start),
            "the copy to complete",
            Duration::from_secs(30),
            following,
        )
        .await?;
        assert_eq!(
            st.start_revision, compact,
            "the copy starts at the compact revision"
        );
        // The source compacts while the migrator follows past that point,
        // and the target mirrors it while the writer still runs.
        let now = src.current_revision().await?;
        wait_state(
            &tgt,
            Some(&mut start),
            "the target to follow past the compaction point",
            Duration::from_secs(30),
            |s| s.target_revision >= now,
        )
        .await?;
        c.compact(now - 5, None).await?;
        wait_state(
            &tgt,
            Some(&mut start),
            "the compaction to be mirrored",
            Duration::from_secs(30),
            |s| s.compact_revision == now - 5,
        )
        .await?;
        stop_tx.send(true)?;
        let writes = writer.await??;
        ensure!(writes > 100, "the writer wrote only {writes} times");
        // Let the writer's short leases expire on the source (their deletes
        // come through the watch), so that the lease sets compare after the
        // cutover, when the source no longer decides.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ids, _) = src.leases().await?;
            if ids == vec![long] {
                break;
            }
            ensure!(Instant::now() < deadline, "leases still held: {ids:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let last = src.current_revision().await?;
        wait_state(
            &tgt,
            Some(&mut start),
            "the target to catch up",
            Duration::from_secs(20),
            |s| s.target_revision >= last,
        )
        .await?;

        let done = cutover(&src, &tgt).await?;
        assert_eq!(done.revision, last);
        assert!(done.verified.ok(), "{:?}", done.verified.lines());
        let st = tokio::time::timeout(Duration::from_secs(15), start).await???;
        assert_eq!(st.phase, Phase::CutOver as i32);
        let st = tgt.state().await?;
        assert_eq!(st.phase, Phase::CutOver as i32, "{}", show(&st));
        assert_eq!(st.target_revision, last);
        assert_eq!(src_rev(&mut t).await?, last, "the target's own revision");
        assert_eq!(
            st.compact_revision,
            now - 5,
            "the source's compaction is mirrored"
        );
        // Key by key at the compact revision (etcd answers no HashKV there),
        // key by key and by HashKV above it.
        same_kvs_at(&mut c, &mut t, now - 5).await?;
        for rev in [now, (now + last) / 2, last] {
            same_at(&mut c, &mut t, rev).await?;
        }
        for rev in [now - 5, now, (now + last) / 2, last] {
            let report = cairn_migrate::verify::verify(
                &src,
                &tgt,
                rev,
                false,
                tgt.state().await?.shared_revision_keys,
            )
            .await?;
            assert!(report.ok(), "{:?}", report.lines());
        }
        // Leases: the long one is there, the short ones expired with the source's.
        let (mut ids, _) = src.leases().await?;
        ids.sort_unstable();
        let mut held = tgt.leases().await?;
        held.sort_unstable();
        assert_eq!(held, ids);
        assert!(held.contains(&long));
        let l = t.lease_time_to_live(long, None).await?;
        assert_eq!(l.granted_ttl(), 600);
        // The fence stays after success.
        assert_eq!(src.alarms().await?.len(), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn interrupted_runs_resume_where_the_target_stands() -> Result<()> {
    timed(async {
        let (etcd, cairn, mut c, mut t) = pair().await?;
        seed_txns(&mut c, 3000, 1024).await?;
        // Compacted: the copy has a base to copy (an uncompacted source is all history).
        let now = src_rev(&mut c).await?;
        c.compact(now, None).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;

        // Killed during the copy, twice (small pages: the copy lasts).
        for _ in 0..2 {
            let before = tgt.state().await?.keys_copied;
            let mut run = spawn_start(&src, &info, &tgt, false, SMALL_PAGES);
            wait_state(
                &tgt,
                Some(&mut run),
                "a page to be copied",
                Duration::from_secs(20),
                |s| s.keys_copied > before,
            )
            .await?;
            run.abort();
            let _ = run.await;
            let st = tgt.state().await?;
            assert_eq!(
                st.phase,
                Phase::Copying as i32,
                "the copy is not done yet: {}",
                show(&st)
            );
        }
        // Killed while following, twice, with writes in between.
        let mut compacted = now;
        for round in 0..2 {
            let mut run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
            wait_state(
                &tgt,
                Some(&mut run),
                "following",
                Duration::from_secs(20),
                following,
            )
            .await?;
            for i in 0..30 {
                c.put(format!("/registry/r{round}/k{i}"), "v", None).await?;
            }
            let last = src.current_revision().await?;
            wait_state(
                &tgt,
                Some(&mut run),
                "catching up",
                Duration::from_secs(20),
                |s| s.target_revision >= last,
            )
            .await?;
            for i in 0..10 {
                c.delete(format!("/registry/r{round}/k{i}"), None).await?;
            }
            run.abort();
            let _ = run.await;
            if round == 0 {
                // While no migrator runs, the source compacts, but not past
                // what the target holds: the next run mirrors it and goes on.
                c.compact(last, None).await?;
                compacted = last;
            }
        }
        let run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        let done = cutover(&src, &tgt).await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        let st = tgt.state().await?;
        assert_eq!(st.keys_copied, 3000, "no page was imported twice");
        assert_eq!(st.target_revision, done.revision);
        assert_eq!(st.start_revision, now, "the import was not restarted");
        assert_eq!(
            st.compact_revision, compacted,
            "the source's compaction is mirrored"
        );
        same_at(&mut c, &mut t, done.revision).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_compaction_during_the_copy_restarts_it() -> Result<()> {
    timed(async {
        let (etcd, cairn, mut c, mut t) = pair().await?;
        seed_txns(&mut c, 2500, 1024).await?;
        let c0 = src_rev(&mut c).await?;
        c.compact(c0, None).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        // The migrator reads the source through a proxy, which the test cuts
        // during the copy: the copy stalls (the migrator retries its read)
        // until the source has compacted past the copy's start.
        let proxy = Proxy::start(([127, 0, 0, 1], etcd.client_port()).into())?;
        let (via_proxy, _) =
            Source::connect(&cfg(&format!("http://{}", proxy.addr())), None).await?;
        let mut run = spawn_start(&via_proxy, &info, &tgt, false, SMALL_PAGES);
        wait_state(
            &tgt,
            Some(&mut run),
            "a page to be copied",
            Duration::from_secs(20),
            |s| s.keys_copied > 0,
        )
        .await?;
        proxy.partition();
        let st = tgt.state().await?;
        assert_eq!(st.start_revision, c0);
        assert_eq!(
            st.phase,
            Phase::Copying as i32,
            "the copy ended before the source could be cut off: {}",
            show(&st)
        );
        for i in 0..10 {
            c.put(format!("/registry/new/k{i}"), "v", None).await?;
        }
        let c1 = src_rev(&mut c).await?;
        c.compact(c1, None).await?;
        proxy.heal();
        let st = wait_state(
            &tgt,
            Some(&mut run),
            "the restarted copy to complete",
            Duration::from_secs(30),
            |s| following(s) && s.start_revision == c1,
        )
        .await?;
        assert_eq!(st.compact_revision, c1);
        assert_eq!(
            st.keys_copied, 2510,
            "the restart copied everything once, from scratch"
        );
        // One revision after the copy, so that HashKVs compare (not at the
        // compact revision).
        c.put("/registry/after-copy", "v", None).await?;
        let done = cutover(&src, &tgt).await?;
        assert_eq!(done.revision, c1 + 1);
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&mut c, &mut t, done.revision).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn history_none_starts_at_the_current_revision() -> Result<()> {
    timed(async {
        let (etcd, cairn, mut c, mut t) = pair().await?;
        seed(&mut c, 100, 10).await?;
        let now = src_rev(&mut c).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        let mut run = spawn_start(&src, &info, &tgt, true, PAGE_KEYS);
        let st = wait_state(
            &tgt,
            Some(&mut run),
            "following",
            Duration::from_secs(20),
            following,
        )
        .await?;
        assert_eq!(
            (st.start_revision, st.compact_revision, st.history_none),
            (now, now, true)
        );
        c.put("/registry/after", "v", None).await?;
        let done = cutover(&src, &tgt).await?;
        assert_eq!(done.revision, now + 1);
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        // Key by key only: the target's history starts at `now`, the
        // source's at 1, so their HashKVs cover different revisions.
        same_kvs_at(&mut c, &mut t, now + 1).await?;
        // The target refuses what it does not hold, as a compacted etcd does.
        let below = t
            .get(
                "/registry/after",
                Some(etcd_client::GetOptions::new().with_revision(now - 1)),
            )
            .await;
        let e = cairn_e2e::expect_grpc_error("a read below the copy", below)?;
        assert_eq!(e.code, "OutOfRange", "{e}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn abort_gives_up_and_lifts_the_fence() -> Result<()> {
    timed(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let cairn = start_target().await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 10, 10).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        let mut run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        wait_state(
            &tgt,
            Some(&mut run),
            "following",
            Duration::from_secs(20),
            following,
        )
        .await?;
        // A fence left behind by a cutover that was killed.
        let member = src.status().await?.member_id;
        src.fence(member).await?;
        let lines = cairn_migrate::abort::run_abort(&tgt, Some(&src)).await?;
        assert!(
            lines[0].starts_with(&format!(
                "aborted the import on the target at {}",
                cairn.endpoint()
            )),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            format!("lifted the NOSPACE alarm (the fence) on source member {member:x}")
        );
        assert!(src.alarms().await?.is_empty());
        assert_eq!(tgt.state().await?.phase, Phase::Aborted as i32);
        // The running migrator stops with an error.
        let e = tokio::time::timeout(Duration::from_secs(15), run)
            .await??
            .err()
            .context("start went on after abort")?;
        assert_eq!(
            e.to_string(),
            "the target's import was aborted; it holds a partial copy and refuses writes until it is wiped"
        );
        c.put("after-abort", "v", None).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_target_importing_another_source_is_refused_before_anything_is_written() -> Result<()> {
    timed(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let cairn = start_target().await?;
        let mut t = cairn.client().await?;
        let (tgt, _) = Target::connect(&cfg(&cairn.endpoint())).await?;
        tgt.begin(cairn_proto::migrate::BeginRequest {
            source_cluster_id: 0xabc,
            source_version: "3.5.1".into(),
            start_revision: 1,
            compact_revision: -1,
            ..Default::default()
        })
        .await?;
        let before = (tgt.state().await?, src_rev(&mut t).await?);
        let (src, info) = Source::connect(&cfg(&etcd.endpoint()), None).await?;
        let state = tgt.state().await?;
        let e = cairn_migrate::start::check_target_for(&state, &info, tgt.urls())
            .err()
            .context("accepted")?;
        assert_eq!(
            e.to_string(),
            format!(
                "the target at {} is importing from etcd cluster abc, not from {:x} (the given source)",
                cairn.endpoint(),
                info.cluster_id
            )
        );
        drop(src);
        // Nothing was written: the same state (its phase time too) and revision.
        let after = (tgt.state().await?, src_rev(&mut t).await?);
        assert_eq!(after, before);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_compaction_past_the_target_while_stopped_restarts_the_import() -> Result<()> {
    timed(async {
        let (etcd, cairn, mut c, mut t) = pair().await?;
        seed(&mut c, 100, 10).await?;
        let c0 = src_rev(&mut c).await?;
        c.compact(c0, None).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        let mut run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        wait_state(
            &tgt,
            Some(&mut run),
            "following",
            Duration::from_secs(20),
            following,
        )
        .await?;
        run.abort();
        let _ = run.await;
        // While no migrator runs, the source moves on and compacts past
        // what the target needs next.
        for i in 0..20 {
            c.put(format!("/registry/while-down/k{i}"), "v", None)
                .await?;
        }
        let c1 = src_rev(&mut c).await?;
        c.compact(c1, None).await?;
        let mut run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        let st = wait_state(
            &tgt,
            Some(&mut run),
            "the restarted import",
            Duration::from_secs(20),
            |s| following(s) && s.start_revision == c1,
        )
        .await?;
        assert_eq!(st.keys_copied, 120);
        // One revision after the copy, so that HashKVs compare.
        c.put("/registry/after-restart", "v", None).await?;
        let done = cutover(&src, &tgt).await?;
        assert_eq!(done.revision, c1 + 1);
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&mut c, &mut t, done.revision).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_source_restart_while_following_is_ridden_out() -> Result<()> {
    timed(async {
        let mut etcd = Member::start(Kind::Etcd).await?;
        let cairn = start_target().await?;
        let mut c = etcd.client().await?;
        let mut t = cairn.client().await?;
        seed(&mut c, 50, 10).await?;
        let (src, info, tgt) = sides(&etcd, &cairn).await?;
        let mut run = spawn_start(&src, &info, &tgt, false, PAGE_KEYS);
        wait_state(
            &tgt,
            Some(&mut run),
            "following",
            Duration::from_secs(20),
            following,
        )
        .await?;
        etcd.kill9()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        etcd.restart().await?;
        let mut c = etcd.client().await?;
        for i in 0..20 {
            c.put(format!("/registry/after-restart/k{i}"), "v", None)
                .await?;
        }
        let last = src_rev(&mut c).await?;
        wait_state(
            &tgt,
            Some(&mut run),
            "catching up after the restart",
            Duration::from_secs(30),
            |s| s.target_revision >= last,
        )
        .await?;
        let done = cutover(&src, &tgt).await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        // Never compacted: the whole history came as revisions, and the
        // HashKVs of both cover all of it.
        same_at(&mut c, &mut t, done.revision).await?;
        Ok(())
    })
    .await
}
