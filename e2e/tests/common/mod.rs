//! Helpers shared by the watch and lease suites (`watch_differential`,
//! `watch_semantics`, `lease`, `kube_patterns`, `etcdctl_watch_lease`).
//!
//! The Rust `etcd-client` hides wire details these suites need (progress
//! responses with watch_id -1, the `fragment` flag, Created/Canceled
//! responses of every watcher on a shared stream), so watches use the raw
//! generated tonic client of `cairn-proto` (the etcd v3 wire definitions;
//! the same bytes reach a real etcd).
//!
//! * [`RawWatch`]: one bidirectional Watch stream; responses are read by a
//!   background task into an unbounded queue (so a test that is busy writing
//!   never slows the server down), or left unread (`open_undrained`) to model
//!   a slow client.
//! * [`Ev`], [`K`], [`NResp`]: comparable forms of events and responses
//!   (cluster_id, member_id and raft_term are left out; they differ between
//!   any two clusters).
//! * [`Flat`]: one watcher's flattened history on a stream: Created, events,
//!   Canceled, with fragments joined and per-response invariants checked.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_e2e::dump::Escaped;
use cairn_e2e::Member;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb;
use pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use pb::watch_create_request::FilterType;

/// Largest message the raw clients decode (fragment tests send ~3 MB
/// unfragmented responses on purpose).
pub const MAX_DECODE: usize = 64 << 20;

/// How long a single expected response may take before a test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Channels and raw clients
// ---------------------------------------------------------------------------

/// A tonic channel to `member` (plain HTTP/2 on 127.0.0.1).
pub async fn channel(member: &Member) -> Result<Channel> {
    Endpoint::from_shared(member.endpoint())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("tonic channel to {}", member.endpoint()))
}

/// A channel with small HTTP/2 flow-control windows: a stream that is not
/// read stalls the server's sends after `window` bytes.
pub async fn channel_small_window(member: &Member, window: u32) -> Result<Channel> {
    Endpoint::from_shared(member.endpoint())?
        .connect_timeout(Duration::from_secs(3))
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window))
        .connect()
        .await
        .with_context(|| format!("tonic channel to {}", member.endpoint()))
}

pub fn lease_client(ch: &Channel) -> pb::lease_client::LeaseClient<Channel> {
    pb::lease_client::LeaseClient::new(ch.clone())
}

pub fn kv_client(ch: &Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch.clone())
}

/// (code, message) of a tonic status, as etcd clients see it.
pub fn status_pair(s: &tonic::Status) -> (String, String) {
    (format!("{:?}", s.code()), s.message().to_string())
}

// ---------------------------------------------------------------------------
// Watch requests
// ---------------------------------------------------------------------------

/// A WatchCreateRequest builder.
#[derive(Clone, Debug, Default)]
pub struct Create(pub pb::WatchCreateRequest);

