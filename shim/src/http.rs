//! Plain HTTP endpoints served on the client port beside gRPC, as etcd serves
//! them: /health, /livez, /readyz, /version and /metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cairn_proto::etcdserverpb::RangeRequest;
use serde_json::json;

use crate::metrics::ServerMetrics;
use crate::node::{SharedNode, ETCD_VERSION};

pub fn routes(node: SharedNode, server_metrics: Arc<ServerMetrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route(
            "/metrics",
            get(move |node: State<SharedNode>| metrics(node, server_metrics)),
        )
        .with_state(node)
}

/// Healthy when there is a leader, no migration keeps writes out, no alarm
/// is raised and a linearizable read succeeds; the reason says which check
/// failed. /livez answers 200 whatever these say.
async fn check(node: &SharedNode) -> Result<(), String> {
    if !node.has_leader() {
        return Err("RAFT NO LEADER".into());
    }
    // Importing from etcd (or aborted): reads are served, writes are not,
    // so this member is not ready for a client such as kube-apiserver.
    if let Some(note) = node.migration_note() {
        return Err(note);
    }
    match node.store.alarms().await {
        Ok(a) if !a.is_empty() => return Err("ALARM ".to_string() + &format!("{a:?}")),
        Ok(_) => {}
        Err(e) => return Err(format!("ALARM LIST FAILED: {e}")),
    }
    node.store
        .read_barrier()
        .await
        .map_err(|e| format!("READ INDEX FAILED: {e}"))?;
    node.store
        .range(RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("QGET ERROR: {e}"))?;
    Ok(())
}

async fn health(State(node): State<SharedNode>) -> impl IntoResponse {
    let (code, healthy, reason) = match check(&node).await {
        Ok(()) => (StatusCode::OK, "true", String::new()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "false", reason),
    };
    (
        code,
        axum::Json(json!({ "health": healthy, "reason": reason })),
    )
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn readyz(State(node): State<SharedNode>) -> impl IntoResponse {
    match check(&node).await {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

async fn version() -> impl IntoResponse {
    axum::Json(json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
        "cairn": crate::release::version_json(),
    }))
}

async fn metrics(State(node): State<SharedNode>, m: Arc<ServerMetrics>) -> impl IntoResponse {
    crate::metrics::refresh(&m, &node).await;
    let mut buf = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&node.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
