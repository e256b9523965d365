//! The cluster version and downgrades, as etcd 3.6 has them
//! (`server/etcdserver/version`), over Cairn's own releases.
//!
//! The cluster version is the oldest release (major.minor) among the
//! members. The leader decides it from what every member reports and writes
//! it through the log; it only rises once every member runs the newer
//! release, so a feature a release gates on it is never proposed while a
//! member that cannot apply it is in the cluster. It falls only through a
//! downgrade: one enabled to the release just before (etcd allows one minor
//! at a time) lowers it to the target at once, older members may then join,
//! and the downgrade ends by itself once every member runs the target.
//! A member never starts in a cluster whose version is above its own
//! release unless a downgrade to it is enabled (etcd's MustDetectDowngrade).

use std::fmt;

/// This build's release: the workspace version.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// A release at the granularity clusters agree on (etcd's cluster version
/// keeps major.minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinorVersion {
    pub major: u32,
    pub minor: u32,
}

impl MinorVersion {
    /// Reads "0.2", "0.2.1", "v0.2.1" or "0.2.0-dev"; the patch and any
    /// suffix are dropped, as etcd's `convertToClusterVersion` drops the patch.
    pub fn parse(s: &str) -> Option<MinorVersion> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        match parts.next() {
            None => {}
            Some(p) => {
                p.parse::<u32>().ok()?;
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(MinorVersion { major, minor })
    }

    /// The only version a downgrade from this one may target (etcd's
    /// `allowedDowngradeVersion`); none below x.0.
    pub fn allowed_downgrade(self) -> Option<MinorVersion> {
        Some(MinorVersion {
            major: self.major,
            minor: self.minor.checked_sub(1)?,
        })
    }

    /// As etcd stores a downgrade target: "major.minor.0".
    pub fn target_string(self) -> String {
        format!("{}.{}.0", self.major, self.minor)
    }

    /// This build's own release.
    pub fn this_release() -> MinorVersion {
        MinorVersion::parse(RELEASE).unwrap_or(MinorVersion { major: 0, minor: 0 })
    }

    /// Encoded in one meta row: major in the high half.
    pub(crate) fn to_meta(self) -> i64 {
        ((self.major as i64) << 32) | self.minor as i64
    }

    pub(crate) fn from_meta(v: i64) -> Option<MinorVersion> {
        (v > 0).then_some(MinorVersion {
            major: (v >> 32) as u32,
            minor: (v & 0xffff_ffff) as u32,
        })
    }
}

impl fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the log says about versions: the cluster version once decided, and
/// the downgrade under way, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionState {
    pub cluster: Option<MinorVersion>,
    pub downgrade_target: Option<MinorVersion>,
}

impl VersionState {
    /// Whether a member of `release` may serve in this cluster.
    pub fn admits(&self, release: MinorVersion) -> Result<(), String> {
        match self.cluster {
            Some(cv) if release < cv && self.downgrade_target != Some(release) => Err(format!(
                "invalid downgrade; server version {release} is lower than determined cluster \
                 version {cv}: run a {cv} release, or enable a downgrade to {release} first \
                 (etcdctl downgrade enable {release})"
            )),
            _ => Ok(()),
        }
    }
}

/// What the leader's version monitor proposes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStep {
    SetCluster(MinorVersion),
    /// Every member runs the downgrade target: the downgrade is complete.
    FinishDowngrade,
}