impl Create {
    /// A single key.
    pub fn key(key: impl AsRef<[u8]>) -> Create {
        Create(pb::WatchCreateRequest {
            key: key.as_ref().to_vec(),
            ..Default::default()
        })
    }
    /// Every key with this prefix.
    pub fn prefix(p: impl AsRef<[u8]>) -> Create {
        let p = p.as_ref().to_vec();
        let end = prefix_end(&p);
        Create(pb::WatchCreateRequest {
            key: p,
            range_end: end,
            ..Default::default()
        })
    }
    /// [key, end).
    pub fn range(key: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Create {
        Create(pb::WatchCreateRequest {
            key: key.as_ref().to_vec(),
            range_end: end.as_ref().to_vec(),
            ..Default::default()
        })
    }
    /// Every key >= key (range_end "\0").
    pub fn from_key(key: impl AsRef<[u8]>) -> Create {
        Create::range(key, [0u8])
    }
    pub fn rev(mut self, r: i64) -> Create {
        self.0.start_revision = r;
        self
    }
    pub fn id(mut self, id: i64) -> Create {
        self.0.watch_id = id;
        self
    }
    pub fn prev_kv(mut self) -> Create {
        self.0.prev_kv = true;
        self
    }
    pub fn progress_notify(mut self) -> Create {
        self.0.progress_notify = true;
        self
    }
    pub fn fragment(mut self) -> Create {
        self.0.fragment = true;
        self
    }
    pub fn no_put(mut self) -> Create {
        self.0.filters.push(FilterType::Noput as i32);
        self
    }
    pub fn no_delete(mut self) -> Create {
        self.0.filters.push(FilterType::Nodelete as i32);
        self
    }
    pub fn request(self) -> pb::WatchRequest {
        pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(self.0)),
        }
    }

    /// Whether this watcher covers `key` (etcd's normalisation: no key means
    /// "\0"; range_end "\0" means "to the end").
    pub fn contains(&self, key: &[u8]) -> bool {
        let k: &[u8] = if self.0.key.is_empty() {
            &[0]
        } else {
            &self.0.key
        };
        let end = &self.0.range_end;
        if end.is_empty() {
            key == k
        } else if end.as_slice() == [0] {
            key >= k
        } else {
            key >= k && key < end.as_slice()
        }
    }

    /// Whether this watcher is sent an event of this type on a key it covers.
    pub fn passes(&self, is_put: bool) -> bool {
        let f = &self.0.filters;
        !(is_put && f.contains(&(FilterType::Noput as i32))
            || !is_put && f.contains(&(FilterType::Nodelete as i32)))
    }
}

/// The end of the range of every key that starts with `p` (etcd's prefix end).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub fn cancel_request(id: i64) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: id,
        })),
    }
}

pub fn progress_request() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
    }
}

// ---------------------------------------------------------------------------
// A raw watch stream
// ---------------------------------------------------------------------------

type RespResult = std::result::Result<pb::WatchResponse, tonic::Status>;

enum Inbound {
    /// Read by a background task as fast as the server sends (the receipt
    /// instant is kept).
    Drained(mpsc::UnboundedReceiver<(Instant, RespResult)>),
    /// Read only when the test asks (a slow client).
    Direct(Box<tonic::Streaming<pb::WatchResponse>>),
}

/// One bidirectional Watch stream.
pub struct RawWatch {
    what: String,
    req: mpsc::Sender<pb::WatchRequest>,
    inbound: Inbound,
    ended: bool,
}

impl RawWatch {
    /// Opens a stream whose first request is `first` (grpc-go only sends the
    /// response headers with the first response, so the stream must carry a
    /// request before the call can complete). Responses are drained by a
    /// background task.
    pub async fn open(ch: &Channel, what: &str, first: Create) -> Result<RawWatch> {
        Self::open_inner(ch, what, first, false).await
    }

    /// Like `open`, with the `hasleader: true` metadata clientv3 sends for
    /// `WithRequireLeader` contexts (as kube-apiserver's watches do).
    pub async fn open_require_leader(ch: &Channel, what: &str, first: Create) -> Result<RawWatch> {
        Self::open_inner(ch, what, first, true).await
    }

    async fn open_inner(ch: &Channel, what: &str, first: Create, leader: bool) -> Result<RawWatch> {
        let (req, streaming) = Self::start(ch, what, first, leader).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streaming = streaming;
        tokio::spawn(async move {
            loop {
                let item = streaming.message().await;
                let done = !matches!(item, Ok(Some(_)));
                let item = match item {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err(tonic::Status::unknown("<stream ended>")),
                    Err(e) => Err(e),
                };
                if tx.send((Instant::now(), item)).is_err() || done {
                    return;
                }
            }
        });
        Ok(RawWatch {
            what: what.to_string(),
            req,
            inbound: Inbound::Drained(rx),
            ended: false,
        })
    }

    /// Like `open`, but nothing reads the stream until `next` is called.
    pub async fn open_undrained(ch: &Channel, what: &str, first: Create) -> Result<RawWatch> {
        let (req, streaming) = Self::start(ch, what, first, false).await?;
        Ok(RawWatch {
            what: what.to_string(),
            req,
            inbound: Inbound::Direct(Box::new(streaming)),
            ended: false,
        })
    }

