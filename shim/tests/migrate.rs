//! The migration service as a migrator meets it: on the client port of a
//! running `cairn`, taking a request far above --max-request-bytes, with
//! etcdctl's writes refused until cutover and /health saying why.

mod common;

use std::io::{Read, Write};

use cairn_proto::migrate::migration_client::MigrationClient;
use cairn_proto::migrate::{BeginRequest, CutoverRequest, ImportBaseRequest, Phase, StateRequest};
use cairn_proto::mvccpb::KeyValue;
use common::{etcdctl_run, spawn_single};

/// A plain HTTP/1.1 GET on the client port: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_is_served_on_the_client_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, url) = spawn_single(dir.path());
    let mut client = MigrationClient::connect(url.clone()).await.unwrap();
    let st = client.state(StateRequest {}).await.unwrap().into_inner();
    assert_eq!((st.phase(), st.target_revision), (Phase::None, 1));
    client
        .begin(BeginRequest {
            source_cluster_id: 0xabc,
            source_version: "3.5.1".into(),
            start_revision: 10,
            compact_revision: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let put = etcdctl_run(&["--endpoints", &addr, "put", "k", "v"], None);
    assert!(!put.status.success());
    let err = String::from_utf8_lossy(&put.stderr);
    assert!(
        err.contains("cairn is importing from etcd cluster abc (phase COPYING)"),
        "{err}"
    );
    let (status, body) = http_get(&addr, "/health");
    assert!(status.contains("503"), "{status}");
    assert!(body.contains("IMPORTING from etcd cluster abc"), "{body}");
    assert!(http_get(&addr, "/livez").0.contains("200"));

    // One page of 4 MiB: above the default --max-request-bytes (1.5 MiB).
    let kvs: Vec<KeyValue> = (0..4)
        .map(|i| KeyValue {
            key: format!("big/{i}").into_bytes(),
            value: vec![b'x'; 1 << 20],
            create_revision: 2 + i,
            mod_revision: 2 + i,
            version: 1,
            lease: 0,
        })
        .collect();
    let st = client
        .import_base(ImportBaseRequest {
            kvs,
            done: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.phase(), st.target_revision), (Phase::Following, 10));
    let get = etcdctl_run(&["--endpoints", &addr, "get", "big/3", "-w", "json"], None);
    let text = String::from_utf8_lossy(&get.stdout);
    assert!(text.contains("\"mod_revision\":5"), "{text}");
    client
        .cutover(CutoverRequest {
            expected_revision: 10,
            unix_ms: 0,
        })
        .await
        .unwrap();
    let put = etcdctl_run(&["--endpoints", &addr, "put", "k", "v"], None);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert!(http_get(&addr, "/health").0.contains("200"));
}
