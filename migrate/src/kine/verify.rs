//! `cairn migrate verify` against kine: kine's table and the target
//! compared at one revision R, key by key (key, value, create_revision,
//! mod_revision, version, lease). Kine has no HashKV to compare.
//!
//! A version kine's rows can only bound from below (compaction took the
//! key's earlier rows, see [`crate::kine::row::version_from_rows`]) agrees
//! with any target version at least that bound.

use std::collections::{HashSet, VecDeque};

use cairn_proto::mvccpb::KeyValue;

use crate::error::{Error, Result};
use crate::kine::copy::page_kvs;
use crate::kine::db::KineDb;
use crate::kvread::{self, next_limit, Cursor, PAGE_KEYS};
use crate::target::Target;
use crate::verify::{merge, VerifyReport};

/// Gives an inexact (lower-bound) source version the target's, where the
/// target's is at least the bound: those agree. `tgt` is in key order.
fn settle_versions(
    src: &mut VecDeque<KeyValue>,
    tgt: &VecDeque<KeyValue>,
    inexact: &mut HashSet<Vec<u8>>,
) {
    if inexact.is_empty() {
        return;
    }
    for kv in src.iter_mut() {
        if !inexact.contains(&kv.key) {
            continue;
        }
        if let Ok(i) = tgt.binary_search_by(|t| t.key.as_slice().cmp(&kv.key)) {
            if tgt[i].version >= kv.version {
                kv.version = tgt[i].version;
            }
            inexact.remove(&kv.key);
        }
    }
}

/// Compares kine's table and the target at `revision`.
pub async fn verify(db: &KineDb, tgt: &Target, revision: i64) -> Result<VerifyReport> {
    let compact = db.heads().await?.compact;
    let mut report = VerifyReport {
        revision,
        hash_line: format!(
            "hashkv at revision {revision}: not compared (kine keeps no hash; compared key by key, kine's compact revision {compact})"
        ),
        ..Default::default()
    };
    let mut src: VecDeque<KeyValue> = VecDeque::new();
    let mut tgt_buf: VecDeque<KeyValue> = VecDeque::new();
    let mut inexact = HashSet::new();
    let (mut src_after, mut src_done) = (Vec::new(), false);
    let (mut cursor, mut tgt_done, mut limit) = (Cursor::default(), false, PAGE_KEYS);
    for _ in 0..u64::MAX {
        // Both sides' next pages at once, where a side needs one.
        let (sp, tp) = tokio::join!(
            async {
                if src.is_empty() && !src_done {
                    db.base_page(revision, &src_after, PAGE_KEYS)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            },
            async {
                if tgt_buf.is_empty() && !tgt_done {
                    kvread::range_window(&tgt.conn, &cursor, revision, limit)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            }
        );
        if let Some(page) = sp? {
            if let Some(n) = page.scanned_to {
                src_after = n;
            }
            src_done = !page.more;
            if page.heads.compact > revision {
                return Err(Error::Compacted {
                    needed: revision,
                    compact_revision: page.heads.compact,
                });
            }
            for (kv, exact) in page_kvs(&page.entries) {
                if !exact {
                    inexact.insert(kv.key.clone());
                }
                src.push_back(kv);
            }
            report.source_keys += page.entries.len() as u64;
        }
        if let Some((page, next)) = tp? {
            cursor = next;
            if !page.kvs.is_empty() {
                limit = next_limit(page.kvs.len(), page.bytes(), PAGE_KEYS);
            }
            tgt_done = !page.more;
            report.target_keys += page.kvs.len() as u64;
            tgt_buf.extend(page.kvs);
        }
        settle_versions(&mut src, &tgt_buf, &mut inexact);
        merge(&mut src, &mut tgt_buf, src_done, tgt_done, &mut report);
        if src_done && tgt_done && src.is_empty() && tgt_buf.is_empty() {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn a_lower_bound_agrees_with_a_version_at_least_it() {
        let mut src: VecDeque<_> = vec![kv("a", 2), kv("b", 2), kv("c", 3)].into();
        let tgt: VecDeque<_> = vec![kv("a", 5), kv("b", 1), kv("c", 9)].into();
        let mut inexact: HashSet<Vec<u8>> = [b"a".to_vec(), b"b".to_vec()].into_iter().collect();
        settle_versions(&mut src, &tgt, &mut inexact);
        let versions: Vec<i64> = src.iter().map(|k| k.version).collect();
        // a: bound 2 ≤ 5 agrees; b: the target's 1 is below the bound and
        // stays a difference; c is exact and compared as it is.
        assert_eq!(versions, vec![5, 2, 3]);
        assert!(inexact.is_empty());
    }
}