    async fn start(
        ch: &Channel,
        what: &str,
        first: Create,
        require_leader: bool,
    ) -> Result<(
        mpsc::Sender<pb::WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    )> {
        let (req, rx) = mpsc::channel(1024);
        req.send(first.request())
            .await
            .map_err(|_| anyhow!("request channel"))?;
        let mut client =
            pb::watch_client::WatchClient::new(ch.clone()).max_decoding_message_size(MAX_DECODE);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if require_leader {
            request.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let streaming = tokio::time::timeout(STEP_TIMEOUT, client.watch(request))
            .await
            .with_context(|| format!("{what}: Watch call did not complete"))?
            .with_context(|| format!("{what}: Watch call"))?
            .into_inner();
        Ok((req, streaming))
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// A handle to send requests from another task.
    /// Closes the request side of the stream (a client half-close) while
    /// responses keep being read.
    pub fn close_send(&mut self) {
        let (closed, _) = mpsc::channel(1);
        self.req = closed;
    }

    pub fn sender(&self) -> mpsc::Sender<pb::WatchRequest> {
        self.req.clone()
    }

    pub async fn send(&self, r: pb::WatchRequest) -> Result<()> {
        self.req
            .send(r)
            .await
            .map_err(|_| anyhow!("{}: watch request stream closed", self.what))
    }

    pub async fn create(&self, c: Create) -> Result<()> {
        self.send(c.request()).await
    }

    pub async fn cancel(&self, id: i64) -> Result<()> {
        self.send(cancel_request(id)).await
    }

    pub async fn progress(&self) -> Result<()> {
        self.send(progress_request()).await
    }

    /// The next response with its receipt instant, or None if nothing
    /// arrives within `within`. A stream error or end is an error.
    pub async fn next_timed(
        &mut self,
        within: Duration,
    ) -> Result<Option<(Instant, pb::WatchResponse)>> {
        ensure!(!self.ended, "{}: stream already ended", self.what);
        let got = match &mut self.inbound {
            Inbound::Drained(rx) => match tokio::time::timeout(within, rx.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => Err(tonic::Status::unknown("<reader gone>")),
                Ok(Some((at, r))) => r.map(|r| (at, r)),
            },
            Inbound::Direct(s) => match tokio::time::timeout(within, s.message()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Some(r))) => Ok((Instant::now(), r)),
                Ok(Ok(None)) => Err(tonic::Status::unknown("<stream ended>")),
                Ok(Err(e)) => Err(e),
            },
        };
        match got {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.ended = true;
                bail!("{}: watch stream failed: {e}", self.what)
            }
        }
    }

    /// The next response, or None if nothing arrives within `within`.
    pub async fn try_next(&mut self, within: Duration) -> Result<Option<pb::WatchResponse>> {
        Ok(self.next_timed(within).await?.map(|(_, r)| r))
    }

    /// The next response; an error if none arrives within STEP_TIMEOUT.
    pub async fn next(&mut self) -> Result<pb::WatchResponse> {
        match self.try_next(STEP_TIMEOUT).await? {
            Some(r) => Ok(r),
            None => bail!("{}: no watch response within {STEP_TIMEOUT:?}", self.what),
        }
    }

    /// Expects the next response to be a Created one and returns it.
    pub async fn expect_created(&mut self) -> Result<pb::WatchResponse> {
        let r = self.next().await?;
        ensure!(
            r.created,
            "{}: expected a Created response, got {:?}",
            self.what,
            NResp::from(&r)
        );
        Ok(r)
    }

    /// Expects that no response arrives within `window`. (The point of such
    /// a check is that nothing arrives: waiting out the window is the test.)
    pub async fn expect_silence(&mut self, window: Duration, why: &str) -> Result<()> {
        if let Some(r) = self.try_next(window).await? {
            bail!(
                "{}: expected no response within {window:?} ({why}), got {:?}",
                self.what,
                NResp::from(&r)
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Comparable forms
// ---------------------------------------------------------------------------

/// A key-value with every field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct K {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create: i64,
    pub modr: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<&mvccpb::KeyValue> for K {
    fn from(kv: &mvccpb::KeyValue) -> K {
        K {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create: kv.create_revision,
            modr: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

impl fmt::Debug for K {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: &[u8] = if self.value.len() > 48 {
            &self.value[..48]
        } else {
            &self.value
        };
        write!(
            f,
            "{{{:?}={:?}{} c{} m{} v{} l{}}}",
            Escaped(&self.key),
            Escaped(v),
            if self.value.len() > 48 {
                format!("..({} bytes)", self.value.len())
            } else {
                String::new()
            },
            self.create,
            self.modr,
            self.version,
            self.lease
        )
    }
}

/// An event with every field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ev {
    pub put: bool,
    pub kv: K,
    pub prev: Option<K>,
}

impl Ev {
    pub fn rev(&self) -> i64 {
        self.kv.modr
    }
}

impl From<&mvccpb::Event> for Ev {
    fn from(e: &mvccpb::Event) -> Ev {
        Ev {
            put: e.r#type == mvccpb::event::EventType::Put as i32,
            kv: e.kv.as_ref().map(K::from).unwrap_or_else(|| K {
                key: b"<no kv>".to_vec(),
                value: Vec::new(),
                create: -1,
                modr: -1,
                version: -1,
                lease: -1,
            }),
            prev: e.prev_kv.as_ref().map(K::from),
        }
    }
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} {:?}",
            if self.put { "PUT" } else { "DEL" },
            self.kv.modr,
            self.kv
        )?;
        if let Some(p) = &self.prev {
            write!(f, " prev={p:?}")?;
        }
        Ok(())
    }
}

/// A watch response without cluster_id, member_id and raft_term.
#[derive(Clone, PartialEq, Eq)]
pub struct NResp {
    pub revision: i64,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
    pub events: Vec<Ev>,
}

impl From<&pb::WatchResponse> for NResp {
    fn from(r: &pb::WatchResponse) -> NResp {
        NResp {
            revision: r.header.as_ref().map(|h| h.revision).unwrap_or(-1),
            watch_id: r.watch_id,
            created: r.created,
            canceled: r.canceled,
            compact_revision: r.compact_revision,
            cancel_reason: r.cancel_reason.clone(),
            fragment: r.fragment,
            events: r.events.iter().map(Ev::from).collect(),
        }
    }
}

impl fmt::Debug for NResp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resp{{id {} hdr-rev {}", self.watch_id, self.revision)?;
        if self.created {
            write!(f, " CREATED")?;
        }
        if self.canceled {
            write!(f, " CANCELED")?;
        }
        if self.compact_revision != 0 {
            write!(f, " compact_revision {}", self.compact_revision)?;
        }
        if !self.cancel_reason.is_empty() {
            write!(f, " reason {:?}", self.cancel_reason)?;
        }
        if self.fragment {
            write!(f, " FRAGMENT")?;
        }
        if !self.events.is_empty() {
            write!(f, " {} events {:?}", self.events.len(), self.events)?;
        }
        write!(f, "}}")
    }
}

impl NResp {
    /// A progress response: no events, not created, not canceled.
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled
    }
}

