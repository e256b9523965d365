//! Shared helpers of the migrator's tests. Both sides are real processes
//! started by the e2e harness: etcd 3.5 as the source and a `cairn` as the
//! target (build it first: `cargo build --bins --features
//! cairn-shim/failpoints`). The target is read only through its public APIs:
//! the Migration service's State (through the migrator's own client), and
//! etcd's KV, Lease and Maintenance (HashKV).

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::compare::{hash_at, kvs_at};
use cairn_e2e::wait::{wait_until, Poll};
use cairn_e2e::{Kind, Member};
use cairn_migrate::connect::EndpointConfig;
use cairn_migrate::target::{phase_name, Target};
use cairn_proto::migrate::MigrationState;
use etcd_client::Client;

/// Endpoints as the migrator takes them, with a short dial timeout.
pub fn cfg(urls: &str) -> EndpointConfig {
    EndpointConfig {
        urls: urls.to_string(),
        dial_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// `RUST_LOG=cairn_migrate=debug` shows what an in-process migrator did.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh, empty one-member Cairn cluster: the target.
pub async fn start_target() -> Result<Member> {
    Member::start(Kind::Cairn).await
}

/// The migrator's client of `target`, and its migration state.
pub async fn target_client(target: &Member) -> Result<(Target, MigrationState)> {
    Ok(Target::connect(&cfg(&target.endpoint())).await?)
}

/// A migration state in one line, for failure messages.
pub fn show(s: &MigrationState) -> String {
    format!(
        "phase {}, start {}, compact {}, target {}, source {}, keys copied {}, resume after {:?}",
        phase_name(s.phase),
        s.start_revision,
        s.compact_revision,
        s.target_revision,
        s.source_revision,
        s.keys_copied,
        String::from_utf8_lossy(&s.copy_resume_after)
    )
}

/// Polls the target's migration state every 20 ms until `pred` holds
/// (-> that state) or `timeout` passes (-> an error with the last state).
/// With `run`, an in-process migrator: its end, before `pred` holds, fails
/// the wait at once with what it returned.
pub async fn wait_state<T: std::fmt::Debug>(
    tgt: &Target,
    mut run: Option<&mut tokio::task::JoinHandle<T>>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&MigrationState) -> bool,
) -> Result<MigrationState> {
    let mut ended = None;
    let got = wait_until(what, timeout, Duration::from_millis(20), || {
        let tgt = tgt.clone();
        let finished = run.as_ref().is_some_and(|r| r.is_finished());
        let pred = &pred;
        async move {
            let s = tgt.state().await?;
            if pred(&s) {
                return Ok(Poll::Ready(Ok(s)));
            }
            if finished {
                return Ok(Poll::Ready(Err(s)));
            }
            Ok(Poll::NotYet(show(&s)))
        }
    })
    .await?;
    match got {
        Ok(s) => Ok(s),
        Err(s) => {
            if let Some(r) = run.as_mut() {
                ended = Some(format!("{:?}", (&mut **r).await));
            }
            bail!(
                "the migrator ended before {what}: {}; the target: {}",
                ended.unwrap_or_default(),
                show(&s)
            )
        }
    }
}

/// The current revision of a store (a linearizable read).
pub async fn current_revision(c: &mut Client) -> Result<i64> {
    Ok(c.get("x", None)
        .await?
        .header()
        .context("a response without header")?
        .revision())
}

/// Asserts that both stores hold the same key-values, every field, at `rev`.
pub async fn same_kvs_at(source: &mut Client, target: &mut Client, rev: i64) -> Result<usize> {
    let (want, got) = (kvs_at(source, rev).await?, kvs_at(target, rev).await?);
    if got != want {
        let first = want
            .iter()
            .zip(&got)
            .position(|(w, g)| w != g)
            .unwrap_or(want.len().min(got.len()));
        bail!(
            "at {rev}: the target holds {} keys, etcd {}; first difference at #{first}: target {:?}, etcd {:?}",
            got.len(),
            want.len(),
            got.get(first),
            want.get(first)
        );
    }
    Ok(want.len())
}

/// Asserts that both stores hold the same key-values at `rev` and answer
/// the same HashKV there (hash and compact revision). etcd answers no
/// HashKV at exactly its compact revision: `rev` must be above it.
pub async fn same_at(source: &mut Client, target: &mut Client, rev: i64) -> Result<()> {
    let keys = same_kvs_at(source, target, rev).await?;
    let (s, t) = (hash_at(source, rev).await?, hash_at(target, rev).await?);
    ensure!(
        s == t,
        "at {rev}: HashKV (hash, compact revision) of etcd {s:?}, of the target {t:?} ({keys} keys equal)"
    );
    Ok(())
}
