//! The member and cluster IDs, fixed when a data dir is first used and kept
//! in it, so that a restarted member answers with the same identity and a data
//! dir is never silently reused for another cluster.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cluster_config::StoredIdentity;

const FILE: &str = "member.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
}

impl Identity {
    /// The identity recorded in `data_dir`, if it has one.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let id =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Ok(Some(id))
    }

    /// Records the identity durably (write, fsync, rename, fsync the dir).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let path = data_dir.join(FILE);
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }

    pub fn stored(&self) -> StoredIdentity {
        StoredIdentity {
            name: self.name.clone(),
            member_id: self.member_id,
            cluster_id: self.cluster_id,
            cluster_token: self.cluster_token.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let id = Identity {
            name: "m1".into(),
            member_id: 7,
            cluster_id: 9,
            cluster_token: "tok".into(),
        };
        id.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
    }
}