/// What one watcher saw, flattened (independent of how etcd or Cairn
/// grouped events into responses, which is timing-dependent in etcd too).
#[derive(Clone, PartialEq, Eq)]
pub enum Item {
    /// A Created response (header revision; canceled and reason for a
    /// refused creation).
    Created {
        revision: i64,
        canceled: bool,
        reason: String,
    },
    Event(Ev),
    /// A cancel (header revision left out: see the compacted-watch test).
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Created {
                revision,
                canceled,
                reason,
            } => write!(
                f,
                "Created(hdr {revision}, canceled {canceled}, {reason:?})"
            ),
            Item::Event(e) => write!(f, "{e:?}"),
            Item::Canceled {
                compact_revision,
                reason,
            } => write!(f, "Canceled(compact {compact_revision}, {reason:?})"),
        }
    }
}

/// Per watch id: the flattened items, progress responses (kept apart), the
/// highest event revision, and response-level invariant violations.
#[derive(Default)]
pub struct Flat {
    pub items: BTreeMap<i64, Vec<Item>>,
    /// (watch_id, header revision) of progress responses, in arrival order.
    pub progress: Vec<(i64, i64)>,
    pub last_event_rev: BTreeMap<i64, i64>,
    /// Invariant violations found while feeding responses.
    pub violations: Vec<String>,
    /// An unfinished fragmented response: (watch_id, events so far).
    open_fragment: Option<(i64, NResp)>,
    pub responses: usize,
    /// Whole responses whose events span more than one revision.
    pub multi_revision: usize,
    /// Watch ids of Created responses, in arrival order (-1 for refusals).
    pub created_order: Vec<i64>,
}

