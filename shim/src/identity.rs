//! The member and cluster IDs, chosen once when a data dir is created and kept
//! in it, so that a restarted member answers with the same identity.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

const FILE: &str = "member.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
}

impl Identity {
    /// Loads the identity of `data_dir`, creating it on first start.
    pub fn load_or_create(
        data_dir: &Path,
        name: &str,
        token: &str,
        peer_urls: &[String],
    ) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            let id: Identity =
                serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
            if id.cluster_token != token {
                anyhow::bail!(
                    "data dir {} belongs to cluster token {:?}, not {:?}",
                    data_dir.display(),
                    id.cluster_token,
                    token
                );
            }
            return Ok(id);
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        // Like etcd, derive the member ID from its peer URLs and the cluster token,
        // plus the creation time so that re-creating a member gets a new ID.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut urls = peer_urls.to_vec();
        urls.sort();
        let member_id = nonzero(fnv1a(
            format!("{}|{token}|{nanos}", urls.join(",")).as_bytes(),
        ));
        let cluster_id = nonzero(fnv1a(format!("{member_id:x}|{token}").as_bytes()));
        let id = Identity {
            name: name.to_string(),
            member_id,
            cluster_id,
            cluster_token: token.to_string(),
        };
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&id)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(id)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn nonzero(v: u64) -> u64 {
    if v == 0 {
        1
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restart_and_guards_token() {
        let dir = tempfile::tempdir().unwrap();
        let urls = vec!["http://localhost:2380".to_string()];
        let a = Identity::load_or_create(dir.path(), "m1", "tok", &urls).unwrap();
        let b = Identity::load_or_create(dir.path(), "m1", "tok", &urls).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.member_id, 0);
        let err = Identity::load_or_create(dir.path(), "m1", "other", &urls).unwrap_err();
        assert!(err.to_string().contains("cluster token"), "{err}");
    }
}
