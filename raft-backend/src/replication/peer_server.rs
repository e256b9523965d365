//! The server side of the peer protocol (`cairnpb.peer.v1.Peer`), on the
//! --listen-peer-urls listeners; `network` is its client side. Raft messages
//! go to the replica; forwarded client work (writes, ReadIndex, membership
//! changes, lease renewals) is served here when this member leads.

use std::future::Future;
use std::sync::Arc;

use cairn_proto::peer as pb;
use cairn_proto::peer::peer_server::Peer;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::error_map::to_status;
use super::network::{CLUSTER_HEADER, VERSION_HEADER};
use super::peer_handlers::PeerError;
use super::replica::Replica;

/// The leases' keeper on this member (the server's lessor): a follower's
/// clients renew and ask after leases through the leader's.
pub trait LeaseAuthority: Send + Sync + 'static {
    /// Renews lease `id`; its TTL, or `None` if there is no such lease.
    fn renew(&self, id: i64) -> impl Future<Output = Result<Option<i64>, Status>> + Send;
    /// Lease `id`'s remaining and granted TTL, or `None` if there is none.
    fn ttl(&self, id: i64) -> impl Future<Output = Result<Option<(i64, i64)>, Status>> + Send;
}

/// What this member tells a peer about itself and its cluster.
pub struct PeerService<L> {
    replica: Arc<Replica>,
    lessor: Arc<L>,
    cluster_id: u64,
    /// The etcd version this member reports (ClusterInfo).
    version: &'static str,
}

impl<L> PeerService<L> {
    pub(crate) fn new(
        replica: Arc<Replica>,
        lessor: Arc<L>,
        cluster_id: u64,
        version: &'static str,
    ) -> Self {
        PeerService {
            replica,
            lessor,
            cluster_id,
            version,
        }
    }

    /// Refuses a peer of another cluster, or one speaking a protocol version
    /// this build does not (etcd checks X-Etcd-Cluster-ID the same way).
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        check_headers(req.metadata(), self.cluster_id, false)
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.replica.is_leader() {
            Ok(())
        } else {
            Err(Status::failed_precondition("not leader"))
        }
    }
}

/// As `PeerService::check`; `joining` admits a peer that does not know the
/// cluster yet (cluster id 0), which only discovery (`ClusterInfo`) may do.
fn check_headers(md: &MetadataMap, cluster_id: u64, joining: bool) -> Result<(), Status> {
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
    if !(joining && cluster == 0) && cluster != cluster_id {
        return Err(Status::permission_denied(format!(
            "request from cluster {cluster:x} reached a member of cluster {cluster_id:x}"
        )));
    }
    Ok(())
}

/// A refusal as the peer sees it.
fn status(e: PeerError) -> Status {
    match e {
        PeerError::Malformed(e) => Status::invalid_argument(e.to_string()),
        PeerError::Unavailable(m) => Status::unavailable(m),
        PeerError::Refused(m) => Status::failed_precondition(m),
        PeerError::Store(e) => to_status(&e),
    }
}

/// Forwarded batches one ProposeStream has under way at once; the follower
/// sends at most 4 (its calls in flight), so this never holds one back.
const PROPOSE_STREAM_DEPTH: usize = 16;

/// Fail point `peer_refuse_streaming`: this member answers StreamAppend and
/// ProposeStream as a member of an earlier version does, so that a test can
/// run the fallbacks to AppendEntries and ProposeMany.
fn refuse_streaming() -> bool {
    fail::fail_point!("peer_refuse_streaming", |_| true);
    false
}