impl Flat {
    /// Feeds one response. Fragments are joined; the invariants checked on
    /// every whole response are: events in revision order, a header
    /// revision at or above every event revision, per watcher revisions
    /// never go back, and
    /// fragments of one response are contiguous on the stream.
    pub fn feed(&mut self, r: &pb::WatchResponse) {
        self.responses += 1;
        let n = NResp::from(r);
        let whole = match self.open_fragment.take() {
            Some((id, mut acc)) => {
                if n.watch_id != id {
                    self.violations.push(format!(
                        "fragmented response of watcher {id} interleaved with {n:?}"
                    ));
                }
                acc.events.extend(n.events.iter().cloned());
                acc.fragment = n.fragment;
                if n.fragment {
                    self.open_fragment = Some((id, acc));
                    return;
                }
                acc
            }
            None if n.fragment => {
                self.open_fragment = Some((n.watch_id, n));
                return;
            }
            None => n,
        };
        self.feed_whole(whole);
    }

    fn feed_whole(&mut self, n: NResp) {
        let id = n.watch_id;
        if n.created {
            self.created_order.push(id);
            self.items.entry(id).or_default().push(Item::Created {
                revision: n.revision,
                canceled: n.canceled,
                reason: n.cancel_reason.clone(),
            });
            return;
        }
        if n.is_progress() {
            self.progress.push((id, n.revision));
            return;
        }
        if n.events.windows(2).any(|w| w[0].rev() != w[1].rev()) {
            self.multi_revision += 1;
        }
        let mut prev_rev = 0;
        for e in &n.events {
            if e.rev() < prev_rev {
                self.violations
                    .push(format!("events out of revision order in {n:?}"));
            }
            prev_rev = e.rev();
            if e.rev() > n.revision {
                self.violations.push(format!(
                    "event at revision {} above header revision {} in {n:?}",
                    e.rev(),
                    n.revision
                ));
            }
            let last = self.last_event_rev.entry(id).or_insert(0);
            if e.rev() < *last {
                self.violations.push(format!(
                    "watcher {id}: event at revision {} after one at {}",
                    e.rev(),
                    *last
                ));
            }
            *last = (*last).max(e.rev());
            self.items
                .entry(id)
                .or_default()
                .push(Item::Event(e.clone()));
        }
        if n.canceled {
            self.items.entry(id).or_default().push(Item::Canceled {
                compact_revision: n.compact_revision,
                reason: n.cancel_reason.clone(),
            });
        }
    }

