//! The server side of the peer protocol (`cairnpb.peer.v1.Peer`), on the
//! --listen-peer-urls listeners: Raft messages go to the replica; forwarded
//! client work (writes, ReadIndex, membership changes, lease renewals) is
//! served here when this member leads.

use std::sync::Arc;

use cairn_proto::peer as pb;
use cairn_proto::peer::peer_server::Peer;
use cairn_raft_backend::network::{CLUSTER_HEADER, VERSION_HEADER};
use cairn_raft_backend::{to_status, Replica};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::lease::Lessor;
use crate::node::{SharedNode, ETCD_VERSION};

pub struct PeerService {
    node: SharedNode,
    lessor: Arc<Lessor>,
}

impl PeerService {
    pub fn new(node: SharedNode, lessor: Arc<Lessor>) -> Self {
        PeerService { node, lessor }
    }

    fn replica(&self) -> &Arc<Replica> {
        self.node.store.replica()
    }

    /// Refuses a peer of another cluster, or one speaking a protocol version
    /// this build does not (etcd checks X-Etcd-Cluster-ID the same way).
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.check_from(req, false)
    }

    /// As `check`; `joining` admits a peer that does not know the cluster
    /// yet (cluster id 0), which only discovery (`ClusterInfo`) may do.
    fn check_from<T>(&self, req: &Request<T>, joining: bool) -> Result<(), Status> {
        let md = req.metadata();
        let version: u32 = md
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if version != pb::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "peer protocol version {version} is not supported (this member speaks {})",
                pb::PROTOCOL_VERSION
            )));
        }
        let cluster: u64 = md
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !(joining && cluster == 0) && cluster != self.node.id.cluster_id {
            return Err(Status::permission_denied(format!(
                "request from cluster {cluster:x} reached a member of cluster {:x}",
                self.node.id.cluster_id
            )));
        }
        Ok(())
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.replica().is_leader() {
            Ok(())
        } else {
            Err(Status::failed_precondition("not leader"))
        }
    }
}

/// Forwarded batches one ProposeStream has under way at once; the follower
/// sends at most 4 (its calls in flight), so this never holds one back.
const PROPOSE_STREAM_DEPTH: usize = 16;

/// Test hook: `CAIRN_TEST_PEER_NO_STREAM=1` makes this member answer
/// StreamAppend and ProposeStream as a member of an earlier version does, so
/// that a test can run the fallbacks to AppendEntries and ProposeMany.
fn refuse_streaming() -> bool {
    static REFUSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSE.get_or_init(|| std::env::var_os("CAIRN_TEST_PEER_NO_STREAM").is_some())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(
            self.replica().handle_vote(req.into_inner(), false).await?,
        ))
    }

    async fn pre_vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(
            self.replica().handle_vote(req.into_inner(), true).await?,
        ))
    }

    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(
            self.replica().handle_append(req.into_inner()).await?,
        ))
    }

    type StreamAppendStream =
        futures::stream::BoxStream<'static, Result<pb::StreamAppendResponse, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.check(&req)?;
        if refuse_streaming() {
            return Err(Status::unimplemented("StreamAppend"));
        }
        Ok(Response::new(
            self.replica().handle_stream_append(req.into_inner()),
        ))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.check(&req)?;
        let mut stream = req.into_inner();
        let head = match stream.next().await {
            Some(Ok(pb::SnapshotChunk {
                payload: Some(pb::snapshot_chunk::Payload::Head(h)),
            })) => h,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(Status::invalid_argument(
                    "snapshot stream must start with its head",
                ))
            }
        };
        let path = self.replica().snapshot_receive_path();
        let written = async {
            let mut file = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(std::io::Error::other)?.payload {
                    Some(pb::snapshot_chunk::Payload::Data(d)) => file.write_all(&d).await?,
                    _ => return Err(std::io::Error::other("unexpected snapshot chunk")),
                }
            }
            file.sync_all().await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Status::unavailable(format!("receive snapshot: {e}")));
        }
        Ok(Response::new(
            self.replica().handle_snapshot(head, path).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(
            self.replica()
                .handle_transfer_leader(req.into_inner())
                .await?,
        ))
    }

    async fn propose_many(
        &self,
        req: Request<pb::ProposeManyRequest>,
    ) -> Result<Response<pb::ProposeManyResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let commands = req.into_inner().commands;
        let outcomes = self.replica().handle_propose_many(commands).await?;
        Ok(Response::new(pb::ProposeManyResponse { outcomes }))
    }

    type ProposeStreamStream =
        futures::stream::BoxStream<'static, Result<pb::ProposeManyResponse, Status>>;

    /// Batches answered in the order they came, up to `PROPOSE_STREAM_DEPTH`
    /// of them under way at once: the follower matches answers to batches by
    /// their order alone.
    async fn propose_stream(
        &self,
        req: Request<Streaming<pb::ProposeManyRequest>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        self.check(&req)?;
        if refuse_streaming() {
            return Err(Status::unimplemented("ProposeStream"));
        }
        self.leader_only()?;
        let replica = self.replica().clone();
        // A transport error ends the input; what was read is still answered.
        let batches = tokio_stream::StreamExt::map_while(req.into_inner(), Result::ok);
        let answers = batches
            .map(move |batch| {
                let replica = replica.clone();
                async move {
                    let outcomes = replica.handle_propose_many(batch.commands).await?;
                    Ok(pb::ProposeManyResponse { outcomes })
                }
            })
            .buffered(PROPOSE_STREAM_DEPTH)
            .boxed();
        Ok(Response::new(answers))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let index = self
            .replica()
            .leader_read_index()
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn cluster_info(
        &self,
        req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        self.check_from(&req, true)?;
        let r = self.replica();
        Ok(Response::new(pb::ClusterInfoResponse {
            cluster_id: self.node.id.cluster_id,
            leader_id: r.leader().unwrap_or(0),
            membership: Some(r.membership_pb()),
            version: ETCD_VERSION.to_string(),
        }))
    }

    async fn change_member(
        &self,
        req: Request<pb::MemberChangeRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let req = req.into_inner();
        let kind = pb::MemberChangeKind::try_from(req.kind)
            .map_err(|_| Status::invalid_argument("unknown member change"))?;
        let member = req
            .member
            .ok_or_else(|| Status::invalid_argument("member change without a member"))?;
        let m = self
            .replica()
            .change_member(kind, member)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MemberChangeResponse {
            membership: Some(cairn_raft_backend::codec::membership_to_pb(&m)),
        }))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check(&req)?;
        self.replica()
            .transfer_leader(req.into_inner().target)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MoveLeaderResponse {}))
    }

    async fn lease_renew(
        &self,
        req: Request<pb::LeaseRenewRequest>,
    ) -> Result<Response<pb::LeaseRenewResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let ttl = self.lessor.renew(req.into_inner().id).await?.unwrap_or(0);
        Ok(Response::new(pb::LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let (ttl, granted_ttl) = self
            .lessor
            .ttl(req.into_inner().id)
            .await?
            .unwrap_or((-1, 0));
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            ttl,
            granted_ttl,
        }))
    }
}
