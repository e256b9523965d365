//! Writes a follower's clients send, handed to the leader in batches.
//!
//! One call per write cost an HTTP/2 stream on both members for every
//! forwarded write, which is two thirds of all writes when clients spread
//! over three members. Instead every write accepted here queues; one task
//! takes everything queued and sends it as one batch. Up to `MAX_INFLIGHT`
//! batches are out at once; while all are, writes queue and leave together
//! in the next, so batches grow with the load and a lone write never waits
//! for a batch to fill. Batches travel on one long-lived `ProposeStream`
//! (`propose_stream`); a leader of an earlier version gets them as
//! `ProposeMany` calls. The client's answer still comes from this
//! member's own apply (the waiter keyed by request id); the call's answer
//! only fails a write early, when the leader refused it before it reached the
//! log. A transport error leaves the outcome unknown: the waiter keeps
//! waiting, and times out if the write never commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::peer as pb;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::type_config::alias::WatchReceiverOf;
use tokio::sync::{mpsc, watch};

use super::error_map::from_outcome;
use super::network::{Peer, PeerTransport};
use super::propose_stream::{LinkError, ProposeLink};
use super::types::TypeConfig;
use super::waiters::Waiters;
use crate::error::{Result, StoreError};

/// Writes sent in one call at most.
const MAX_BATCH: usize = 512;
/// Calls to the leader in flight at once.
const MAX_INFLIGHT: usize = 4;

/// How long a leader that refused the forwarding stream gets `ProposeMany`
/// calls before it is asked again.
const STREAM_RETRY: Duration = Duration::from_secs(60);

/// Finds and dials the reachable leader.
#[derive(Clone)]
pub(crate) struct LeaderLocator {
    pub reachable_leader: watch::Receiver<Option<u64>>,
    pub metrics: WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>,
    pub transport: Arc<PeerTransport>,
}

impl LeaderLocator {
    /// A client for the current leader, or `NoLeader`.
    pub fn leader_peer(&self) -> Result<Peer> {
        self.leader().map(|(_, peer)| peer)
    }

    /// The current leader and a client for it, or `NoLeader`. Copies only
    /// the leader's URLs, not the membership.
    pub fn leader(&self) -> Result<(u64, Peer)> {
        let leader = (*self.reachable_leader.borrow()).ok_or(StoreError::NoLeader)?;
        let urls = {
            let m = self.metrics.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.peer_urls.clone())
        }
        .ok_or(StoreError::NoLeader)?;
        let peer = self.transport.client(&urls).map_err(StoreError::Storage)?;
        Ok((leader, peer))
    }
}

struct Forwarded {
    request_id: u64,
    command: pb::Command,
}

/// The queue in front of the forwarding task; the task ends when this drops.
pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Forwarded>,
}

#[derive(Clone)]
struct Context {
    locator: LeaderLocator,
    waiters: Waiters,
    timeout: Duration,
    link: Arc<tokio::sync::Mutex<LinkSlot>>,
}

/// The open stream to the leader, and the leader that had none to offer.
#[derive(Default)]
struct LinkSlot {
    link: Option<Arc<ProposeLink>>,
    /// Answered `UNIMPLEMENTED` (and when): batches go to it as
    /// `ProposeMany` calls until another member leads or `STREAM_RETRY`
    /// passes, since a rolling upgrade may restart it as a newer version.
    unary_leader: Option<(u64, Instant)>,
}

impl Forwarder {
    pub fn start(locator: LeaderLocator, waiters: Waiters, timeout: Duration) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Context {
            locator,
            waiters,
            timeout,
            link: Default::default(),
        };
        tokio::spawn(run(rx, ctx));
        Forwarder { tx }
    }

    /// Queues a write whose waiter is already registered under `request_id`.
    pub fn forward(&self, request_id: u64, command: pb::Command) -> Result<()> {
        self.tx
            .send(Forwarded {
                request_id,
                command,
            })
            .map_err(|_| StoreError::Stopped)
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Forwarded>, ctx: Context) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.send(batch).await;
            drop(permit);
        });
    }
}

impl Context {
    /// Ends the wait of a forwarded write that is known to have failed.
    fn fail(&self, request_id: u64, e: StoreError) {
        self.waiters.resolve(request_id, Err(e));
    }

