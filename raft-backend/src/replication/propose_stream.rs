//! A follower's end of one `ProposeStream` to the leader: forwarded batches
//! go out as messages on a stream that stays open, where each `ProposeMany`
//! call opened and closed an HTTP/2 stream on both members (headers,
//! routing, a task on each side) for every batch. Answers come back in the
//! order the batches went out, so a FIFO of the callers still waiting is
//! all the matching there is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_proto::peer as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::network::Peer;

type Answer = oneshot::Sender<pb::ProposeManyResponse>;

/// The callers waiting for answers, oldest first; `closed` once the answer
/// stream ended, after which nothing more is queued.
#[derive(Default)]
struct Waiting {
    closed: bool,
    queue: VecDeque<Answer>,
}

pub(crate) struct ProposeLink {
    pub leader: u64,
    requests: mpsc::UnboundedSender<pb::ProposeManyRequest>,
    waiting: Arc<Mutex<Waiting>>,
}

/// Why a batch got no answer on the link.
pub(crate) enum LinkError {
    /// The link had closed before the batch was queued: it was not sent,
    /// and here it is back.
    Closed(pb::ProposeManyRequest),
    /// Sent, or perhaps sent: whether it reached the log is unknown.
    Unanswered(Status),
}

fn lock(w: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProposeLink {
    /// Opens the stream. `UNIMPLEMENTED` means a leader of an earlier version,
    /// `FAILED_PRECONDITION` a member that is not the leader.
    pub async fn open(leader: u64, peer: &Peer, timeout: Duration) -> Result<Self, Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        let input = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut client = peer.client.clone();
        let call = client.propose_stream(peer.request(input, None));
        let answers = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Status::deadline_exceeded("opening the forwarding stream"))??
            .into_inner();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(read_answers(answers, waiting.clone()));
        Ok(ProposeLink {
            leader,
            requests,
            waiting,
        })
    }

    pub fn is_open(&self) -> bool {
        !lock(&self.waiting).closed
    }

    /// Sends one batch and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        batch: pb::ProposeManyRequest,
        timeout: Duration,
    ) -> Result<pb::ProposeManyResponse, LinkError> {
        let (tx, rx) = oneshot::channel();
        {
            // Queued and sent under one lock, so that the queue's order is
            // the stream's.
            let mut w = lock(&self.waiting);
            if w.closed {
                return Err(LinkError::Closed(batch));
            }
            if let Err(mpsc::error::SendError(batch)) = self.requests.send(batch) {
                return Err(LinkError::Closed(batch));
            }
            w.queue.push_back(tx);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(LinkError::Unanswered(Status::unavailable(
                "the forwarding stream ended before the answer",
            ))),
            Err(_) => Err(LinkError::Unanswered(Status::deadline_exceeded(
                "forwarded writes unanswered",
            ))),
        }
    }
}