    pub fn items(&self, id: i64) -> &[Item] {
        self.items.get(&id).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn events(&self, id: i64) -> Vec<Ev> {
        self.items(id)
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn canceled(&self, id: i64) -> bool {
        self.items(id)
            .iter()
            .any(|i| matches!(i, Item::Canceled { .. }))
    }
}

/// Describes the first difference between two item lists (or None).
pub fn first_difference<T: PartialEq + fmt::Debug>(a: &[T], b: &[T]) -> Option<String> {
    let n = a.len().max(b.len());
    for i in 0..n {
        if a.get(i) != b.get(i) {
            let lo = i.saturating_sub(2);
            let ctx = |v: &[T]| -> String {
                v[lo.min(v.len())..(i + 3).min(v.len())]
                    .iter()
                    .enumerate()
                    .map(|(j, x)| format!("\n      [{}] {x:?}", lo + j))
                    .collect()
            };
            return Some(format!(
                "first difference at index {i} (lengths {} vs {}):\n    etcd:{}\n    cairn:{}",
                a.len(),
                b.len(),
                ctx(a),
                ctx(b)
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// A model of a single-writer keyspace (for gap/duplicate/prev_kv checks)
// ---------------------------------------------------------------------------

/// The expected event of every acknowledged single-key write, built from
/// the writes' own responses: revision (header), and the key's previous
/// state from the model.
#[derive(Default)]
pub struct Model {
    pub state: BTreeMap<Vec<u8>, K>,
    /// revision -> the one event of that revision.
    pub events: BTreeMap<i64, Ev>,
}

impl Model {
    /// Records an acknowledged put of `key`=`value` at `rev` (lease 0).
    pub fn put(&mut self, key: &[u8], value: &[u8], rev: i64, lease: i64) {
        let prev = self.state.get(key).cloned();
        let kv = K {
            key: key.to_vec(),
            value: value.to_vec(),
            create: prev.as_ref().map(|p| p.create).unwrap_or(rev),
            modr: rev,
            version: prev.as_ref().map(|p| p.version).unwrap_or(0) + 1,
            lease,
        };
        self.state.insert(key.to_vec(), kv.clone());
        let old = self.events.insert(
            rev,
            Ev {
                put: true,
                kv,
                prev,
            },
        );
        assert!(old.is_none(), "two writes acknowledged at revision {rev}");
    }

    /// Records an acknowledged delete of an existing `key` at `rev`.
    pub fn delete(&mut self, key: &[u8], rev: i64) {
        let prev = self.state.remove(key);
        let old = self.events.insert(
            rev,
            Ev {
                put: false,
                kv: K {
                    key: key.to_vec(),
                    value: Vec::new(),
                    create: 0,
                    modr: rev,
                    version: 0,
                    lease: 0,
                },
                prev,
            },
        );
        assert!(old.is_none(), "two writes acknowledged at revision {rev}");
    }

    /// The events a watcher on `w` from `start` should see, shaped as the
    /// server sends them (prev_kv only when asked and not for creations).
    pub fn expected(&self, w: &Create, start: i64) -> Vec<Ev> {
        self.events
            .range(start..)
            .map(|(_, e)| e)
            .filter(|e| w.contains(&e.kv.key) && w.passes(e.put))
            .map(|e| {
                let mut e = e.clone();
                let creation = e.put && e.kv.create == e.kv.modr;
                if !w.0.prev_kv || creation {
                    e.prev = None;
                }
                e
            })
            .collect()
    }
}

/// Pumps `w` into `flat` until `done(flat)` holds, or fails after `timeout`.
pub async fn pump_until(
    w: &mut RawWatch,
    flat: &mut Flat,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Flat) -> bool,
) -> Result<()> {
    let start = Instant::now();
    // Bounded: one response per iteration, and the deadline.
    for _ in 0..10_000_000u64 {
        if done(flat) {
            return Ok(());
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        if let Some(r) = w.try_next(left.min(Duration::from_millis(500))).await? {
            flat.feed(&r);
        }
    }
    bail!(
        "{}: timed out after {:?} waiting for {what} ({} responses so far; last event revisions {:?})",
        w.what(),
        start.elapsed(),
        flat.responses,
        flat.last_event_rev
    )
}

/// Starts etcd and Cairn with the same extra arguments for etcd (`etcd_args`)
/// and Cairn (`cairn_args`), concurrently.
pub async fn start_pair(
    etcd_args: &[&str],
    cairn_args: &[&str],
    max_request_bytes: Option<u64>,
) -> Result<(Member, Member)> {
    use cairn_e2e::{Kind, MemberOptions};
    let opts = |args: &[&str]| MemberOptions {
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        max_request_bytes,
        ..Default::default()
    };
    let (e, c) = tokio::join!(
        Member::start_with(Kind::Etcd, opts(etcd_args)),
        Member::start_with(Kind::Cairn, opts(cairn_args))
    );
    Ok((e.context("starting etcd")?, c.context("starting cairn")?))
}

/// The etcd 3.5 flag and the Cairn flag for the progress-notify interval.
pub fn progress_interval_args(interval: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            "--experimental-watch-progress-notify-interval".to_string(),
            interval.to_string(),
        ],
        vec![
            "--watch-progress-notify-interval".to_string(),
            interval.to_string(),
        ],
    )
}
