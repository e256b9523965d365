//! Plain HTTP endpoints served on the client port beside gRPC, and on
//! `--listen-metrics-urls`, as etcd serves them: /health, /livez, /readyz,
//! /version and /metrics.
//!
//! Probes depend on the exact semantics. kubeadm's static pod probes
//! `/health?exclude=NOSPACE&serializable=true` (older) or `/livez` and
//! `/readyz` (newer) on the metrics port, so:
//! * `/health` checks alarms (but those in `exclude`), the leader (unless
//!   `serializable=true`) and a read (local when serializable), and answers
//!   `{"health":"true"|"false","reason":...}`;
//! * `/livez` and `/readyz` run named checks, each also at `/livez/<name>`,
//!   skip those in `exclude`, list them with `?verbose`, and on failure
//!   answer 503 with a `[-]name failed: reason` line per check.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use cairn_proto::etcdserverpb::{AlarmType, RangeRequest};
use serde_json::json;

use crate::metrics::ServerMetrics;
use crate::node::{SharedNode, ETCD_VERSION};

pub fn routes(node: SharedNode, server_metrics: Arc<ServerMetrics>) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/livez", any(livez))
        .route("/livez/{check}", any(livez_one))
        .route("/readyz", any(readyz))
        .route("/readyz/{check}", any(readyz_one))
        .route("/version", get(version))
        .route(
            "/metrics",
            get(move |node: State<SharedNode>| metrics(node, server_metrics)),
        )
        .merge(failpoint_routes())
        .with_state(node)
}

/// A build with fail points sets and clears them at runtime, as etcd's
/// gofail HTTP endpoint does: `PUT /debug/failpoints/NAME` with the action as
/// the body (`sleep(100)`, `return(enospc)`, `off`), `DELETE` to clear. A
/// build without the feature has no such route (404).
#[cfg(feature = "failpoints")]
fn failpoint_routes() -> Router<SharedNode> {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::put;
    async fn set(Path(name): Path<String>, body: String) -> (StatusCode, String) {
        match fail::cfg(name.clone(), body.trim()) {
            Ok(()) => {
                tracing::info!(failpoint = %name, action = %body.trim(), "fail point set");
                (StatusCode::OK, String::new())
            }
            Err(e) => (StatusCode::BAD_REQUEST, e),
        }
    }
    async fn clear(Path(name): Path<String>) -> StatusCode {
        fail::remove(&name);
        tracing::info!(failpoint = %name, "fail point cleared");
        StatusCode::OK
    }
    Router::new().route("/debug/failpoints/{name}", put(set).delete(clear))
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_routes() -> Router<SharedNode> {
    Router::new()
}

/// The values of one query parameter, in order (`exclude=A&exclude=B`).
fn query_values(query: &Option<String>, key: &str) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key && !v.is_empty()).then(|| percent_decode(v))
        })
        .collect()
}

fn query_has(query: &Option<String>, key: &str) -> bool {
    query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some(key)))
}

/// Decodes `%XX` and `+`, enough for check and alarm names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        "Method Not Allowed\n",
    )
        .into_response()
}

/// A read as a probe makes it: keys only, one key; linearizable unless
/// `serializable` (then it proves only that this member's store answers).
async fn read_check(node: &SharedNode, serializable: bool) -> Result<(), String> {
    if !serializable {
        node.store.read_barrier().await.map_err(|e| e.to_string())?;
    }
    node.store
        .range(RangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The raised alarms, by etcd's names (NOSPACE, CORRUPT).
async fn alarm_names(node: &SharedNode) -> Result<Vec<&'static str>, String> {
    let alarms = node.store.alarms().await.map_err(|e| e.to_string())?;
    Ok(alarms
        .iter()
        .filter_map(|a| AlarmType::try_from(a.alarm).ok())
        .filter(|a| *a != AlarmType::None)
        .map(|a| a.as_str_name())
        .collect())
}

/// `/health`: alarms, leader, then a read; the first failure is the reason.
async fn health_check(
    node: &SharedNode,
    excluded: &[String],
    serializable: bool,
) -> Result<(), String> {
    let alarms = alarm_names(node)
        .await
        .map_err(|e| format!("ALARM LIST FAILED: {e}"))?;
    if let Some(a) = alarms.iter().find(|a| !excluded.iter().any(|e| e == *a)) {
        return Err(format!("ALARM {a}"));
    }
    if !serializable && !node.has_leader() {
        return Err("RAFT NO LEADER".into());
    }
    // Cairn's own: while importing from etcd, writes are refused, so this
    // member is not healthy for a client such as kube-apiserver.
    if let Some(note) = node.migration_note() {
        return Err(note);
    }
    read_check(node, serializable)
        .await
        .map_err(|e| format!("RANGE ERROR:{e}"))
}

async fn health(
    method: Method,
    State(node): State<SharedNode>,
    RawQuery(query): RawQuery,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let excluded = query_values(&query, "exclude");
    let serializable = query_values(&query, "serializable")
        .first()
        .map(String::as_str)
        == Some("true");
    match health_check(&node, &excluded, serializable).await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(json!({ "health": "true", "reason": "" })),
        )
            .into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "/health error");
            // As Go's http.Error: the JSON, a newline, as text.
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{}\n", json!({ "health": "false", "reason": reason })),
            )
                .into_response()
        }
    }
}