    async fn send(self, batch: Vec<Forwarded>) {
        let (leader, peer) = match self.locator.leader() {
            Ok(p) => p,
            Err(e) => {
                for f in batch {
                    self.fail(f.request_id, e.clone());
                }
                return;
            }
        };
        let ids: Vec<u64> = batch.iter().map(|f| f.request_id).collect();
        let req = pb::ProposeManyRequest {
            commands: batch.into_iter().map(|f| f.command).collect(),
        };
        match self.call(leader, &peer, req).await {
            Ok(resp) => {
                for (id, o) in ids.iter().zip(resp.outcomes) {
                    if o.error_code != 0 {
                        self.fail(*id, from_outcome(o.error_code, &o.error_message));
                    }
                }
            }
            // Refused as a whole before anything reached the log.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                for id in ids {
                    self.fail(id, StoreError::NoLeader);
                }
            }
            // Unknown: they may still commit; their waiters keep waiting.
            Err(s) => tracing::debug!(status = %s, "forwarded proposals' outcome unknown"),
        }
    }

    /// One batch to `leader`: on the open stream, or as a `ProposeMany`
    /// call to a leader without one.
    async fn call(
        &self,
        leader: u64,
        peer: &Peer,
        req: pb::ProposeManyRequest,
    ) -> std::result::Result<pb::ProposeManyResponse, tonic::Status> {
        // A stream that closed before the batch was queued did not send it:
        // once more on a new one.
        let mut req = req;
        for _ in 0..2 {
            let Some(link) = self.link_to(leader, peer).await? else {
                break;
            };
            match link.call(req, self.timeout).await {
                Ok(resp) => return Ok(resp),
                Err(LinkError::Unanswered(s)) => return Err(s),
                Err(LinkError::Closed(back)) => req = back,
            }
        }
        let mut client = peer.client.clone();
        client
            .propose_many(peer.request(req, Some(self.timeout)))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The open stream to `leader`, opened if need be; `None` for a leader
    /// that serves only `ProposeMany`.
    async fn link_to(
        &self,
        leader: u64,
        peer: &Peer,
    ) -> std::result::Result<Option<Arc<ProposeLink>>, tonic::Status> {
        let mut slot = self.link.lock().await;
        if let Some((unary, since)) = slot.unary_leader {
            if unary == leader && since.elapsed() < STREAM_RETRY {
                return Ok(None);
            }
        }
        if let Some(link) = &slot.link {
            if link.leader == leader && link.is_open() {
                return Ok(Some(link.clone()));
            }
        }
        slot.link = None;
        match ProposeLink::open(leader, peer, self.timeout).await {
            Ok(link) => {
                let link = Arc::new(link);
                slot.link = Some(link.clone());
                Ok(Some(link))
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    member = format_args!("{leader:x}"),
                    "leader does not stream forwarded writes; using ProposeMany"
                );
                slot.unary_leader = Some((leader, Instant::now()));
                Ok(None)
            }
            Err(s) => Err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{Membership, RaftMetrics, StoredMembership};

    use super::*;
    use crate::replication::types::MemberInfo;

    fn forwarder(leader: Option<u64>, leader_url: &str) -> (Forwarder, Waiters) {
        let mut metrics = RaftMetrics::<TypeConfig>::new_initial(1);
        let nodes = BTreeMap::from([(
            2,
            MemberInfo {
                name: "m2".into(),
                peer_urls: vec![leader_url.to_string()],
                client_urls: vec![],
            },
        )]);
        let m = Membership::new(vec![BTreeSet::from([2])], nodes).unwrap();
        metrics.membership_config = Arc::new(StoredMembership::new(None, m));
        use openraft::type_config::TypeConfigExt;
        let (_metrics_tx, metrics_rx) = TypeConfig::watch_channel(metrics);
        let (_leader_tx, reachable_leader) = watch::channel(leader);
        let locator = LeaderLocator {
            reachable_leader,
            metrics: metrics_rx,
            transport: Arc::new(PeerTransport::new(9, None, Duration::from_millis(200))),
        };
        let waiters = Waiters::default();
        let f = Forwarder::start(locator, waiters.clone(), Duration::from_millis(200));
        (f, waiters)
    }

    fn command() -> pb::Command {
        pb::Command {
            origin: 1,
            request_id: 7,
            op: None,
        }
    }

    #[tokio::test]
    async fn a_write_fails_at_once_when_no_leader_is_reachable() {
        let (f, waiters) = forwarder(None, "http://127.0.0.1:1");
        let (_reg, rx) = waiters.register(7);
        f.forward(7, command()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert!(
            matches!(got, Ok(Ok(Err(StoreError::NoLeader)))),
            "got {got:?}"
        );
    }

    #[tokio::test]
    async fn a_write_whose_outcome_is_unknown_keeps_waiting() {
        // A leader that cannot be dialled: the write may or may not have
        // reached it, so only its own apply (or the caller's timeout) may
        // end the wait, never a false failure.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (f, waiters) = forwarder(Some(2), &url);
        let (_reg, mut rx) = waiters.register(7);
        f.forward(7, command()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), &mut rx).await;
        assert!(got.is_err(), "the wait ended: {got:?}");
        // The write committing after all still answers it.
        waiters.resolve(7, Err(StoreError::Stopped));
        assert!(matches!(rx.await, Ok(Err(StoreError::Stopped))));
    }
}
