//! etcdserverpb.Cluster: membership. A single member lists itself; changing
//! membership arrives with Raft replication.

use cairn_proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::node::SharedNode;

pub struct ClusterService {
    node: SharedNode,
}

impl ClusterService {
    pub fn new(node: SharedNode) -> Self {
        ClusterService { node }
    }
}

fn needs_raft() -> Status {
    Status::unimplemented("membership changes need Raft replication, which is not implemented yet")
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(needs_raft())
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(needs_raft())
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(needs_raft())
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let n = &self.node;
        Ok(Response::new(MemberListResponse {
            header: n.header(),
            members: vec![Member {
                id: n.id.member_id,
                name: n.id.name.clone(),
                peer_ur_ls: n.peer_urls.clone(),
                client_ur_ls: n.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(needs_raft())
    }
}
