//! Command-line configuration. Flags keep etcd's names and defaults so that an
//! operator's existing etcd flags carry over.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// etcd's default for --max-request-bytes (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default backend quota when --quota-backend-bytes is 0 (2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Room gRPC leaves above --max-request-bytes, as etcd's server does, so that a
/// request just over the limit gets etcd's "request is too large" error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: ${name}.cairn].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic (gRPC and HTTP share the port).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,

    /// List of URLs to listen on for peer (member-to-member) traffic.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping, as name=peer-url,...
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long)]
    pub initial_cluster: Option<String>,

    /// Initial cluster state: `new` bootstraps the members of --initial-cluster;
    /// `existing` joins a running cluster that this member was added to.
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: crate::cluster_config::ClusterState,

    /// Initial cluster token; part of the cluster's identity.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Time (in milliseconds) of a heartbeat interval. The default is twice
    /// etcd's 100: an idle cluster sends half the messages, and failover,
    /// which the election timeout sets, is no slower (docs/benchmarks.md).
    /// Under writes, appends stand in for heartbeats.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed entries between state-machine snapshots (which let
    /// the Raft log be compacted).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Entries kept in the log behind a snapshot, so slow followers catch up
    /// without a snapshot.
    #[arg(
        long,
        alias = "experimental-snapshot-catchup-entries",
        default_value_t = 5_000
    )]
    pub snapshot_catchup_entries: u64,

    /// Path to the peer server TLS cert file.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Enable peer client cert authentication (requires --peer-trusted-ca-file).
    #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = go_bool)]
    pub peer_client_cert_auth: bool,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Raise a NOSPACE alarm when the backend exceeds this size (0 means 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Path to the client server TLS cert file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,

    /// Enable client cert authentication (requires --trusted-ca-file).
    #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = go_bool)]
    pub client_cert_auth: bool,

    /// Interval between periodic progress notifications to watchers that ask for them.
    #[arg(long, alias = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = crate::go_duration::parse_positive)]
    pub watch_progress_notify_interval: std::time::Duration,

    /// List of URLs to also serve /metrics, /health, /livez and /readyz on,
    /// plain HTTP or HTTPS with the client certificate (kubeadm probes these).
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// `extensive` adds gRPC handling-time histograms to the metrics.
    #[arg(long, value_enum, default_value = "basic")]
    pub metrics: crate::metrics::MetricsLevel,

    /// Maximum concurrent gRPC streams each client connection may open.
    #[arg(long, default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,

    /// Path to an etcd YAML configuration file (keys are the flags' names).
    /// As in etcd, the file then configures the member alone: other flags
    /// and ETCD_* variables are ignored.
    #[arg(long)]
    pub config_file: Option<PathBuf>,

    /// etcd 3.6's server feature gates, Name=bool,... Each is checked as
    /// the flag it replaces: accepted when it changes nothing, refused when
    /// Cairn does not implement it.
    #[arg(long)]
    pub feature_gates: Option<String>,

    // Auto-compaction, gRPC keepalive and the TLS policy, as etcd 3.6 has them.
    /// How to read --auto-compaction-retention: `periodic` (a duration; a
    /// plain number is hours) or `revision` (a number of revisions).
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// History the leader keeps when it compacts automatically; 0 disables
    /// auto compaction.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,

    /// Minimum interval a client should wait between keepalive pings.
    /// Accepted but not enforced: hyper's HTTP/2 server has no ping policy,
    /// so clients that ping more often are not sent GOAWAY (more permissive
    /// than etcd).
    #[arg(long, default_value = "5s", value_parser = crate::go_duration::parse_flag)]
    pub grpc_keepalive_min_time: crate::go_duration::GoDuration,

    /// Interval of server-to-client pings on idle client connections (0 disables).
    #[arg(long, default_value = "2h", value_parser = crate::go_duration::parse_flag)]
    pub grpc_keepalive_interval: crate::go_duration::GoDuration,

    /// How long to wait for a ping's answer before closing the connection (0 disables).
    #[arg(long, default_value = "20s", value_parser = crate::go_duration::parse_flag)]
    pub grpc_keepalive_timeout: crate::go_duration::GoDuration,

    /// Comma-separated TLS 1.2 cipher suites (Go's names) the client and peer
    /// listeners accept; empty means rustls's defaults. TLS 1.3 suites are
    /// not configurable, as in etcd.
    #[arg(long, value_delimiter = ',')]
    pub cipher_suites: Vec<String>,

    /// Minimum TLS version of the client and peer listeners: TLS1.2 or TLS1.3.
    #[arg(long, default_value = "TLS1.2")]
    pub tls_min_version: String,

    /// Maximum TLS version of the client and peer listeners: TLS1.2 or
    /// TLS1.3 (empty: the highest, TLS1.3).
    #[arg(long, default_value = "")]
    pub tls_max_version: String,

    /// Certificate revocation list (PEM) checked against client certificates
    /// on the client listener (with --client-cert-auth).
    #[arg(long)]
    pub client_crl_file: Option<PathBuf>,

    /// Certificate revocation list (PEM) checked against peer certificates on
    /// the peer listener (with --peer-client-cert-auth).
    #[arg(long)]
    pub peer_crl_file: Option<PathBuf>,

    /// etcd's logging flags.
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

impl ServeArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name)))
    }

    pub fn quota_bytes(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// --initial-cluster, or this member alone under its name, as etcd defaults it.
    pub fn initial_cluster(&self) -> String {
        self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    pub fn peer_tls_enabled(&self) -> bool {
        self.peer_cert_file.is_some()
    }

    pub fn tls_enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks combinations clap cannot express, with etcd-like messages.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("--cert-file and --key-file must be given together");
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            bail!("--client-cert-auth requires --trusted-ca-file");
        }
        if self.peer_cert_file.is_some() != self.peer_key_file.is_some() {
            bail!("--peer-cert-file and --peer-key-file must be given together");
        }
        if self.peer_client_cert_auth && self.peer_trusted_ca_file.is_none() {
            bail!("--peer-client-cert-auth requires --peer-trusted-ca-file");
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            // etcd's rule: the election timeout must be at least 5 heartbeats.
            bail!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        if self.max_txn_ops == 0 {
            bail!("--max-txn-ops must be positive");
        }
        for url in &self.listen_metrics_urls {
            match url.split("://").next() {
                Some("http") => {}
                Some("https") if self.tls_enabled() => {}
                Some("https") => bail!(
                    "listen metrics URL {url:?} uses https:// but --cert-file and --key-file are not given"
                ),
                _ => bail!("listen metrics URL {url:?} must use http:// or https://"),
            }
        }
        crate::compactor::AutoCompaction::from_flags(
            &self.auto_compaction_mode,
            &self.auto_compaction_retention,
        )?;
        crate::tls_policy::TlsPolicy::from_args(self)?;
        let want = if self.tls_enabled() { "https" } else { "http" };
        for url in &self.listen_client_urls {
            let scheme = url.split("://").next().unwrap_or_default();
            if scheme != want {
                bail!(
                    "listen client URL {url:?} must use {want}:// (TLS is {})",
                    if self.tls_enabled() { "on" } else { "off" }
                );
            }
        }
        Ok(())
    }
}

/// Resolves a listen URL such as `http://127.0.0.1:2379` or `https://localhost:2379`.
pub async fn resolve_listen_url(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .with_context(|| format!("listen URL {url:?} has no scheme"))?;
    let hostport = rest.trim_end_matches('/');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolve listen URL {url:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("listen URL {url:?} resolves to no address");
    }
    Ok(addrs)
}

/// A boolean flag's value as Go reads it (`true`, `1`, `T`, `false`, ...).
fn go_bool(s: &str) -> Result<bool, String> {
    crate::etcd_flags::parse_go_bool(s).map_err(|e| e.to_string())
}
