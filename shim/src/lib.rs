//! The server wing of Cairn: the etcd v3 gRPC services, the watch hub, the
//! lessor, HTTP health and metrics, and the assembly of one member
//! ([`server::serve`]). The `cairn` binary parses its command line and calls
//! in here, so that every piece can also be started and tested in-process.
//!
//! A Put enters at `kv_service`, is proposed to the store (`node::Node`
//! holds it), and comes back, once applied, on the store's apply stream,
//! which `watch::hub` fans out to the watchers of `watch::service` streams.

// Configuration and the assembly of a member.
mod cluster_config;
mod compactor;
pub mod config;
pub mod disk_check;
pub mod etcd_config_file;
pub mod etcd_flags;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod go_duration;
mod identity;
mod keepalive;
pub mod logging;
pub mod release;
pub mod server;
pub mod snapshot_cli;
mod systemd_notify;
mod tls;
mod tls_accept;
mod tls_policy;

// What every service shares, and how errors reach clients.
mod errors;
mod node;
mod stream_end;

// The client services.
mod cluster_service;
mod downgrade;
mod kv_service;
mod lease;
mod maintenance_service;
mod migrate_service;
mod quota;
mod snapshot_stream;
mod validate;
mod watch;

// HTTP beside gRPC on the client port, and metrics.
mod grpc_compat;
mod http;
mod metrics;

#[cfg(test)]
mod testing;
