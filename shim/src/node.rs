//! What every service of one member shares: its store, identity and limits.

use std::sync::Arc;

use cairn_proto::etcdserverpb::ResponseHeader;
use cairn_raft_backend::Store;
use tonic::Status;

use crate::errors::EtcdError;
use crate::identity::Identity;

/// The etcd release whose API and behaviour Cairn serves. kube-apiserver gates
/// WatchProgressRequest and consistent reads on this being at least 3.5.13.
pub const ETCD_VERSION: &str = "3.6.0";

pub struct Node {
    pub store: Store,
    pub id: Identity,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_bytes: i64,
    pub registry: prometheus::Registry,
}

pub type SharedNode = Arc<Node>;

impl Node {
    /// Whether this member knows a leader (Raft state, not a guess).
    pub fn has_leader(&self) -> bool {
        self.store.leader().is_some()
    }

    fn raft_term(&self) -> u64 {
        self.store.term()
    }

    /// Fills the fields of a top-level response header that only the server
    /// knows; a revision the store already set is kept.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(ResponseHeader::default);
        h.cluster_id = self.id.cluster_id;
        h.member_id = self.id.member_id;
        h.raft_term = self.raft_term();
        if h.revision == 0 {
            h.revision = self.store.applied().current_rev;
        }
    }

    /// A header stamped with an explicit revision (watch responses).
    pub fn header_at(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.id.cluster_id,
            member_id: self.id.member_id,
            raft_term: self.raft_term(),
            revision,
        })
    }

    pub fn header(&self) -> Option<ResponseHeader> {
        let mut h = None;
        self.fill(&mut h);
        h
    }

    /// kube-apiserver sends `hasleader=true` so that a member cut off from its
    /// leader refuses requests instead of serving stale data.
    /// Returns whether the client asked for a leader (streams that did are
    /// ended when the leader is lost, see `stream_end`).
    pub fn check_leader<T>(&self, req: &tonic::Request<T>) -> Result<bool, Status> {
        let wants = wants_leader(req);
        if wants && !self.has_leader() {
            return Err(EtcdError::NoLeader.into());
        }
        Ok(wants)
    }

    /// Refuses a client write while a migration imports into this cluster,
    /// or after it was aborted, before anything is proposed (apply refuses
    /// it too, with the same words, should the phase change meanwhile).
    pub fn check_writable(&self) -> Result<(), Status> {
        self.store
            .migration_gate()
            .check_write()
            .map_err(crate::errors::store_status)
    }

    /// What this member says of a migration that keeps it from taking
    /// writes, for Status's errors and the health endpoints; `None` when
    /// writes pass.
    pub fn migration_note(&self) -> Option<String> {
        use cairn_proto::migrate::Phase;
        let gate = self.store.migration_gate();
        match gate.phase() {
            Phase::Copying | Phase::Following => Some(format!(
                "IMPORTING from etcd cluster {:x} (phase {}); writes are refused until cutover",
                gate.source_cluster_id,
                gate.phase().as_str_name()
            )),
            Phase::Aborted => Some(format!(
                "IMPORT ABORTED from etcd cluster {:x}; this cluster holds a partial copy and refuses writes",
                gate.source_cluster_id
            )),
            Phase::None | Phase::CutOver => None,
        }
    }

    /// etcd refuses a write whose encoded size exceeds --max-request-bytes.
    pub fn check_size(&self, m: &impl prost::Message) -> Result<(), Status> {
        if m.encoded_len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        Ok(())
    }
}

/// Whether the request carries `hasleader=true` (clientv3's
/// `WithRequireLeader`, which kube-apiserver uses).
fn wants_leader<T>(req: &tonic::Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use crate::testing;

    fn request(has_leader: Option<&str>) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        if let Some(v) = has_leader {
            req.metadata_mut()
                .insert("hasleader", v.parse().expect("ascii metadata"));
        }
        req
    }

    /// Only `hasleader=true` asks for a leader; without one the request is
    /// refused at once with "no leader".
    #[tokio::test]
    async fn check_leader_refuses_only_clients_that_require_one() {
        let t = testing::leader().await;
        assert_eq!(t.node.check_leader(&request(Some("true"))).ok(), Some(true));
        assert_eq!(
            t.node.check_leader(&request(Some("false"))).ok(),
            Some(false)
        );
        assert_eq!(t.node.check_leader(&request(None)).ok(), Some(false));

        let t = testing::follower_of(t).await;
        assert!(!t.node.has_leader());
        let refused = t
            .node
            .check_leader(&request(Some("true")))
            .expect_err("no leader");
        assert_eq!(refused.message(), "etcdserver: no leader");
        assert_eq!(t.node.check_leader(&request(None)).ok(), Some(false));
    }
}
