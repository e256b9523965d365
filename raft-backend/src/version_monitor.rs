//! The leader's version monitor (etcd's `monitorClusterVersions` and
//! `monitorDowngrade`): every few seconds the leader asks each member's
//! release and writes what `versions::decide` says through the log: the
//! first cluster version, a higher one once every member runs it, the
//! downgrade target while a downgrade is enabled, and the end of a
//! downgrade once every member runs its target.

use std::sync::Weak;
use std::time::Duration;

use cairn_proto::peer::{ClusterVersionSet, DowngradeInfoSet};

use crate::command::Command;
use crate::mvcc::cluster_version;
use crate::mvcc::readers::Readers;
use crate::replication::Replica;
use crate::versions::{decide, VersionStep};

/// etcd's leader checks every 4 s (`monitorVersionInterval`); a little
/// sooner here, so that a rolling step is reflected before the next one.
const INTERVAL: Duration = Duration::from_secs(2);
/// How long a member may take to say its release.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs until the replica is dropped.
pub(crate) async fn run(replica: Weak<Replica>, readers: Readers) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(replica) = replica.upgrade() else {
            return;
        };
        if !replica.is_leader() {
            continue;
        }
        if let Err(e) = step(&replica, &readers).await {
            tracing::debug!(error = %e, "version monitor: no step this round");
        }
    }
}

async fn step(replica: &Replica, readers: &Readers) -> crate::Result<()> {
    let state = readers.with_conn(cluster_version::load).await?;
    let releases = replica.member_releases(ASK_TIMEOUT).await;
    let now = state
        .cluster
        .map_or_else(|| "none".to_string(), |v| v.to_string());
    let cmd = match decide(&state, &releases) {
        None => return Ok(()),
        Some(VersionStep::SetCluster(v)) => {
            tracing::info!(from = %now, to = %v, "setting the cluster version");
            Command::ClusterVersionSet(ClusterVersionSet {
                version: v.to_string(),
            })
        }
        Some(VersionStep::FinishDowngrade) => {
            tracing::info!(cluster_version = %now, "the cluster has been downgraded");
            Command::DowngradeInfoSet(DowngradeInfoSet {
                enabled: false,
                target_version: String::new(),
            })
        }
    };
    replica.propose(cmd).await.map(drop)
}
