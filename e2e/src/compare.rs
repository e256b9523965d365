//! Comparing two stores at one revision, and the changes between two
//! revisions, as a migration must leave them: every key-value with all its
//! fields, the HashKV, and the watch events a client would receive.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::dump::Kv;
use crate::events::{Ev, K};

/// Every key-value at revision `rev`, in key order, read in pages.
pub async fn kvs_at(client: &mut Client, rev: i64) -> Result<Vec<Kv>> {
    let mut out = Vec::new();
    let mut from = vec![0u8];
    // Bounded: every page moves `from` past its last key.
    for _ in 0..100_000 {
        let resp = client
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range(vec![0u8])
                        .with_revision(rev)
                        .with_limit(2000),
                ),
            )
            .await
            .with_context(|| format!("range at revision {rev}"))?;
        out.extend(resp.kvs().iter().map(Kv::from_client));
        if !resp.more() {
            return Ok(out);
        }
        let last = resp.kvs().last().context("a page with more but no keys")?;
        from = last.key().to_vec();
        from.push(0);
    }
    bail!("more than 100,000 pages at revision {rev}")
}

/// The HashKV and compact revision a member reports at `rev`.
pub async fn hash_at(client: &mut Client, rev: i64) -> Result<(u32, i64)> {
    let h = client
        .hash_kv(rev)
        .await
        .with_context(|| format!("HashKV at revision {rev}"))?;
    Ok((h.hash(), h.compact_version()))
}

/// Asserts that both stores hold the same key-values and the same HashKV at
/// `rev`; the error names the first difference.
pub async fn expect_same_at(a: &mut Client, b: &mut Client, rev: i64, what: &str) -> Result<()> {
    let (ka, kb) = (kvs_at(a, rev).await?, kvs_at(b, rev).await?);
    if ka != kb {
        let first = ka
            .iter()
            .zip(kb.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(ka.len().min(kb.len()));
        bail!(
            "{what}: key-values differ at revision {rev} ({} vs {} keys); first difference at #{first}: {:?} vs {:?}",
            ka.len(),
            kb.len(),
            ka.get(first),
            kb.get(first)
        );
    }
    let (ha, hb) = (hash_at(a, rev).await?, hash_at(b, rev).await?);
    ensure!(
        ha == hb,
        "{what}: HashKV (hash, compact revision) differs at revision {rev}: {ha:?} vs {hb:?} ({} keys equal)",
        ka.len()
    );
    Ok(())
}

/// Every event of revisions `from..=to`, in order, as a watcher of the whole
/// keyspace receives them (with prev_kv).
pub async fn events_between(client: &mut Client, from: i64, to: i64) -> Result<Vec<Ev>> {
    let mut out = Vec::new();
    if to < from {
        return Ok(out);
    }
    let (mut watcher, mut stream) = client
        .watch(
            vec![0u8],
            Some(
                WatchOptions::new()
                    .with_range(vec![0u8])
                    .with_start_revision(from)
                    .with_prev_key(),
            ),
        )
        .await
        .with_context(|| format!("watch from revision {from}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = from - 1;
    while last < to {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "watch from {from}: reached only revision {last} of {to} in 30 s"
        );
        let resp = match tokio::time::timeout(left, stream.message()).await {
            Err(_) => continue,
            Ok(r) => r.context("watch stream")?,
        };
        let Some(resp) = resp else {
            bail!("watch from {from}: stream ended at revision {last}");
        };
        ensure!(
            !resp.canceled(),
            "watch from {from} canceled: {} (compact revision {})",
            resp.cancel_reason(),
            resp.compact_revision()
        );
        for e in resp.events() {
            let kv = e.kv().context("event without kv")?;
            last = kv.mod_revision();
            if last > to {
                break;
            }
            out.push(Ev {
                put: e.event_type() == EventType::Put,
                kv: k(kv),
                prev: e.prev_kv().map(k),
            });
        }
    }
    let _ = watcher.cancel().await;
    Ok(out)
}

fn k(kv: &etcd_client::KeyValue) -> K {
    K::from_client(kv)
}
