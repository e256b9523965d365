//! A migration into a three-member Cairn cluster, each call through another
//! member (followers forward it): every member applies the same import, its
//! State says so, their HashKVs agree, and writes pass everywhere after
//! the cutover.

mod common;

use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::{maintenance_client::MaintenanceClient, HashKvRequest};
use cairn_proto::migrate::migration_client::MigrationClient;
use cairn_proto::migrate::{
    BeginRequest, CutoverRequest, ImportBaseRequest, ImportRevision, ImportRevisionsRequest, Phase,
    StateRequest,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use common::{etcdctl_run, spawn_cluster};

fn kv(key: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: format!("{key}@{modr}").into_bytes(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_member_applies_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = spawn_cluster(dir.path(), "http", &[]);
    let endpoints = cluster.endpoints.clone();
    let mut clients = Vec::new();
    for ep in &endpoints {
        clients.push(MigrationClient::connect(ep.clone()).await.unwrap());
    }
    clients[0]
        .begin(BeginRequest {
            source_cluster_id: 0x5e,
            start_revision: 20,
            compact_revision: 15,
            ..Default::default()
        })
        .await
        .unwrap();
    clients[1]
        .import_base(ImportBaseRequest {
            kvs: vec![kv("a", 3, 12, 2), kv("b", 18, 18, 1), kv("c", 18, 18, 1)],
            ..Default::default()
        })
        .await
        .unwrap();
    clients[2]
        .import_base(ImportBaseRequest {
            after_key: b"c".to_vec(),
            kvs: vec![kv("d", 20, 20, 1)],
            done: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let put = |k: KeyValue| Event {
        r#type: EventType::Put as i32,
        kv: Some(k),
        prev_kv: None,
    };
    clients[0]
        .import_revisions(ImportRevisionsRequest {
            after_revision: 20,
            revisions: vec![
                ImportRevision {
                    revision: 21,
                    events: vec![put(kv("a", 3, 21, 3))],
                },
                ImportRevision {
                    revision: 22,
                    events: vec![Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: b"b".to_vec(),
                            mod_revision: 22,
                            ..Default::default()
                        }),
                        prev_kv: None,
                    }],
                },
            ],
            compact_to: 21,
            ..Default::default()
        })
        .await
        .unwrap();
    // Every member, from its own applied state.
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in clients.iter_mut() {
        loop {
            let st = c.state(StateRequest {}).await.unwrap().into_inner();
            if st.target_revision == 22 {
                assert_eq!(
                    (st.phase(), st.compact_revision, st.keys_copied),
                    // The mirrored compaction moved it from the copy's 15.
                    (Phase::Following, 21, 4)
                );
                break;
            }
            assert!(Instant::now() < deadline, "{st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut hashes = Vec::new();
    for ep in &endpoints {
        let mut m = MaintenanceClient::connect(ep.clone()).await.unwrap();
        let h = m
            .hash_kv(HashKvRequest { revision: 22 })
            .await
            .unwrap()
            .into_inner();
        hashes.push((h.hash, h.compact_revision));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert_eq!(hashes[0].1, 21);
    let refused = etcdctl_run(&["--endpoints", &endpoints[2], "put", "x", "1"], None);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is importing from etcd cluster"), "{said}");
    clients[1]
        .cutover(CutoverRequest {
            expected_revision: 22,
            unix_ms: 0,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let put = etcdctl_run(&["--endpoints", &endpoints[2], "put", "x", "1"], None);
        if put.status.success() {
            break;
        }
        // A member that has not applied the cutover yet still refuses.
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = etcdctl_run(
        &["--endpoints", &endpoints[0], "get", "x", "-w", "json"],
        None,
    );
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.contains("\"mod_revision\":23"), "{text}");
}
