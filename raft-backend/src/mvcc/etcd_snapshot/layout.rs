//! What etcd keeps in its bbolt backend, bucket by bucket, as far as a
//! snapshot carries it (etcd's `server/storage/schema`):
//!
//! - `key`: one entry per stored revision. The bucket key is the revision:
//!   main and sub revision, 8 bytes big-endian each around a `_` (17 bytes),
//!   with a `t` appended for a tombstone; the value is the `mvccpb.KeyValue`
//!   (the key alone for a tombstone).
//! - `meta`: `consistent_index` and `term` (8 bytes big-endian), the
//!   compaction marks `scheduledCompactRev` and `finishedCompactRev` (a
//!   17-byte revision), `confState` (JSON), and `storageVersion` (3.6 on).
//! - `lease`: lease ID (8 bytes big-endian) → `leasepb.Lease`.
//! - `members`, `members_removed`: member ID in hex → JSON.
//! - `cluster`: `clusterVersion`.
//! - `alarm`: an encoded `AlarmMember` → nothing.
//! - `auth`, `authUsers`, `authRoles`: auth state (`authRevision` only,
//!   while auth has never been enabled; Cairn has no auth, so none is
//!   written and none is restored).

use prost::Message;

pub const KEY: &[u8] = b"key";
pub const META: &[u8] = b"meta";
pub const LEASE: &[u8] = b"lease";
pub const MEMBERS: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const CLUSTER: &[u8] = b"cluster";
pub const ALARM: &[u8] = b"alarm";
pub const AUTH: &[u8] = b"auth";
pub const AUTH_USERS: &[u8] = b"authUsers";
pub const AUTH_ROLES: &[u8] = b"authRoles";

/// The buckets without which a file is not an etcd v3 backend.
pub const REQUIRED: [&[u8]; 2] = [KEY, META];

pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const CONF_STATE: &[u8] = b"confState";
pub const STORAGE_VERSION: &[u8] = b"storageVersion";
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
pub const AUTH_REVISION: &[u8] = b"authRevision";
/// One byte, 1 while auth is enabled.
pub const AUTH_ENABLED: &[u8] = b"authEnabled";

/// The storage version a Cairn snapshot declares, and the newest one a
/// restore accepts: etcd 3.6's layout, which is 3.5's plus `storageVersion`.
pub const STORAGE_VERSION_WRITTEN: &str = "3.6.0";
pub const NEWEST_STORAGE_VERSION: (u64, u64) = (3, 6);

/// The cluster version a Cairn snapshot declares. etcd 3.5 refuses to start
/// on a backend whose cluster version is newer than itself (it would be a
/// downgrade), and rolling back to 3.5 is what the snapshot is for; 3.6
/// accepts 3.5 and raises it once all members run 3.6.
pub const CLUSTER_VERSION_WRITTEN: &str = "3.5.0";

/// A revision as a `key` bucket key.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// A `key` bucket key's (main, sub, tombstone), if it is one.
pub fn parse_revision_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`; `remaining_ttl` is only set by lease checkpoints.
#[derive(Clone, PartialEq, Message)]
pub struct Lease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A member as etcd's `members` bucket holds it (the JSON of its
/// `membership.Member`: client URLs are published at run time, not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

impl EtcdMember {
    /// The bucket key: the ID in lower-case hex, as etcd's `types.ID` prints it.
    pub fn key(&self) -> Vec<u8> {
        format!("{:x}", self.id).into_bytes()
    }

    pub fn json(&self) -> Vec<u8> {
        let mut v = serde_json_lite::Object::default();
        v.num("id", self.id);
        v.strs("peerURLs", &self.peer_urls);
        if self.is_learner {
            v.raw("isLearner", "true");
        }
        if !self.name.is_empty() {
            v.str("name", &self.name);
        }
        v.finish()
    }
}

/// `confState` as etcd's backend stores it (raftpb.ConfState's JSON).
pub fn conf_state_json(members: &[EtcdMember]) -> Vec<u8> {
    let ids = |learner: bool| {
        members
            .iter()
            .filter(|m| m.is_learner == learner)
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (voters, learners) = (ids(false), ids(true));
    let mut s = format!("{{\"voters\":[{voters}]");
    if !learners.is_empty() {
        s.push_str(&format!(",\"learners\":[{learners}]"));
    }
    s.push_str(",\"auto_leave\":false}");
    s.into_bytes()
}

/// A storage version ("3.6.0", "3.6") as (major, minor).
pub fn parse_version(v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn u64_be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Just enough JSON writing for the member records, without a dependency.
mod serde_json_lite {
    #[derive(Default)]
    pub struct Object(String);

    fn quote(s: &str) -> String {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                c if (c as u32) < 0x20 => q.push_str(&format!("\\u{:04x}", c as u32)),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    }

    impl Object {
        pub fn raw(&mut self, name: &str, value: &str) {
            self.0.push(if self.0.is_empty() { '{' } else { ',' });
            self.0.push_str(&quote(name));
            self.0.push(':');
            self.0.push_str(value);
        }
        pub fn num(&mut self, name: &str, v: u64) {
            self.raw(name, &v.to_string())
        }
        pub fn str(&mut self, name: &str, v: &str) {
            self.raw(name, &quote(v))
        }
        pub fn strs(&mut self, name: &str, v: &[String]) {
            let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
            self.raw(name, &format!("[{}]", items.join(",")))
        }
        pub fn finish(mut self) -> Vec<u8> {
            if self.0.is_empty() {
                self.0.push('{');
            }
            self.0.push('}');
            self.0.into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_by_revision() {
        let a = revision_key(2, 0, false);
        let b = revision_key(2, 1, true);
        let c = revision_key(10, 0, false);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b), Some((2, 1, true)));
        assert_eq!(parse_revision_key(&c), Some((10, 0, false)));
        assert_eq!(parse_revision_key(b"short"), None);
    }

    /// Byte for byte what etcd 3.5.1 wrote for its one member.
    #[test]
    fn a_member_record_is_etcds_json() {
        let m = EtcdMember {
            id: 10276657743932975437,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            is_learner: false,
        };
        assert_eq!(m.key(), b"8e9e05c52164694d");
        assert_eq!(
            String::from_utf8(m.json()).unwrap(),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default"}"#
        );
        assert_eq!(
            String::from_utf8(conf_state_json(&[m])).unwrap(),
            r#"{"voters":[10276657743932975437],"auto_leave":false}"#
        );
    }

    #[test]
    fn a_lease_encodes_as_leasepb() {
        let l = Lease {
            id: 7,
            ttl: 100,
            remaining_ttl: 0,
        };
        assert_eq!(l.encode_to_vec(), vec![0x08, 7, 0x10, 100]);
    }
}
