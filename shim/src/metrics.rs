//! Server-level metrics under etcd's (and go-grpc-prometheus's) names.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// `--metrics`: as etcd, `extensive` adds the gRPC handling-time histograms.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsLevel {
    Basic,
    Extensive,
}

use crate::node::Node;

/// `cairn_build_info{version, store_schema, peer_protocol} 1`, as Go
/// binaries export `*_build_info`: a dashboard sees a mixed-release
/// cluster during a rolling upgrade, and which releases may mix.
fn build_info() -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(
        Opts::new(
            "cairn_build_info",
            "Cairn's release, the store schema version it writes and the peer protocol it speaks; always 1.",
        )
        .const_label("version", crate::release::VERSION)
        .const_label("store_schema", cairn_raft_backend::SCHEMA_VERSION.to_string())
        .const_label(
            "peer_protocol",
            cairn_proto::cairnpb::peer::v1::PROTOCOL_VERSION.to_string(),
        ),
    )?;
    g.set(1);
    Ok(g)
}

#[derive(Clone)]
pub struct ServerMetrics {
    has_leader: IntGauge,
    leader_changes: prometheus::IntCounter,
    is_leader: IntGauge,
    db_total_size: IntGauge,
    db_in_use_size: IntGauge,
    current_revision: IntGauge,
    compact_revision: IntGauge,
    grpc_started: IntCounterVec,
    grpc_handled: IntCounterVec,
    /// `grpc_server_handling_seconds`, with `--metrics extensive` only.
    grpc_handling: Option<HistogramVec>,
}

impl ServerMetrics {
    pub fn new(registry: &Registry, level: MetricsLevel) -> prometheus::Result<Self> {
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let m = ServerMetrics {
            has_leader: IntGauge::new(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            leader_changes: prometheus::IntCounter::new(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            )?,
            is_leader: IntGauge::new(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            )?,
            db_total_size: IntGauge::new(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_in_use_size: IntGauge::new(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            current_revision: IntGauge::new(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            )?,
            compact_revision: IntGauge::new(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            )?,
            grpc_started: IntCounterVec::new(
                Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
                &grpc_labels,
            )?,
            grpc_handled: IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                ),
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )?,
            // go-grpc-prometheus's default buckets, as etcd exports them.
            grpc_handling: match level {
                MetricsLevel::Basic => None,
                MetricsLevel::Extensive => Some(HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_server_handling_seconds",
                        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                    )
                    .buckets(prometheus::DEFAULT_BUCKETS.to_vec()),
                    &grpc_labels,
                )?),
            },
        };
        registry.register(Box::new(m.has_leader.clone()))?;
        registry.register(Box::new(m.leader_changes.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.db_total_size.clone()))?;
        registry.register(Box::new(m.db_in_use_size.clone()))?;
        registry.register(Box::new(m.current_revision.clone()))?;
        registry.register(Box::new(m.compact_revision.clone()))?;
        registry.register(Box::new(m.grpc_started.clone()))?;
        registry.register(Box::new(m.grpc_handled.clone()))?;
        if let Some(h) = &m.grpc_handling {
            registry.register(Box::new(h.clone()))?;
        }
        registry.register(Box::new(build_info()?))?;
        Ok(m)
    }
}

impl ServerMetrics {
    /// Called on every change of the known leader.
    pub fn leader_changed(&self, leader: Option<u64>) {
        self.has_leader.set(i64::from(leader.is_some()));
        if leader.is_some() {
            self.leader_changes.inc();
        }
    }
}

/// Updates the gauges that are read from state at scrape time.
pub async fn refresh(m: &ServerMetrics, node: &Node) {
    m.has_leader.set(i64::from(node.has_leader()));
    m.is_leader.set(i64::from(node.store.is_leader()));
    let applied = node.store.applied();
    m.current_revision.set(applied.current_rev);
    m.compact_revision.set(applied.compact_rev.max(0));
    if let Ok(st) = node.store.status().await {
        m.db_total_size.set(st.db_size);
        m.db_in_use_size.set(st.db_size_in_use);
    }
}

/// Status code names as go-grpc-prometheus writes them in `grpc_code` (Go's
/// `codes.Code.String()`: "OK", not "Ok"), which etcd dashboards filter on.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn code_name(code: usize) -> &'static str {
    CODE_NAMES.get(code).copied().unwrap_or("Unknown")
}

/// The gRPC call type, as go-grpc-prometheus labels it.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        ("cairnpb.peer.v1.Peer", "InstallSnapshot") => "client_stream",
        _ => "unary",
    }
}

/// Counts gRPC calls by method and status code. A unary call's code is in the
/// response headers when it failed (trailers-only) and OK otherwise; streams
/// are counted when their response starts.
pub async fn track(
    State(metrics): State<Arc<ServerMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let is_grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return next.run(req).await;
    }
    // One allocation: the path must outlive the request, which `next` consumes.
    let path = req.uri().path().to_owned();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path.as_str(), ""));
    let kind = grpc_type(service, method);
    metrics
        .grpc_started
        .with_label_values(&[kind, service, method])
        .inc();
    // Timed only with --metrics extensive, and only unary calls: a
    // stream's response starts long before it ends, and this layer sees
    // only the start.
    let timed = metrics
        .grpc_handling
        .as_ref()
        .filter(|_| kind == "unary")
        .map(|h| (h, std::time::Instant::now()));
    let resp = next.run(req).await;
    if let Some((h, started)) = timed {
        h.with_label_values(&[kind, service, method])
            .observe(started.elapsed().as_secs_f64());
    }
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    metrics
        .grpc_handled
        .with_label_values(&[kind, service, method, code_name(code)])
        .inc();
    resp
}

#[cfg(test)]
mod tests {
    use super::code_name;

    #[test]
    fn code_names_follow_go_grpc() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(tonic::Code::OutOfRange as usize), "OutOfRange");
        assert_eq!(
            code_name(tonic::Code::Unauthenticated as usize),
            "Unauthenticated"
        );
        assert_eq!(code_name(99), "Unknown");
    }
}