#[tonic::async_trait]
impl<L: LeaseAuthority> Peer for PeerService<L> {
    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.check(&req)?;
        let resp = self.replica.handle_vote(req.into_inner(), false).await;
        Ok(Response::new(resp.map_err(status)?))
    }

    async fn pre_vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.check(&req)?;
        let resp = self.replica.handle_vote(req.into_inner(), true).await;
        Ok(Response::new(resp.map_err(status)?))
    }

    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check(&req)?;
        let resp = self.replica.handle_append(req.into_inner()).await;
        Ok(Response::new(resp.map_err(status)?))
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
        // A transport error ends the input, as the leader hanging up does.
        let requests = tokio_stream::StreamExt::map_while(req.into_inner(), Result::ok);
        let answers = self.replica.handle_stream_append(requests);
        Ok(Response::new(answers.map(|r| r.map_err(status)).boxed()))
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
        let path = self.replica.snapshot_receive_path();
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
        let resp = self.replica.handle_snapshot(head, path).await;
        Ok(Response::new(resp.map_err(status)?))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.check(&req)?;
        let resp = self.replica.handle_transfer_leader(req.into_inner()).await;
        Ok(Response::new(resp.map_err(status)?))
    }

    async fn propose_many(
        &self,
        req: Request<pb::ProposeManyRequest>,
    ) -> Result<Response<pb::ProposeManyResponse>, Status> {
        self.check(&req)?;
        self.leader_only()?;
        let commands = req.into_inner().commands;
        let outcomes = self
            .replica
            .handle_propose_many(commands)
            .await
            .map_err(status)?;
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
        let replica = self.replica.clone();
        // A transport error ends the input; what was read is still answered.
        let batches = tokio_stream::StreamExt::map_while(req.into_inner(), Result::ok);
        let answers = batches
            .map(move |batch| {
                let replica = replica.clone();
                async move {
                    let outcomes = replica
                        .handle_propose_many(batch.commands)
                        .await
                        .map_err(status)?;
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
            .replica
            .leader_read_index()
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn cluster_info(
        &self,
        req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        check_headers(req.metadata(), self.cluster_id, true)?;
        Ok(Response::new(pb::ClusterInfoResponse {
            cluster_id: self.cluster_id,
            leader_id: self.replica.leader().unwrap_or(0),
            membership: Some(self.replica.membership_pb()),
            version: self.version.to_string(),
            release: crate::versions::RELEASE.to_string(),
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
            .replica
            .change_membership(kind, member)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::MemberChangeResponse {
            membership: Some(super::codec::membership_to_pb(&m)),
        }))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check(&req)?;
        self.replica
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol version this build speaks.
    const V: Option<u32> = Some(pb::PROTOCOL_VERSION);

    fn headers(version: Option<u32>, cluster: Option<u64>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(v) = version {
            md.insert(VERSION_HEADER, v.into());
        }
        if let Some(c) = cluster {
            md.insert(CLUSTER_HEADER, c.to_string().parse().unwrap());
        }
        md
    }

    #[test]
    fn admits_a_peer_of_this_cluster_and_version() {
        assert!(check_headers(&headers(V, Some(42)), 42, false).is_ok());
    }

    #[test]
    fn refuses_another_protocol_version() {
        for md in [headers(Some(99), Some(42)), headers(None, Some(42))] {
            let s = check_headers(&md, 42, false).unwrap_err();
            assert_eq!(s.code(), tonic::Code::FailedPrecondition);
            assert!(s.message().contains("not supported"), "{}", s.message());
        }
    }

    #[test]
    fn refuses_another_cluster() {
        let s = check_headers(&headers(V, Some(43)), 42, false).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "request from cluster 2b reached a member of cluster 2a"
        );
    }

    #[test]
    fn only_discovery_admits_a_peer_that_knows_no_cluster_yet() {
        let unknown = headers(V, None);
        assert!(check_headers(&unknown, 42, true).is_ok());
        let s = check_headers(&unknown, 42, false).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        let s = check_headers(&headers(V, Some(43)), 42, true).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn the_fail_point_makes_this_member_refuse_streaming() {
        let scenario = fail::FailScenario::setup();
        assert!(!refuse_streaming());
        fail::cfg("peer_refuse_streaming", "return").unwrap();
        assert!(refuse_streaming());
        scenario.teardown();
        assert!(!refuse_streaming());
    }

    #[test]
    fn refusals_keep_their_code() {
        let s = status(PeerError::Refused("not a voter".into()));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        let s = status(PeerError::Unavailable("raft stopped".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let s = status(PeerError::Store(crate::error::StoreError::LeaderChanged));
        assert_eq!(s.code(), tonic::Code::Aborted);
    }
}
