//! Connecting an `etcd_client::Client` to a member.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, ConnectOptions};

/// Timeouts applied to a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// TCP/HTTP2 connect timeout.
    pub connect: Duration,
    /// Per-request timeout (so a hung server fails a test instead of hanging it).
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(20),
        }
    }
}

/// Connects to `endpoint` (`http://127.0.0.1:port`) with default timeouts.
pub async fn connect(endpoint: &str) -> Result<Client> {
    connect_with(endpoint, ClientTimeouts::default()).await
}

/// Connects to `endpoint` with the given timeouts.
pub async fn connect_with(endpoint: &str, t: ClientTimeouts) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(t.connect)
        .with_timeout(t.request);
    Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}
