//! One bidirectional Watch stream on the raw wire, and the requests it carries.
//!
//! * [`Create`]: a WatchCreateRequest builder that also knows which keys and
//!   event types its watcher is sent.
//! * [`RawWatch`]: one Watch stream; responses are read by a background task
//!   into an unbounded queue (so a test that is busy writing never slows the
//!   server down), or left unread (`open_undrained`) to model a slow client.
//! * [`pump_until`]: feeds a stream into a [`Flat`] until a condition holds.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_proto::etcdserverpb as pb;
use pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::events::{Flat, NResp};
use crate::raw::MAX_DECODE;

pub use pb::watch_create_request::FilterType;

/// How long a single expected response may take before a test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

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
