//! The watch hub: one task that owns every watcher.
//!
//! Synced watchers receive each applied batch from the store's apply stream as
//! it arrives. A watcher that starts in the past, or whose stream's buffer is
//! full, is unsynced: it catches up from history on the sync tick and rejoins
//! the live feed once it reaches the hub's revision. No writer ever waits for
//! a watcher. Because the hub sends every response of a stream into one ordered
//! buffer, a progress reply can never overtake an event it vouches for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cairnpb::wire::WatchResponse;
use cairn_proto::etcdserverpb::ResponseHeader;
use cairn_raft_backend::{AppliedBatch, StoreError};
use prost::bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::shared_events::SharedEvents;
use super::watcher::{fragments, StreamId, Watcher};
use crate::config::GRPC_OVERHEAD_BYTES;
use crate::node::{Node, SharedNode};

/// How often unsynced watchers catch up. etcd syncs new watchers every 100 ms
/// but retries watchers whose buffer was full every 10 ms; a watcher here is
/// unsynced for either reason, so it gets the shorter wait.
const SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// Events read from history per catch-up pass.
const SYNC_MAX_EVENTS: usize = 10_000;
/// Bytes of keys and values read from history per catch-up pass (past the
/// revision that reaches it, none). Without it a pass over large objects
/// (Kubernetes allows 1.5 MiB each) could hold 10,000 of them in memory, and
/// hand a watcher all of them in one response, beyond the 2 GiB a gRPC
/// message may have.
const SYNC_MAX_BYTES: usize = 64 << 20;
/// A live response covering several revisions is closed once its events
/// reach this size; the next revision starts another. About one encoder
/// chunk (`cairn_proto::watch_codec::WATCH_CHUNK_BYTES`): a larger response
/// saves little per event and makes each stream's queued chunk larger.
const BATCHED_RESPONSE_BYTES: usize = 8 * 1024;
/// etcd's id for responses that belong to no single watcher.
pub const NO_WATCH_ID: i64 = -1;

/// A stream's ordered buffer. One entry holds every fragment of a response,
/// so a response is queued whole or not at all, however many fragments it has.
pub type Sink = mpsc::Sender<Vec<WatchResponse>>;

pub enum HubMsg {
    Register {
        watcher: Watcher,
        sink: Sink,
    },
    Cancel {
        stream: StreamId,
        id: i64,
        done: oneshot::Sender<bool>,
    },
    ProgressAll {
        stream: StreamId,
    },
    StreamClosed {
        stream: StreamId,
    },
}

#[derive(Clone)]
pub struct WatchHub {
    tx: mpsc::UnboundedSender<HubMsg>,
}

impl WatchHub {
    pub fn start(node: SharedNode, progress_interval: Duration) -> Self {
        // Subscribe before reading the revision: a batch committed in between
        // is then both received and recognised as already covered.
        let events = node.store.subscribe();
        let rev = node.store.applied().current_rev;
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub {
            node,
            rev,
            watchers: BTreeMap::new(),
            sinks: HashMap::new(),
        };
        tokio::spawn(hub.run(rx, events, progress_interval));
        WatchHub { tx }
    }

    pub fn send(&self, msg: HubMsg) {
        // Fails only once the hub has stopped, with the server.
        let _ = self.tx.send(msg);
    }
}

struct Hub {
    node: SharedNode,
    /// Every event up to this revision has been handed to every synced watcher.
    rev: i64,
    watchers: BTreeMap<(StreamId, i64), Watcher>,
    sinks: HashMap<StreamId, Sink>,
}

enum Sent {
    Ok,
    /// The stream's buffer is full: the watcher must catch up later.
    Full,
    /// The stream is gone.
    Closed,
}

