//! Version skew rules: which member versions may run together, and which
//! target a rolling upgrade may go to.
//!
//! etcd supports a patch change within a minor, or one minor up at a time
//! ("Upgrades that skip a minor version are not supported and will likely
//! fail": https://etcd.io/docs/v3.6/upgrades/upgrading-etcd/). A cluster in
//! the middle of a rolling upgrade runs two adjacent minors; more is never
//! right.

use std::cmp::Ordering;
use std::fmt;

use crate::upgrade::verdict::Verdict;

/// A release version, `3.5.26` or `v3.6.0-rc.1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// A pre-release tag (`rc.1`), empty for a release.
    pub pre: String,
}

impl Version {
    /// Parses `3.5.26`, `v3.6.0-rc.1`, `3.6` (patch 0).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, p.to_string()),
            None => (s, String::new()),
        };
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// (major, minor).
    pub fn minor_line(&self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            // A pre-release comes before its release.
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// The 3.5 patch every member must run before any goes to 3.6.
///
/// etcd's upgrade guide, "Upgrade etcd from v3.5 to v3.6"
/// (https://etcd.io/docs/latest/upgrades/upgrade_3_6/): "make sure that all
/// of your 3.5 members are updated to 3.5.26 or later. Patch releases
/// 3.5.24 through 3.5.26 fix several potential upgrade blockers." 3.5.20
/// fixed the learner-promotion bug ("too many learner member in cluster",
/// etcd issue 19557, https://etcd.io/blog/2025/upgrade_from_3.5_to_3.6_issue/);
/// 3.5.26 repairs membership that v2store and v3store disagree on, the
/// "zombie members" that reappear once 3.6 reads v3store
/// (https://etcd.io/blog/2025/zombie_members_upgrade/: "if v3.5.26 is not
/// available ... you should delay upgrading to v3.6 until it is").
pub const MIN_35_FOR_36: Version = Version {
    major: 3,
    minor: 5,
    patch: 26,
    pre: String::new(),
};

/// Whether the members' versions may run together: one minor (PASS), two
/// adjacent minors (a rolling upgrade under way: WARN), anything else FAIL.
/// `members` are (name, version); an unparsable version is not measurable.
pub fn member_skew(members: &[(String, String)]) -> (Verdict, String) {
    let mut parsed: Vec<(&str, Version)> = Vec::new();
    for (name, v) in members {
        match Version::parse(v) {
            Some(p) => parsed.push((name, p)),
            None => {
                return (
                    Verdict::Unknown,
                    format!("{name} reports version {v:?}, which does not parse"),
                )
            }
        }
    }
    let Some(lo) = parsed.iter().map(|(_, v)| v.clone()).min() else {
        return (Verdict::Unknown, "no member reported its version".into());
    };
    let hi = parsed
        .iter()
        .map(|(_, v)| v.clone())
        .max()
        .unwrap_or_else(|| lo.clone());
    let listing = list_versions(&parsed);
    if lo.minor_line() == hi.minor_line() {
        return (Verdict::Pass, format!("every member runs {listing}"));
    }
    if lo.major == hi.major && hi.minor == lo.minor + 1 {
        return (
            Verdict::Warn,
            format!(
                "a rolling upgrade is under way ({listing}): finish it (to {}.{}) before anything else",
                hi.major, hi.minor
            ),
        );
    }
    (
        Verdict::Fail,
        format!("members run versions more than one minor apart ({listing}); etcd supports one minor step"),
    )
}

fn list_versions(parsed: &[(&str, Version)]) -> String {
    let mut distinct: Vec<(Version, Vec<&str>)> = Vec::new();
    for (name, v) in parsed {
        match distinct.iter_mut().find(|(d, _)| d == v) {
            Some((_, names)) => names.push(name),
            None => distinct.push((v.clone(), vec![name])),
        }
    }
    distinct.sort_by(|a, b| a.0.cmp(&b.0));
    if distinct.len() == 1 {
        return distinct[0].0.to_string();
    }
    distinct
        .iter()
        .map(|(v, names)| format!("{v} on {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether etcd members at `members` may be upgraded, one by one, to `target`.
pub fn etcd_target(members: &[(String, String)], target: &Version) -> (Verdict, String) {
    let parsed: Vec<(&str, Version)> = members
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), Version::parse(v)?)))
        .collect();
    if parsed.len() < members.len() || parsed.is_empty() {
        return (
            Verdict::Unknown,
            "not every member reported a version that parses".into(),
        );
    }
    let lo = parsed
        .iter()
        .map(|(_, v)| v)
        .min()
        .cloned()
        .unwrap_or_else(|| target.clone());
    if target.major != lo.major {
        return (
            Verdict::Fail,
            format!("{target} is another major version than {lo}: not a rolling upgrade"),
        );
    }
    if target.minor < lo.minor {
        return (
            Verdict::Fail,
            format!(
                "{target} is a downgrade from {lo}: a rolling restart cannot do it (etcd 3.6+: etcdctl downgrade validate|enable first)"
            ),
        );
    }
    if target.minor > lo.minor + 1 {
        return (
            Verdict::Fail,
            format!(
                "{lo} → {target} skips minor {}.{}: etcd upgrades one minor at a time; upgrade every member to the latest {}.{} patch first",
                lo.major,
                lo.minor + 1,
                lo.major,
                lo.minor + 1
            ),
        );
    }
    if target.minor == lo.minor {
        return (Verdict::Pass, format!("{lo} → {target}: a patch change"));
    }
    // One minor up.
    if (lo.major, lo.minor, target.minor) == (3, 5, 6) {
        let behind: Vec<String> = parsed
            .iter()
            .filter(|(_, v)| v.minor_line() == (3, 5) && *v < MIN_35_FOR_36)
            .map(|(n, v)| format!("{n} ({v})"))
            .collect();
        if !behind.is_empty() {
            return (
                Verdict::Fail,
                format!(
                    "3.5 → {target} needs every member on {MIN_35_FOR_36} or later first (etcd's upgrade guide: it repairs the membership that 3.6 would read back as \"zombie members\"); not yet: {}",
                    behind.join(", ")
                ),
            );
        }
    }
    (
        Verdict::Pass,
        format!("{lo} → {target}: one minor up, as etcd supports"),
    )
}

