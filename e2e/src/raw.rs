//! Raw tonic clients of the etcd v3 API, for what `etcd-client` hides.
//!
//! The Rust `etcd-client` hides wire details the watch and lease suites need
//! (progress responses with watch_id -1, the `fragment` flag, Created/Canceled
//! responses of every watcher on a shared stream), so those suites use the
//! generated tonic clients of `cairn-proto` (the etcd v3 wire definitions; the
//! same bytes reach a real etcd).

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_proto::etcdserverpb as pb;
use tonic::transport::{Channel, Endpoint};

use crate::Member;

/// Largest message the raw clients decode (fragment tests send ~3 MB
/// unfragmented responses on purpose).
pub const MAX_DECODE: usize = 64 << 20;

/// A tonic channel to `member` (plain HTTP/2 on 127.0.0.1).
pub async fn channel(member: &Member) -> Result<Channel> {
    Endpoint::from_shared(member.endpoint())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("tonic channel to {}", member.endpoint()))
}

/// A channel with small HTTP/2 flow-control windows: a stream that is not
/// read stalls the server's sends after `window` bytes.
pub async fn channel_small_window(member: &Member, window: u32) -> Result<Channel> {
    Endpoint::from_shared(member.endpoint())?
        .connect_timeout(Duration::from_secs(3))
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window))
        .connect()
        .await
        .with_context(|| format!("tonic channel to {}", member.endpoint()))
}

pub fn lease_client(ch: &Channel) -> pb::lease_client::LeaseClient<Channel> {
    pb::lease_client::LeaseClient::new(ch.clone())
}

pub fn kv_client(ch: &Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch.clone())
}

/// (code, message) of a tonic status, as etcd clients see it.
pub fn status_pair(s: &tonic::Status) -> (String, String) {
    (format!("{:?}", s.code()), s.message().to_string())
}
