//! Cairn's end-to-end suite: one test binary, one module per area.
//!
//! Each module drives real processes (Cairn, and etcd 3.5 as the oracle)
//! through the `cairn_e2e` harness. [`util`] holds the few helpers several
//! modules share, and [`server_test!`] runs one scenario against Cairn and
//! against etcd. Run one area with a filter, e.g.
//! `cargo test -p cairn-e2e --test e2e -- watch_semantics::`.

#[macro_use]
mod macros;
mod util;

mod bad_input;
mod check_disk;
mod checker_cross_check;
mod cluster;
mod cluster_etcdctl;
mod crash;
mod differential_kv;
mod disk_full;
mod downgrade;
mod etcdctl;
mod etcdctl_watch_lease;
mod kube_apiserver;
mod kube_patterns;
mod lease;
mod migrate;
mod peer_traffic;
mod robustness;
mod rolling_upgrade;
mod snapshot;
mod upgrade;
mod watch_differential;
mod watch_semantics;