/// What a Cairn release reads and speaks: the compatibility table that
/// decides whether its binary may join a cluster of members at other releases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CairnRelease {
    /// The release (workspace version).
    pub version: Version,
    /// Store schema versions it opens (older ones are upgraded in place).
    pub schema_min: u64,
    /// The store schema version it writes.
    pub schema: u64,
    /// Peer protocol versions it accepts from other members.
    pub peer_min: u64,
    /// The peer protocol version it speaks.
    pub peer: u64,
}

/// What one Cairn member reports in `/version` (`cairn` object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CairnMember {
    /// Member name.
    pub name: String,
    /// Its Cairn release.
    pub version: String,
    /// The store schema version its data dir is at.
    pub schema: u64,
    /// The oldest peer protocol version it accepts.
    pub peer_min: u64,
    /// The peer protocol version it speaks.
    pub peer: u64,
}

/// Whether a Cairn binary of `target` may replace members one by one: it
/// must open every member's store, and it and every member that is not yet
/// upgraded must accept each other's peer protocol.
pub fn cairn_target(members: &[CairnMember], target: &CairnRelease) -> (Verdict, String) {
    let mut problems = Vec::new();
    for m in members {
        if m.schema < target.schema_min || m.schema > target.schema {
            problems.push(format!(
                "{}'s store is at schema version {}, which Cairn {} cannot open (it reads {}..={})",
                m.name, m.schema, target.version, target.schema_min, target.schema
            ));
        }
        if m.peer < target.peer_min || m.peer > target.peer {
            problems.push(format!(
                "{} speaks peer protocol {}, which Cairn {} does not accept ({}..={})",
                m.name, m.peer, target.version, target.peer_min, target.peer
            ));
        }
        if target.peer < m.peer_min || target.peer > m.peer {
            problems.push(format!(
                "Cairn {} speaks peer protocol {}, which {} (Cairn {}) does not accept ({}..={})",
                target.version, target.peer, m.name, m.version, m.peer_min, m.peer
            ));
        }
    }
    if !problems.is_empty() {
        return (Verdict::Fail, problems.join("; "));
    }
    let newer_schema: Vec<&str> = members
        .iter()
        .filter(|m| m.schema < target.schema)
        .map(|m| m.name.as_str())
        .collect();
    if !newer_schema.is_empty() {
        return (
            Verdict::Warn,
            format!(
                "Cairn {} writes schema {}, newer than {}'s: upgrade followers first and the leader last (an older member refuses a newer leader's snapshot)",
                target.version,
                target.schema,
                newer_schema.join(", ")
            ),
        );
    }
    (
        Verdict::Pass,
        format!(
            "Cairn {} opens every member's store (schema {}..={}) and speaks their peer protocol ({})",
            target.version, target.schema_min, target.schema, target.peer
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn members(vs: &[&str]) -> Vec<(String, String)> {
        vs.iter()
            .enumerate()
            .map(|(i, v)| (format!("m{i}"), v.to_string()))
            .collect()
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(v("3.5.26"), v("v3.5.26"));
        assert!(v("3.6.0-rc.1") < v("3.6.0"));
        assert!(v("3.5.9") < v("3.5.26"));
        assert_eq!(v("3.6").patch, 0);
        assert!(Version::parse("3").is_none());
        assert!(Version::parse("x.y.z").is_none());
        assert_eq!(v("3.6.0-rc.1").to_string(), "3.6.0-rc.1");
    }

    #[test]
    fn members_must_share_a_minor_or_be_mid_upgrade() {
        assert_eq!(member_skew(&members(&["3.5.1", "3.5.1"])).0, Verdict::Pass);
        assert_eq!(member_skew(&members(&["3.5.1", "3.5.26"])).0, Verdict::Pass);
        let (verdict, why) = member_skew(&members(&["3.5.26", "3.6.0", "3.6.0"]));
        assert_eq!(verdict, Verdict::Warn);
        assert!(why.contains("3.5.26 on m0; 3.6.0 on m1, m2"), "{why}");
        assert_eq!(member_skew(&members(&["3.4.23", "3.6.0"])).0, Verdict::Fail);
        assert_eq!(member_skew(&members(&["junk"])).0, Verdict::Unknown);
    }

    #[test]
    fn targets_go_one_minor_up_and_36_needs_3526() {
        let t = |vs: &[&str], target: &str| etcd_target(&members(vs), &v(target));
        assert_eq!(t(&["3.5.1"], "3.5.26").0, Verdict::Pass);
        assert_eq!(t(&["3.4.23", "3.4.23"], "3.5.26").0, Verdict::Pass);
        let (verdict, why) = t(&["3.5.1", "3.5.26", "3.5.1"], "3.6.0");
        assert_eq!(verdict, Verdict::Fail);
        assert!(
            why.contains("3.5.26 or later") && why.contains("m0 (3.5.1), m2 (3.5.1)"),
            "{why}"
        );
        assert_eq!(t(&["3.5.26", "3.5.30"], "3.6.0").0, Verdict::Pass);
        // Mid-upgrade: some members already on 3.6.
        assert_eq!(t(&["3.5.26", "3.6.0"], "3.6.0").0, Verdict::Pass);
        let (verdict, why) = t(&["3.4.23"], "3.6.0");
        assert_eq!(verdict, Verdict::Fail);
        assert!(why.contains("skips minor 3.5"), "{why}");
        assert_eq!(t(&["3.6.0"], "3.5.26").0, Verdict::Fail);
        assert_eq!(t(&["3.6.0"], "4.0.0").0, Verdict::Fail);
    }

    #[test]
    fn a_cairn_target_must_read_every_store_and_speak_every_protocol() {
        let target = CairnRelease {
            version: v("0.2.0"),
            schema_min: 1,
            schema: 4,
            peer_min: 1,
            peer: 2,
        };
        let m = |schema, peer_min, peer| CairnMember {
            name: "m0".into(),
            version: "0.1.0".into(),
            schema,
            peer_min,
            peer,
        };
        // m0 accepts only protocol 1: the new binary's 2 would be refused.
        let (verdict, why) = cairn_target(&[m(3, 1, 1)], &target);
        assert_eq!(verdict, Verdict::Fail);
        assert!(why.contains("does not accept"), "{why}");
        assert_eq!(cairn_target(&[m(3, 1, 2)], &target).0, Verdict::Warn);
        assert_eq!(cairn_target(&[m(4, 1, 2)], &target).0, Verdict::Pass);
        assert_eq!(cairn_target(&[m(5, 1, 2)], &target).0, Verdict::Fail);
    }
}