impl Hub {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<HubMsg>,
        mut events: broadcast::Receiver<Arc<AppliedBatch>>,
        progress_interval: Duration,
    ) {
        let mut sync_tick = tokio::time::interval(SYNC_INTERVAL);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress_tick = tokio::time::interval(progress_interval);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress_tick.reset();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => return,
                },
                batch = events.recv() => match batch {
                    Ok(batch) => self.apply(&batch),
                    Err(broadcast::error::RecvError::Lagged(missed)) => self.lagged(missed),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = sync_tick.tick() => self.sync_unsynced().await,
                _ = progress_tick.tick() => self.progress_notify(),
            }
        }
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Register { mut watcher, sink } => {
                // A start at or before the hub's revision needs history first.
                watcher.synced = watcher.next_rev > self.rev;
                self.sinks.entry(watcher.stream).or_insert(sink);
                self.watchers.insert((watcher.stream, watcher.id), watcher);
            }
            HubMsg::Cancel { stream, id, done } => {
                let _ = done.send(self.watchers.remove(&(stream, id)).is_some());
            }
            HubMsg::ProgressAll { stream } => self.progress_all(stream),
            HubMsg::StreamClosed { stream } => self.drop_stream(stream),
        }
    }

    fn drop_stream(&mut self, stream: StreamId) {
        self.sinks.remove(&stream);
        self.watchers.retain(|(s, _), _| *s != stream);
    }

    /// Feeds one applied batch to the synced watchers.
    fn apply(&mut self, batch: &AppliedBatch) {
        if batch.reset {
            // A snapshot from the leader replaced the state: there are no
            // events to hand out, so every synced watcher reads the revisions
            // it has not seen from the new history.
            self.resync_from_history(batch.current_revision);
            // A migration that started again wiped the store back to
            // revision 1: the hub follows it down, so that the revisions
            // imported again are fed (watchers go on from where they were:
            // the same source numbers them alike).
            self.rev = self.rev.min(batch.current_revision);
            return;
        }
        let mut closed = Vec::new();
        let Hub {
            node,
            rev,
            watchers,
            sinks,
        } = self;
        let revisions: Vec<_> = batch
            .revisions
            .iter()
            .filter(|r| r.revision > *rev)
            .map(|r| (r.revision, SharedEvents::new(&r.events)))
            .collect();
        if let Some(&(last, _)) = revisions.last() {
            let header = node.header_at(last);
            for w in watchers.values_mut().filter(|w| w.synced) {
                // Applied before this watcher's want was seen: the events it
                // needs lack their previous kvs, which history has.
                if !batch.prev_kv_complete
                    && revisions
                        .iter()
                        .any(|(_, shared)| w.misses_prev_kv(shared.events()))
                {
                    tracing::debug!(
                        stream = w.stream,
                        watch_id = w.id,
                        "batch without prev_kv; watcher reads it from history"
                    );
                    w.synced = false;
                    continue;
                }
                if let Err(gone) = feed(node, sinks, header, w, &revisions) {
                    closed.push(gone);
                }
            }
        }
        self.rev = self.rev.max(batch.current_revision);
        for s in closed {
            self.drop_stream(s);
        }
    }

    /// Batches were missed: every synced watcher catches up from history.
    fn lagged(&mut self, missed: u64) {
        tracing::warn!(
            missed,
            "watch hub fell behind the apply stream; watchers resync from history"
        );
        // Batches still queued at or below this revision are then skipped.
        self.resync_from_history(self.node.store.applied().current_rev);
    }

    /// Every synced watcher has seen everything up to `self.rev`; it becomes
    /// unsynced and catches up from history, and the hub moves on to `to`.
    fn resync_from_history(&mut self, to: i64) {
        let from = self.rev + 1;
        for w in self.watchers.values_mut().filter(|w| w.synced) {
            w.synced = false;
            w.next_rev = w.next_rev.max(from);
        }
        self.rev = self.rev.max(to);
    }

    async fn sync_unsynced(&mut self) {
        if self.watchers.values().all(|w| w.synced) {
            return;
        }
        let compact = self.node.store.applied().compact_rev;
        let mut closed = Vec::new();
        // Watchers whose next revision is compacted are canceled, as in etcd.
        let compacted: Vec<_> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced && w.next_rev < compact)
            .map(|(k, _)| *k)
            .collect();
        for key in compacted {
            let Some(w) = self.watchers.get(&key) else {
                continue;
            };
            let resp = WatchResponse {
                // etcd stamps this response with revision 0.
                header: self.node.header_at(0),
                watch_id: w.id,
                canceled: true,
                compact_revision: compact,
                ..Default::default()
            };
            match send(&self.sinks, w.stream, vec![resp]) {
                Sent::Ok => {
                    self.watchers.remove(&key);
                }
                Sent::Full => {}
                Sent::Closed => closed.push(w.stream),
            }
        }
        // Streams with no room are skipped rather than re-read every tick.
        let ready: Vec<_> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .filter(|(_, w)| self.sinks.get(&w.stream).is_some_and(|s| s.capacity() > 0))
            .map(|(k, _)| *k)
            .collect();
        let Some(from) = ready
            .iter()
            .filter_map(|k| self.watchers.get(k))
            .map(|w| w.next_rev)
            .min()
        else {
            for s in closed {
                self.drop_stream(s);
            }
            return;
        };
        let to = self.rev;
        // Complete revisions up to `reached` were read: all up to `to`, or
        // fewer when a bound stopped the read.
        let (events, reached) = if from > to {
            (Vec::new(), to)
        } else {
            match self
                .node
                .store
                .events_between(from, to, SYNC_MAX_EVENTS, SYNC_MAX_BYTES)
                .await
            {
                Ok(read) => (read.events, read.complete_to),
                // A compaction landed meanwhile; the next tick cancels those watchers.
                Err(StoreError::Compacted) => return,
                Err(e) => {
                    tracing::error!(error = %e, "watch catch-up read failed");
                    return;
                }
            }
        };
        let shared = SharedEvents::new(&events);
        // etcd stamps catch-up responses with the store's revision.
        let header = self.node.header_at(to);
        for key in ready {
            let Some(w) = self.watchers.get(&key) else {
                continue;
            };
            let evs = w.select(&shared, reached);
            let sent = if evs.is_empty() {
                Sent::Ok
            } else {
                let out = response(&self.node, header, w, evs);
                send(&self.sinks, w.stream, out)
            };
            let Some(w) = self.watchers.get_mut(&key) else {
                continue;
            };
            match sent {
                Sent::Ok => {
                    w.sent_since_tick = true;
                    w.next_rev = w.next_rev.max(reached + 1);
                    w.synced = reached >= to;
                }
                Sent::Full => {}
                Sent::Closed => closed.push(w.stream),
            }
        }
        for s in closed {
            self.drop_stream(s);
        }
    }

    /// WatchProgressRequest: one reply for the whole stream, and only when
    /// every watcher on it is synced (etcd 3.6 drops it otherwise; clients
    /// such as kube-apiserver ask again).
    fn progress_all(&mut self, stream: StreamId) {
        let mut on_stream = self
            .watchers
            .range((stream, i64::MIN)..=(stream, i64::MAX))
            .peekable();
        if on_stream.peek().is_none() || !on_stream.all(|(_, w)| w.synced) {
            return;
        }
        let resp = WatchResponse {
            header: self.node.header_at(self.rev),
            watch_id: NO_WATCH_ID,
            ..Default::default()
        };
        if let Sent::Closed = send(&self.sinks, stream, vec![resp]) {
            self.drop_stream(stream);
        }
    }

    /// Periodic progress for watchers that asked for it and saw no events.
    fn progress_notify(&mut self) {
        let mut due = Vec::new();
        for w in self.watchers.values_mut() {
            if w.progress_notify && w.synced && !w.sent_since_tick {
                due.push((w.stream, w.id));
            }
            w.sent_since_tick = false;
        }
        for (stream, id) in due {
            let resp = WatchResponse {
                header: self.node.header_at(self.rev),
                watch_id: id,
                ..Default::default()
            };
            if let Sent::Closed = send(&self.sinks, stream, vec![resp]) {
                self.drop_stream(stream);
            }
        }
    }
}

