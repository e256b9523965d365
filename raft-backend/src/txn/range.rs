//! etcd's Range: a revision, then filters, sort, limit and count.

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_proto::mvccpb::KeyValue;

use crate::error::{Result, StoreError};
use crate::mvcc::{KeyRange, TxnRead};

/// Filters, sort and `more` are applied after fetching; `count` counts
/// every key in range at the revision regardless of filters and limit.
pub fn range(txn: &impl TxnRead, r: &RangeRequest) -> Result<RangeResponse> {
    let cur = txn.current_rev();
    if r.revision > cur {
        return Err(StoreError::FutureRev);
    }
    let rev = if r.revision <= 0 { cur } else { r.revision };
    if rev < txn.compact_rev() {
        return Err(StoreError::Compacted);
    }
    let kr = KeyRange::new(&r.key, &r.range_end);
    let header = Some(ResponseHeader {
        revision: cur,
        ..Default::default()
    });
    if r.count_only {
        return Ok(RangeResponse {
            header,
            count: txn.count_at(&kr, rev)?,
            ..Default::default()
        });
    }
    let post_filtered = r.sort_order != SortOrder::None as i32
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let fetch_limit = if post_filtered || r.limit <= 0 {
        None
    } else {
        Some(r.limit + 1)
    };
    let with_values = !r.keys_only || r.sort_target == SortTarget::Value as i32;
    let mut kvs = txn.fetch(&kr, rev, fetch_limit, with_values)?;
    let count = match fetch_limit {
        Some(l) if kvs.len() as i64 >= l => txn.count_at(&kr, rev)?,
        _ => kvs.len() as i64,
    };
    kvs.retain(|kv| within_revisions(r, kv));
    sort_kvs(&mut kvs, r.sort_order, r.sort_target);
    let mut more = false;
    if r.limit > 0 && kvs.len() as i64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count,
    })
}

/// The min/max mod and create revision filters (0: no bound).
fn within_revisions(r: &RangeRequest, kv: &KeyValue) -> bool {
    (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
        && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
        && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
        && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
}

fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    // An order unknown to this version sorts ascending; an unknown target
    // sorts by key.
    let order = SortOrder::try_from(order).unwrap_or(SortOrder::Ascend);
    let target = SortTarget::try_from(target).ok();
    // A non-key target with no order sorts ascending, as etcd does.
    let order = if target != Some(SortTarget::Key) && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if order == SortOrder::None {
        return;
    }
    let by = |a: &KeyValue, b: &KeyValue| match target {
        Some(SortTarget::Version) => a.version.cmp(&b.version),
        Some(SortTarget::Create) => a.create_revision.cmp(&b.create_revision),
        Some(SortTarget::Mod) => a.mod_revision.cmp(&b.mod_revision),
        Some(SortTarget::Value) => a.value.cmp(&b.value),
        Some(SortTarget::Key) | None => a.key.cmp(&b.key),
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::testing::{pairs, range_req, TestStore};
    use cairn_proto::etcdserverpb::CompactionRequest;

    /// a=3 (rev 2), b=1 (3), c=2 (4), then b=5 (5).
    fn store() -> TestStore {
        let mut s = TestStore::new();
        s.put("a", "3");
        s.put("b", "1");
        s.put("c", "2");
        s.put("b", "5");
        s
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn limit_sets_more_and_count_counts_every_key_in_range() {
        let s = store();
        let resp = s
            .read(|r| {
                range(
                    r,
                    &RangeRequest {
                        limit: 2,
                        ..range_req("a", "z")
                    },
                )
            })
            .unwrap();
        assert_eq!(pairs(&resp.kvs), vec![p("a", "3"), p("b", "5")]);
        assert_eq!((resp.more, resp.count), (true, 3));
        assert_eq!(resp.header.unwrap().revision, 5);
        let resp = s
            .read(|r| {
                range(
                    r,
                    &RangeRequest {
                        count_only: true,
                        ..range_req("a", "z")
                    },
                )
            })
            .unwrap();
        assert_eq!((resp.kvs.len(), resp.count), (0, 3));
    }

    #[test]
    fn sorts_by_every_target_and_a_target_without_order_ascends() {
        let s = store();
        let sorted = |order: SortOrder, target: SortTarget| {
            let resp = s
                .read(|r| {
                    range(
                        r,
                        &RangeRequest {
                            sort_order: order as i32,
                            sort_target: target as i32,
                            ..range_req("a", "z")
                        },
                    )
                })
                .unwrap();
            pairs(&resp.kvs)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Value),
            ["b", "a", "c"]
        );
        assert_eq!(
            sorted(SortOrder::Ascend, SortTarget::Value),
            ["c", "a", "b"]
        );
        assert_eq!(sorted(SortOrder::None, SortTarget::Mod), ["a", "c", "b"]);
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Create),
            ["c", "b", "a"]
        );
        // Ties keep key order.
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Version),
            ["b", "a", "c"]
        );
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
        assert_eq!(sorted(SortOrder::None, SortTarget::Key), ["a", "b", "c"]);
    }

    #[test]
    fn filters_apply_before_the_limit_and_keys_only_drops_values() {
        let s = store();
        let resp = s
            .read(|r| {
                range(
                    r,
                    &RangeRequest {
                        min_mod_revision: 4,
                        limit: 1,
                        keys_only: true,
                        ..range_req("a", "z")
                    },
                )
            })
            .unwrap();
        assert_eq!(pairs(&resp.kvs), vec![p("b", "")]);
        // More than the limit passed the filter; count ignores filters.
        assert_eq!((resp.more, resp.count), (true, 3));
    }

    #[test]
    fn reads_at_a_revision_and_refuses_future_and_compacted_ones() {
        let mut s = store();
        let at = |s: &TestStore, revision| {
            s.read(|r| {
                range(
                    r,
                    &RangeRequest {
                        revision,
                        ..range_req("a", "z")
                    },
                )
            })
        };
        assert_eq!(
            pairs(&at(&s, 3).unwrap().kvs),
            vec![p("a", "3"), p("b", "1")]
        );
        assert_eq!(at(&s, 6), Err(StoreError::FutureRev));
        s.apply(Command::Compact(CompactionRequest {
            revision: 4,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(at(&s, 3), Err(StoreError::Compacted));
        assert_eq!(at(&s, 4).unwrap().kvs.len(), 3);
    }
}
