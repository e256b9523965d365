//! Ends clients' long-lived streams (Watch, LeaseKeepAlive) from the server
//! side, for the two reasons etcd has:
//!
//! - Streams of clients that asked for a leader (`hasleader=true` metadata)
//!   once this member has been without one for a while, so that
//!   kube-apiserver reconnects its watches to a member that still has a
//!   quorum instead of waiting on one that is cut off. etcd waits three
//!   election timeouts before it cancels existing streams (reconnecting
//!   costs more than refusing new requests, which happens at once), then
//!   ends them with "etcdserver: no leader" (Unavailable).
//! - Every stream when the member stops, with "etcdserver: server stopped"
//!   (Unavailable), so that clients move to another member at once and the
//!   stop does not wait on streams that never end by themselves.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use crate::errors::EtcdError;
use crate::node::SharedNode;

/// Election timeouts without a leader before streams are ended (etcd's
/// `maxNoLeaderCnt`).
const NO_LEADER_ELECTIONS: u32 = 3;

/// The two signals: how many times this member gave up on its leader (a
/// stream that wants one ends when the count moves), and whether it stops.
#[derive(Clone)]
pub struct StreamEnd {
    epoch: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
}

/// Raised by the server when it starts to stop.
pub struct StopStreams(watch::Sender<bool>);

impl StopStreams {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

type ClientStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl StreamEnd {
    /// Starts watching `node`'s leader; the task ends with the Raft replica.
    pub fn start(node: SharedNode, election: Duration) -> (Self, StopStreams) {
        let (tx, epoch) = watch::channel(0u64);
        tokio::spawn(monitor(node, election * NO_LEADER_ELECTIONS, tx));
        let (stop, stopping) = watch::channel(false);
        (StreamEnd { epoch, stopping }, StopStreams(stop))
    }

    /// Wraps a response stream so that it ends with "server stopped" when
    /// the member stops and, when the client asked for a leader, with "no
    /// leader" once the leader has been lost for long enough.
    pub fn guard<T, S>(&self, wants_leader: bool, responses: S) -> ClientStream<T>
    where
        T: Send + 'static,
        S: Stream<Item = Result<T, Status>> + Send + 'static,
    {
        let stopped = self.stopped().map(|()| EtcdError::Stopped);
        if !wants_leader {
            return end_when(responses, stopped);
        }
        let lost = self.lost().map(|()| EtcdError::NoLeader);
        end_when(responses, async move {
            tokio::select! {
                why = stopped => why,
                why = lost => why,
            }
        })
    }

    /// Resolves once the member stops (`StopStreams::stop`).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
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

/// `responses` until `end` resolves, then its error as the stream's last item.
fn end_when<T, S, F>(responses: S, end: F) -> ClientStream<T>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    F: std::future::Future<Output = EtcdError> + Send + 'static,
{
    let mut state = Some((Box::pin(responses), Box::pin(end)));
    Box::pin(futures::stream::poll_fn(move |cx| {
        let Some((responses, end)) = state.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(why) = end.as_mut().poll_unpin(cx) {
            state = None;
            return Poll::Ready(Some(Err(why.into())));
        }
        let next = responses.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            state = None;
        }
        next
    }))
}

async fn monitor(node: SharedNode, grace: Duration, tx: watch::Sender<u64>) {
    let replica = &node.store;
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
