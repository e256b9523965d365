//! The store's revision semantics, checked against what etcd does.

use std::sync::Arc;

use cairn_proto::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use cairn_raft_backend::{Command, CommandOutput, Store, StoreError};

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open_single(dir.path(), &prometheus::Registry::new())
        .await
        .unwrap()
}

/// A second connection to the store's file, for tests that look at or change
/// the rows directly.
fn db(dir: &tempfile::TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.path().join(cairn_raft_backend::DB_FILE)).unwrap()
}

fn put(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn del(k: &str, end: &str) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        prev_kv: true,
    })
}

async fn get(s: &Store, k: &str, rev: i64) -> Result<Vec<KeyValue>, StoreError> {
    s.range(RangeRequest {
        key: k.into(),
        revision: rev,
        ..Default::default()
    })
    .await
    .map(|r| r.kvs)
}

/// Every change in `[from, to]` (at most `max_events`, whole revisions).
async fn history(s: &Store, from: i64, to: i64, max_events: usize) -> Vec<Event> {
    s.events_between(from, to, max_events, usize::MAX)
        .await
        .unwrap()
        .events
}

fn rev_of(out: &CommandOutput) -> i64 {
    match out {
        CommandOutput::Put(r) => r.header.as_ref().unwrap().revision,
        CommandOutput::DeleteRange(r) => r.header.as_ref().unwrap().revision,
        CommandOutput::Txn(r) => r.header.as_ref().unwrap().revision,
        other => panic!("no revision in {other:?}"),
    }
}

