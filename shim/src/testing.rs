//! Fixtures for in-process unit tests: a member's `Node` over a real store in
//! a temporary directory, and waiting on a condition with a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::PutRequest;
use cairn_raft_backend::{Bootstrap, Command, CommandOutput, PeerTransport, ReplicaOptions, Store};

use crate::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_QUOTA_BYTES};
use crate::identity::Identity;
use crate::node::{Node, SharedNode};

/// How long a test waits for something the server does by itself.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A node and the directory its store lives in (removed on drop).
pub struct TestNode {
    pub node: SharedNode,
    _dir: tempfile::TempDir,
}

fn test_node(store: Store, member_id: u64, dir: tempfile::TempDir) -> TestNode {
    let node = Node {
        store,
        id: Identity {
            name: "single".into(),
            member_id,
            cluster_id: 0x1000,
            cluster_token: "etcd-cluster".into(),
        },
        client_urls: Vec::new(),
        peer_urls: Vec::new(),
        max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        max_txn_ops: 128,
        quota_bytes: DEFAULT_QUOTA_BYTES,
        registry: prometheus::Registry::new(),
    };
    TestNode {
        node: Arc::new(node),
        _dir: dir,
    }
}

/// A one-member cluster whose member is already leader.
pub async fn leader() -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_single(dir.path(), &prometheus::Registry::new())
        .await
        .expect("open a one-member store");
    test_node(store, 1, dir)
}

/// A member that will never be leader over the state of `leader`'s store:
/// `leader` is stopped and its data dir reopened by member 2, which the
/// membership stored there (member 1 alone) does not list as a voter.
pub async fn follower_of(leader: TestNode) -> TestNode {
    leader.node.store.shutdown().await;
    let TestNode { node, _dir: dir } = leader;
    drop(node);
    let opts = ReplicaOptions {
        member_id: 2,
        timing: Default::default(),
        transport: Arc::new(PeerTransport::new(0, None, Duration::from_secs(1))),
        bootstrap: Bootstrap::Existing,
        request_timeout: Duration::from_secs(1),
    };
    let store = Store::open(dir.path(), &prometheus::Registry::new(), opts)
        .await
        .expect("reopen the store as another member");
    test_node(store, 2, dir)
}

/// Puts `key` (attached to `lease`, unless 0) and returns the revision.
pub async fn put(node: &Node, key: &str, value: &str, lease: i64) -> i64 {
    let out = node
        .store
        .propose(Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        }))
        .await
        .expect("put");
    match out {
        CommandOutput::Put(r) => r.header.expect("put header").revision,
        other => panic!("put answered {other:?}"),
    }
}

/// Polls `check` until it returns Some, failing the test after `PATIENCE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
