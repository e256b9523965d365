//! A store written as an etcd snapshot and read back into a new store
//! holds the same history, as HashKV and ranges at every revision see it.
//! (Against etcd itself: e2e's `snapshot` module and cairn-bbolt's tests.)

use std::path::Path;

use cairn_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
};

use super::export::export;
use super::file::{SnapshotError, SnapshotFile};
use super::import::{import, ImportOptions};
use super::layout::{self, EtcdMember};
use super::status::status;
use crate::command::Command;
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::hash_kv::hash_kv;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::schema;
use crate::mvcc::TxnRead;
use crate::testing::{read_with, TestStore};

fn member() -> EtcdMember {
    EtcdMember {
        id: 0x1234,
        name: "m1".into(),
        peer_urls: vec!["http://127.0.0.1:2380".into()],
        is_learner: false,
    }
}

/// Revisions 2..=9: a leased key, overwrites, a delete (5), a multi-key
/// delete (8), compaction at 5 (logical only: physical compaction has not run).
fn history() -> TestStore {
    let mut s = TestStore::new();
    s.apply(Command::LeaseGrant(LeaseGrantRequest { id: 77, ttl: 100 }))
        .unwrap();
    s.apply(Command::Put(PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        lease: 77,
        ..Default::default()
    }))
    .unwrap();
    s.put("b", "1");
    s.put("a", "2");
    s.apply(Command::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    s.put("c", "1");
    s.put("d", "1");
    s.apply(Command::Compact(CompactionRequest {
        revision: 5,
        physical: false,
    }))
    .unwrap();
    s.apply(Command::DeleteRange(DeleteRangeRequest {
        key: b"c".to_vec(),
        range_end: b"e".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    s.put("a", "3");
    s
}

fn export_to(conn: &mut rusqlite::Connection, index: &KeyIndex, path: &Path) {
    read_with(conn, index, |txn| {
        let state = ApplyState::load(txn.conn()).unwrap();
        let done = schema::get_meta(txn.conn(), schema::meta::COMPACT_DONE_REV).unwrap();
        export(txn, &state, done, &[member()], path).unwrap();
    });
}

/// (HashKV, every key-value) at each revision from the compact revision up.
fn views(conn: &mut rusqlite::Connection, index: &KeyIndex) -> Vec<(u32, Vec<String>)> {
    read_with(conn, index, |txn| {
        (txn.compact_rev()..=txn.current_rev())
            .map(|rev| {
                let hash = hash_kv(txn, rev).unwrap().hash;
                let kvs = crate::txn::range(
                    txn,
                    &RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        revision: rev,
                        ..Default::default()
                    },
                )
                .unwrap()
                .kvs
                .into_iter()
                .map(|kv| format!("{kv:?}"))
                .collect();
                (hash, kvs)
            })
            .collect()
    })
}

#[test]
fn a_store_exported_and_imported_keeps_its_history_leases_and_hashes() {
    let s = history();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    export_to(&mut s.reader(), &s.index, &snap);

    let file = SnapshotFile::open(&snap, true).unwrap();
    assert!(!file.had_hash);
    let st = status(&file).unwrap();
    assert_eq!(st.revision, 9);
    assert_eq!(st.version, layout::STORAGE_VERSION_WRITTEN);
    assert_eq!(
        file.compact_mark(layout::FINISHED_COMPACT).unwrap(),
        Some(5)
    );

    let restored = dir.path().join("restored.db");
    let imported = import(&file, &restored, ImportOptions::default()).unwrap();
    assert_eq!((imported.revision, imported.compact_revision), (9, 5));
    assert_eq!(imported.leases, 1);
    let conn = schema::open_writer(&restored).unwrap();
    let index = KeyIndex::load(&conn).unwrap();
    let mut reader = schema::open_reader(&restored).unwrap();
    assert_eq!(views(&mut reader, &index), views(&mut s.reader(), &s.index));
    let leases = read_with(&mut reader, &index, |t| t.leases().unwrap());
    assert_eq!(leases, vec![(77, 100)]);

    // The restored store has physical compaction done (etcd's bucket holds
    // only what compaction keeps): its export takes the other path and
    // must give the same `key` bucket.
    let again = dir.path().join("again.db");
    export_to(&mut reader, &index, &again);
    let again = SnapshotFile::open(&again, true).unwrap();
    let key_bucket = |f: &SnapshotFile| -> Vec<_> {
        f.db.bucket(layout::KEY)
            .unwrap()
            .unwrap()
            .entries()
            .map(|e| e.unwrap())
            .collect()
    };
    assert_eq!(key_bucket(&again), key_bucket(&file));
    // At compaction 5, a@4 stands and stays (a@2 goes); b's tombstone at 5
    // stands, so b goes entirely.
    let revs: Vec<_> = key_bucket(&file)
        .iter()
        .map(|e| layout::parse_revision_key(&e.key).unwrap())
        .collect();
    assert_eq!(
        revs,
        vec![
            (4, 0, false),
            (6, 0, false),
            (7, 0, false),
            (8, 0, true),
            (8, 1, true),
            (9, 0, false)
        ]
    );
}

#[test]
fn bump_revision_and_mark_compacted_move_both_revisions() {
    let s = history();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    export_to(&mut s.reader(), &s.index, &snap);
    let file = SnapshotFile::open(&snap, true).unwrap();
    let imported = import(
        &file,
        &dir.path().join("r.db"),
        ImportOptions {
            bump_revision: 1000,
            mark_compacted: true,
        },
    )
    .unwrap();
    assert_eq!((imported.revision, imported.compact_revision), (1009, 1009));
}

#[test]
fn a_file_without_a_hash_is_refused_unless_the_check_is_skipped() {
    let s = history();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    export_to(&mut s.reader(), &s.index, &snap);
    let err = SnapshotFile::open(&snap, false).err().unwrap();
    assert!(matches!(err, SnapshotError::MissingHash { .. }), "{err}");
}
