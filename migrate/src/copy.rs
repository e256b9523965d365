//! The copy: the source's state at the start revision, page by page into
//! the target (ImportBase), leases first, resuming after the target's
//! `copy_resume_after`.
//!
//! A reader task fetches the next source page while the current one is
//! imported, so both sides stay busy; at most two pages wait in memory.

use std::collections::HashSet;

use cairn_proto::migrate::{ImportBaseRequest, ImportLease, MigrationState, Phase};
use cairn_proto::mvccpb::KeyValue;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::kvread::{kv_bytes, next_limit, Cursor, Page};
use crate::progress::Progress;
use crate::source::Source;
use crate::target::{phase_name, unix_ms, Target};

/// Bytes of keys and values one ImportBase call carries at most (a single
/// larger key-value goes alone).
pub const IMPORT_BYTES: usize = 1 << 20;

/// How a copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// The copy is complete: the target follows.
    Done(MigrationState),
    /// The target is not where this copy thought (another migrator, a
    /// retried call): read its state and go on from there.
    Resync,
    /// The source compacted past the start revision: the copy must restart.
    Compacted(i64),
}

/// Splits key-values into runs of at most `max_bytes` of keys plus values,
/// in order; a key-value larger than that alone.
pub fn split_page(kvs: Vec<KeyValue>, max_bytes: usize) -> Vec<Vec<KeyValue>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for kv in kvs {
        let b = kv_bytes(&kv);
        if !cur.is_empty() && bytes + b > max_bytes {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += b;
        cur.push(kv);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Aborts a spawned task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads pages of the source at `revision` after `after`, one ahead.
fn spawn_reader(
    src: Source,
    after: Vec<u8>,
    revision: i64,
    page_keys: i64,
) -> (mpsc::Receiver<Result<Page>>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut cursor = Cursor::after((!after.is_empty()).then_some(after));
        let mut limit = page_keys;
        for _ in 0..u32::MAX {
            match src.range_window(&cursor, revision, limit).await {
                Ok((page, next)) => {
                    cursor = next;
                    let more = page.more;
                    if page.kvs.is_empty() && more {
                        // A run of empty windows: read on.
                        continue;
                    }
                    limit = next_limit(page.kvs.len(), page.bytes(), page_keys);
                    if tx.send(Ok(page)).await.is_err() || !more {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// The source's leases with their TTLs, fetched a few at a time (expired
/// ones are left out: the source deletes their keys, and those deletes come
/// through the watch).
pub async fn fetch_leases(src: &Source, ids: Vec<i64>) -> Result<Vec<ImportLease>> {
    let fetched: Vec<Result<Option<ImportLease>>> = futures::stream::iter(ids)
        .map(|id| {
            let src = src.clone();
            async move { src.lease(id).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out = Vec::with_capacity(fetched.len());
    for l in fetched {
        if let Some(l) = l? {
            out.push(l);
        }
    }
    out.sort_by_key(|l| l.id);
    Ok(out)
}

/// Leases referenced by `kvs` that the target is not known to hold.
fn unknown_leases(kvs: &[KeyValue], known: &HashSet<i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = kvs
        .iter()
        .map(|kv| kv.lease)
        .filter(|l| *l != 0 && !known.contains(l))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Copies the state at the target's `start_revision`, from its
/// `copy_resume_after` on, until the copy is done.
pub async fn copy(
    src: &Source,
    tgt: &Target,
    mut state: MigrationState,
    progress: &mut Progress,
    page_keys: i64,
) -> Result<CopyEnd> {
    let start = state.start_revision;
    let total = match src.count(start).await {
        Ok(n) => n,
        Err(e) if e.is_compacted() => return compacted(src, start).await,
        Err(e) => return Err(e),
    };
    let mut after = state.copy_resume_after.clone();
    let mut known: HashSet<i64> = tgt.leases().await?.into_iter().collect();
    let mut leases = Vec::new();
    if after.is_empty() {
        // Leases first: every lease the source holds, with the first page.
        let (ids, _) = src.leases().await?;
        leases = fetch_leases(src, ids).await?;
        tracing::info!(leases = leases.len(), "copying the source's leases");
    } else {
        tracing::info!(
            start_revision = start,
            resume_after = %String::from_utf8_lossy(&after),
            keys_copied = state.keys_copied,
            "resuming the copy"
        );
    }
    let (mut pages, _reader) = spawn_reader(src.clone(), after.clone(), start, page_keys);
    progress.copying(start, state.keys_copied, state.bytes_copied, total);
    loop {
        let page = match pages.recv().await {
            Some(Ok(p)) => p,
            Some(Err(e)) if e.is_compacted() => return compacted(src, start).await,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::Inconsistent(
                    "the source page reader stopped before the last page".into(),
                ))
            }
        };
        let more = page.more;
        let source_revision = page.header_revision;
        let mut chunks = split_page(page.kvs, IMPORT_BYTES);
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let wanted = unknown_leases(&chunk, &known);
            if !wanted.is_empty() {
                leases.extend(fetch_leases(src, wanted).await?);
            }
            let last_key = chunk.last().map(|kv| kv.key.clone());
            let sent: Vec<i64> = leases.iter().map(|l| l.id).collect();
            let req = ImportBaseRequest {
                after_key: after.clone(),
                kvs: chunk,
                leases: std::mem::take(&mut leases),
                done: !more && i + 1 == n,
                source_revision,
                unix_ms: unix_ms(),
            };
            match tgt.import_base(req).await {
                Ok(st) => {
                    state = st;
                    known.extend(sent);
                    if let Some(k) = last_key {
                        after = k;
                    }
                }
                Err(Error::OutOfStep { message, .. }) => {
                    tracing::warn!(%message, "the target is out of step with this copy; reading its state");
                    return Ok(CopyEnd::Resync);
                }
                Err(Error::Refused { message, .. }) => {
                    tracing::warn!(%message, "the target refused a page; reading its state");
                    return Ok(CopyEnd::Resync);
                }
                Err(e) => return Err(e),
            }
            progress.copying(start, state.keys_copied, state.bytes_copied, total);
        }
        if state.phase != Phase::Copying as i32 {
            if state.phase == Phase::Following as i32 {
                tracing::info!(
                    start_revision = start,
                    keys_copied = state.keys_copied,
                    bytes_copied = state.bytes_copied,
                    "copy complete"
                );
                return Ok(CopyEnd::Done(state));
            }
            tracing::warn!(phase = phase_name(state.phase), "the target left the copy");
            return Ok(CopyEnd::Resync);
        }
        if !more {
            return Err(Error::Inconsistent(format!(
                "the target stays in phase {} after the copy's last page",
                phase_name(state.phase)
            )));
        }
    }
}

async fn compacted(src: &Source, start: i64) -> Result<CopyEnd> {
    let c = src.compact_revision(start).await?;
    tracing::error!(
        start_revision = start,
        compact_revision = c,
        "the source compacted to revision {c}, past the copy's start revision {start}: \
         the copy restarts from the source's new compact revision"
    );
    Ok(CopyEnd::Compacted(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value_len: usize) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![b'v'; value_len],
            ..Default::default()
        }
    }

    #[test]
    fn pages_split_by_bytes_in_order() {
        let kvs = vec![kv("a", 99), kv("b", 99), kv("c", 99), kv("d", 99)];
        let chunks = split_page(kvs, 250);
        let keys: Vec<Vec<&[u8]>> = chunks
            .iter()
            .map(|c| c.iter().map(|kv| kv.key.as_slice()).collect())
            .collect();
        assert_eq!(
            keys,
            vec![vec![b"a".as_slice(), b"b"], vec![b"c".as_slice(), b"d"]]
        );
    }

    #[test]
    fn a_big_value_goes_alone() {
        let chunks = split_page(vec![kv("a", 10), kv("b", 5000), kv("c", 10)], 100);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert!(split_page(Vec::new(), 100).is_empty());
    }

    #[test]
    fn a_page_under_the_bound_is_one_call() {
        let kvs: Vec<_> = (0..1000).map(|i| kv(&format!("k{i:04}"), 100)).collect();
        let chunks = split_page(kvs, IMPORT_BYTES);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 1000);
    }

    #[test]
    fn unknown_leases_are_deduplicated() {
        let mut a = kv("a", 1);
        a.lease = 7;
        let mut b = kv("b", 1);
        b.lease = 7;
        let mut c = kv("c", 1);
        c.lease = 9;
        let known: HashSet<i64> = [9].into_iter().collect();
        assert_eq!(unknown_leases(&[a, b, c, kv("d", 1)], &known), vec![7]);
    }
}
