//! Maintenance.Downgrade (validate, enable, cancel) as etcd 3.6 answers it
//! (`server/etcdserver/v3_server.go`, `server/etcdserver/version`), over
//! Cairn's own releases: the target is a Cairn release, `0.1` or `0.1.0`,
//! and the answer's version is Cairn's cluster version (major.minor), the
//! oldest release among the members (`cairn_raft_backend::versions`).
//!
//! What a downgrade must rewrite, and what Cairn refuses for it:
//! - the store schema: the target must open the schema this member's store
//!   is at. Cairn has no way back to an older schema, so a target that
//!   reads only older ones is refused, as is one this build does not know;
//! - the peer protocol: the target and this release must accept each
//!   other's, or the cluster splits halfway through the downgrade;
//! - the cluster version: lowered to the target by the leader once enabled,
//!   so that no feature gated on it is used while older members join, and
//!   the downgrade ends by itself once every member runs the target.

use cairn_migrate::upgrade::verdict::Verdict;
use cairn_migrate::upgrade::version::{cairn_target, CairnMember};
use cairn_proto::etcdserverpb::{downgrade_request::DowngradeAction, DowngradeRequest};
use cairn_proto::peer::{DowngradeInfoSet, PROTOCOL_VERSION};
use cairn_raft_backend::versions::{MinorVersion, VersionState};
use cairn_raft_backend::{Command, SCHEMA_VERSION};
use tonic::{Code, Status};

use crate::errors::store_status;
use crate::node::Node;
use crate::release::{self, known_release};

/// etcd's errors for the Downgrade RPC (`api/v3rpc/rpctypes/error.go`).
fn wrong_format() -> Status {
    Status::invalid_argument("etcdserver: wrong downgrade target version format")
}
fn invalid_target() -> Status {
    Status::invalid_argument("etcdserver: invalid downgrade target version")
}
fn version_unavailable() -> Status {
    Status::failed_precondition("etcdserver: cluster version not found during downgrade")
}
fn in_progress() -> Status {
    Status::failed_precondition("etcdserver: cluster has a downgrade job in progress")
}
const NO_INFLIGHT: &str = "etcdserver: no inflight downgrade job";

/// The answer's version: the cluster version, or (undecided) empty.
pub async fn downgrade(node: &Node, req: DowngradeRequest) -> Result<String, Status> {
    match DowngradeAction::try_from(req.action) {
        Ok(DowngradeAction::Validate) => {
            let target = parse_target(&req.version)?;
            let cv = validate(node, target).await?;
            Ok(cv.to_string())
        }
        Ok(DowngradeAction::Enable) => {
            let target = parse_target(&req.version)?;
            let cv = validate(node, target).await?;
            node.store
                .propose(Command::DowngradeInfoSet(DowngradeInfoSet {
                    enabled: true,
                    target_version: target.target_string(),
                }))
                .await
                .map_err(store_status)?;
            tracing::info!(target_version = %target, cluster_version = %cv, "downgrade enabled");
            Ok(cv.to_string())
        }
        Ok(DowngradeAction::Cancel) => cancel(node).await,
        // etcd's ErrUnknownMethod, which its error table does not map.
        Err(_) => Err(Status::new(Code::Unknown, "etcdserver: unknown method")),
    }
}

/// etcd's `convertToClusterVersion`: a semantic version (go-semver's
/// major.minor.patch, no "v"), else major.minor with ".0" appended; the
/// patch is dropped.
fn parse_target(v: &str) -> Result<MinorVersion, Status> {
    let semver = |s: &str| {
        let core = s.split(['-', '+']).next().unwrap_or(s);
        let numeric = core.split('.').count() == 3
            && core
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        numeric.then(|| MinorVersion::parse(s)).flatten()
    };
    semver(v)
        .or_else(|| semver(&format!("{v}.0")))
        .ok_or_else(wrong_format)
}

/// The state after everything committed before the call (etcd reads it
/// after a linearizable read for the same reason: no stale downgrade info).
async fn current(node: &Node) -> Result<VersionState, Status> {
    node.store.read_barrier().await.map_err(store_status)?;
    node.store.version_state().await.map_err(store_status)
}

/// etcd's `DowngradeValidate`, then Cairn's own: the target release must
/// read this store and speak this release's peer protocol.
async fn validate(node: &Node, target: MinorVersion) -> Result<MinorVersion, Status> {
    let state = current(node).await?;
    let cv = state.cluster.ok_or_else(version_unavailable)?;
    if cv.allowed_downgrade() != Some(target) {
        tracing::warn!(target_version = %target, cluster_version = %cv,
            "reject downgrade request: a downgrade goes to the minor release just before the cluster version");
        return Err(invalid_target());
    }
    if state.downgrade_target.is_some() {
        return Err(in_progress());
    }
    if let Err(why) = target_runs_this_store(target) {
        tracing::warn!(target_version = %target, reason = %why, "reject downgrade request");
        return Err(invalid_target());
    }
    Ok(cv)
}

/// Whether a member of `target` could take over this member's data dir and
/// talk to this release, as `cairn upgrade check --target-version` judges
/// an upgrade.
fn target_runs_this_store(target: MinorVersion) -> Result<(), String> {
    let Some(release) = known_release(target) else {
        return Err(format!(
            "Cairn {} does not know what release {target} reads",
            release::VERSION
        ));
    };
    let this = release::this_release();
    let me = CairnMember {
        name: "this member".into(),
        version: release::VERSION.to_string(),
        schema: SCHEMA_VERSION as u64,
        peer_min: this.peer_min,
        peer: PROTOCOL_VERSION as u64,
    };
    match cairn_target(&[me], &release) {
        (Verdict::Fail, why) => Err(why),
        _ => Ok(()),
    }
}

/// etcd 3.6 answers a cancel with no downgrade under way with success, and
/// only logs the refusal (`downgradeCancel`); so does this.
async fn cancel(node: &Node) -> Result<String, Status> {
    let state = current(node).await?;
    let cv = state.cluster.map(|v| v.to_string()).unwrap_or_default();
    if state.downgrade_target.is_none() {
        tracing::warn!(error = NO_INFLIGHT, "failed to cancel downgrade");
        return Ok(cv);
    }
    node.store
        .propose(Command::DowngradeInfoSet(DowngradeInfoSet {
            enabled: false,
            target_version: String::new(),
        }))
        .await
        .map_err(store_status)?;
    tracing::info!(cluster_version = %cv, "downgrade cancelled");
    Ok(cv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_etcd_converts_them() {
        let v = |major, minor| MinorVersion { major, minor };
        assert_eq!(parse_target("0.1").ok(), Some(v(0, 1)));
        assert_eq!(parse_target("0.1.4").ok(), Some(v(0, 1)));
        assert_eq!(parse_target("3.6.0-rc.1").ok(), Some(v(3, 6)));
        // go-semver refuses these, and so does etcd.
        for bad in ["three", "3", "v3.5.0", "3.5.0.1", " 3.5", "3.x"] {
            let e = parse_target(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
            assert_eq!(
                e.message(),
                "etcdserver: wrong downgrade target version format"
            );
        }
    }

    #[test]
    fn a_target_must_read_this_store_and_be_known() {
        // This release reads its own store; an unknown one is refused by name.
        assert!(target_runs_this_store(MinorVersion::this_release()).is_ok());
        let err = target_runs_this_store(MinorVersion { major: 9, minor: 9 }).unwrap_err();
        assert!(
            err.contains("does not know what release 9.9 reads"),
            "{err}"
        );
    }
}
