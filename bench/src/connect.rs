//! Connections to the servers under load, and what they say about themselves.

use std::time::Duration;

use anyhow::Context as _;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

pub(crate) async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// Best effort: the server's version and identity from Maintenance.Status.
pub(crate) async fn server_status(channel: Channel) -> serde_json::Value {
    let mut m = MaintenanceClient::new(channel);
    match tokio::time::timeout(Duration::from_secs(5), m.status(StatusRequest {})).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let h = r.header.unwrap_or_default();
            serde_json::json!({
                "version": r.version,
                "db_size": r.db_size,
                "cluster_id": format!("{:x}", h.cluster_id),
                "member_id": format!("{:x}", h.member_id),
                "revision": h.revision,
            })
        }
        Ok(Err(s)) => {
            serde_json::json!({ "status_error": format!("{:?}: {}", s.code(), s.message()) })
        }
        Err(_) => serde_json::json!({ "status_error": "timeout" }),
    }
}
