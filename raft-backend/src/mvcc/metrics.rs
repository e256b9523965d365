//! Storage metrics, under etcd's metric names so existing dashboards and
//! alerts keep working.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub struct StoreMetrics {
    /// Time of each durable commit; for the single-member log the commit is the fsync.
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntGauge,
    pub proposals_failed: IntCounter,
    pub proposals_pending: IntGauge,
    pub batch_size: Histogram,
    /// Physical compaction passes that failed (a disk fault): the rows they
    /// could not delete go with the next compaction.
    pub compaction_failures: IntCounter,
}

fn seconds(name: &str, help: &str) -> prometheus::Result<Histogram> {
    // etcd's buckets for disk latencies: 1ms doubling to ~8s.
    let buckets = prometheus::exponential_buckets(0.001, 2.0, 14)?;
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = StoreMetrics {
            wal_fsync: seconds(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            )?,
            backend_commit: seconds(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            )?,
            proposals_committed: IntCounter::new(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            )?,
            proposals_applied: IntGauge::new(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            )?,
            proposals_failed: IntCounter::new(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )?,
            proposals_pending: IntGauge::new(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "cairn_apply_batch_size",
                    "Commands made durable by one group commit.",
                )
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 12)?),
            )?,
            compaction_failures: IntCounter::new(
                "cairn_compaction_failures_total",
                "Physical compaction passes that failed; what they left is retried by the next.",
            )?,
        };
        registry.register(Box::new(m.wal_fsync.clone()))?;
        registry.register(Box::new(m.backend_commit.clone()))?;
        registry.register(Box::new(m.proposals_committed.clone()))?;
        registry.register(Box::new(m.proposals_applied.clone()))?;
        registry.register(Box::new(m.proposals_failed.clone()))?;
        registry.register(Box::new(m.proposals_pending.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.compaction_failures.clone()))?;
        Ok(m)
    }
}
