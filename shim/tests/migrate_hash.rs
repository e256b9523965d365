//! A copy made through the migration service hashes as its etcd source
//! does: etcd 3.5's history (a txn, deletes, a lease, a compaction) read
//! with etcd's own API, as a migrator reads it, imported into Cairn, then
//! HashKV compared at every revision from the copy on, and again after the
//! source compacts further and the target mirrors it (`compact_to`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    request_op, watch_client::WatchClient, watch_request, CompactionRequest, DeleteRangeRequest,
    HashKvRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use cairn_proto::migrate::migration_client::MigrationClient;
use cairn_proto::migrate::{
    BeginRequest, ImportBaseRequest, ImportLease, ImportRevision, ImportRevisionsRequest,
};
use cairn_proto::mvccpb::Event;
use common::{free_port, spawn_single};
use tonic::transport::Channel;

fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_TEST_ETCD") {
        return PathBuf::from(p);
    }
    common::etcdctl().with_file_name("etcd")
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(url: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            let mut kv = KvClient::new(ch.clone());
            let probe = RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            };
            if kv.range(probe).await.is_ok() {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "{url} not serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn put_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: format!("v-{k}").into_bytes(),
            ..Default::default()
        })),
    }
}

async fn put(kv: &mut KvClient<Channel>, k: &str, v: &str, lease: i64) {
    kv.put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn del(kv: &mut KvClient<Channel>, k: &str) {
    kv.delete_range(DeleteRangeRequest {
        key: k.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn txn(kv: &mut KvClient<Channel>, keys: &[&str]) {
    kv.txn(TxnRequest {
        success: keys.iter().map(|k| put_op(k)).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The source's revisions in `[from, to]`, each with its events in order.
async fn revisions(ch: &Channel, from: i64, to: i64) -> Vec<ImportRevision> {
    let mut watch = WatchClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: from,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<ImportRevision> = Vec::new();
    while out.last().is_none_or(|r| r.revision < to) {
        let resp = stream.message().await.unwrap().unwrap();
        for ev in resp.events {
            let rev = ev.kv.as_ref().unwrap().mod_revision;
            let ev = Event {
                prev_kv: None,
                ..ev
            };
            match out.last_mut() {
                Some(r) if r.revision == rev => r.events.push(ev),
                _ => out.push(ImportRevision {
                    revision: rev,
                    events: vec![ev],
                }),
            }
        }
    }
    drop(tx);
    out
}

async fn hash(ch: &Channel, revision: i64) -> (u32, i64) {
    let r = MaintenanceClient::new(ch.clone())
        .hash_kv(HashKvRequest { revision })
        .await
        .unwrap()
        .into_inner();
    (r.hash, r.compact_revision)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_hashes_as_its_etcd_source() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Etcd(
        Command::new(etcd_bin())
            .args([
                "--data-dir",
                dir.path().join("etcd").to_str().unwrap(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let src = connect(&etcd_url).await;
    let mut kv = KvClient::new(src.clone());
    let lease = LeaseClient::new(src.clone())
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    put(&mut kv, "a", "1", 0).await; // 2
    put(&mut kv, "b", "1", lease).await; // 3
    txn(&mut kv, &["c", "d"]).await; // 4: one revision, keys in key order
    put(&mut kv, "a", "2", 0).await; // 5
    del(&mut kv, "b").await; // 6
    put(&mut kv, "e", "1", lease).await; // 7
    put(&mut kv, "g", "1", 0).await; // 8
    kv.compact(CompactionRequest {
        revision: 7,
        physical: true,
    })
    .await
    .unwrap();
    put(&mut kv, "a", "3", 0).await; // 9
    del(&mut kv, "c").await; // 10
    txn(&mut kv, &["h", "f"]).await; // 11: sub-revisions out of key order
    put(&mut kv, "e", "2", lease).await; // 12
    let (start, compact, last) = (7, 7, 12);

    // The target.
    let (_server, _, url) = spawn_single(dir.path());
    let dst = connect(&url).await;
    let mut mig = MigrationClient::new(dst.clone());
    mig.begin(BeginRequest {
        source_cluster_id: 1,
        start_revision: start,
        compact_revision: compact,
        ..Default::default()
    })
    .await
    .unwrap();
    let base = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: start,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs;
    // Two pages.
    let (first, rest) = base.split_at(2);
    mig.import_base(ImportBaseRequest {
        kvs: first.to_vec(),
        leases: vec![ImportLease {
            id: lease,
            granted_ttl: 600,
            remaining_ttl: 600,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    mig.import_base(ImportBaseRequest {
        after_key: first[1].key.clone(),
        kvs: rest.to_vec(),
        done: true,
        ..Default::default()
    })
    .await
    .unwrap();
    mig.import_revisions(ImportRevisionsRequest {
        after_revision: start,
        revisions: revisions(&src, start + 1, last).await,
        ..Default::default()
    })
    .await
    .unwrap();
    // etcd 3.5.1 refuses to hash at the compact revision itself.
    for rev in start + 1..=last {
        assert_eq!(hash(&dst, rev).await, hash(&src, rev).await, "at {rev}");
    }

    // The source compacts further; the target mirrors it.
    kv.compact(CompactionRequest {
        revision: 10,
        physical: true,
    })
    .await
    .unwrap();
    mig.import_revisions(ImportRevisionsRequest {
        after_revision: last,
        compact_to: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    for rev in 11..=last {
        assert_eq!(hash(&dst, rev).await, hash(&src, rev).await, "at {rev}");
    }
}
