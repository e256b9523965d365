//! Static bootstrap of a cluster from etcd's flags: `--initial-cluster`,
//! `--initial-advertise-peer-urls`, `--initial-cluster-state` and
//! `--initial-cluster-token`.
//!
//! Member and cluster IDs are computed exactly as etcd computes them, so that a
//! cluster started with the same flags shows the same IDs (`etcdctl member
//! list`, the `X-Etcd-Cluster-ID` header) on Cairn as on etcd, and runbooks
//! keep working.
//!
//! Everything here is pure. Unlike etcd, URLs are compared as strings, without
//! resolving host names: `localhost` and `127.0.0.1` are different URLs.

use std::collections::HashMap;

use sha1::{Digest, Sha1};
use thiserror::Error;

const INITIAL_CLUSTER: &str = "--initial-cluster";
const ADVERTISE_PEER_URLS: &str = "--initial-advertise-peer-urls";
const REQUEST_PEER_URLS: &str = "peer URLs";

/// One member named in `--initial-cluster`, with all the URLs given for its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    /// Canonical (scheme lowercased, as Go's `url.URL.String()` prints it) and
    /// sorted, because etcd hashes them in that form.
    pub peer_urls: Vec<String>,
}

/// `--initial-cluster-state`: whether this member bootstraps a new cluster with
/// the others in `--initial-cluster`, or joins a running one it was added to.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// The cluster as the flags describe it.
///
/// With [`ClusterState::Existing`] the IDs are what etcd computes locally
/// before asking the running cluster: the real ones are those the cluster
/// assigned at `member add` (which mixes in the time), and the join must take
/// them from the cluster, matching members by peer URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// Sorted by ID, as etcd lists members.
    pub members: Vec<BootMember>,
    pub cluster_id: u64,
    pub local_id: u64,
}

/// The identity an existing data dir recorded when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterConfigError {
    #[error("--initial-cluster entry {entry:?} is not of the form name=peer-url")]
    MalformedEntry { entry: String },

    #[error("--initial-cluster entry {entry:?} has an empty member name")]
    EmptyName { entry: String },

    #[error("{flag}: {reason}: {url}")]
    InvalidUrl {
        flag: &'static str,
        url: String,
        reason: &'static str,
    },

    #[error("{flag}: no valid URLs given")]
    NoUrls { flag: &'static str },

    #[error("--initial-cluster gives member {name:?} no peer URLs")]
    NoPeerUrls { name: String },

    #[error("--initial-cluster is empty: {hint}")]
    EmptyCluster { hint: &'static str },

    #[error(
        "--initial-cluster gives member {name:?} twice with different peer URLs \
         ({first} and {second}); give each member's URLs once"
    )]
    ConflictingMember {
        name: String,
        first: String,
        second: String,
    },

    #[error(
        "initial cluster has duplicate url {url} (given for {first:?} and {second:?}); \
         each peer URL must belong to one member, once"
    )]
    DuplicateUrl {
        url: String,
        first: String,
        second: String,
    },

    #[error("--initial-advertise-peer-urls has duplicate url {url}")]
    DuplicateAdvertiseUrl { url: String },

    #[error("couldn't find local name {name:?} in the initial cluster configuration: {hint}")]
    LocalNameMissing { name: String, hint: &'static str },

    #[error(
        "--initial-cluster has {missing} but missing from \
         --initial-advertise-peer-urls={advertised}; this member must advertise \
         exactly its URLs in --initial-cluster"
    )]
    MissingFromAdvertise { missing: String, advertised: String },

    #[error(
        "--initial-advertise-peer-urls has {missing} but missing from \
         --initial-cluster={listed}; this member must advertise exactly its URLs \
         in --initial-cluster"
    )]
    MissingFromInitialCluster { missing: String, listed: String },

    #[error(
        "cannot use 0 as member id (member {name:?}); change its peer URLs or \
         --initial-cluster-token"
    )]
    ZeroMemberId { name: String },

    #[error("member exists with identical ID {id:x} ({first:?} and {second:?})")]
    IdenticalMemberId {
        id: u64,
        first: String,
        second: String,
    },

    #[error(
        "data dir belongs to the cluster with token {stored:?}, not \
         --initial-cluster-token={given:?}; use this cluster's data dir, or the \
         token the data dir was created with"
    )]
    TokenMismatch { stored: String, given: String },

    #[error(
        "data dir belongs to cluster {stored:x}, but --initial-cluster-state=new with \
         this --initial-cluster would create cluster {computed:x}: the data dir was not \
         bootstrapped from these flags (its member joined a running cluster, or \
         --initial-cluster changed since). Restore the original --initial-cluster, or \
         pass --initial-cluster-state=existing to reuse the data dir"
    )]
    ClusterIdMismatch { stored: u64, computed: u64 },

    #[error(
        "data dir belongs to member {owner:?} ({member_id:x}) of this cluster, not to \
         {name:?}; give each member its own --data-dir"
    )]
    DataDirOfOtherMember {
        name: String,
        owner: String,
        member_id: u64,
    },

    #[error(
        "data dir belongs to member {stored_name:?} ({stored:x}), but {name:?} with these \
         peer URLs is member {expected:x}; use this member's own --data-dir"
    )]
    MemberIdMismatch {
        name: String,
        stored_name: String,
        stored: u64,
        expected: u64,
    },
}

