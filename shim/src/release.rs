//! Cairn's own release: its version (the workspace's), the etcd API
//! version it serves, and the two versions that decide which releases may
//! run side by side in one cluster: the store schema its data dir is at,
//! and the peer protocol its members speak (docs/design.md, "Versions").
//! `cairn --version`, `/version`, the `cairn_build_info` metric and
//! `cairn upgrade check` all read them from here.

use std::sync::LazyLock;

use cairn_migrate::upgrade::{CairnRelease, Version};
use cairn_proto::cairnpb::peer::v1::PROTOCOL_VERSION;
use cairn_raft_backend::versions::MinorVersion;
use cairn_raft_backend::{OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};
use serde_json::json;

use crate::node::ETCD_VERSION;

/// This release (Cargo's workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `cairn --version` prints after the name.
pub static LONG_VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{VERSION} (etcd API {ETCD_VERSION}; store schema {SCHEMA_VERSION}, opens {OLDEST_SCHEMA_VERSION}..={SCHEMA_VERSION}; peer protocol {PROTOCOL_VERSION})"
    )
});

/// This release's compatibility table, as `cairn upgrade check` compares
/// it with the members of a cluster. A member accepts only its own peer
/// protocol version (`peer_server::check_headers`), so the oldest it
/// accepts is the one it speaks.
pub fn this_release() -> CairnRelease {
    CairnRelease {
        version: Version::parse(VERSION).unwrap_or(Version {
            major: 0,
            minor: 0,
            patch: 0,
            pre: VERSION.to_string(),
        }),
        schema_min: OLDEST_SCHEMA_VERSION as u64,
        schema: SCHEMA_VERSION as u64,
        peer_min: PROTOCOL_VERSION as u64,
        peer: PROTOCOL_VERSION as u64,
    }
}

/// Earlier releases as (major, minor, schema_min, schema, peer_min, peer),
/// newest first: what each reads and speaks, so that a downgrade is checked
/// against the release it goes to (`downgrade.rs`). Each release adds the
/// one before it when it bumps the workspace version.
const EARLIER_RELEASES: &[(u64, u64, u64, u64, u64, u64)] = &[
    // 0.1.0: writes schema 3 and opens 1..=3; speaks and accepts peer protocol 1.
    (0, 1, 1, 3, 1, 1),
];

/// What the release `v` (major.minor) reads and speaks, if this build knows it.
pub fn known_release(v: MinorVersion) -> Option<CairnRelease> {
    let this = this_release();
    if this.version.minor_line() == (v.major as u64, v.minor as u64) {
        return Some(this);
    }
    EARLIER_RELEASES
        .iter()
        .find(|r| (r.0, r.1) == (v.major as u64, v.minor as u64))
        .map(
            |&(major, minor, schema_min, schema, peer_min, peer)| CairnRelease {
                version: Version {
                    major,
                    minor,
                    patch: 0,
                    pre: String::new(),
                },
                schema_min,
                schema,
                peer_min,
                peer,
            },
        )
}

/// The `cairn` object of `/version`, beside etcd's `etcdserver` and `etcdcluster`.
pub fn version_json() -> serde_json::Value {
    json!({
        "version": VERSION,
        "storeSchema": SCHEMA_VERSION,
        "storeSchemaMin": OLDEST_SCHEMA_VERSION,
        "peerProtocol": PROTOCOL_VERSION,
        "peerProtocolMin": PROTOCOL_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_parses_and_names_its_versions() {
        let r = this_release();
        assert_eq!(r.version.to_string(), VERSION);
        assert!(r.schema_min <= r.schema);
        assert!(LONG_VERSION.contains(ETCD_VERSION));
        assert_eq!(version_json()["storeSchema"], SCHEMA_VERSION);
    }
}
