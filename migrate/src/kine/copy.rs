//! The copy from kine: the key space at the start revision, page by page
//! in key order into the target (ImportBase), each key's lease with it.
//!
//! Each page is read in one snapshot with kine's compact revision: a
//! compaction past the start revision may have deleted rows the state at
//! the start revision still needs, so it restarts the import from there,
//! as a compaction of an etcd source does.

use std::collections::HashMap;

use cairn_proto::migrate::{ImportBaseRequest, MigrationState, Phase};
use cairn_proto::mvccpb::KeyValue;

use crate::copy::{split_page, CopyEnd, IMPORT_BYTES};
use crate::error::{Error, Result};
use crate::kine::db::{BaseEntry, KineDb};
use crate::kine::row::{lease_for, put_kv, version_from_rows, APISERVER_COMPACT_KEY};
use crate::progress::Progress;
use crate::target::{phase_name, unix_ms, Target};

/// The key-value a base entry imports as, and whether its version is exact.
pub fn base_kv(e: &BaseEntry) -> (KeyValue, bool) {
    let (version, exact) = version_from_rows(e.puts, e.has_create);
    // kube-apiserver's compaction key carries its own version.
    let exact = exact || e.row.name == APISERVER_COMPACT_KEY;
    (put_kv(&e.row, version), exact)
}

/// A page's key-values in key order: kube-apiserver's compaction key is
/// served under another name than kine's row has.
pub fn page_kvs(entries: &[BaseEntry]) -> Vec<(KeyValue, bool)> {
    let mut kvs: Vec<(KeyValue, bool)> = entries.iter().map(base_kv).collect();
    kvs.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    kvs
}

/// Copies the state at the target's `start_revision`, from its
/// `copy_resume_after` on, until the copy is done.
pub async fn copy(
    db: &KineDb,
    tgt: &Target,
    mut state: MigrationState,
    progress: &mut Progress,
    page_keys: i64,
) -> Result<CopyEnd> {
    let start = state.start_revision;
    let total = db.count_at(start).await?;
    // Where the target's import stands, and where the scan of names stands
    // (past it when the last names read were deleted keys).
    let mut after = state.copy_resume_after.clone();
    let mut scanned = after.clone();
    if !after.is_empty() {
        tracing::info!(
            start_revision = start,
            resume_after = %String::from_utf8_lossy(&after),
            keys_copied = state.keys_copied,
            "resuming the copy"
        );
    }
    progress.copying(start, state.keys_copied, state.bytes_copied, total);
    for _ in 0..u64::MAX {
        let page = db.base_page(start, &scanned, page_keys).await?;
        if page.heads.compact > start {
            return Ok(compacted(start, page.heads.compact));
        }
        if let Some(n) = page.scanned_to {
            scanned = n;
        }
        let more = page.more;
        if page.entries.is_empty() && more {
            continue;
        }
        let kvs: Vec<KeyValue> = page_kvs(&page.entries)
            .into_iter()
            .map(|(kv, _)| kv)
            .collect();
        let ttls: HashMap<i64, i64> = page
            .entries
            .iter()
            .filter(|e| e.row.lease > 0)
            .map(|e| (e.row.id, e.row.lease))
            .collect();
        let mut chunks = split_page(kvs, IMPORT_BYTES);
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let leases = chunk
                .iter()
                .filter_map(|kv| {
                    ttls.get(&kv.lease)
                        .and_then(|ttl| lease_for(kv.lease, *ttl))
                })
                .collect();
            let last_key = chunk.last().map(|kv| kv.key.clone());
            let req = ImportBaseRequest {
                after_key: after.clone(),
                kvs: chunk,
                leases,
                done: !more && i + 1 == n,
                source_revision: page.heads.current,
                unix_ms: unix_ms(),
            };
            match tgt.import_base(req).await {
                Ok(st) => {
                    state = st;
                    if let Some(k) = last_key {
                        after = k;
                    }
                }
                Err(Error::OutOfStep { message, .. }) | Err(Error::Refused { message, .. }) => {
                    tracing::warn!(%message, "the target did not take a page; reading its state");
                    return Ok(CopyEnd::Resync);
                }
                Err(e) => return Err(e),
            }
            progress.copying(start, state.keys_copied, state.bytes_copied, total);
        }
        match Phase::try_from(state.phase) {
            Ok(Phase::Copying) if more => {}
            Ok(Phase::Copying) => {
                return Err(Error::Inconsistent(
                    "the target stays in phase copying after the copy's last page".into(),
                ))
            }
            Ok(Phase::Following) => {
                tracing::info!(
                    start_revision = start,
                    keys_copied = state.keys_copied,
                    bytes_copied = state.bytes_copied,
                    "copy complete"
                );
                return Ok(CopyEnd::Done(state));
            }
            _ => {
                tracing::warn!(phase = phase_name(state.phase), "the target left the copy");
                return Ok(CopyEnd::Resync);
            }
        }
    }
    Err(Error::Inconsistent("the copy never ended".into()))
}

fn compacted(start: i64, compact: i64) -> CopyEnd {
    tracing::error!(
        start_revision = start,
        compact_revision = compact,
        "kine compacted to revision {compact}, past the copy's start revision {start}: \
         the copy restarts from kine's new compact revision"
    );
    CopyEnd::Compacted(compact)
}
