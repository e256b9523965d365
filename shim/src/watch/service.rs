//! etcdserverpb.Watch: one bidirectional stream carries many watchers.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_proto::cairnpb::wire::WatchResponse;
use cairn_proto::encoded_watch::watch_server::Watch;
use cairn_proto::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
use cairn_raft_backend::KeyRange;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::hub::{HubMsg, Sink, WatchHub, NO_WATCH_ID};
use super::watcher::{StreamId, Watcher};
use crate::node::SharedNode;
use crate::stream_end::StreamEnd;

/// Responses (each with its fragments) buffered per stream before its watchers
/// fall back to catching up from history, as etcd's 128. A deeper buffer only
/// turns overload into queueing delay and memory: catch-up from history sends
/// many revisions per response and so drains a backlog faster.
const STREAM_BUFFER: usize = 128;

pub struct WatchService {
    node: SharedNode,
    hub: WatchHub,
    stream_end: StreamEnd,
    next_stream: AtomicU64,
}

impl WatchService {
    pub fn new(node: SharedNode, hub: WatchHub, stream_end: StreamEnd) -> Self {
        WatchService {
            node,
            hub,
            stream_end,
            next_stream: AtomicU64::new(1),
        }
    }
}

/// Per-stream state the receiving side keeps: the ids in use.
struct StreamCtx {
    node: SharedNode,
    hub: WatchHub,
    id: StreamId,
    sink: Sink,
    ids: HashSet<i64>,
    next_id: i64,
}

impl StreamCtx {
    fn refuse(&self, reason: &str) -> WatchResponse {
        WatchResponse {
            header: self.node.header(),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        }
    }

    async fn create(&mut self, mut req: WatchCreateRequest) -> Result<(), ()> {
        // etcd's normalisation: no key means "\0"; "\0" as range_end means "to the end".
        if req.key.is_empty() {
            req.key = vec![0];
        }
        if req.start_revision < 0 {
            let r = self.refuse("etcdserver: mvcc: required revision has been compacted");
            return self.sink.send(vec![r]).await.map_err(drop);
        }
        if !req.range_end.is_empty() && req.range_end != [0] && req.key >= req.range_end {
            let r = self.refuse("mvcc: watcher range is empty");
            return self.sink.send(vec![r]).await.map_err(drop);
        }
        let id = if req.watch_id == 0 {
            while self.ids.contains(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.ids.contains(&req.watch_id) {
            let r = self.refuse("mvcc: duplicate watch ID provided on the WatchStream");
            return self.sink.send(vec![r]).await.map_err(drop);
        } else {
            req.watch_id
        };
        self.ids.insert(id);
        // Before the revision is read: batches applied after it then carry
        // previous kvs, or say they do not (see Hub's feed).
        let prev_kv_wanted = req.prev_kv.then(|| self.node.store.want_prev_kv());
        // Read the revision once: the Created header and "from now" agree on it.
        let current = self.node.store.applied().current_rev;
        let next_rev = if req.start_revision == 0 {
            current + 1
        } else {
            req.start_revision
        };
        let created = WatchResponse {
            header: self.node.header_at(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        // Created goes out before the hub can send this watcher anything.
        self.sink.send(vec![created]).await.map_err(drop)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let watcher = Watcher::new(id, self.id, &req, range, next_rev, prev_kv_wanted);
        self.hub.send(HubMsg::Register {
            watcher,
            sink: self.sink.clone(),
        });
        Ok(())
    }

    async fn cancel(&mut self, id: i64) -> Result<(), ()> {
        let (done, removed) = oneshot::channel();
        self.hub.send(HubMsg::Cancel {
            stream: self.id,
            id,
            done,
        });
        // Once the hub answers it sends nothing more for the watcher.
        let _ = removed.await;
        // An id this stream created is answered and freed even if the server
        // already canceled the watcher (a compacted start), as etcd does.
        if self.ids.remove(&id) {
            let resp = WatchResponse {
                header: self.node.header(),
                watch_id: id,
                canceled: true,
                ..Default::default()
            };
            self.sink.send(vec![resp]).await.map_err(drop)?;
        }
        Ok(())
    }

    /// Serves the stream's requests until the client goes away or the
    /// response side is dropped (the client left, or the server ended the
    /// stream, e.g. on leader loss).
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        loop {
            let next = tokio::select! {
                next = inbound.next() => next,
                () = self.sink.closed() => break,
            };
            let req = match next {
                Some(Ok(req)) => req,
                // The client closed its sending side: as in etcd, its watchers
                // keep receiving until the response stream goes away too.
                None => {
                    self.sink.closed().await;
                    break;
                }
                Some(Err(_)) => break,
            };
            let step = match req.request_union {
                Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
                Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
                Some(RequestUnion::ProgressRequest(_)) => {
                    self.hub.send(HubMsg::ProgressAll { stream: self.id });
                    Ok(())
                }
                None => Ok(()),
            };
            if step.is_err() {
                break;
            }
        }
        self.hub.send(HubMsg::StreamClosed { stream: self.id });
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let wants_leader = self.node.check_leader(&req)?;
        let (sink, out) = mpsc::channel(STREAM_BUFFER);
        let ctx = StreamCtx {
            node: self.node.clone(),
            hub: self.hub.clone(),
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            sink,
            ids: HashSet::new(),
            next_id: 0,
        };
        tokio::spawn(ctx.run(req.into_inner()));
        let responses = ReceiverStream::new(out)
            .flat_map(|group| futures::stream::iter(group.into_iter().map(Ok)));
        Ok(Response::new(
            self.stream_end.guard(wants_leader, responses),
        ))
    }
}
