//! Ends the long-lived streams of clients that asked for a leader
//! (`hasleader=true` metadata) once this member has been without one for a
//! while, as etcd does, so that kube-apiserver reconnects its watches to a
//! member that still has a quorum instead of waiting on one that is cut off.
//!
//! etcd waits three election timeouts before it cancels existing streams
//! (reconnecting costs more than refusing new requests, which happens at
//! once), then ends them with "etcdserver: no leader" (Unavailable).

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::errors::EtcdError;
use crate::node::SharedNode;

/// Election timeouts without a leader before streams are ended (etcd's
/// `maxNoLeaderCnt`).
const NO_LEADER_ELECTIONS: u32 = 3;

/// Counts the times this member gave up on its leader; a stream ends when the
/// count moves.
#[derive(Clone)]
pub struct LeaderLoss {
    epoch: watch::Receiver<u64>,
}

impl LeaderLoss {
    /// Starts watching `node`'s leader; the task ends with the Raft replica.
    pub fn start(node: SharedNode, election: Duration) -> Self {
        let (tx, epoch) = watch::channel(0u64);
        tokio::spawn(monitor(node, election * NO_LEADER_ELECTIONS, tx));
        LeaderLoss { epoch }
    }

    /// Wraps a response stream so that, when the client asked for a leader,
    /// it ends with "no leader" once the leader has been lost for long enough.
    /// Other streams pass through unchanged.
    pub fn guard<T, S>(
        &self,
        wants_leader: bool,
        responses: S,
    ) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        T: Send + 'static,
        S: Stream<Item = Result<T, Status>> + Send + 'static,
    {
        if !wants_leader {
            return Box::pin(responses);
        }
        let lost = Box::pin(self.lost());
        let mut state = Some((Box::pin(responses), lost));
        Box::pin(futures::stream::poll_fn(move |cx| {
            let Some((responses, lost)) = state.as_mut() else {
                return Poll::Ready(None);
            };
            if lost.as_mut().poll_unpin(cx).is_ready() {
                state = None;
                return Poll::Ready(Some(Err(EtcdError::NoLeader.into())));
            }
            let next = responses.poll_next_unpin(cx);
            if let Poll::Ready(None) = next {
                state = None;
            }
            next
        }))
    }

    /// Resolves when the leader is next given up on (never, if the monitor is
    /// gone).
    fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut epoch = self.epoch.clone();
        epoch.borrow_and_update();
        async move {
            if epoch.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Whether the request carries `hasleader=true` (clientv3's
/// `WithRequireLeader`, which kube-apiserver uses).
pub fn wants_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

async fn monitor(node: SharedNode, grace: Duration, tx: watch::Sender<u64>) {
    let replica = node.store.replica().clone();
    let mut leader = replica.leader();
    loop {
        if leader.is_some() {
            match replica.leader_change(leader).await {
                Some(now) => leader = now,
                None => return,
            }
            continue;
        }
        // No leader: give it `grace` to come back.
        tokio::select! {
            change = replica.leader_change(None) => match change {
                Some(now) => leader = now,
                None => return,
            },
            () = tokio::time::sleep(grace) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "no leader for too long: ending watch and keep-alive streams that require one"
                );
                tx.send_modify(|e| *e += 1);
                // Still leaderless: wait for a leader before counting again;
                // streams opened meanwhile are refused at once anyway.
                match replica.leader_change(None).await {
                    Some(now) => leader = now,
                    None => return,
                }
            }
        }
    }
}