async fn read_answers(
    mut answers: Streaming<pb::ProposeManyResponse>,
    waiting: Arc<Mutex<Waiting>>,
) {
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let caller = lock(&waiting).queue.pop_front();
                if let Some(caller) = caller {
                    // A caller that gave up has dropped its receiver.
                    let _ = caller.send(answer);
                }
            }
            Ok(None) => break,
            Err(s) => {
                tracing::debug!(status = %s, "forwarding stream ended");
                break;
            }
        }
    }
    // Whoever still waits learns that the answer will not come.
    let mut w = lock(&waiting);
    w.closed = true;
    w.queue.clear();
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use cairn_proto::peer::peer_server::{Peer as PeerApi, PeerServer};
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response};

    use super::*;
    use crate::replication::network::PeerTransport;

    /// A batch whose first request id is this ends the answer stream.
    const CLOSE: u64 = 999;

    /// A leader that answers each batch in order, 2 ms after it arrives,
    /// with one outcome per write, each carrying the batch's first request id
    /// as its index, so that a caller can tell whose answer it got.
    struct ScriptedLeader;

    type Answers<T> = ReceiverStream<Result<T, Status>>;

    fn refused<T>(what: &str) -> Result<Response<T>, Status> {
        Err(Status::unimplemented(what.to_string()))
    }

    #[tonic::async_trait]
    impl PeerApi for ScriptedLeader {
        type StreamAppendStream = Answers<pb::StreamAppendResponse>;
        type ProposeStreamStream = Answers<pb::ProposeManyResponse>;

        async fn propose_stream(
            &self,
            req: Request<Streaming<pb::ProposeManyRequest>>,
        ) -> Result<Response<Self::ProposeStreamStream>, Status> {
            let mut input = req.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(batch)) = input.message().await {
                    let first = batch.commands.first().map_or(0, |c| c.request_id);
                    if first == CLOSE {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let outcomes = batch
                        .commands
                        .iter()
                        .map(|_| pb::ProposeOutcome {
                            index: first,
                            ..Default::default()
                        })
                        .collect();
                    if tx
                        .send(Ok(pb::ProposeManyResponse { outcomes }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn vote(
            &self,
            _: Request<pb::VoteRequest>,
        ) -> Result<Response<pb::VoteResponse>, Status> {
            refused("vote")
        }
        async fn pre_vote(
            &self,
            _: Request<pb::VoteRequest>,
        ) -> Result<Response<pb::VoteResponse>, Status> {
            refused("pre_vote")
        }
        async fn append_entries(
            &self,
            _: Request<pb::AppendEntriesRequest>,
        ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
            refused("append_entries")
        }
        async fn stream_append(
            &self,
            _: Request<Streaming<pb::AppendEntriesRequest>>,
        ) -> Result<Response<Self::StreamAppendStream>, Status> {
            refused("stream_append")
        }
        async fn install_snapshot(
            &self,
            _: Request<Streaming<pb::SnapshotChunk>>,
        ) -> Result<Response<pb::SnapshotResponse>, Status> {
            refused("install_snapshot")
        }
        async fn transfer_leader(
            &self,
            _: Request<pb::TransferLeaderRequest>,
        ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
            refused("transfer_leader")
        }
        async fn propose_many(
            &self,
            _: Request<pb::ProposeManyRequest>,
        ) -> Result<Response<pb::ProposeManyResponse>, Status> {
            refused("propose_many")
        }
        async fn read_index(
            &self,
            _: Request<pb::ReadIndexRequest>,
        ) -> Result<Response<pb::ReadIndexResponse>, Status> {
            refused("read_index")
        }
        async fn cluster_info(
            &self,
            _: Request<pb::ClusterInfoRequest>,
        ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
            refused("cluster_info")
        }
        async fn change_member(
            &self,
            _: Request<pb::MemberChangeRequest>,
        ) -> Result<Response<pb::MemberChangeResponse>, Status> {
            refused("change_member")
        }
        async fn move_leader(
            &self,
            _: Request<pb::MoveLeaderRequest>,
        ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
            refused("move_leader")
        }
        async fn lease_renew(
            &self,
            _: Request<pb::LeaseRenewRequest>,
        ) -> Result<Response<pb::LeaseRenewResponse>, Status> {
            refused("lease_renew")
        }
        async fn lease_time_to_live(
            &self,
            _: Request<pb::LeaseTimeToLiveRequest>,
        ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
            refused("lease_time_to_live")
        }
    }

    async fn link() -> ProposeLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(ScriptedLeader))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let peer = PeerTransport::new(1, None, Duration::from_secs(5))
            .client(&[url])
            .unwrap();
        ProposeLink::open(2, &peer, Duration::from_secs(5))
            .await
            .unwrap()
    }

    fn batch(first_id: u64, writes: usize) -> pb::ProposeManyRequest {
        pb::ProposeManyRequest {
            commands: (0..writes as u64)
                .map(|i| pb::Command {
                    origin: 1,
                    request_id: first_id + i,
                    op: None,
                })
                .collect(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_each_get_their_own_answer() {
        let link = Arc::new(link().await);
        let calls: Vec<_> = (0..40u64)
            .map(|i| {
                let link = link.clone();
                tokio::spawn(async move {
                    let writes = (i % 7 + 1) as usize;
                    let got = link
                        .call(batch(100 * (i + 1), writes), Duration::from_secs(10))
                        .await;
                    (i, writes, got)
                })
            })
            .collect();
        for call in calls {
            let (i, writes, got) = call.await.unwrap();
            let Ok(answer) = got else {
                panic!("caller {i} got no answer");
            };
            assert_eq!(answer.outcomes.len(), writes, "caller {i}");
            assert!(
                answer.outcomes.iter().all(|o| o.index == 100 * (i + 1)),
                "caller {i}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_stream_leaves_the_sent_unknown_and_hands_back_the_unsent() {
        let link = link().await;
        assert!(link
            .call(batch(1, 2), Duration::from_secs(10))
            .await
            .is_ok());
        // Sent, never answered: whether it reached the log is unknown.
        let got = link.call(batch(CLOSE, 1), Duration::from_secs(10)).await;
        assert!(matches!(got, Err(LinkError::Unanswered(_))));
        let deadline = Instant::now() + Duration::from_secs(10);
        while link.is_open() {
            assert!(Instant::now() < deadline, "the link never noticed the end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Queued after the end: not sent, and handed back whole.
        match link.call(batch(7, 3), Duration::from_secs(10)).await {
            Err(LinkError::Closed(back)) => assert_eq!(back, batch(7, 3)),
            _ => panic!("a batch was queued on a closed link"),
        }
    }
}