/// Hands a synced watcher its events from one applied batch: several
/// revisions to one response, as catch-up from history does. Under load a
/// batch holds many revisions, and one response per revision per watcher
/// was most of the fan-out's cost; a single-revision batch is answered as
/// etcd answers a write. Returns the stream if it is gone.
fn feed(
    node: &Node,
    sinks: &HashMap<StreamId, Sink>,
    header: Option<ResponseHeader>,
    w: &mut Watcher,
    revisions: &[(i64, SharedEvents)],
) -> Result<(), StreamId> {
    let mut events = Vec::new();
    let mut size = 0;
    // The first revision in `events`, where a watcher that cannot take them
    // resumes from history.
    let mut first = 0;
    let mut upto = 0;
    let last = revisions.last().map_or(0, |(r, _)| *r);
    let mut revisions = revisions.iter().peekable();
    while let Some((revision, shared)) = revisions.next() {
        let selected = w.select(shared, i64::MAX);
        if !selected.is_empty() {
            if events.is_empty() {
                first = *revision;
            }
            size += selected.iter().map(|e| e.len()).sum::<usize>();
            events.extend(selected);
            upto = *revision;
        }
        let flush = revisions.peek().is_none() || size >= BATCHED_RESPONSE_BYTES;
        if !flush || events.is_empty() {
            continue;
        }
        // A response vouches for the revisions it covers; the batch's last
        // one for the whole batch, as a catch-up response does for the
        // store's revision.
        let vouches = if revisions.peek().is_none() {
            last
        } else {
            upto
        };
        let header = header.map(|h| ResponseHeader {
            revision: vouches,
            ..h
        });
        let out = response(node, header, w, std::mem::take(&mut events));
        size = 0;
        match send(sinks, w.stream, out) {
            Sent::Ok => {
                w.next_rev = upto + 1;
                w.sent_since_tick = true;
            }
            Sent::Full => {
                tracing::debug!(
                    stream = w.stream,
                    watch_id = w.id,
                    revision = first,
                    "watcher fell behind"
                );
                w.synced = false;
                w.next_rev = first;
                return Ok(());
            }
            Sent::Closed => return Err(w.stream),
        }
    }
    Ok(())
}

