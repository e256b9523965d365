//! etcdserverpb.Cluster: the membership, as Raft records it. Changes go
//! through the leader (forwarded from any member) as Raft membership entries.

use cairn_proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use cairn_proto::peer as pb;
use tonic::{Request, Response, Status};

use crate::cluster_config::{member_id, parse_peer_urls};
use crate::errors::{store_status, EtcdError};
use crate::node::SharedNode;

pub struct ClusterService {
    node: SharedNode,
}

impl ClusterService {
    pub fn new(node: SharedNode) -> Self {
        ClusterService { node }
    }

    /// Every member, sorted by ID as etcd lists them.
    fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .node
            .store
            .raft_status()
            .members
            .into_iter()
            .map(|(id, info, is_learner)| Member {
                id,
                name: info.name,
                peer_ur_ls: info.peer_urls,
                client_ur_ls: info.client_urls,
                is_learner,
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    }

    fn find(&self, id: u64) -> Result<Member, Status> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| EtcdError::MemberNotFound.into())
    }

    async fn change(&self, kind: pb::MemberChangeKind, m: &Member) -> Result<(), Status> {
        self.node
            .store
            .change_member(
                kind,
                pb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_ur_ls.clone(),
                    client_urls: m.client_ur_ls.clone(),
                },
            )
            .await
            .map_err(store_status)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(skip_all, name = "MemberAdd")]
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.node.check_leader(&r)?;
        let r = r.into_inner();
        let urls =
            parse_peer_urls(&r.peer_ur_ls).map_err(|_| Status::from(EtcdError::MemberBadUrls))?;
        let existing = self.members();
        if existing
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .ok();
        // etcd hashes an added member's URLs with an empty token and the time.
        let id = member_id(&urls, "", now);
        if existing.iter().any(|m| m.id == id) {
            return Err(EtcdError::MemberExist.into());
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: urls,
            client_ur_ls: vec![],
            is_learner: r.is_learner,
        };
        let kind = if r.is_learner {
            pb::MemberChangeKind::MemberAddLearner
        } else {
            pb::MemberChangeKind::MemberAdd
        };
        self.change(kind, &member).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.node.header(),
            member: Some(member),
            members: self.members(),
        }))
    }

    #[tracing::instrument(skip_all, name = "MemberRemove")]
    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.node.check_leader(&r)?;
        let m = self.find(r.into_inner().id)?;
        self.change(pb::MemberChangeKind::MemberRemove, &m).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.node.header(),
            members: self.members(),
        }))
    }

    #[tracing::instrument(skip_all, name = "MemberUpdate")]
    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.node.check_leader(&r)?;
        let r = r.into_inner();
        let mut m = self.find(r.id)?;
        let urls =
            parse_peer_urls(&r.peer_ur_ls).map_err(|_| Status::from(EtcdError::MemberBadUrls))?;
        if self
            .members()
            .iter()
            .any(|o| o.id != r.id && o.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        m.peer_ur_ls = urls;
        self.change(pb::MemberChangeKind::MemberUpdate, &m).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.node.header(),
            members: self.members(),
        }))
    }

    #[tracing::instrument(skip_all, name = "MemberList")]
    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.node.check_leader(&r)?;
        if r.get_ref().linearizable {
            self.node.store.read_barrier().await.map_err(store_status)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.node.header(),
            members: self.members(),
        }))
    }

    #[tracing::instrument(skip_all, name = "MemberPromote")]
    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.node.check_leader(&r)?;
        let m = self.find(r.into_inner().id)?;
        self.change(pb::MemberChangeKind::MemberPromote, &m).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.node.header(),
            members: self.members(),
        }))
    }
}
