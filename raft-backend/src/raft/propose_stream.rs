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