/// The leader's decision from the state and each member's release (`None`:
/// the member did not answer, or runs a build that does not report it), as
/// etcd's `decideClusterVersion` and `CancelDowngradeIfNeeded`.
pub fn decide(state: &VersionState, members: &[Option<MinorVersion>]) -> Option<VersionStep> {
    let all: Option<Vec<MinorVersion>> = members.iter().copied().collect();
    if let Some(target) = state.downgrade_target {
        if state.cluster != Some(target) {
            return Some(VersionStep::SetCluster(target));
        }
        return match all {
            Some(v) if !v.is_empty() && v.iter().all(|m| *m == target) => {
                Some(VersionStep::FinishDowngrade)
            }
            _ => None,
        };
    }
    let oldest = all?.into_iter().min()?;
    match state.cluster {
        None => Some(VersionStep::SetCluster(oldest)),
        // Only upwards, and within one major (etcd's IsValidClusterVersionChange).
        Some(cv) if cv < oldest && cv.major == oldest.major => {
            Some(VersionStep::SetCluster(oldest))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> MinorVersion {
        MinorVersion { major, minor }
    }

    #[test]
    fn versions_parse_as_etcd_takes_a_downgrade_target() {
        assert_eq!(MinorVersion::parse("0.2"), Some(v(0, 2)));
        assert_eq!(MinorVersion::parse("0.2.7"), Some(v(0, 2)));
        assert_eq!(MinorVersion::parse("v3.6.0"), Some(v(3, 6)));
        assert_eq!(MinorVersion::parse("0.2.0-dev"), Some(v(0, 2)));
        for bad in ["", "3", "a.b", "1.2.3.4", "1.2.x"] {
            assert_eq!(MinorVersion::parse(bad), None, "{bad}");
        }
        assert_eq!(v(0, 2).allowed_downgrade(), Some(v(0, 1)));
        assert_eq!(v(1, 0).allowed_downgrade(), None);
        assert_eq!(MinorVersion::from_meta(v(3, 6).to_meta()), Some(v(3, 6)));
        assert_eq!(MinorVersion::from_meta(0), None);
        assert!(MinorVersion::parse(RELEASE).is_some());
    }

    #[test]
    fn the_cluster_version_is_decided_then_only_rises_with_every_member() {
        let none = VersionState::default();
        assert_eq!(
            decide(&none, &[Some(v(0, 2)), Some(v(0, 1))]),
            Some(VersionStep::SetCluster(v(0, 1)))
        );
        // A member that did not answer leaves it undecided.
        assert_eq!(decide(&none, &[Some(v(0, 2)), None]), None);
        let at_1 = VersionState {
            cluster: Some(v(0, 1)),
            downgrade_target: None,
        };
        assert_eq!(decide(&at_1, &[Some(v(0, 2)), Some(v(0, 1))]), None);
        assert_eq!(
            decide(&at_1, &[Some(v(0, 2)), Some(v(0, 2))]),
            Some(VersionStep::SetCluster(v(0, 2)))
        );
        // Never down without a downgrade, never across a major.
        let at_2 = VersionState {
            cluster: Some(v(0, 2)),
            downgrade_target: None,
        };
        assert_eq!(decide(&at_2, &[Some(v(0, 1))]), None);
        assert_eq!(decide(&at_2, &[Some(v(1, 0))]), None);
    }

    #[test]
    fn a_downgrade_lowers_the_version_then_ends_when_every_member_runs_the_target() {
        let enabled = VersionState {
            cluster: Some(v(0, 2)),
            downgrade_target: Some(v(0, 1)),
        };
        assert_eq!(
            decide(&enabled, &[Some(v(0, 2)), Some(v(0, 2))]),
            Some(VersionStep::SetCluster(v(0, 1)))
        );
        let lowered = VersionState {
            cluster: Some(v(0, 1)),
            ..enabled
        };
        assert_eq!(decide(&lowered, &[Some(v(0, 1)), Some(v(0, 2))]), None);
        assert_eq!(decide(&lowered, &[Some(v(0, 1)), None]), None);
        assert_eq!(
            decide(&lowered, &[Some(v(0, 1)), Some(v(0, 1))]),
            Some(VersionStep::FinishDowngrade)
        );
    }

    #[test]
    fn an_older_member_is_admitted_only_as_the_downgrade_target() {
        let at_2 = VersionState {
            cluster: Some(v(0, 2)),
            downgrade_target: None,
        };
        assert!(at_2.admits(v(0, 2)).is_ok());
        assert!(at_2.admits(v(0, 3)).is_ok());
        let err = at_2.admits(v(0, 1)).unwrap_err();
        assert!(err.starts_with("invalid downgrade; server version 0.1 is lower than determined cluster version 0.2"), "{err}");
        let downgrading = VersionState {
            downgrade_target: Some(v(0, 1)),
            ..at_2
        };
        assert!(downgrading.admits(v(0, 1)).is_ok());
        assert!(VersionState::default().admits(v(0, 1)).is_ok());
    }
}
