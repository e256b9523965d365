//! End-to-end test harness for Cairn.
//!
//! Starts real etcd 3.5 (the reference) and Cairn processes on free ports of
//! 127.0.0.1, each in its own temporary directory, and gives the test suites in
//! `tests/` clients, etcdctl, and helpers to compare the two:
//!
//! * [`binaries`]: where the etcd, etcdctl and cairn binaries are found.
//! * [`ports`]: free port allocation.
//! * [`member`]: [`Member`], one server process (start, ready, kill9, restart, drop).
//! * [`cluster`]: a multi-member Cairn cluster with per-pair peer proxies.
//! * [`client`]: connecting an `etcd_client::Client`.
//! * [`etcdctl`]: running etcdctl 3.5 against a member.
//! * [`grpc`]: gRPC error (code, message) extraction.
//! * [`dump`]: a full, comparable snapshot of a store's keyspace.
//! * [`wait`]: polling a condition with a deadline.
//! * [`linearizability`]: checking a recorded client history is linearizable.
//! * [`proxy`]: [`proxy::Proxy`], a TCP proxy a test can partition and heal.
//! * [`failpoints`]: the `FAILPOINTS` a test sets to make Cairn inject faults.
//! * [`raw`]: raw tonic channels and clients, for wire details `etcd-client`
//!   hides.
//! * [`migrator`]: `cairn migrate` as a user runs it (a `start` process to
//!   kill -9 and rerun; one-shot status, verify, cutover and abort).
//! * [`kine`]: kine's database (SQLite or PostgreSQL) written as kine writes it.
//! * [`measure`]: what the benchmark binaries measure alike.
//! * [`source_load`]: a kube-shaped writer that keeps a source busy.
//! * [`compare`]: two stores at one revision (key-values, HashKV) and the
//!   events between two revisions.
//! * [`watch`]: [`watch::RawWatch`], one Watch stream on the raw wire, and
//!   [`watch::Create`], the requests it carries.
//! * [`events`]: comparable forms of watch events and responses, and
//!   [`events::Flat`], one watcher's flattened history.
//! * [`model`]: [`model::Model`], the events a single writer's acknowledged
//!   writes must produce.
//! * [`robustness`]: campaigns of seeded faults under a Kubernetes-shaped
//!   load, and the checks of what the clients saw (the `robustness` binary).
//!
//! The suite itself is one test binary, `tests/e2e/main.rs`, with a module
//! per area (run one with a filter: `cargo test -p cairn-e2e --test e2e --
//! watch_semantics::`).
//!
//! Running: `scripts/test.sh` (builds the `cairn` binary with fail points,
//! exports the etcd paths, runs everything), or `cargo build --workspace
//! --bins --features cairn-shim/failpoints && cargo test -p cairn-e2e`. The
//! fault tests need the `failpoints` feature in the `cairn` binary (see
//! [`failpoints`]): without it the cluster tests fail at start saying so.
//! Environment:
//!
//! * `CAIRN_BIN`, `CAIRN_TEST_ETCD`, `CAIRN_TEST_ETCDCTL`: binaries (see
//!   [`binaries`] for the fallbacks).
//! * `CAIRN_DIFF_SEEDS` (default "1,2,3"), `CAIRN_DIFF_OPS` (default 10000):
//!   the differential KV suite; `CAIRN_WATCH_DIFF_SEEDS` (default "11,12,13"),
//!   `CAIRN_WATCH_DIFF_OPS` (default 400): the differential watch suite.
//! * `CAIRN_E2E_KEEP=1`: keep every member's temp dir (data + log); they are
//!   always kept when a test panics or reports a failure naming a log.
//!
//! A scenario written once with the suite's `server_test!` macro runs against
//! Cairn (`<name>::cairn`) and against etcd (`<name>::etcd`), which must pass
//! it too; most etcd runs are `#[ignore]`d harness self-checks: `cargo test -p
//! cairn-e2e -- --ignored`.

pub mod binaries;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod dump;
pub mod etcdctl;
pub mod events;
pub mod failpoints;
pub mod grpc;
pub mod http;
pub mod kine;
pub mod kube;
pub mod linearizability;
pub mod measure;
pub mod member;
pub mod migrator;
pub mod model;
pub mod ports;
pub mod proxy;
pub mod raw;
pub mod robustness;
pub mod signal;
pub mod source_load;
pub mod tmpfs;
pub mod wait;
pub mod watch;

pub use client::{connect, connect_with, ClientTimeouts};
pub use grpc::{expect_grpc_error, grpc_error, GrpcError};
pub use member::{Kind, Member, MemberOptions};
