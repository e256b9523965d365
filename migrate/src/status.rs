//! `cairn migrate status`: the target's migration state, as a table or one JSON object.

use cairn_proto::migrate::MigrationState;
use serde::Serialize;

use crate::target::phase_name;

/// What `cairn migrate status` reports; the JSON field names are these.
#[derive(Debug, Serialize, PartialEq)]
pub struct StatusReport {
    /// `none`, `copying`, `following`, `cut-over` or `aborted`.
    pub phase: String,
    /// The source's cluster ID, hex (as etcd's messages print it).
    pub source_cluster_id: String,
    /// The source's etcd version at Begin.
    pub source_version: String,
    /// The newest source revision the migrator had seen.
    pub source_revision: i64,
    /// The newest source revision imported.
    pub target_revision: i64,
    /// source_revision - target_revision, at least 0.
    pub lag_revisions: i64,
    /// Keys copied from the state at start_revision.
    pub keys_copied: i64,
    /// Bytes (keys plus values) copied.
    pub bytes_copied: i64,
    /// The source revision the copy was taken at.
    pub start_revision: i64,
    /// The compact revision the target holds (-1: none).
    pub compact_revision: i64,
    /// `full` or `none`.
    pub history: String,
}

impl StatusReport {
    /// The report of a target's state.
    pub fn from_state(s: &MigrationState) -> StatusReport {
        StatusReport {
            phase: phase_name(s.phase).to_string(),
            source_cluster_id: format!("{:x}", s.source_cluster_id),
            source_version: s.source_version.clone(),
            source_revision: s.source_revision,
            target_revision: s.target_revision,
            lag_revisions: (s.source_revision - s.target_revision).max(0),
            keys_copied: s.keys_copied,
            bytes_copied: s.bytes_copied,
            start_revision: s.start_revision,
            compact_revision: s.compact_revision,
            history: if s.history_none { "none" } else { "full" }.to_string(),
        }
    }

    /// One line per field: the name, padded, then the value.
    pub fn table(&self) -> String {
        let rows: [(&str, String); 11] = [
            ("phase", self.phase.clone()),
            ("source_cluster_id", self.source_cluster_id.clone()),
            ("source_version", self.source_version.clone()),
            ("source_revision", self.source_revision.to_string()),
            ("target_revision", self.target_revision.to_string()),
            ("lag_revisions", self.lag_revisions.to_string()),
            ("keys_copied", self.keys_copied.to_string()),
            ("bytes_copied", self.bytes_copied.to_string()),
            ("start_revision", self.start_revision.to_string()),
            ("compact_revision", self.compact_revision.to_string()),
            ("history", self.history.clone()),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<18} {v}\n"));
        }
        out
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::migrate::Phase;

    fn state() -> MigrationState {
        MigrationState {
            phase: Phase::Following as i32,
            source_cluster_id: 0xcdf818194e3a8c32,
            source_version: "3.5.1".into(),
            start_revision: 100,
            compact_revision: 100,
            target_revision: 150,
            keys_copied: 40,
            bytes_copied: 4000,
            source_revision: 155,
            history_none: false,
            ..Default::default()
        }
    }

    #[test]
    fn json_has_exactly_the_documented_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&StatusReport::from_state(&state()).json()).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "bytes_copied",
                "compact_revision",
                "history",
                "keys_copied",
                "lag_revisions",
                "phase",
                "source_cluster_id",
                "source_revision",
                "source_version",
                "start_revision",
                "target_revision",
            ]
        );
        assert_eq!(obj["phase"], "following");
        assert_eq!(obj["source_cluster_id"], "cdf818194e3a8c32");
        assert_eq!(obj["lag_revisions"], 5);
        assert_eq!(obj["history"], "full");
    }

    #[test]
    fn lag_is_never_negative_and_table_has_a_line_per_field() {
        let mut s = state();
        s.source_revision = 10;
        let r = StatusReport::from_state(&s);
        assert_eq!(r.lag_revisions, 0);
        let t = r.table();
        assert_eq!(t.lines().count(), 11);
        assert!(
            t.lines().any(|l| l == "phase              following"),
            "{t}"
        );
        let none = StatusReport::from_state(&MigrationState::default());
        assert_eq!(none.phase, "none");
    }
}