#[tokio::test]
async fn revisions_follow_etcd_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    assert_eq!(
        s.applied().current_rev,
        1,
        "an empty store is at revision 1"
    );

    assert_eq!(rev_of(&s.propose(put("a", "1")).await.unwrap()), 2);

    // A txn with three puts takes one revision, with sub-revisions in order.
    let mut events = s.subscribe();
    let t = Command::Txn(TxnRequest {
        success: vec![put_op("x", "1"), put_op("y", "1"), put_op("z", "1")],
        ..Default::default()
    });
    assert_eq!(rev_of(&s.propose(t).await.unwrap()), 3);
    let batch = events.recv().await.unwrap();
    assert_eq!(batch.revisions.len(), 1);
    let keys: Vec<_> = batch.revisions[0]
        .events
        .iter()
        .map(|e| e.kv.clone().unwrap().key)
        .collect();
    assert_eq!(keys, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);

    // A txn that writes nothing, and a delete that deletes nothing, take none.
    let t = Command::Txn(TxnRequest {
        compare: vec![Compare {
            key: "a".into(),
            target: compare::CompareTarget::Version as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Version(99)),
            ..Default::default()
        }],
        success: vec![put_op("a", "never")],
        ..Default::default()
    });
    match s.propose(t).await.unwrap() {
        CommandOutput::Txn(r) => {
            assert!(!r.succeeded);
            assert_eq!(r.header.unwrap().revision, 3);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(rev_of(&s.propose(del("nothing", "")).await.unwrap()), 3);
    assert_eq!(s.applied().current_rev, 3);

    // version counts puts since creation and restarts after a delete.
    s.propose(put("a", "2")).await.unwrap();
    let kv = &get(&s, "a", 0).await.unwrap()[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
    assert_eq!(rev_of(&s.propose(del("a", "")).await.unwrap()), 5);
    s.propose(put("a", "3")).await.unwrap();
    let kv = &get(&s, "a", 0).await.unwrap()[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));

    // History stays readable, tombstones included.
    assert_eq!(get(&s, "a", 4).await.unwrap()[0].value, b"2");
    assert!(get(&s, "a", 5).await.unwrap().is_empty());
    assert_eq!(get(&s, "a", 2).await.unwrap()[0].value, b"1");
    assert_eq!(get(&s, "a", 7).await, Err(StoreError::FutureRev));
}

#[tokio::test]
async fn range_limit_count_and_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for i in 0..10 {
        s.propose(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    let r = s
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (3, 10, true));
    // count ignores the mod-revision filter, more reflects what survived it.
    let r = s
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 3,
            min_mod_revision: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (3, 10, false));
    // "\0" as range_end: every key from `key` on.
    let r = s
        .range(RangeRequest {
            key: "k5".into(),
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (5, 0));
}

#[tokio::test]
async fn compaction_keeps_latest_and_refuses_older_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    s.propose(put("keep", "1")).await.unwrap(); // 2
    s.propose(put("keep", "2")).await.unwrap(); // 3
    s.propose(put("gone", "1")).await.unwrap(); // 4
    s.propose(del("gone", "")).await.unwrap(); // 5
    s.propose(put("later", "1")).await.unwrap(); // 6
    let out = s
        .propose(Command::Compact(CompactionRequest {
            revision: 5,
            physical: true,
        }))
        .await
        .unwrap();
    let CommandOutput::Compact {
        compact_revision, ..
    } = out
    else {
        panic!("{out:?}")
    };
    s.wait_compacted(compact_revision).await;

    assert_eq!(get(&s, "keep", 4).await, Err(StoreError::Compacted));
    assert_eq!(get(&s, "keep", 5).await.unwrap()[0].value, b"2");
    assert!(get(&s, "gone", 5).await.unwrap().is_empty());
    assert_eq!(get(&s, "later", 0).await.unwrap()[0].value, b"1");
    // Compacting again at or below the compacted revision, or in the future, fails.
    for (rev, err) in [
        (5, StoreError::Compacted),
        (4, StoreError::Compacted),
        (7, StoreError::FutureRev),
    ] {
        let r = s
            .propose(Command::Compact(CompactionRequest {
                revision: rev,
                physical: false,
            }))
            .await;
        assert_eq!(r, Err(err), "compact {rev}");
    }
    // The physical rows are gone: only keep@3 and later@6 remain.
    let conn = rusqlite::Connection::open(s.path()).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn failed_command_leaves_no_trace_and_others_in_batch_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir).await);
    // ignore_value on a missing key fails; concurrent good puts still land.
    let bad = Command::Put(PutRequest {
        key: "missing".into(),
        ignore_value: true,
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        let cmd = if i % 10 == 0 {
            bad.clone()
        } else {
            put(&format!("ok{i}"), "v")
        };
        tasks.push(tokio::spawn(async move { s.propose(cmd).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e, StoreError::KeyNotFound),
        }
    }
    assert_eq!(ok, 45);
    assert_eq!(
        s.applied().current_rev,
        46,
        "45 puts, no revision for failures"
    );
    assert!(get(&s, "missing", 0).await.unwrap().is_empty());
}

/// A from-key delete then an ignore_value put of a key it removed: etcd's
/// interval check lets it through and etcd fails mid-apply. Cairn refuses it
/// before writing, so the store keeps serving and nothing changes.
#[tokio::test]
async fn txn_put_of_a_key_its_own_delete_removed_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    s.propose(put("k2", "v2")).await.unwrap();
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: "k".into(),
                        range_end: vec![0],
                        prev_kv: false,
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "k2".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let err = s.propose(Command::Txn(txn)).await.unwrap_err();
    assert_eq!(err, StoreError::KeyNotFound);
    assert_eq!(s.applied().current_rev, 2);
    assert_eq!(get(&s, "k2", 0).await.unwrap()[0].value, b"v2");
    // Still serving.
    assert_eq!(rev_of(&s.propose(put("k3", "v")).await.unwrap()), 3);
}

#[tokio::test]
async fn concurrent_proposals_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir).await);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.propose(put(&format!("g{i}"), "v")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let commits = s.metrics().wal_fsync.get_sample_count();
    assert!(
        commits < 400,
        "400 proposals took {commits} commits: no group commit"
    );
    assert_eq!(s.applied().current_rev, 401);
}

