//! The server wing of Cairn: the etcd v3 gRPC services, the watch hub, the
//! lessor, HTTP health and metrics, and the assembly of one member
//! ([`server::serve`]). The `cairn` binary parses its command line and calls
//! in here, so that every piece can also be started and tested in-process.

mod cluster_config;
mod cluster_service;
pub mod config;
mod errors;
mod grpc_compat;
mod http;
mod identity;
mod kv_service;
mod lease;
mod maintenance_service;
mod metrics;
mod node;
mod peer_service;
mod quota;
pub mod server;
mod stream_end;
#[cfg(test)]
mod testing;
mod tls;
mod validate;
mod watch;
