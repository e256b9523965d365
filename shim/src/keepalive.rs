//! etcd's `--grpc-keepalive-*` flags on the client listener.
//!
//! `--grpc-keepalive-interval` and `--grpc-keepalive-timeout` map onto
//! hyper's HTTP/2 keepalive: a ping after that long idle, and the connection
//! closed when its answer takes longer than the timeout. As in etcd, the
//! server pings only when both are positive.
//!
//! `--grpc-keepalive-min-time` is grpc-go's enforcement policy: a client that
//! pings more often is sent GOAWAY ("too_many_pings"). hyper (and h2 under it)
//! has no such policy and answers every ping, so the flag is accepted and
//! has no effect: Cairn is more permissive than etcd there, never stricter.

use tonic::transport::Server;

use crate::config::ServeArgs;

/// The client server `builder` with the keepalive etcd's flags ask for.
pub fn apply(builder: Server, args: &ServeArgs) -> Server {
    match (
        args.grpc_keepalive_interval.positive(),
        args.grpc_keepalive_timeout.positive(),
    ) {
        (Some(interval), Some(timeout)) => builder
            .http2_keepalive_interval(Some(interval))
            .http2_keepalive_timeout(Some(timeout)),
        _ => builder.http2_keepalive_interval(None),
    }
}