#[tokio::test]
async fn an_import_keeps_source_revisions_through_raft_and_a_reopen() {
    use cairn_proto::migrate::{
        BeginRequest, CutoverRequest, ImportBaseRequest, ImportRevision, ImportRevisionsRequest,
        Phase,
    };
    let dir = tempfile::tempdir().unwrap();
    let kv = |k: &str, create, modr, ver| KeyValue {
        key: k.into(),
        value: b"v".to_vec(),
        create_revision: create,
        mod_revision: modr,
        version: ver,
        ..Default::default()
    };
    {
        let s = open(&dir).await;
        let mut events = s.subscribe();
        s.migration_begin(BeginRequest {
            source_cluster_id: 42,
            start_revision: 1000,
            compact_revision: 990,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.migration_gate().phase(), Phase::Copying);
        let refused = s.propose(put("x", "1")).await;
        assert!(
            matches!(refused, Err(StoreError::MigrationImporting { .. })),
            "{refused:?}"
        );
        let st = s
            .import_base(ImportBaseRequest {
                kvs: vec![kv("a", 7, 999, 3), kv("b", 1000, 1000, 1)],
                done: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((st.phase(), st.target_revision), (Phase::Following, 1000));
        // The copy's completion is a reset for watchers.
        let batch = events.recv().await.unwrap();
        assert!(batch.reset && batch.current_revision == 1000, "{batch:?}");
        let a = &get(&s, "a", 0).await.unwrap()[0];
        assert_eq!((a.create_revision, a.mod_revision, a.version), (7, 999, 3));
        let put_ev = |kv: KeyValue| Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        };
        s.import_revisions(ImportRevisionsRequest {
            after_revision: 1000,
            revisions: vec![
                ImportRevision {
                    revision: 1001,
                    events: vec![put_ev(kv("a", 7, 0, 4))],
                },
                ImportRevision {
                    revision: 1002,
                    events: vec![Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: "b".into(),
                            ..Default::default()
                        }),
                        prev_kv: None,
                    }],
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        // One revision's events each.
        let batch = events.recv().await.unwrap();
        let revs: Vec<i64> = batch.revisions.iter().map(|r| r.revision).collect();
        assert_eq!(revs, vec![1001, 1002]);
        let again = s
            .import_revisions(ImportRevisionsRequest {
                after_revision: 1000,
                ..Default::default()
            })
            .await;
        assert!(matches!(again, Err(StoreError::MigrationOutOfStep { .. })));
        s.shutdown().await;
    }
    let s = open(&dir).await;
    let st = s.migration_state().await.unwrap();
    assert_eq!((st.phase(), st.target_revision), (Phase::Following, 1002));
    assert!(get(&s, "b", 0).await.unwrap().is_empty());
    s.migration_cutover(CutoverRequest {
        expected_revision: 1002,
        unix_ms: 1,
    })
    .await
    .unwrap();
    // Local writes continue from the imported numbering.
    assert_eq!(rev_of(&s.propose(put("c", "1")).await.unwrap()), 1003);
    // Physical compaction over copied rows (ids mod_revision << 24 | n) and
    // those after them: what stands at the compact revision stays.
    s.propose(Command::Compact(
        cairn_proto::etcdserverpb::CompactionRequest {
            revision: 1002,
            physical: true,
        },
    ))
    .await
    .unwrap();
    s.wait_compacted(1002).await;
    let rows: Vec<(i64, Vec<u8>)> = db(&dir)
        .prepare("SELECT rev, key FROM history ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![(1001, b"a".to_vec()), (1003, b"c".to_vec())],
        "a's copy and b's tombstone and copy are gone"
    );
    assert_eq!(get(&s, "a", 1002).await.unwrap()[0].version, 4);
    assert!(matches!(
        get(&s, "a", 1001).await,
        Err(StoreError::Compacted)
    ));
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let applied = {
        let s = open(&dir).await;
        s.propose(put("a", "1")).await.unwrap();
        s.propose(put("a", "2")).await.unwrap();
        s.shutdown().await;
        s.applied().applied_index
    };
    let s = open(&dir).await;
    assert_eq!(s.applied().current_rev, 3);
    // Raft log indexes also count membership and leader entries.
    assert!(s.applied().applied_index >= applied);
    assert_eq!(rev_of(&s.propose(put("b", "1")).await.unwrap()), 4);
    assert_eq!(get(&s, "a", 2).await.unwrap()[0].value, b"1");
}

#[tokio::test]
async fn history_events_carry_prev_kv_and_respect_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    s.propose(put("a", "1")).await.unwrap(); // 2
    s.propose(put("a", "2")).await.unwrap(); // 3
    s.propose(del("a", "")).await.unwrap(); // 4
    s.propose(put("a", "3")).await.unwrap(); // 5
    let evs = history(&s, 2, 5, 100).await;
    let summary: Vec<_> = evs
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.mod_revision),
            )
        })
        .collect();
    let (put_t, del_t) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(
        summary,
        vec![
            (put_t, 2, None),
            (put_t, 3, Some(2)),
            (del_t, 4, Some(3)),
            (put_t, 5, None)
        ]
    );
    // max_events stops at a revision boundary.
    assert_eq!(history(&s, 2, 5, 1).await.len(), 1);
    s.propose(Command::Compact(CompactionRequest {
        revision: 4,
        physical: true,
    }))
    .await
    .unwrap();
    assert_eq!(
        s.events_between(3, 5, 100, usize::MAX).await,
        Err(StoreError::Compacted)
    );
    // Once physically compacted, the tombstone at the compact revision is gone
    // (as in etcd, which keeps no tombstone at or below it).
    s.wait_compacted(4).await;
    assert_eq!(history(&s, 4, 5, 100).await.len(), 1);
}