/// Parses `--initial-cluster` (`name=url,name=url2,...`).
///
/// A name may repeat to give a member several URLs; like etcd's
/// `types.NewURLsMap`, the URLs are grouped under the name. Members come out in
/// the order their names first appear. Empty entries are skipped, as etcd does,
/// and names are trimmed so that `a=...,␠b=...` names `b`. Duplicate URLs are
/// kept for [`validate_bootstrap`] to report. An empty string gives no members.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, ClusterConfigError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for entry in s.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((name, url)) = entry.split_once('=') else {
            return Err(ClusterConfigError::MalformedEntry {
                entry: entry.to_string(),
            });
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(ClusterConfigError::EmptyName {
                entry: entry.to_string(),
            });
        }
        let url = canonical_peer_url(INITIAL_CLUSTER, url)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url],
            }),
        }
    }
    for m in &mut members {
        m.peer_urls.sort();
    }
    Ok(members)
}

/// Checks and canonicalizes the peer URLs of a `MemberAdd` or `MemberUpdate`
/// request as etcd's `types.NewURLs` does: at least one, each valid, sorted.
/// Duplicates are kept, as etcd keeps them.
pub fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, ClusterConfigError> {
    if urls.is_empty() {
        return Err(ClusterConfigError::NoUrls {
            flag: REQUEST_PEER_URLS,
        });
    }
    let mut out = urls
        .iter()
        .map(|u| canonical_peer_url(REQUEST_PEER_URLS, u))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// Checks a peer URL as etcd's `types.NewURLs` does and returns the form etcd
/// hashes into IDs: trimmed, scheme lowercased, the rest as written.
///
/// Stricter than etcd where etcd accepts nonsense that would only fail later:
/// unix sockets, user info, queries, fragments, an empty host, a port that is
/// not a number from 1 to 65535.
fn canonical_peer_url(flag: &'static str, raw: &str) -> Result<String, ClusterConfigError> {
    let url = raw.trim();
    let fail = |reason| ClusterConfigError::InvalidUrl {
        flag,
        url: url.to_string(),
        reason,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail("URL must have the form http(s)://host:port"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(fail("URL scheme must be http or https"));
    }
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if tail.starts_with('/') {
        return Err(fail("URL must not contain a path"));
    }
    if !tail.is_empty() {
        return Err(fail("URL must not contain a query or fragment"));
    }
    if authority.contains('@') {
        return Err(fail("URL must not contain user info"));
    }
    let Some((host, port)) = split_host_port(authority) else {
        return Err(fail("URL address does not have the form \"host:port\""));
    };
    if !valid_host(host) {
        return Err(fail("URL host must be a host name or IP address"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err(fail("URL port must be a number from 1 to 65535"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Splits like Go's `net.SplitHostPort`: `[v6]:port` or `host:port` with no
/// other colon. The host of a bracketed address comes back with its brackets.
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let port = authority[close + 1..].strip_prefix(':')?;
        Some((&authority[..=close], port))
    } else {
        let (host, port) = authority.split_once(':')?;
        (!port.contains(':')).then_some((host, port))
    }
}

fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.contains(':')
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// etcd's `computeMemberID`: the first 8 bytes, big-endian, of the SHA-1 of the
/// sorted peer URLs concatenated without separator, then the cluster token,
/// then `now` in decimal Unix seconds when given.
///
/// Bootstrap members hash without a time, so every member derives the same IDs
/// for all; `member add` hashes with the time (and an empty token) so a member
/// re-added with the same URLs gets a new ID. Pass canonical URLs (as
/// [`parse_initial_cluster`] returns them) or the ID will differ from etcd's.
pub fn member_id(peer_urls: &[String], token: &str, now_unix_secs: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(now) = now_unix_secs {
        h.update(now.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// etcd's `RaftCluster.genID`: the first 8 bytes, big-endian, of the SHA-1 of
/// the sorted member IDs, each as 8 big-endian bytes. Fixed at bootstrap; later
/// membership changes do not change it.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Checks the bootstrap flags as etcd's `VerifyBootstrap` does and computes the
/// IDs.
///
/// The same checks apply to [`ClusterState::Existing`], where etcd skips the
/// advertise/`--initial-cluster` comparison: `etcdctl member add` prints both
/// from the same URLs, so a mismatch is always an operator mistake, and the
/// join matches this member to the running cluster's by those URLs. Entries
/// that repeat a name with the same URLs count as one member.
pub fn validate_bootstrap(
    name: &str,
    advertise_peer_urls: &[String],
    initial: &[InitialMember],
    state: ClusterState,
    token: &str,
) -> Result<Bootstrap, ClusterConfigError> {
    let hint = match state {
        ClusterState::New => {
            "list every member of the new cluster, this one (--name) included, as name=peer-url"
        }
        ClusterState::Existing => {
            "list the running cluster's members and this one (--name), as `etcdctl member add` \
             prints them in ETCD_INITIAL_CLUSTER"
        }
    };

    let mut members: Vec<InitialMember> = Vec::new();
    for m in initial {
        if m.name.trim().is_empty() {
            return Err(ClusterConfigError::EmptyName {
                entry: format!("={}", m.peer_urls.join(",")),
            });
        }
        if m.peer_urls.is_empty() {
            return Err(ClusterConfigError::NoPeerUrls {
                name: m.name.clone(),
            });
        }
        let mut urls = m
            .peer_urls
            .iter()
            .map(|u| canonical_peer_url(INITIAL_CLUSTER, u))
            .collect::<Result<Vec<_>, _>>()?;
        urls.sort();
        match members.iter().find(|x| x.name == m.name) {
            Some(x) if x.peer_urls == urls => {}
            Some(x) => {
                return Err(ClusterConfigError::ConflictingMember {
                    name: m.name.clone(),
                    first: x.peer_urls.join(","),
                    second: urls.join(","),
                })
            }
            None => members.push(InitialMember {
                name: m.name.clone(),
                peer_urls: urls,
            }),
        }
    }
    if members.is_empty() {
        return Err(ClusterConfigError::EmptyCluster { hint });
    }

    let mut owner: HashMap<&str, &str> = HashMap::new();
    for m in &members {
        for u in &m.peer_urls {
            if let Some(first) = owner.insert(u, &m.name) {
                return Err(ClusterConfigError::DuplicateUrl {
                    url: u.clone(),
                    first: first.to_string(),
                    second: m.name.clone(),
                });
            }
        }
    }

    let Some(local) = members.iter().find(|m| m.name == name) else {
        return Err(ClusterConfigError::LocalNameMissing {
            name: name.to_string(),
            hint,
        });
    };

    let mut advertised = advertise_peer_urls
        .iter()
        .map(|u| canonical_peer_url(ADVERTISE_PEER_URLS, u))
        .collect::<Result<Vec<_>, _>>()?;
    advertised.sort();
    if let Some(w) = advertised.windows(2).find(|w| w[0] == w[1]) {
        return Err(ClusterConfigError::DuplicateAdvertiseUrl { url: w[0].clone() });
    }
    if advertised != local.peer_urls {
        let entries = |urls: &[String]| {
            urls.iter()
                .map(|u| format!("{name}={u}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let not_advertised: Vec<String> = local
            .peer_urls
            .iter()
            .filter(|u| !advertised.contains(u))
            .cloned()
            .collect();
        if !not_advertised.is_empty() {
            return Err(ClusterConfigError::MissingFromAdvertise {
                missing: entries(&not_advertised),
                advertised: advertised.join(","),
            });
        }
        // Both lists are sorted and free of duplicates, and not equal, so some
        // advertised URL is missing from --initial-cluster.
        let not_listed: Vec<String> = advertised
            .iter()
            .filter(|u| !local.peer_urls.contains(u))
            .cloned()
            .collect();
        return Err(ClusterConfigError::MissingFromInitialCluster {
            missing: not_listed.join(","),
            listed: entries(&local.peer_urls),
        });
    }

    let mut boot: Vec<BootMember> = Vec::with_capacity(members.len());
    for m in members {
        let id = member_id(&m.peer_urls, token, None);
        // etcd's raft reserves 0 for "no node".
        if id == 0 {
            return Err(ClusterConfigError::ZeroMemberId { name: m.name });
        }
        if let Some(other) = boot.iter().find(|b| b.id == id) {
            return Err(ClusterConfigError::IdenticalMemberId {
                id,
                first: other.name.clone(),
                second: m.name,
            });
        }
        boot.push(BootMember {
            id,
            name: m.name,
            peer_urls: m.peer_urls,
        });
    }
    boot.sort_by_key(|m| m.id);
    let ids: Vec<u64> = boot.iter().map(|m| m.id).collect();
    let local_id = boot
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.id)
        .ok_or_else(|| ClusterConfigError::LocalNameMissing {
            name: name.to_string(),
            hint,
        })?;
    Ok(Bootstrap {
        cluster_id: cluster_id(&ids),
        local_id,
        members: boot,
    })
}

/// Refuses a data dir that belongs to another cluster or member, or that
/// `--initial-cluster-state=new` contradicts.
///
/// etcd itself reuses any data dir that has a WAL and ignores the initial
/// cluster flags. Cairn refuses the combinations below instead, because
/// starting a member with another member's Raft ID, or in another cluster,
/// breaks Raft's safety; every refusal names the flag to fix.
///
/// | data dir                                     | new    | existing  |
/// |----------------------------------------------|--------|-----------|
/// | empty (`None`)                               | ok     | ok (join) |
/// | token differs from `--initial-cluster-token` | refuse | refuse    |
/// | cluster ID differs from the flags' cluster   | refuse | ok        |
/// | member ID is another listed member's         | refuse | refuse    |
/// | member ID is no listed member's              | refuse | ok        |
/// | matches this member                          | ok     | ok        |
///
/// With `existing`, a member that joined got its IDs from the running cluster
/// (time-dependent, not computable from the flags), and a bootstrapped member
/// restarted with `existing` is normal practice, so only what the flags can
/// prove wrong is refused; the startup path must check the stored member ID
/// against the running cluster's member list. A renamed member (same IDs,
/// different stored name) is accepted, as etcd accepts renames.
pub fn check_data_dir(
    stored: Option<&StoredIdentity>,
    state: ClusterState,
    boot: &Bootstrap,
    token: &str,
) -> Result<(), ClusterConfigError> {
    let Some(stored) = stored else {
        return Ok(());
    };
    if stored.cluster_token != token {
        return Err(ClusterConfigError::TokenMismatch {
            stored: stored.cluster_token.clone(),
            given: token.to_string(),
        });
    }
    if state == ClusterState::New && stored.cluster_id != boot.cluster_id {
        return Err(ClusterConfigError::ClusterIdMismatch {
            stored: stored.cluster_id,
            computed: boot.cluster_id,
        });
    }
    let local_name = boot
        .members
        .iter()
        .find(|m| m.id == boot.local_id)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    if let Some(owner) = boot
        .members
        .iter()
        .find(|m| m.id == stored.member_id && m.id != boot.local_id)
    {
        return Err(ClusterConfigError::DataDirOfOtherMember {
            name: local_name,
            owner: owner.name.clone(),
            member_id: stored.member_id,
        });
    }
    if state == ClusterState::New && stored.member_id != boot.local_id {
        return Err(ClusterConfigError::MemberIdMismatch {
            name: local_name,
            stored_name: stored.name.clone(),
            stored: stored.member_id,
            expected: boot.local_id,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const THREE: &str =
        "infra0=http://10.0.0.1:2380,infra1=http://10.0.0.2:2380,infra2=http://10.0.0.3:2380";

    fn boot_three(name: &str, state: ClusterState) -> Bootstrap {
        let initial = parse_initial_cluster(THREE).unwrap();
        let url = &initial.iter().find(|m| m.name == name).unwrap().peer_urls;
        validate_bootstrap(name, url, &initial, state, "etcd-cluster").unwrap()
    }

    fn err_of(name: &str, adv: &[&str], initial: &str, state: ClusterState) -> ClusterConfigError {
        let initial = parse_initial_cluster(initial).unwrap();
        validate_bootstrap(name, &strs(adv), &initial, state, "etcd-cluster").unwrap_err()
    }

    // Values cross-checked with Python's hashlib, and the first against the
    // IDs every default etcd prints (member 8e9e05c52164694d, cluster
    // cdf818194e3a8c32).
    #[test]
    fn ids_match_etcd_defaults() {
        let m = member_id(&strs(&["http://localhost:2380"]), "etcd-cluster", None);
        assert_eq!(m, 0x8e9e_05c5_2164_694d);
        assert_eq!(cluster_id(&[m]), 0xcdf8_1819_4e3a_8c32);
    }

    // The vectors of etcd's TestMemberTime; 1984-12-23T15:04:05Z is 472662245.
    #[test]
    fn member_id_matches_etcd_test_vectors() {
        let t = Some(472_662_245);
        let one = strs(&["http://10.0.0.8:2379"]);
        assert_eq!(member_id(&one, "", None), 14544069596553697298);
        assert_eq!(member_id(&one, "", t), 2448790162483548276);
        assert_eq!(member_id(&one, "etcd", t), 6973882743191604649);
        let other = strs(&["http://10.0.0.1:2379"]);
        assert_eq!(member_id(&other, "", t), 1466075294948436910);
        let two = strs(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        let rev = strs(&["http://10.0.0.2:2379", "http://10.0.0.1:2379"]);
        assert_eq!(member_id(&two, "", None), 16552244735972308939);
        assert_eq!(member_id(&rev, "", None), 16552244735972308939);
    }

    #[test]
    fn cluster_id_sorts_members() {
        let b = boot_three("infra0", ClusterState::New);
        let ids: Vec<u64> = b.members.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [
                0x3ebc_01ae_c68d_6d70,
                0xee27_4cac_ce80_4b21,
                0xfe9c_64ea_f399_1d47
            ]
        );
        assert_eq!(b.cluster_id, 0xcd11_e863_9233_9c47);
        assert_eq!(cluster_id(&[ids[2], ids[0], ids[1]]), b.cluster_id);
        assert_eq!(cluster_id(&[1, 2, 3]), 0x70b9_aefc_37c0_0c85);
        assert_eq!(b.local_id, 0x3ebc_01ae_c68d_6d70);
    }

    #[test]
    fn parse_groups_urls_by_name_and_sorts() {
        let got = parse_initial_cluster(
            "a=http://10.0.0.2:2380, b=HTTPS://b:2380,a= http://10.0.0.1:2380 ,,",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                InitialMember {
                    name: "a".into(),
                    peer_urls: strs(&["http://10.0.0.1:2380", "http://10.0.0.2:2380"]),
                },
                InitialMember {
                    name: "b".into(),
                    peer_urls: strs(&["https://b:2380"]),
                },
            ]
        );
        assert_eq!(parse_initial_cluster("").unwrap(), []);
        let v6 = parse_initial_cluster("a=http://[::1]:2380").unwrap();
        assert_eq!(v6[0].peer_urls, ["http://[::1]:2380"]);
    }

    #[test]
    fn parse_rejects_bad_entries_and_urls() {
        let reason = |s: &str| match parse_initial_cluster(s) {
            Err(ClusterConfigError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(reason("a=unix://x:1"), "URL scheme must be http or https");
        assert_eq!(
            reason("a=10.0.0.1:2380"),
            "URL must have the form http(s)://host:port"
        );
        assert_eq!(reason("a=http://h:2380/"), "URL must not contain a path");
        assert_eq!(
            reason("a=http://h:2380?x=1"),
            "URL must not contain a query or fragment"
        );
        assert_eq!(
            reason("a=http://u@h:2380"),
            "URL must not contain user info"
        );
        let hostport = "URL address does not have the form \"host:port\"";
        assert_eq!(reason("a=http://h"), hostport);
        assert_eq!(reason("a=http://::1:2380"), hostport);
        assert_eq!(
            reason("a=http://:2380"),
            "URL host must be a host name or IP address"
        );
        assert_eq!(
            reason("a=http://h:x"),
            "URL port must be a number from 1 to 65535"
        );
        assert_eq!(
            reason("a=http://h:0"),
            "URL port must be a number from 1 to 65535"
        );
        assert!(matches!(
            parse_initial_cluster("a=http://h:1,b"),
            Err(ClusterConfigError::MalformedEntry { entry }) if entry == "b"
        ));
        assert!(matches!(
            parse_initial_cluster("=http://h:1"),
            Err(ClusterConfigError::EmptyName { .. })
        ));
        let msg = parse_initial_cluster("a=http://h:2380/p")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "--initial-cluster: URL must not contain a path: http://h:2380/p"
        );
    }

    #[test]
    fn parse_peer_urls_canonicalizes_and_sorts() {
        let got = parse_peer_urls(&strs(&["http://b:2380", " HTTPS://a:2380"])).unwrap();
        assert_eq!(got, ["http://b:2380", "https://a:2380"]);
        assert_eq!(
            parse_peer_urls(&[]),
            Err(ClusterConfigError::NoUrls { flag: "peer URLs" })
        );
        let e = parse_peer_urls(&strs(&["http://a:2380", "http://b"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer URLs: URL address does not have the form \"host:port\": http://b"
        );
    }

    #[test]
    fn cluster_state_parses_etcd_values() {
        assert_eq!(ClusterState::from_str("new", false), Ok(ClusterState::New));
        assert_eq!(
            ClusterState::from_str("existing", false),
            Ok(ClusterState::Existing)
        );
        assert!(ClusterState::from_str("join", false).is_err());
        assert_eq!(ClusterState::default(), ClusterState::New);
    }

    #[test]
    fn bootstrap_is_the_same_from_every_member_and_state() {
        let a = boot_three("infra0", ClusterState::New);
        let b = boot_three("infra2", ClusterState::Existing);
        assert_eq!(a.members, b.members);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(b.local_id, 0xfe9c_64ea_f399_1d47);
        assert_eq!(b.members[2].name, "infra2");
    }

    #[test]
    fn bootstrap_accepts_multi_url_member_and_advertise_order() {
        let initial =
            parse_initial_cluster("a=http://h2:2380,a=http://h1:2380,b=http://b:2380").unwrap();
        let b = validate_bootstrap(
            "a",
            &strs(&["http://h2:2380", "HTTP://h1:2380"]),
            &initial,
            ClusterState::New,
            "t",
        )
        .unwrap();
        let urls = strs(&["http://h1:2380", "http://h2:2380"]);
        assert_eq!(b.local_id, member_id(&urls, "t", None));
    }

    #[test]
    fn bootstrap_refuses_missing_local_name() {
        let e = err_of(
            "infra9",
            &["http://10.0.0.9:2380"],
            THREE,
            ClusterState::New,
        );
        assert!(matches!(e, ClusterConfigError::LocalNameMissing { .. }));
        assert!(e.to_string().starts_with(
            "couldn't find local name \"infra9\" in the initial cluster configuration"
        ));
    }

    #[test]
    fn bootstrap_refuses_advertise_mismatch() {
        let e = err_of(
            "infra0",
            &["http://10.0.0.9:2380"],
            THREE,
            ClusterState::New,
        );
        assert_eq!(
            e,
            ClusterConfigError::MissingFromAdvertise {
                missing: "infra0=http://10.0.0.1:2380".into(),
                advertised: "http://10.0.0.9:2380".into(),
            }
        );
        assert!(e.to_string().starts_with(
            "--initial-cluster has infra0=http://10.0.0.1:2380 but missing from \
             --initial-advertise-peer-urls=http://10.0.0.9:2380"
        ));
        let e = err_of(
            "infra0",
            &["http://10.0.0.1:2380", "http://10.0.0.9:2380"],
            THREE,
            ClusterState::Existing,
        );
        assert_eq!(
            e,
            ClusterConfigError::MissingFromInitialCluster {
                missing: "http://10.0.0.9:2380".into(),
                listed: "infra0=http://10.0.0.1:2380".into(),
            }
        );
        // Names are not resolved: localhost is not 127.0.0.1.
        let e = err_of(
            "a",
            &["http://localhost:2380"],
            "a=http://127.0.0.1:2380",
            ClusterState::New,
        );
        assert!(matches!(e, ClusterConfigError::MissingFromAdvertise { .. }));
        let e = err_of(
            "a",
            &["http://h:2380", "http://h:2380"],
            "a=http://h:2380",
            ClusterState::New,
        );
        assert!(matches!(
            e,
            ClusterConfigError::DuplicateAdvertiseUrl { .. }
        ));
        let e = err_of(
            "a",
            &["http://h:2380/x"],
            "a=http://h:2380",
            ClusterState::New,
        );
        assert!(matches!(
            e,
            ClusterConfigError::InvalidUrl {
                flag: "--initial-advertise-peer-urls",
                ..
            }
        ));
    }

    #[test]
    fn bootstrap_refuses_duplicate_urls() {
        let e = err_of(
            "a",
            &["http://h:2380"],
            "a=http://h:2380,b=http://h:2380",
            ClusterState::New,
        );
        assert_eq!(
            e,
            ClusterConfigError::DuplicateUrl {
                url: "http://h:2380".into(),
                first: "a".into(),
                second: "b".into(),
            }
        );
        let e = err_of(
            "a",
            &["http://h:2380"],
            "a=http://h:2380,a=HTTP://h:2380",
            ClusterState::Existing,
        );
        assert!(
            matches!(e, ClusterConfigError::DuplicateUrl { first, second, .. }
            if first == "a" && second == "a")
        );
    }

    #[test]
    fn bootstrap_merges_or_refuses_repeated_names() {
        let m = |urls: &[&str]| InitialMember {
            name: "a".into(),
            peer_urls: strs(urls),
        };
        let adv = strs(&["http://h:2380"]);
        let same = [m(&["http://h:2380"]), m(&["HTTP://h:2380"])];
        let b = validate_bootstrap("a", &adv, &same, ClusterState::New, "t").unwrap();
        assert_eq!(b.members.len(), 1);
        let conflicting = [m(&["http://h:2380"]), m(&["http://g:2380"])];
        let e = validate_bootstrap("a", &adv, &conflicting, ClusterState::New, "t").unwrap_err();
        assert!(matches!(e, ClusterConfigError::ConflictingMember { .. }));
        let e = validate_bootstrap("a", &adv, &[m(&[])], ClusterState::New, "t").unwrap_err();
        assert!(matches!(e, ClusterConfigError::NoPeerUrls { .. }));
    }

    #[test]
    fn bootstrap_refuses_empty_cluster() {
        for state in [ClusterState::New, ClusterState::Existing] {
            let e = err_of("a", &["http://h:2380"], " , ", state);
            assert!(matches!(e, ClusterConfigError::EmptyCluster { .. }));
        }
    }

    // --- check_data_dir: one test per combination of the table in its docs.

    fn stored_for(b: &Bootstrap, name: &str) -> StoredIdentity {
        StoredIdentity {
            name: name.into(),
            member_id: b.local_id,
            cluster_id: b.cluster_id,
            cluster_token: "etcd-cluster".into(),
        }
    }

    /// A member that joined the three-member cluster later: `member add` gave
    /// it a time-based ID, and it kept the original cluster's ID.
    fn joined_member() -> (Bootstrap, StoredIdentity) {
        let original = boot_three("infra0", ClusterState::New);
        let initial =
            parse_initial_cluster(&format!("{THREE},infra3=http://10.0.0.4:2380")).unwrap();
        let adv = strs(&["http://10.0.0.4:2380"]);
        let b = validate_bootstrap(
            "infra3",
            &adv,
            &initial,
            ClusterState::Existing,
            "etcd-cluster",
        )
        .unwrap();
        let stored = StoredIdentity {
            name: "infra3".into(),
            member_id: member_id(&adv, "", Some(1_700_000_000)),
            cluster_id: original.cluster_id,
            cluster_token: "etcd-cluster".into(),
        };
        (b, stored)
    }

    #[test]
    fn data_dir_empty_new() {
        let b = boot_three("infra0", ClusterState::New);
        assert_eq!(
            check_data_dir(None, ClusterState::New, &b, "etcd-cluster"),
            Ok(())
        );
    }

    #[test]
    fn data_dir_empty_existing() {
        let (b, _) = joined_member();
        assert_eq!(
            check_data_dir(None, ClusterState::Existing, &b, "etcd-cluster"),
            Ok(())
        );
    }

    #[test]
    fn data_dir_own_new_restart() {
        let b = boot_three("infra1", ClusterState::New);
        let s = stored_for(&b, "infra1");
        assert_eq!(
            check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster"),
            Ok(())
        );
    }

    #[test]
    fn data_dir_own_bootstrapped_restarted_as_existing() {
        let b = boot_three("infra1", ClusterState::Existing);
        let s = stored_for(&b, "infra1");
        let got = check_data_dir(Some(&s), ClusterState::Existing, &b, "etcd-cluster");
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn data_dir_own_joined_existing() {
        let (b, s) = joined_member();
        let got = check_data_dir(Some(&s), ClusterState::Existing, &b, "etcd-cluster");
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn data_dir_renamed_member_new() {
        let b = boot_three("infra1", ClusterState::New);
        let s = stored_for(&b, "old-name");
        assert_eq!(
            check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster"),
            Ok(())
        );
    }

    #[test]
    fn data_dir_token_mismatch_new() {
        let b = boot_three("infra0", ClusterState::New);
        let s = StoredIdentity {
            cluster_token: "other".into(),
            ..stored_for(&b, "infra0")
        };
        let e = check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster").unwrap_err();
        assert!(matches!(e, ClusterConfigError::TokenMismatch { .. }));
        assert!(e.to_string().contains("token \"other\""));
    }

    #[test]
    fn data_dir_token_mismatch_existing() {
        let (b, s) = joined_member();
        let e = check_data_dir(Some(&s), ClusterState::Existing, &b, "prod").unwrap_err();
        assert_eq!(
            e,
            ClusterConfigError::TokenMismatch {
                stored: "etcd-cluster".into(),
                given: "prod".into(),
            }
        );
    }

    #[test]
    fn data_dir_joined_member_restarted_as_new() {
        let (b, s) = joined_member();
        let e = check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster").unwrap_err();
        assert_eq!(
            e,
            ClusterConfigError::ClusterIdMismatch {
                stored: s.cluster_id,
                computed: b.cluster_id,
            }
        );
        assert!(e.to_string().contains("--initial-cluster-state=existing"));
    }

    #[test]
    fn data_dir_of_other_member_new() {
        let b = boot_three("infra0", ClusterState::New);
        let other = boot_three("infra1", ClusterState::New);
        let s = stored_for(&other, "infra1");
        let e = check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster").unwrap_err();
        assert_eq!(
            e,
            ClusterConfigError::DataDirOfOtherMember {
                name: "infra0".into(),
                owner: "infra1".into(),
                member_id: other.local_id,
            }
        );
    }

    #[test]
    fn data_dir_of_other_member_existing() {
        let b = boot_three("infra0", ClusterState::Existing);
        let other = boot_three("infra2", ClusterState::Existing);
        let s = stored_for(&other, "infra2");
        let e = check_data_dir(Some(&s), ClusterState::Existing, &b, "etcd-cluster").unwrap_err();
        assert!(
            matches!(e, ClusterConfigError::DataDirOfOtherMember { owner, .. } if owner == "infra2")
        );
    }

    #[test]
    fn data_dir_unknown_member_new() {
        let b = boot_three("infra0", ClusterState::New);
        let s = StoredIdentity {
            member_id: 42,
            ..stored_for(&b, "ghost")
        };
        let e = check_data_dir(Some(&s), ClusterState::New, &b, "etcd-cluster").unwrap_err();
        assert_eq!(
            e,
            ClusterConfigError::MemberIdMismatch {
                name: "infra0".into(),
                stored_name: "ghost".into(),
                stored: 42,
                expected: b.local_id,
            }
        );
    }
}