fn send(sinks: &HashMap<StreamId, Sink>, stream: StreamId, responses: Vec<WatchResponse>) -> Sent {
    let Some(sink) = sinks.get(&stream) else {
        return Sent::Closed;
    };
    match sink.try_send(responses) {
        Ok(()) => Sent::Ok,
        Err(mpsc::error::TrySendError::Full(_)) => Sent::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
    }
}

/// One response for `w`, split into fragments if it asked for them.
fn response(
    node: &Node,
    header: Option<ResponseHeader>,
    w: &Watcher,
    events: Vec<Bytes>,
) -> Vec<WatchResponse> {
    let resp = WatchResponse {
        header,
        watch_id: w.id,
        events,
        ..Default::default()
    };
    if w.fragment {
        // etcd's watch stream limit includes the gRPC overhead allowance.
        fragments(resp, node.max_request_bytes + GRPC_OVERHEAD_BYTES)
    } else {
        vec![resp]
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::{CompactionRequest, WatchCreateRequest};
    use cairn_proto::mvccpb::Event;
    use cairn_raft_backend::{Command, KeyRange};
    use prost::Message;

    use super::*;
    use crate::testing::{self, PATIENCE};

    /// A hub over `node` and one stream on it, as the watch service opens them.
    struct Stream {
        hub: WatchHub,
        rx: mpsc::Receiver<Vec<WatchResponse>>,
        sink: Sink,
    }

    impl Stream {
        fn open(node: &SharedNode) -> Self {
            Self::with_buffer(node, 128)
        }

        /// A stream that buffers `responses` before its watchers fall behind.
        fn with_buffer(node: &SharedNode, responses: usize) -> Self {
            let hub = WatchHub::start(node.clone(), Duration::from_secs(600));
            let (sink, rx) = mpsc::channel(responses);
            Stream { hub, rx, sink }
        }

        /// Registers watcher `id` on `prefix`, from revision `start`.
        fn watch(&self, id: i64, prefix: &str, start: i64) {
            let req = WatchCreateRequest {
                key: prefix.into(),
                range_end: cairn_raft_backend::prefix_end(prefix.as_bytes()),
                start_revision: start,
                ..Default::default()
            };
            let range = KeyRange::new(&req.key, &req.range_end);
            self.hub.send(HubMsg::Register {
                watcher: Watcher::new(id, 1, &req, range, start, None),
                sink: self.sink.clone(),
            });
        }

        async fn next(&mut self) -> Vec<WatchResponse> {
            match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
                Ok(Some(responses)) => responses,
                Ok(None) => panic!("the hub closed the stream"),
                Err(_) => panic!("no response within {PATIENCE:?}"),
            }
        }

        /// Events, in the order received, until one at `upto` arrives.
        async fn events_until(&mut self, upto: i64) -> Vec<Event> {
            let mut events = Vec::new();
            while events.last().map_or(0, revision) < upto {
                for resp in self.next().await {
                    for e in resp.events {
                        events.push(Event::decode(e).expect("an encoded event"));
                    }
                }
            }
            events
        }
    }

    fn revision(e: &Event) -> i64 {
        e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
    }

    fn keys(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    /// A watcher from a past revision first reads history, then follows the
    /// live feed, and sees every event once and in revision order.
    #[tokio::test]
    async fn past_start_catches_up_from_history_then_follows_live() {
        let t = testing::leader().await;
        let first = testing::put(&t.node, "w/a", "1", 0).await;
        testing::put(&t.node, "other", "x", 0).await;
        testing::put(&t.node, "w/b", "2", 0).await;
        let caught_up = testing::put(&t.node, "w/a", "3", 0).await;

        let mut stream = Stream::open(&t.node);
        stream.watch(7, "w/", first);
        let history = stream.events_until(caught_up).await;
        assert_eq!(keys(&history), ["w/a", "w/b", "w/a"]);

        let mut live_revs = Vec::new();
        for (k, v) in [("w/c", "4"), ("other", "y"), ("w/a", "5")] {
            live_revs.push(testing::put(&t.node, k, v, 0).await);
        }
        let live = stream.events_until(live_revs[2]).await;
        assert_eq!(keys(&live), ["w/c", "w/a"]);

        let revs: Vec<i64> = history.iter().chain(&live).map(revision).collect();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "revisions ascend: {revs:?}"
        );
        assert_eq!(revs.first(), Some(&first));
        assert_eq!(revs.last(), Some(&live_revs[2]));
    }

    /// A watcher that starts at the current revision + 1 is fed live only.
    #[tokio::test]
    async fn future_start_is_fed_live() {
        let t = testing::leader().await;
        let now = testing::put(&t.node, "w/a", "1", 0).await;
        let mut stream = Stream::open(&t.node);
        stream.watch(1, "w/", now + 1);
        let next = testing::put(&t.node, "w/b", "2", 0).await;
        let events = stream.events_until(next).await;
        assert_eq!(keys(&events), ["w/b"]);
        assert_eq!(events.iter().map(revision).collect::<Vec<_>>(), [next]);
    }

    /// An import's revisions reach watchers as any others, one revision at a
    /// time with its own number, although one command brought them; a
    /// watcher started during the copy reads the copied state from history.
    #[tokio::test]
    async fn imported_revisions_reach_watchers() {
        use cairn_proto::migrate::{
            BeginRequest, ImportBaseRequest, ImportRevision, ImportRevisionsRequest,
        };
        use cairn_proto::mvccpb::{event::EventType, KeyValue};
        let t = testing::leader().await;
        let store = &t.node.store;
        store
            .migration_begin(BeginRequest {
                source_cluster_id: 1,
                start_revision: 10,
                compact_revision: -1,
                ..Default::default()
            })
            .await
            .expect("begin");
        let kv = |k: &str, create, modr, version| KeyValue {
            key: k.into(),
            value: b"v".to_vec(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        };
        // Started while copying, from revision 2 on.
        let mut early = Stream::open(&t.node);
        early.watch(1, "w/", 2);
        store
            .import_base(ImportBaseRequest {
                kvs: vec![kv("w/a", 4, 4, 1), kv("w/b", 9, 9, 1)],
                done: true,
                ..Default::default()
            })
            .await
            .expect("copy");
        let mut live = Stream::open(&t.node);
        live.watch(2, "w/", 11);
        let put = |kv| Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        };
        store
            .import_revisions(ImportRevisionsRequest {
                after_revision: 10,
                revisions: vec![
                    ImportRevision {
                        revision: 11,
                        events: vec![put(kv("w/a", 4, 0, 2))],
                    },
                    ImportRevision {
                        revision: 12,
                        events: vec![put(kv("w/c", 12, 0, 1))],
                    },
                ],
                ..Default::default()
            })
            .await
            .expect("revisions");
        let events = live.events_until(12).await;
        assert_eq!(events.iter().map(revision).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(keys(&events), ["w/a", "w/c"]);
        let events = early.events_until(12).await;
        assert_eq!(
            events.iter().map(revision).collect::<Vec<_>>(),
            [4, 9, 11, 12]
        );
    }

    /// A start revision below the compaction is answered with a canceled
    /// response that carries the compact revision, as etcd answers it.
    #[tokio::test]
    async fn compacted_start_is_canceled_with_the_compact_revision() {
        let t = testing::leader().await;
        let first = testing::put(&t.node, "w/a", "1", 0).await;
        testing::put(&t.node, "w/a", "2", 0).await;
        let compact = testing::put(&t.node, "w/a", "3", 0).await;
        t.node
            .store
            .propose(Command::Compact(CompactionRequest {
                revision: compact,
                physical: false,
            }))
            .await
            .expect("compact");

        let mut stream = Stream::open(&t.node);
        stream.watch(3, "w/", first);
        let responses = stream.next().await;
        assert_eq!(responses.len(), 1);
        let resp = &responses[0];
        assert!(resp.canceled, "{resp:?}");
        assert_eq!(resp.watch_id, 3);
        assert_eq!(resp.compact_revision, compact);
        assert!(resp.events.is_empty());
    }

    /// A stream that does not keep up is never waited for: its watcher falls
    /// back to history and still gets every event, once and in order.
    #[tokio::test]
    async fn a_full_stream_buffer_falls_back_to_history_without_loss() {
        let t = testing::leader().await;
        let now = t.node.store.applied().current_rev;
        let mut stream = Stream::with_buffer(&t.node, 1);
        stream.watch(1, "w/", now + 1);
        let mut written = Vec::new();
        for i in 0..20 {
            written.push(testing::put(&t.node, &format!("w/{i:02}"), "v", 0).await);
        }
        let events = stream.events_until(written[19]).await;
        assert_eq!(events.iter().map(revision).collect::<Vec<_>>(), written);
        let want: Vec<String> = (0..20).map(|i| format!("w/{i:02}")).collect();
        assert_eq!(keys(&events), want);
    }

    /// A progress request on a stream whose watchers are all synced is
    /// answered once for the stream, at the hub's revision.
    #[tokio::test]
    async fn progress_request_is_answered_for_a_synced_stream() {
        let t = testing::leader().await;
        let now = testing::put(&t.node, "w/a", "1", 0).await;
        let mut stream = Stream::open(&t.node);
        stream.watch(1, "w/", now + 1);
        stream.hub.send(HubMsg::ProgressAll { stream: 1 });
        let responses = stream.next().await;
        assert_eq!(responses.len(), 1);
        let resp = &responses[0];
        assert_eq!(resp.watch_id, NO_WATCH_ID);
        assert!(resp.events.is_empty() && !resp.canceled);
        assert_eq!(resp.header.as_ref().map(|h| h.revision), Some(now));
    }
}