/// A history read bounded by bytes stops after the revision that reaches
/// the bound, never inside one.
#[tokio::test]
async fn history_reads_stop_after_the_revision_that_reaches_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let big = "v".repeat(1000);
    for _ in 0..5 {
        // Two keys per revision, ~2 KB of keys and values each.
        s.propose(Command::Txn(TxnRequest {
            success: vec![put_op("a", &big), put_op("b", &big)],
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let cur = s.applied().current_rev;
    let revs = |evs: Vec<Event>| -> Vec<i64> {
        evs.iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    };
    // 2 KB after the first revision, 4 KB after the second: the second
    // reaches 3 KB and is read whole, the third is not.
    let got = s.events_between(2, cur, usize::MAX, 3000).await.unwrap();
    assert_eq!(got.complete_to, 3);
    assert_eq!(revs(got.events), vec![2, 2, 3, 3]);
    // One byte still reads the first revision whole.
    let got = s.events_between(2, cur, usize::MAX, 1).await.unwrap();
    assert_eq!(got.complete_to, 2);
    assert_eq!(revs(got.events), vec![2, 2]);
    // Unbounded, or bounded by what there is: complete to the upper bound.
    let all = s
        .events_between(2, cur, usize::MAX, usize::MAX)
        .await
        .unwrap();
    assert_eq!((all.events.len(), all.complete_to), (10, cur));
    let upto = s.events_between(2, cur - 1, 8, usize::MAX).await.unwrap();
    assert_eq!((upto.events.len(), upto.complete_to), (8, cur - 1));
    // The event bound too stops after a whole revision.
    let got = s.events_between(2, cur, 3, usize::MAX).await.unwrap();
    assert_eq!((got.events.len(), got.complete_to), (4, 3));
}

/// History reads find their first row by bisecting row ids (no index on
/// revisions): every start and end revision must give exactly the events a
/// full read has there, also once compaction has left gaps in the ids.
#[tokio::test]
async fn history_reads_start_and_stop_at_every_revision_across_id_gaps() {
    type Summary = (i32, Vec<u8>, i64);
    fn summary(e: &Event) -> Summary {
        let kv = e.kv.as_ref().unwrap();
        (e.r#type, kv.key.clone(), kv.mod_revision)
    }
    async fn check_every_window(s: &Store, from: i64, cur: i64, want_all: &[Summary]) {
        for start in from..=cur + 1 {
            for end in [start, start + 3, cur] {
                let want: Vec<_> = want_all
                    .iter()
                    .filter(|e| (start..=end).contains(&e.2))
                    .cloned()
                    .collect();
                let got = history(s, start, end, usize::MAX).await;
                let got: Vec<_> = got.iter().map(summary).collect();
                assert_eq!(got, want, "events in [{start}, {end}]");
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    // A fixed mix of puts, deletes of one key and of a range, over 6 keys;
    // the revisions that wrote something, from the answers.
    let mut x = 7u64;
    let mut written = std::collections::BTreeSet::new();
    for _ in 0..120 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = format!("k{}", (x >> 33) % 6);
        let cmd = match (x >> 40) % 8 {
            0 => del(&key, ""),
            1 => del("k2", "k4"),
            _ => put(&key, &format!("v{}", x % 1000)),
        };
        let out = s.propose(cmd).await.unwrap();
        let deleted = matches!(&out, CommandOutput::DeleteRange(d) if d.deleted > 0);
        if deleted || matches!(out, CommandOutput::Put(_)) {
            written.insert(rev_of(&out));
        }
    }
    let cur = s.applied().current_rev;
    let all: Vec<Summary> = history(&s, 1, cur, usize::MAX)
        .await
        .iter()
        .map(summary)
        .collect();
    let revs: std::collections::BTreeSet<i64> = all.iter().map(|e| e.2).collect();
    assert_eq!(revs, written);
    check_every_window(&s, 1, cur, &all).await;

    let compact_to = cur / 2;
    compact_physically(&s, compact_to).await;
    // What compaction keeps from `compact_to` on: everything after it, and
    // at it the puts (its tombstones go, as in etcd).
    let kept: Vec<Summary> = all
        .iter()
        .filter(|e| e.2 > compact_to || (e.2 == compact_to && e.0 == EventType::Put as i32))
        .cloned()
        .collect();
    check_every_window(&s, compact_to, cur, &kept).await;
}

#[tokio::test]
async fn lease_revoke_deletes_attached_keys_in_one_revision() {
    use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let grant = |id| Command::LeaseGrant(LeaseGrantRequest { id, ttl: 60 });
    s.propose(grant(7)).await.unwrap();
    assert_eq!(s.propose(grant(7)).await, Err(StoreError::LeaseExists));
    for k in ["a", "b", "c"] {
        s.propose(Command::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: 7,
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    // Re-putting without the lease detaches the key.
    s.propose(put("c", "free")).await.unwrap();
    assert_eq!(
        s.lease_keys(7).await.unwrap(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    let before = s.applied().current_rev;
    let mut events = s.subscribe();
    s.propose(Command::LeaseRevoke(LeaseRevokeRequest { id: 7 }))
        .await
        .unwrap();
    assert_eq!(
        s.applied().current_rev,
        before + 1,
        "one revision for all keys"
    );
    let batch = events.recv().await.unwrap();
    assert_eq!(batch.revisions[0].events.len(), 2);
    assert!(batch.revisions[0]
        .events
        .iter()
        .all(|e| e.r#type == EventType::Delete as i32 && e.prev_kv.is_some()));
    assert_eq!(get(&s, "c", 0).await.unwrap()[0].value, b"free");
    assert_eq!(
        s.propose(Command::LeaseRevoke(LeaseRevokeRequest { id: 7 }))
            .await,
        Err(StoreError::LeaseNotFound)
    );
    // A lease with no keys is revoked without a new revision.
    s.propose(grant(8)).await.unwrap();
    let before = s.applied().current_rev;
    s.propose(Command::LeaseRevoke(LeaseRevokeRequest { id: 8 }))
        .await
        .unwrap();
    assert_eq!(s.applied().current_rev, before);
    assert!(s.leases().await.unwrap().is_empty());
}

/// Every key's value at every revision from 2 to the current one, and every
/// event with its prev_kv: what a read can observe of the history.
async fn observable(s: &Store) -> (Vec<Vec<KeyValue>>, Vec<Event>) {
    let cur = s.applied().current_rev;
    let mut states = Vec::new();
    for rev in 2..=cur {
        let r = s
            .range(RangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                revision: rev,
                ..Default::default()
            })
            .await
            .unwrap();
        states.push(r.kvs);
    }
    (states, history(s, 2, cur, usize::MAX).await)
}

/// A workload with deletes, re-creations and a txn, so that the links from
/// row to row cross tombstones.
async fn churn(s: &Store) {
    for cmd in [
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        del("b", ""),
        put("c", "1"),
        del("a", ""),
        put("a", "3"),
        Command::Txn(TxnRequest {
            success: vec![put_op("b", "2"), put_op("c", "2"), put_op("d", "1")],
            ..Default::default()
        }),
        del("c", "e"),
        put("c", "3"),
    ] {
        s.propose(cmd).await.unwrap();
    }
}

/// What a store shows after `churn`, once it is shut down (for tests that
/// then rewrite its file and reopen it).
async fn churned_and_closed(dir: &tempfile::TempDir) -> (Vec<Vec<KeyValue>>, Vec<Event>) {
    let s = open(dir).await;
    churn(&s).await;
    let seen = observable(&s).await;
    s.shutdown().await;
    seen
}

#[tokio::test]
async fn a_version_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let before = churned_and_closed(&dir).await;
    // Turn the file back into version 1's layout: a (key, rev) index, no
    // row links, and a `live` table of the existing keys.
    {
        let conn = db(&dir);
        conn.execute_batch(&format!(
            "BEGIN; {} COMMIT;",
            cairn_raft_backend::DOWNGRADE_TO_V1_FOR_TESTS
        ))
        .unwrap();
    }
    let s = open(&dir).await;
    assert_eq!(observable(&s).await, before);
    // Writes after the upgrade link to the rows from before it.
    let out = s.propose(Command::Put(PutRequest {
        key: b"b".to_vec(),
        value: b"3".to_vec(),
        prev_kv: true,
        ..Default::default()
    }));
    let CommandOutput::Put(p) = out.await.unwrap() else {
        panic!("not a put")
    };
    let prev = p.prev_kv.unwrap();
    assert_eq!((prev.value.as_slice(), prev.version), (&b"2"[..], 1));
    let b = get(&s, "b", 0).await.unwrap();
    assert_eq!((b[0].version, b[0].create_revision), (2, 9));
    // A key deleted before the upgrade comes back as new.
    s.propose(put("e", "1")).await.unwrap();
    s.propose(del("e", "")).await.unwrap();
    let cur = s.applied().current_rev;
    let events = history(&s, cur - 1, cur, 10).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"1");
}

/// A store a newer release wrote (a later schema version) is refused at
/// open, naming its version and the ones this release reads, and left as it was.
#[tokio::test]
async fn a_store_of_a_newer_schema_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let newer = cairn_raft_backend::SCHEMA_VERSION + 1;
    drop(churned_and_closed(&dir).await);
    db(&dir)
        .execute(
            "UPDATE meta SET value = ?1 WHERE name = 'schema_version'",
            [newer],
        )
        .unwrap();
    let err = match Store::open_single(dir.path(), &prometheus::Registry::new()).await {
        Ok(_) => panic!("a store of schema {newer} was opened"),
        Err(e) => e,
    };
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == newer),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("schema version {newer}"))
            && text.contains(&format!("..={}", cairn_raft_backend::SCHEMA_VERSION))
            && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    let kept: i64 = db(&dir)
        .query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, newer);
}

/// Stores written before history reads bisected row ids carry an index on
/// `history.rev`; opening one drops it and reads the same.
#[tokio::test]
async fn a_store_with_the_old_revision_index_loses_it_and_reads_the_same() {
    let has_index = |conn: &rusqlite::Connection| -> bool {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'history_rev'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    let dir = tempfile::tempdir().unwrap();
    let before = churned_and_closed(&dir).await;
    {
        let conn = db(&dir);
        assert!(!has_index(&conn));
        conn.execute_batch("CREATE INDEX history_rev ON history (rev);")
            .unwrap();
    }
    let s = open(&dir).await;
    assert!(!has_index(&db(&dir)));
    assert_eq!(observable(&s).await, before);
}

#[tokio::test]
async fn compaction_removes_superseded_rows_and_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    churn(&s).await;
    let (states, events) = observable(&s).await;
    // Revision 9 is the txn; 10 deletes c and d; 11 puts c again.
    compact_physically(&s, 10).await;
    // What is readable at or above the compact revision is unchanged.
    let (after, after_events) = {
        let cur = s.applied().current_rev;
        let mut v = Vec::new();
        for rev in 10..=cur {
            v.push(get_all(&s, rev).await);
        }
        (v, history(&s, 11, cur, usize::MAX).await)
    };
    assert_eq!(after, states[8..].to_vec());
    let first_kept = events
        .iter()
        .position(|e| e.kv.as_ref().unwrap().mod_revision >= 11)
        .unwrap();
    assert_eq!(after_events, events[first_kept..].to_vec());
    // Left: a@8 and b@9 (each key's newest at 10) and c@11. The tombstones
    // at 10 are gone, and d with its tombstone.
    let conn = db(&dir);
    assert_eq!(
        history_rows(&conn),
        vec![
            ("a".to_string(), 8, false),
            ("b".to_string(), 9, false),
            ("c".to_string(), 11, false),
        ]
    );
    // And the index agrees: d is gone at every readable revision.
    assert!(get_all(&s, 10).await.iter().all(|kv| kv.key != b"d"));
    assert_eq!(
        get(&s, "d", 9).await,
        Err(StoreError::Compacted),
        "below the compact revision"
    );
}

/// A compaction pass that fails (a disk fault, injected with a trigger)
/// loses track of nothing: the index already let go of the rows, and they are
/// deleted by the next compaction rather than left in the file.
#[tokio::test]
async fn rows_a_failed_compaction_left_go_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let s = Store::open_single(dir.path(), &registry).await.unwrap();
    churn(&s).await;
    let conn = db(&dir);
    conn.execute_batch(
        "CREATE TRIGGER fault BEFORE DELETE ON history
         BEGIN SELECT RAISE(ABORT, 'injected I/O error'); END;",
    )
    .unwrap();
    s.propose(Command::Compact(CompactionRequest {
        revision: 10,
        physical: false,
    }))
    .await
    .unwrap();
    let failures = || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "cairn_compaction_failures_total")
            .map_or(0.0, |f| f.get_metric()[0].get_counter().get_value())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while failures() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pass never failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    conn.execute_batch("DROP TRIGGER fault;").unwrap();
    compact_physically(&s, 11).await;
    // Each key's state at 11, as the test above leaves at 10; nothing more.
    assert_eq!(
        history_rows(&conn),
        vec![
            ("a".to_string(), 8, false),
            ("b".to_string(), 9, false),
            ("c".to_string(), 11, false)
        ]
    );
}

/// HashKV's bounds are etcd 3.6's: below the compact revision is compacted,
/// the compact revision itself and everything up to the current one hash,
/// and 0 means the current revision.
#[tokio::test]
async fn hash_kv_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    churn(&s).await;
    compact_physically(&s, 10).await;
    let cur = s.applied().current_rev;
    assert_eq!(s.hash_kv(9).await, Err(StoreError::Compacted));
    assert_eq!(s.hash_kv(cur + 1).await, Err(StoreError::FutureRev));
    let at_compact = s.hash_kv(10).await.unwrap();
    assert_eq!(
        (at_compact.compact_revision, at_compact.hash_revision),
        (10, 10)
    );
    let now = s.hash_kv(0).await.unwrap();
    assert_eq!(now, s.hash_kv(cur).await.unwrap());
    assert_eq!(now.hash_revision, cur);
    assert_ne!(
        now.hash, at_compact.hash,
        "revision 11 is not counted at 10"
    );
}

/// Every history row in the file: (key, revision, tombstone), in row order.
fn history_rows(conn: &rusqlite::Connection) -> Vec<(String, i64, bool)> {
    conn.prepare("SELECT CAST(key AS TEXT), rev, tombstone FROM history ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Compacts at `rev` and waits until the rows are gone.
async fn compact_physically(s: &Store, rev: i64) {
    s.propose(Command::Compact(CompactionRequest {
        revision: rev,
        physical: true,
    }))
    .await
    .unwrap();
    s.wait_compacted(rev).await;
}

async fn get_all(s: &Store, rev: i64) -> Vec<KeyValue> {
    s.range(RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        revision: rev,
        ..Default::default()
    })
    .await
    .unwrap()
    .kvs
}

/// A put's event carries the previous kv of the key it updates only while a
/// watcher wants previous kvs, and each batch says which it is; the key's
/// create revision and version come out the same either way.
#[tokio::test]
async fn put_events_carry_prev_kv_only_while_wanted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let mut events = s.subscribe();
    let mut next_event = || {
        let batch = events.try_recv().expect("one batch per write");
        assert_eq!(batch.revisions.len(), 1);
        (batch.prev_kv_complete, batch.revisions[0].events[0].clone())
    };
    s.propose(put("a", "1")).await.unwrap(); // revision 2, a creation
    let (complete, created) = next_event();
    assert!(!complete);
    assert!(created.prev_kv.is_none());

    s.propose(put("a", "2")).await.unwrap(); // revision 3: no watcher wants prev
    let (complete, bare) = next_event();
    assert!(!complete, "no watcher wants prev_kv");
    assert!(bare.prev_kv.is_none());
    let kv = bare.kv.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let wanted = s.want_prev_kv();
    s.propose(put("a", "3")).await.unwrap(); // revision 4
    let (complete, full) = next_event();
    assert!(complete);
    let prev = full.prev_kv.expect("prev_kv while wanted");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"2"[..], 3));
    let kv = full.kv.unwrap();
    assert_eq!((kv.create_revision, kv.version), (2, 3));

    drop(wanted);
    s.propose(put("a", "4")).await.unwrap();
    let (complete, bare) = next_event();
    assert!(
        !complete && bare.prev_kv.is_none(),
        "withdrawn with the last watcher"
    );
    // History keeps every previous kv whatever the live feed carried.
    let evs = history(&s, 3, 5, 10).await;
    let prevs: Vec<_> = evs
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|p| p.mod_revision))
        .collect();
    assert_eq!(prevs, vec![Some(2), Some(3), Some(4)]);
}