/// The checks of /livez and /readyz, by etcd's names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Check {
    SerializableRead,
    LinearizableRead,
    DataCorruption,
    NonLearner,
    /// Cairn's: not importing from etcd (writes refused until cutover).
    NotImporting,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::DataCorruption => "data_corruption",
            Check::NonLearner => "non_learner",
            Check::NotImporting => "not_importing",
        }
    }

    async fn run(self, node: &SharedNode) -> Result<(), String> {
        match self {
            Check::SerializableRead => read_check(node, true).await,
            Check::LinearizableRead => read_check(node, false).await,
            Check::DataCorruption => match alarm_names(node).await?.contains(&"CORRUPT") {
                true => Err("alarm activated: CORRUPT".into()),
                false => Ok(()),
            },
            Check::NonLearner => match node.store.raft_status().is_learner {
                true => Err("not supported for learner".into()),
                false => Ok(()),
            },
            Check::NotImporting => node.migration_note().map_or(Ok(()), Err),
        }
    }
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
    Check::NotImporting,
];

/// Runs `checks` and answers as etcd's check registry does.
async fn run_checks(node: &SharedNode, checks: &[Check], verbose: bool) -> Response {
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(node).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if failed {
        tracing::warn!(reason = %report.trim_end(), "health check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, text, format!("{report}\n")).into_response();
    }
    let body = if verbose {
        format!("{report}ok\n")
    } else {
        "ok\n".to_string()
    };
    (StatusCode::OK, text, body).into_response()
}

async fn root_checks(
    method: Method,
    node: SharedNode,
    query: Option<String>,
    all: &[Check],
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let excluded = query_values(&query, "exclude");
    let checks: Vec<Check> = all
        .iter()
        .copied()
        .filter(|c| !excluded.iter().any(|e| e == c.name()))
        .collect();
    run_checks(&node, &checks, query_has(&query, "verbose")).await
}

async fn one_check(
    method: Method,
    node: SharedNode,
    name: String,
    query: Option<String>,
    all: &[Check],
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    match all.iter().find(|c| c.name() == name) {
        Some(c) => run_checks(&node, &[*c], query_has(&query, "verbose")).await,
        None => (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
    }
}

async fn livez(m: Method, State(node): State<SharedNode>, RawQuery(q): RawQuery) -> Response {
    root_checks(m, node, q, LIVEZ).await
}

async fn readyz(m: Method, State(node): State<SharedNode>, RawQuery(q): RawQuery) -> Response {
    root_checks(m, node, q, READYZ).await
}

async fn livez_one(
    m: Method,
    State(node): State<SharedNode>,
    Path(check): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    one_check(m, node, check, q, LIVEZ).await
}

async fn readyz_one(
    m: Method,
    State(node): State<SharedNode>,
    Path(check): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    one_check(m, node, check, q, READYZ).await
}

/// etcd's fields, and Cairn's release with its cluster version and any
/// downgrade under way (as applied here; absent when unreadable).
async fn version(State(node): State<SharedNode>) -> impl IntoResponse {
    let mut cairn = crate::release::version_json();
    if let Ok(v) = node.store.version_state().await {
        cairn["cluster"] = json!(v.cluster.map(|v| v.to_string()).unwrap_or_default());
        cairn["downgradeTarget"] = json!(v
            .downgrade_target
            .map(|v| v.target_string())
            .unwrap_or_default());
    }
    axum::Json(json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
        "cairn": cairn,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_repeat_and_decode() {
        let q = Some("exclude=NOSPACE&serializable=true&exclude=CORRUPT&verbose".to_string());
        assert_eq!(query_values(&q, "exclude"), ["NOSPACE", "CORRUPT"]);
        assert_eq!(query_values(&q, "serializable"), ["true"]);
        assert!(query_has(&q, "verbose"));
        assert!(!query_has(&q, "verb"));
        assert_eq!(percent_decode("a%5Fb+c%"), "a_b c%");
    }
}
