//! The whole migrator (start: copy and follow; cutover; verify; abort)
//! from a real etcd 3.5 into a fake target that keeps the migration
//! contract (tests/common), while a writer keeps changing the source:
//! puts, deletes, multi-op Txns, leases that expire, compactions.
//! Interrupted runs resume where the target stands.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::{Kind, Member};
use cairn_migrate::connect::EndpointConfig;
use cairn_migrate::source::{Source, SourceInfo};
use cairn_migrate::target::Target;
use cairn_proto::migrate::{MigrationState, Phase};
use cairn_proto::mvccpb::KeyValue;
use common::FakeTarget;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn cfg(urls: &str) -> EndpointConfig {
    EndpointConfig {
        urls: urls.to_string(),
        dial_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn sides(etcd: &Member, fake: &FakeTarget) -> Result<(Source, SourceInfo, Target)> {
    // RUST_LOG=cairn_migrate=debug shows what the migrator did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tgt, _) = Target::connect(&cfg(&fake.url())).await?;
    let (src, info) = Source::connect(&cfg(&etcd.endpoint()), None).await?;
    Ok((src, info, tgt))
}

fn spawn_start(
    src: &Source,
    info: &SourceInfo,
    tgt: &Target,
    history_none: bool,
) -> tokio::task::JoinHandle<cairn_migrate::Result<MigrationState>> {
    let (src, info, tgt) = (src.clone(), info.clone(), tgt.clone());
    tokio::spawn(async move {
        cairn_migrate::start::run_start(
            &src,
            &info,
            &tgt,
            history_none,
            cairn_migrate::kvread::PAGE_KEYS,
        )
        .await
    })
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn etcd_kvs_at(src: &Source, rev: i64) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for _ in 0..10_000 {
        let page = src.range_page(after.as_deref(), rev, 1000).await?;
        after = page.kvs.last().map(|kv| kv.key.clone());
        out.extend(page.kvs);
        if !page.more {
            return Ok(out);
        }
    }
    bail!("too many pages")
}

async fn seed(c: &mut Client, keys: usize, value_len: usize) -> Result<()> {
    let value = "x".repeat(value_len);
    for i in 0..keys {
        c.put(format!("/registry/pods/ns/p{i:05}"), value.clone(), None)
            .await?;
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

/// Compares the fake and etcd at `rev`, key by key.
async fn same_at(src: &Source, fake: &FakeTarget, rev: i64) -> Result<()> {
    let want = etcd_kvs_at(src, rev).await?;
    let got = fake.fake.kvs_at(rev);
    ensure!(
        got.len() == want.len(),
        "at {rev}: fake holds {} keys, etcd {}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        ensure!(g == w, "at {rev}: fake {g:?} != etcd {w:?}");
    }
    Ok(())
}

#[tokio::test]
async fn migrates_a_live_source_and_cuts_over() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
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
        let rev = c
            .get("x", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
        c.compact(rev - 100, None).await?;
        let compact = rev - 100;

        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(writer(etcd.client().await?, stop_rx));
        let start = spawn_start(&src, &info, &tgt, false);
        wait_for("the copy to complete", Duration::from_secs(30), || {
            fake.fake.state().phase == Phase::Following as i32
        })
        .await?;
        assert_eq!(
            fake.fake.state().start_revision,
            compact,
            "the copy starts at the compact revision"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The source compacts while the migrator follows.
        let now = src.current_revision().await?;
        c.compact(now - 5, None).await?;
        tokio::time::sleep(Duration::from_millis(4500)).await;
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
        wait_for("the target to catch up", Duration::from_secs(20), || {
            fake.fake.state().target_revision >= last
        })
        .await?;

        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        assert_eq!(done.revision, last);
        assert!(done.verified.ok(), "{:?}", done.verified.lines());
        let st = tokio::time::timeout(Duration::from_secs(15), start).await???;
        assert_eq!(st.phase, Phase::CutOver as i32);
        let st = fake.fake.state();
        assert_eq!(st.target_revision, last);
        assert_eq!(
            st.compact_revision,
            now - 5,
            "the source's compaction is mirrored"
        );
        for rev in [now - 5, now, (now + last) / 2, last] {
            same_at(&src, &fake, rev).await?;
            let report = cairn_migrate::verify::verify(&src, &tgt, rev, false, 0).await?;
            assert!(report.ok(), "{:?}", report.lines());
        }
        // Leases: the long one is there, the short ones expired with the source's.
        let (mut ids, _) = src.leases().await?;
        ids.sort_unstable();
        let held: Vec<i64> = fake
            .fake
            .inner
            .lock()
            .unwrap()
            .leases
            .keys()
            .copied()
            .collect();
        assert_eq!(held, ids);
        assert!(held.contains(&long));
        let l = fake.fake.inner.lock().unwrap().leases[&long];
        assert_eq!(l.granted_ttl, 600);
        // The fence stays after success.
        assert_eq!(src.alarms().await?.len(), 1);
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn interrupted_runs_resume_where_the_target_stands() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 3000, 1024).await?;
        // Compacted: the copy has a base to copy (an uncompacted source is all history).
        let now = src_rev(&mut c).await?;
        c.compact(now, None).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        *fake.fake.delay.lock().unwrap() = Duration::from_millis(150);
        let (src, info, tgt) = sides(&etcd, &fake).await?;

        // Killed during the copy, twice.
        for _ in 0..2 {
            let before = fake.fake.state().keys_copied;
            let run = spawn_start(&src, &info, &tgt, false);
            wait_for("a page to be copied", Duration::from_secs(20), || {
                fake.fake.state().keys_copied > before
            })
            .await?;
            run.abort();
            let _ = run.await;
            assert_eq!(
                fake.fake.state().phase,
                Phase::Copying as i32,
                "the copy is not done yet"
            );
        }
        *fake.fake.delay.lock().unwrap() = Duration::ZERO;
        // Killed while following, twice, with writes in between.
        for round in 0..2 {
            let run = spawn_start(&src, &info, &tgt, false);
            wait_for("following", Duration::from_secs(20), || {
                fake.fake.state().phase == Phase::Following as i32
            })
            .await?;
            for i in 0..30 {
                c.put(format!("/registry/r{round}/k{i}"), "v", None).await?;
            }
            let last = src.current_revision().await?;
            wait_for("catching up", Duration::from_secs(20), || {
                fake.fake.state().target_revision >= last
            })
            .await?;
            for i in 0..10 {
                c.delete(format!("/registry/r{round}/k{i}"), None).await?;
            }
            run.abort();
            let _ = run.await;
        }
        let run = spawn_start(&src, &info, &tgt, false);
        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        let st = fake.fake.state();
        assert_eq!(st.keys_copied, 3000, "no page was imported twice");
        assert_eq!(st.target_revision, done.revision);
        same_at(&src, &fake, done.revision).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn a_compaction_during_the_copy_restarts_it() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 2500, 1024).await?;
        let c0 = src_rev(&mut c).await?;
        c.compact(c0, None).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        *fake.fake.delay.lock().unwrap() = Duration::from_millis(300);
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let run = spawn_start(&src, &info, &tgt, false);
        wait_for("a page to be copied", Duration::from_secs(20), || {
            fake.fake.state().keys_copied > 0
        })
        .await?;
        assert_eq!(fake.fake.state().start_revision, c0);
        for i in 0..10 {
            c.put(format!("/registry/new/k{i}"), "v", None).await?;
        }
        let c1 = src_rev(&mut c).await?;
        c.compact(c1, None).await?;
        *fake.fake.delay.lock().unwrap() = Duration::ZERO;
        wait_for(
            "the restarted copy to complete",
            Duration::from_secs(30),
            || {
                let s = fake.fake.state();
                s.phase == Phase::Following as i32 && s.start_revision == c1
            },
        )
        .await?;
        let st = fake.fake.state();
        assert_eq!(st.compact_revision, c1);
        assert_eq!(
            st.keys_copied, 2510,
            "the restart copied everything once, from scratch"
        );
        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&src, &fake, done.revision).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

async fn src_rev(c: &mut Client) -> Result<i64> {
    Ok(c.get("x", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default())
}

#[tokio::test]
async fn history_none_starts_at_the_current_revision() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 100, 10).await?;
        let now = src_rev(&mut c).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let run = spawn_start(&src, &info, &tgt, true);
        wait_for("following", Duration::from_secs(20), || {
            fake.fake.state().phase == Phase::Following as i32
        })
        .await?;
        let st = fake.fake.state();
        assert_eq!(
            (st.start_revision, st.compact_revision, st.history_none),
            (now, now, true)
        );
        c.put("/registry/after", "v", None).await?;
        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        assert_eq!(done.revision, now + 1);
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&src, &fake, now + 1).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn abort_gives_up_and_lifts_the_fence() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 10, 10).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let run = spawn_start(&src, &info, &tgt, false);
        wait_for("following", Duration::from_secs(20), || fake.fake.state().phase == Phase::Following as i32).await?;
        // A fence left behind by a cutover that was killed.
        let member = src.status().await?.member_id;
        src.fence(member).await?;
        let lines = cairn_migrate::abort::run_abort(&tgt, Some(&src)).await?;
        assert!(lines[0].starts_with(&format!("aborted the import on the target at {}", fake.url())), "{lines:?}");
        assert_eq!(lines[1], format!("lifted the NOSPACE alarm (the fence) on source member {member:x}"));
        assert!(src.alarms().await?.is_empty());
        assert_eq!(fake.fake.state().phase, Phase::Aborted as i32);
        // The running migrator stops with an error.
        let e = tokio::time::timeout(Duration::from_secs(15), run).await??.err().context("start went on after abort")?;
        assert_eq!(
            e.to_string(),
            "the target's import was aborted; it holds a partial copy and refuses writes until it is wiped"
        );
        c.put("after-abort", "v", None).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn a_target_importing_another_source_is_refused_before_anything_is_written() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (tgt, _) = Target::connect(&cfg(&fake.url())).await?;
        tgt.begin(cairn_proto::migrate::BeginRequest {
            source_cluster_id: 0xabc,
            source_version: "3.5.1".into(),
            start_revision: 1,
            compact_revision: -1,
            ..Default::default()
        })
        .await?;
        let calls = fake.fake.inner.lock().unwrap().calls;
        let (src, info) = Source::connect(&cfg(&etcd.endpoint()), None).await?;
        let state = tgt.state().await?;
        let e = cairn_migrate::start::check_target_for(&state, &info, tgt.urls()).err().context("accepted")?;
        assert_eq!(
            e.to_string(),
            format!(
                "the target at {} is importing from etcd cluster abc, not from {:x} (the given source)",
                fake.url(),
                info.cluster_id
            )
        );
        drop(src);
        assert_eq!(fake.fake.inner.lock().unwrap().calls, calls);
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn a_compaction_past_the_target_while_stopped_restarts_the_import() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 100, 10).await?;
        let c0 = src_rev(&mut c).await?;
        c.compact(c0, None).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let run = spawn_start(&src, &info, &tgt, false);
        wait_for("following", Duration::from_secs(20), || {
            fake.fake.state().phase == Phase::Following as i32
        })
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
        let run = spawn_start(&src, &info, &tgt, false);
        wait_for("the restarted import", Duration::from_secs(20), || {
            let s = fake.fake.state();
            s.phase == Phase::Following as i32 && s.start_revision == c1
        })
        .await?;
        assert_eq!(fake.fake.state().keys_copied, 120);
        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&src, &fake, done.revision).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn a_source_restart_while_following_is_ridden_out() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        seed(&mut c, 50, 10).await?;
        let fake = FakeTarget::start(&etcd.endpoint()).await?;
        let (src, info, tgt) = sides(&etcd, &fake).await?;
        let run = spawn_start(&src, &info, &tgt, false);
        wait_for("following", Duration::from_secs(20), || {
            fake.fake.state().phase == Phase::Following as i32
        })
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
        let caught_up = wait_for(
            "catching up after the restart",
            Duration::from_secs(30),
            || fake.fake.state().target_revision >= last,
        )
        .await;
        if let Err(e) = caught_up {
            if run.is_finished() {
                bail!("{e}; the migrator ended: {:?}", run.await?);
            }
            return Err(e);
        }
        let done = cairn_migrate::cutover::run_cutover(
            &src,
            &tgt,
            Duration::from_secs(30),
            cairn_migrate::cutover::VerifyMode::Full,
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(15), run).await???;
        same_at(&src, &fake, done.revision).await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}