/// The cluster version and downgrade go through the log, survive a restart,
/// and a member whose release is below the cluster version is refused at
/// start unless a downgrade to its release is enabled (etcd's
/// MustDetectDowngrade).
#[tokio::test]
async fn an_older_release_is_refused_unless_a_downgrade_to_it_is_enabled() {
    use cairn_proto::peer::{ClusterVersionSet, DowngradeInfoSet};
    use cairn_raft_backend::versions::{MinorVersion, VersionState};

    let ours = MinorVersion::this_release();
    let newer = MinorVersion {
        major: ours.major,
        minor: ours.minor + 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    // The one member's monitor decides the version from its own release.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.version_state().await.unwrap().cluster != Some(ours) {
        assert!(
            std::time::Instant::now() < deadline,
            "no cluster version decided"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = s
        .propose(Command::ClusterVersionSet(ClusterVersionSet {
            version: newer.to_string(),
        }))
        .await
        .unwrap();
    let at_newer = VersionState {
        cluster: Some(newer),
        downgrade_target: None,
    };
    assert_eq!(out, CommandOutput::Versions(at_newer));
    let bad = s
        .propose(Command::ClusterVersionSet(ClusterVersionSet {
            version: "next".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad, StoreError::InvalidVersion("next".into()));
    s.shutdown().await;
    drop(s);

    let refused = match Store::open_single(dir.path(), &prometheus::Registry::new()).await {
        Ok(_) => panic!("an older release started in a newer cluster"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.starts_with(&format!(
            "invalid downgrade; server version {ours} is lower than determined cluster version {newer}"
        )),
        "{refused}"
    );

    // With a downgrade to this release enabled (written as the newer
    // release would have, before this one took the data dir over), it starts.
    let conn = db(&dir);
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('downgrade_target', ?1)",
        [((ours.major as i64) << 32) | ours.minor as i64],
    )
    .unwrap();
    drop(conn);
    let s = open(&dir).await;
    let st = s.version_state().await.unwrap();
    assert_eq!(st.downgrade_target, Some(ours));
    // Its monitor lowers the version to the target, then, every member
    // running it, ends the downgrade.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = s.version_state().await.unwrap();
        if st
            == (VersionState {
                cluster: Some(ours),
                downgrade_target: None,
            })
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "downgrade never finished: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = s
        .propose(Command::DowngradeInfoSet(DowngradeInfoSet {
            enabled: true,
            target_version: "0.x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(out, StoreError::InvalidVersion("0.x".into()));
}
