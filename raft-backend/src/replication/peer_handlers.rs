//! The leader's and the follower's side of what peers ask of this member:
//! Raft messages (votes, appends, snapshots, leader transfer) and forwarded
//! writes. Wire messages in, wire messages out; refusals are `PeerError`,
//! which the peer server turns into gRPC statuses.

use cairn_proto::peer as pb;
use futures::StreamExt;
use openraft::raft::{
    AppendEntriesResponse, StreamAppendError, TransferLeaderRequest, VoteRequest,
};

use super::codec;
use super::error_map::{client_write_error, fatal, to_status};
use super::replica::Replica;
use super::state_machine::{SnapshotData, SnapshotFile};
use super::types::{Snapshot, StoredMembership, TypeConfig};
use crate::error::StoreError;

/// Why this member did not answer a peer's request.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request could not be decoded.
    #[error(transparent)]
    Malformed(#[from] codec::DecodeError),
    /// The Raft core is gone (shutting down, or a fatal fault).
    #[error("{0}")]
    Unavailable(String),
    /// Raft refused the request (a leader transfer this member cannot take).
    #[error("{0}")]
    Refused(String),
    /// A forwarded request failed as a client's would have.
    #[error(transparent)]
    Store(StoreError),
}

fn unavailable(e: impl std::fmt::Display) -> PeerError {
    PeerError::Unavailable(e.to_string())
}

impl Replica {
    /// The leader's side of a batch of forwarded writes: commit and apply
    /// them here, in order; one outcome per write.
    pub(crate) async fn handle_propose_many(
        &self,
        commands: Vec<pb::Command>,
    ) -> Result<Vec<pb::ProposeOutcome>, PeerError> {
        let lcs = commands
            .into_iter()
            .map(codec::command_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let n = lcs.len();
        let mut results = self
            .raft
            .client_write_many(lcs)
            .await
            .map_err(|e| PeerError::Store(fatal(e)))?;
        let mut outcomes = Vec::with_capacity(n);
        while let Some(r) = results.next().await {
            let outcome = match r {
                Ok(Ok(resp)) => pb::ProposeOutcome {
                    index: resp.log_id.index,
                    ..Default::default()
                },
                Ok(Err(e)) => {
                    let s = to_status(&client_write_error(e));
                    pb::ProposeOutcome {
                        index: 0,
                        error_code: s.code() as i32,
                        error_message: s.message().to_string(),
                    }
                }
                // The Raft core stopped: whether these committed is unknown.
                Err(e) => return Err(PeerError::Store(fatal(e))),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    pub(crate) async fn handle_vote(
        &self,
        req: pb::VoteRequest,
        pre: bool,
    ) -> Result<pb::VoteResponse, PeerError> {
        let rpc = VoteRequest::<TypeConfig> {
            vote: codec::vote_from_pb(req.vote)?,
            last_log_id: codec::opt_log_id_from_pb(req.last_log_id),
            leadership_transfer: req.leadership_transfer,
        };
        let resp = if pre {
            self.raft.pre_vote(rpc).await
        } else {
            self.raft.vote(rpc).await
        }
        .map_err(unavailable)?;
        Ok(pb::VoteResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: codec::opt_log_id_to_pb(resp.last_log_id.as_ref()),
        })
    }

    pub(crate) async fn handle_append(
        &self,
        req: pb::AppendEntriesRequest,
    ) -> Result<pb::AppendEntriesResponse, PeerError> {
        let rpc = codec::append_request_from_pb(req)?;
        let resp = self.raft.append_entries(rpc).await.map_err(unavailable)?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.contact.touch();
        }
        Ok(codec::append_response_to_pb(resp))
    }

    /// Serves a leader's replication stream: each request goes to Raft as it
    /// arrives, and the answers go back in order as the entries are stored.
    /// The stream ends at the first refusal (conflict, higher vote), as
    /// openraft ends it, or when the leader hangs up (`requests` ends).
    pub(crate) fn handle_stream_append<S>(
        &self,
        requests: S,
    ) -> futures::stream::BoxStream<'static, Result<pb::StreamAppendResponse, PeerError>>
    where
        S: futures::Stream<Item = pb::AppendEntriesRequest> + Send + 'static,
    {
        // A request that cannot be decoded ends the input: the leader sees
        // fewer answers than requests and starts a new stream from what was
        // acknowledged.
        let requests = tokio_stream::StreamExt::map_while(requests, |r| {
            match codec::append_request_from_pb(r) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed request on a replication stream");
                    None
                }
            }
        });
        let contact = self.contact.clone();
        self.raft
            .stream_append(requests)
            .map(move |r| match r {
                Ok(result) => {
                    if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                        contact.touch();
                    }
                    Ok(codec::stream_append_result_to_pb(&result))
                }
                Err(fatal) => Err(unavailable(fatal)),
            })
            .boxed()
    }

    /// Where an incoming snapshot's data is written before it is installed.
    pub(crate) fn snapshot_receive_path(&self) -> std::path::PathBuf {
        self.sm.receive_path()
    }

    pub(crate) async fn handle_snapshot(
        &self,
        head: pb::SnapshotHead,
        path: std::path::PathBuf,
    ) -> Result<pb::SnapshotResponse, PeerError> {
        let vote = codec::vote_from_pb(head.vote)?;
        let meta_pb = head.meta.unwrap_or_default();
        let last_log_id = codec::opt_log_id_from_pb(meta_pb.last_log_id);
        let last_membership: StoredMembership = codec::stored_membership_from_pb(meta_pb)?;
        let snapshot = Snapshot {
            meta: openraft::storage::SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: SnapshotData::Received(SnapshotFile { path }),
        };
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(unavailable)?;
        self.contact.touch();
        Ok(pb::SnapshotResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
        })
    }

    pub(crate) async fn handle_transfer_leader(
        &self,
        req: pb::TransferLeaderRequest,
    ) -> Result<pb::TransferLeaderResponse, PeerError> {
        let from = codec::vote_from_pb(req.from_leader)?;
        let rpc = TransferLeaderRequest::<TypeConfig>::new(
            from,
            req.to_node_id,
            codec::opt_log_id_from_pb(req.last_log_id),
        );
        let resp = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(unavailable)?;
        if let Err(e) = resp {
            return Err(PeerError::Refused(e.to_string()));
        }
        Ok(pb::TransferLeaderResponse { vote: None })
    }
}
