//! etcdserverpb.Lease.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use cairn_raft_backend::CommandOutput;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::lessor::Lessor;
use crate::errors::store_status;
use crate::node::SharedNode;
use crate::stream_end::StreamEnd;

pub struct LeaseService {
    node: SharedNode,
    lessor: Arc<Lessor>,
    stream_end: StreamEnd,
}

impl LeaseService {
    pub fn new(node: SharedNode, lessor: Arc<Lessor>, stream_end: StreamEnd) -> Self {
        LeaseService {
            node,
            lessor,
            stream_end,
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::debug_span!("lease_grant", ttl = r.ttl, id = r.id);
        let (id, ttl) = self.lessor.grant(r).instrument(span).await?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.node.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.node.check_leader(&req)?;
        self.node.check_writable()?;
        let id = req.into_inner().id;
        let out = self
            .lessor
            .revoke(id)
            .instrument(tracing::debug_span!("lease_revoke", id))
            .await
            .map_err(store_status)?;
        match out {
            CommandOutput::LeaseRevoke(mut resp) => {
                self.node.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for lease revoke",
            )),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let wants_leader = self.node.check_leader(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (node, lessor) = (self.node.clone(), self.lessor.clone());
        tokio::spawn(async move {
            // Until the client stops sending or the response side goes away
            // (the client left, or the stream was ended on leader loss).
            loop {
                let ka = tokio::select! {
                    next = inbound.next() => match next {
                        Some(Ok(ka)) => ka,
                        _ => break,
                    },
                    () = tx.closed() => break,
                };
                // Stamp the header before renewing, as etcd does, so a client
                // never sees a renewal at a revision after the lease's revoke.
                let header = node.header();
                // An unknown or expired lease is answered with TTL 0.
                let ttl = match lessor.renew_anywhere(ka.id).await {
                    Ok(ttl) => ttl.unwrap_or(0),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header,
                    id: ka.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(
            self.stream_end.guard(wants_leader, ReceiverStream::new(rx)),
        ))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        // etcd answers an unknown lease with TTL -1, not an error.
        let Some((ttl, granted_ttl)) = self.lessor.ttl_anywhere(r.id).await? else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.node.header(),
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if r.keys {
            self.node
                .store
                .lease_keys(r.id)
                .await
                .map_err(store_status)?
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.node.header(),
            id: r.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.check_leader(&req)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.node.header(),
            leases: self
                .node
                .store
                .leases()
                .await
                .map_err(store_status)?
                .into_iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }))
    }
}
