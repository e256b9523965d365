//! Automatic compaction, as etcd's `v3compactor` does it:
//! `--auto-compaction-mode periodic` keeps about `--auto-compaction-retention`
//! of history, `revision` keeps that many revisions. Only the leader compacts
//! (the loop keeps sampling on followers, as etcd's paused compactor does), and
//! it compacts through the log like a client's Compact with physical=false,
//! so every member compacts the same revision.
//!
//! The loops are generic over [`Compactable`] so that tests drive them with
//! tokio's paused clock and check the schedule against etcd's.

mod periodic;
mod retention;
mod revision;

#[cfg(test)]
mod fake;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::CompactionRequest;
use cairn_raft_backend::{Command, StoreError};
use tracing::Instrument;

pub use retention::{AutoCompaction, RetentionError};

use crate::node::Node;

/// What a compactor needs of its member.
pub trait Compactable: Send + Sync + 'static {
    /// The store's current revision (etcd's `kv.Rev()`).
    fn current_revision(&self) -> i64;
    /// Whether this member leads; followers do not compact.
    fn is_leader(&self) -> bool;
    /// Compacts to `revision` through the replicated log. `Compacted` (the
    /// revision is already compacted) counts as done, as in etcd.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Compactable for Node {
    fn current_revision(&self) -> i64 {
        self.store.applied().current_rev
    }

    fn is_leader(&self) -> bool {
        self.store.is_leader()
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        // A client's Compact is refused during a migration; so is this one.
        self.store.migration_gate().check_write()?;
        self.store
            .propose(Command::Compact(CompactionRequest {
                revision,
                physical: false,
            }))
            .await
            .map(|_| ())
    }
}

/// etcd's revision compactor checks every 5 minutes (`revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(300);

/// Test-only: the revision mode's check interval, a Go duration ("2s"), so
/// that an end-to-end test need not wait etcd's 5 minutes. etcd's own tests
/// use a fake clock instead; a real process has none.
pub const REVISION_INTERVAL_ENV: &str = "CAIRN_TEST_REVISION_COMPACTION_INTERVAL";

/// The running compactor; it stops when dropped.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the compactor `how` asks for; `None` when it is off.
pub fn start<C: Compactable>(member: Arc<C>, how: AutoCompaction) -> Option<Running> {
    let task = match how {
        AutoCompaction::Off => return None,
        AutoCompaction::Periodic(period) => {
            let span = tracing::info_span!("auto_compaction", mode = "periodic", ?period);
            tokio::spawn(periodic::run(member, period).instrument(span))
        }
        AutoCompaction::Revision(retention) => {
            let interval = revision_interval();
            let span = tracing::info_span!("auto_compaction", mode = "revision", retention);
            tokio::spawn(revision::run(member, retention, interval).instrument(span))
        }
    };
    Some(Running(task))
}

/// etcd's 5 minutes, unless a test set [`REVISION_INTERVAL_ENV`].
fn revision_interval() -> Duration {
    let Ok(value) = std::env::var(REVISION_INTERVAL_ENV) else {
        return REVISION_INTERVAL;
    };
    match crate::go_duration::parse(&value).map(|d| d.positive()) {
        Ok(Some(d)) => {
            tracing::warn!(interval = ?d, "{REVISION_INTERVAL_ENV} is set: revision compaction checks at a test interval");
            d
        }
        _ => {
            tracing::warn!(
                value,
                "{REVISION_INTERVAL_ENV} is not a positive duration; ignored"
            );
            REVISION_INTERVAL
        }
    }
}

/// Compacts once, logging as etcd does (one line, at INFO when done;
/// `mode` names the compactor in it); whether the compactor may move on.
async fn compact_logged<C: Compactable>(
    member: &C,
    mode: &str,
    revision: i64,
    retry: Duration,
) -> bool {
    tracing::debug!(revision, "starting auto {mode} compaction");
    let started = tokio::time::Instant::now();
    match member.compact(revision).await {
        Ok(()) | Err(StoreError::Compacted) => {
            tracing::info!(revision, took = ?started.elapsed(), "completed auto {mode} compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision, retry_interval = ?retry, error = %e, "failed auto {mode} compaction");
            false
        }
    }
}

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for;
/// warns when revision mode got a duration, which etcd takes as a count of
/// nanoseconds (a retention so large nothing is ever compacted).
pub fn from_args(args: &crate::config::ServeArgs) -> Result<AutoCompaction, RetentionError> {
    let how =
        AutoCompaction::from_flags(&args.auto_compaction_mode, &args.auto_compaction_retention)?;
    if let AutoCompaction::Revision(n) = how {
        if AutoCompaction::retention_is_duration(&args.auto_compaction_retention) {
            tracing::warn!(
                retention = %args.auto_compaction_retention,
                revisions = n,
                "--auto-compaction-retention is a duration in revision mode; as etcd, Cairn reads it as that many nanoseconds' worth of revisions"
            );
        }
    }
    Ok(how)
}
