//! `cairn bench --workload watch`: watch fan-out.
//!
//! 1. `--watchers` watchers, all on the prefix `--watch-prefix`, are created
//!    with the generated `WatchClient`, `--watchers-per-stream` per
//!    bidirectional Watch stream (1 by default: one stream per watcher), the
//!    streams spread round robin over `--conns` connections. Every watcher's
//!    Created response must arrive before `--create-timeout`.
//! 2. One writer, on a connection of its own, puts `--rate` values per second
//!    under the prefix for `--duration` (a fixed schedule: a tokio interval with
//!    `MissedTickBehavior::Burst`, and on each tick every write due by then is
//!    issued, so the schedule does not drift; up to `--clients` puts in flight).
//!    Write number `seq` goes to key `<prefix><seq, 10 digits>` and its value
//!    starts with `seq` and the time it was sent (nanoseconds since an
//!    `Instant` shared by writer and watchers), padded to `--val-size` bytes.
//! 3. Every event each watcher receives is checked and timed: delivery latency
//!    = time the response was read − send time of the write, into one
//!    HdrHistogram (one per reader task, merged). Per watcher, by write number
//!    and mod_revision: a write seen twice is a *duplicate*, an event whose
//!    mod_revision is not above the last one seen is *out of order*, and an
//!    acknowledged write that was not received although a later revision was
//!    is *missing* (a gap). Acknowledged writes after the last received
//!    revision that have not arrived when `--drain-timeout` after the last
//!    write passed are *undelivered*. Events that do not belong to the writer
//!    (key or value not as written), unexpected cancellations and stream
//!    errors are errors too. Any of those fails the run (exit status 1, after
//!    the report).
//!
//! With `--server-pid`, the server's VmRSS is read from `/proc/PID/status`
//! before the first watch stream is opened, 1 s after the last Created
//! response, and every 100 ms throughout (the peak), as well as its VmHWM at
//! the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_raft_backend::prefix_end;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch as signal, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::args::BenchArgs;
use crate::connect::connect;
use crate::cpu::process_cpu_seconds;
use crate::latency::{lock, merge, new_hist, HIST_MAX_US};

/// Bytes at the start of each value: the write number and its send time.
const VALUE_HEADER: usize = 16;
/// Digits of the write number in a key.
const KEY_DIGITS: usize = 10;
/// Watch streams being opened at once.
const OPEN_CONCURRENCY: usize = 256;
/// Largest watch response the client accepts (etcd's clientv3 takes any size;
/// catch-up responses can hold thousands of events).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Bound on writes × watchers, the size of the bookkeeping (one bit each).
const MAX_BOOKKEEPING_BITS: u128 = 8_000_000_000;
/// Details kept of the first correctness errors.
const FIRST_ERRORS: usize = 20;
/// Between the last Created response and the "after" memory sample.
const SETTLE: Duration = Duration::from_secs(1);

/// Writes of the run: `--rate` × `--duration` (10 s by default), capped by `--total`.
fn planned_writes(args: &BenchArgs) -> u64 {
    let d = args.duration.unwrap_or(Duration::from_secs(10));
    let n = (d.as_nanos() * args.rate as u128 / 1_000_000_000) as u64;
    args.total.map_or(n, |t| n.min(t))
}

pub(crate) fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.watchers == 0 || args.watchers_per_stream == 0 {
        bail!("--watchers and --watchers-per-stream must be at least 1");
    }
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if args.watch_prefix.is_empty() {
        bail!("--watch-prefix must not be empty");
    }
    if args.val_size < VALUE_HEADER {
        bail!("--val-size must be at least {VALUE_HEADER} for --workload watch (write number and send time)");
    }
    if args.create_timeout.is_zero() || args.drain_timeout.is_zero() {
        bail!("--create-timeout and --drain-timeout must be positive");
    }
    let writes = planned_writes(args);
    if writes == 0 {
        bail!("--rate x --duration is less than one write");
    }
    if writes >= 10u64.pow(KEY_DIGITS as u32) {
        bail!("{writes} writes do not fit the {KEY_DIGITS}-digit key numbers");
    }
    if writes as u128 * args.watchers as u128 > MAX_BOOKKEEPING_BITS {
        bail!(
            "{writes} writes x {} watchers is too many events to track (at most {MAX_BOOKKEEPING_BITS})",
            args.watchers
        );
    }
    Ok(())
}

fn write_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + KEY_DIGITS);
    k.extend_from_slice(prefix);
    k.extend_from_slice(format!("{seq:0KEY_DIGITS$}").as_bytes());
    k
}

/// The write number of a key written by [`write_key`].
fn key_seq(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?;
    if digits.len() != KEY_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A value of `size` (at least [`VALUE_HEADER`]) bytes: write number and send
/// time (big endian), then padding.
fn encode_value(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(VALUE_HEADER));
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&sent_ns.to_be_bytes());
    v.resize(size.max(VALUE_HEADER), b'.');
    v
}

/// Write number and send time of a value made by [`encode_value`].
fn decode_value(v: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// Writes due by `elapsed` into a schedule of `rate` per second whose first
/// write is at 0: write `i` is due at `i / rate` seconds.
fn writes_due(elapsed: Duration, rate: u64) -> u64 {
    (elapsed.as_nanos() * rate as u128 / 1_000_000_000) as u64 + 1
}

/// When write `seq` is due, from the start of the schedule.
fn due_at(seq: u64, rate: u64) -> Duration {
    Duration::from_nanos((seq as u128 * 1_000_000_000 / rate as u128) as u64)
}

/// `Field:   123 kB` of a `/proc/PID/status` text, in kB.
fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    status_kb(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// What one event told a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A write not seen before, in revision order.
    New,
    /// A write this watcher had already received.
    Duplicate,
    /// A write not seen before, but its revision is not above the last one seen.
    OutOfOrder,
}

/// One watcher's bookkeeping: which writes it got, in which order.
#[derive(Debug, Clone)]
struct WatcherState {
    stream: usize,
    watch_id: i64,
    /// Highest mod_revision received.
    last_rev: i64,
    /// Bit `seq`: write `seq` was received.
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl WatcherState {
    fn new(stream: usize, watch_id: i64, writes: u64) -> Self {
        WatcherState {
            stream,
            watch_id,
            last_rev: 0,
            seen: vec![0; writes.div_ceil(64) as usize],
            received: 0,
            duplicates: 0,
            out_of_order: 0,
        }
    }

    fn has(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    fn observe(&mut self, seq: u64, mod_revision: i64) -> Seen {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.seen[word] |= bit;
        self.received += 1;
        if mod_revision <= self.last_rev {
            self.out_of_order += 1;
            Seen::OutOfOrder
        } else {
            self.last_rev = mod_revision;
            Seen::New
        }
    }

    /// Compares what was received with the committed writes (`revs[seq]` is
    /// write `seq`'s revision, 0 when it was not committed).
    fn tally(&self, revs: &[i64], first: &mut Vec<String>) -> Tally {
        let mut t = Tally::default();
        for (seq, &rev) in revs.iter().enumerate() {
            let got = self.has(seq as u64);
            if rev <= 0 {
                t.unlisted_received += got as u64;
                continue;
            }
            t.expected += 1;
            if got {
                t.received += 1;
            } else if rev < self.last_rev {
                t.missing += 1;
                if first.len() < FIRST_ERRORS {
                    first.push(format!(
                        "missing: stream {} watch_id {}: write {seq} (revision {rev}) never arrived, though revision {} did",
                        self.stream, self.watch_id, self.last_rev
                    ));
                }
            } else {
                t.undelivered += 1;
            }
        }
        t
    }
}

/// The outcome of the writes, for all watchers together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Committed writes × watchers.
    expected: u64,
    /// Of those, received.
    received: u64,
    /// Not received, although a later revision was (a gap).
    missing: u64,
    /// Not received, nor anything after them, by the drain deadline.
    undelivered: u64,
    /// Received events of writes not in the store's list (e.g. a put that
    /// timed out and committed only after the writes were read back).
    unlisted_received: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.expected += o.expected;
        self.received += o.received;
        self.missing += o.missing;
        self.undelivered += o.undelivered;
        self.unlisted_received += o.unlisted_received;
    }
}

/// Problems a reader saw other than the per-watcher counts.
#[derive(Default)]
struct ReaderErrors {
    /// Events whose key or value is not what the writer wrote.
    foreign: u64,
    /// Responses for a watch id the stream did not create.
    unknown_watch: u64,
    /// Watchers canceled by the server.
    canceled: u64,
    /// Streams that failed or were closed by the server.
    stream_errors: u64,
    first: Vec<String>,
}

impl ReaderErrors {
    fn note(&mut self, msg: String) {
        if self.first.len() < FIRST_ERRORS {
            self.first.push(msg);
        }
    }
}

/// What a reader task hands back.
struct ReaderOut {
    watchers: Vec<WatcherState>,
    hist: Histogram<u64>,
    errors: ReaderErrors,
    responses: u64,
    events: u64,
    last_event: Option<Instant>,
}

/// An open watch stream: its number, the request side (kept open while the
/// stream is in use: etcd keeps serving a half-closed stream, other servers
/// may not), the responses, and the ids of its watchers.
struct OpenStream {
    index: usize,
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
    watch_ids: Vec<i64>,
    /// Highest header revision of its Created responses.
    created_rev: i64,
}

/// Opens stream `index` with `n` watchers on `[key, range_end)` and waits for
/// each Created response.
async fn open_stream(
    index: usize,
    channel: Channel,
    key: Vec<u8>,
    range_end: Vec<u8>,
    n: usize,
) -> Result<OpenStream, String> {
    let (tx, rx) = mpsc::channel(n + 1);
    for _ in 0..n {
        let create = WatchCreateRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| "request channel closed".to_string())?;
    }
    let mut client = WatchClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut responses = client
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("Watch call failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut watch_ids = Vec::with_capacity(n);
    let mut created_rev = 0;
    while watch_ids.len() < n {
        match responses.message().await {
            Ok(Some(r)) if r.created && !r.canceled => {
                watch_ids.push(r.watch_id);
                created_rev = created_rev.max(r.header.map_or(0, |h| h.revision));
            }
            Ok(Some(r)) if r.canceled => {
                return Err(format!(
                    "watch refused (watch_id {}): {:?}",
                    r.watch_id, r.cancel_reason
                ))
            }
            Ok(Some(r)) => {
                return Err(format!(
                    "response before every Created: watch_id {}, {} events",
                    r.watch_id,
                    r.events.len()
                ))
            }
            Ok(None) => return Err("stream closed by the server before every Created".into()),
            Err(s) => return Err(format!("stream failed: {:?}: {}", s.code(), s.message())),
        }
    }
    Ok(OpenStream {
        index,
        requests: tx,
        responses,
        watch_ids,
        created_rev,
    })
}

/// A response (or error) of a reader's stream number, or `None` when it ended.
type StreamItem = (usize, Option<Result<WatchResponse, tonic::Status>>);

/// Shared by the reader tasks.
struct ReaderCtx {
    epoch: Instant,
    prefix: Vec<u8>,
    writes: u64,
    /// Events of writes new to their watcher, all readers together.
    received: AtomicU64,
}

/// Reads every stream of one connection until told to stop or all streams end.
async fn read_streams(
    ctx: Arc<ReaderCtx>,
    streams: Vec<OpenStream>,
    mut stop: signal::Receiver<bool>,
    hist: Histogram<u64>,
) -> ReaderOut {
    let mut watchers = Vec::new();
    // Per local stream: its index and its watchers' (watch id, slot), sorted.
    let mut by_stream: Vec<(usize, Vec<(i64, usize)>)> = Vec::with_capacity(streams.len());
    let mut all: SelectAll<BoxStream<'static, StreamItem>> = SelectAll::new();
    let mut guards = Vec::with_capacity(streams.len());
    for (local, s) in streams.into_iter().enumerate() {
        let mut ids: Vec<(i64, usize)> = s
            .watch_ids
            .iter()
            .map(|&id| {
                watchers.push(WatcherState::new(s.index, id, ctx.writes));
                (id, watchers.len() - 1)
            })
            .collect();
        ids.sort_unstable();
        by_stream.push((s.index, ids));
        guards.push(s.requests);
        all.push(
            s.responses
                .map(move |r| (local, Some(r)))
                .chain(stream::once(async move { (local, None) }))
                .boxed(),
        );
    }
    let mut out = ReaderOut {
        watchers: Vec::new(),
        hist,
        errors: ReaderErrors::default(),
        responses: 0,
        events: 0,
        last_event: None,
    };
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            item = all.next() => item,
        };
        let Some((local, item)) = item else { break };
        let (stream_index, ids) = &by_stream[local];
        let resp = match item {
            Some(Ok(resp)) => resp,
            Some(Err(s)) => {
                out.errors.stream_errors += 1;
                out.errors.note(format!(
                    "stream {stream_index} failed: {:?}: {}",
                    s.code(),
                    s.message()
                ));
                continue;
            }
            None => {
                out.errors.stream_errors += 1;
                out.errors
                    .note(format!("stream {stream_index} closed by the server"));
                continue;
            }
        };
        let now = Instant::now();
        let now_ns = (now - ctx.epoch).as_nanos() as u64;
        out.responses += 1;
        let Ok(slot) = ids.binary_search_by_key(&resp.watch_id, |&(id, _)| id) else {
            out.errors.unknown_watch += 1;
            out.errors.note(format!(
                "stream {stream_index}: response for watch_id {} it did not create ({} events, canceled {})",
                resp.watch_id,
                resp.events.len(),
                resp.canceled
            ));
            continue;
        };
        let w = &mut watchers[ids[slot].1];
        if resp.canceled {
            out.errors.canceled += 1;
            out.errors.note(format!(
                "stream {stream_index} watch_id {}: canceled by the server: {:?} (compact_revision {})",
                resp.watch_id, resp.cancel_reason, resp.compact_revision
            ));
        }
        let mut new = 0;
        for ev in &resp.events {
            out.events += 1;
            let Some(kv) = ev.kv.as_ref() else {
                out.errors.foreign += 1;
                out.errors.note(format!(
                    "stream {stream_index} watch_id {}: event without kv",
                    resp.watch_id
                ));
                continue;
            };
            let key_seq = key_seq(&ctx.prefix, &kv.key);
            let value = decode_value(&kv.value);
            let (seq, sent_ns) = match (ev.r#type == EventType::Put as i32, key_seq, value) {
                (true, Some(k), Some((seq, sent))) if k == seq && seq < ctx.writes => (seq, sent),
                _ => {
                    out.errors.foreign += 1;
                    out.errors.note(format!(
                        "stream {stream_index} watch_id {}: unexpected event type {} key {:?} revision {} ({} value bytes)",
                        resp.watch_id,
                        ev.r#type,
                        String::from_utf8_lossy(&kv.key),
                        kv.mod_revision,
                        kv.value.len()
                    ));
                    continue;
                }
            };
            let last = w.last_rev;
            match w.observe(seq, kv.mod_revision) {
                Seen::New => new += 1,
                Seen::OutOfOrder => {
                    new += 1;
                    out.errors.note(format!(
                        "out of order: stream {stream_index} watch_id {}: write {seq} at revision {} after revision {last}",
                        resp.watch_id, kv.mod_revision
                    ));
                }
                Seen::Duplicate => {
                    out.errors.note(format!(
                        "duplicate: stream {stream_index} watch_id {}: write {seq} (revision {}) again, last revision {last}",
                        resp.watch_id, kv.mod_revision
                    ));
                    continue;
                }
            }
            let us = (now_ns.saturating_sub(sent_ns) / 1000).clamp(1, HIST_MAX_US);
            out.hist.saturating_record(us);
        }
        if new > 0 {
            ctx.received.fetch_add(new, Ordering::Relaxed);
            out.last_event = Some(now);
        }
    }
    drop(guards);
    out.watchers = watchers;
    out
}

/// Revision of each write `0..writes` the store holds under the prefix
/// (written after `start_rev`, so by this run), 0 for the others.
async fn committed_writes(
    client: KvClient<Channel>,
    prefix: &[u8],
    range_end: &[u8],
    writes: u64,
    start_rev: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<i64>> {
    let mut client = client.max_decoding_message_size(MAX_RESPONSE_BYTES);
    let resp = tokio::time::timeout(
        timeout,
        client.range(RangeRequest {
            key: prefix.to_vec(),
            range_end: range_end.to_vec(),
            keys_only: true,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| anyhow!("Range: no answer within {timeout:?}"))?
    .map_err(|s| anyhow!("Range failed: {:?}: {}", s.code(), s.message()))?
    .into_inner();
    let mut revs = vec![0; writes as usize];
    for kv in resp.kvs {
        if let Some(seq) = key_seq(prefix, &kv.key) {
            if seq < writes && kv.mod_revision > start_rev {
                revs[seq as usize] = kv.mod_revision;
            }
        }
    }
    Ok(revs)
}

/// Acknowledged writes the store does not hold at the acknowledged revision.
fn check_committed(acked: &[i64], committed: &[i64]) -> Vec<String> {
    acked
        .iter()
        .zip(committed)
        .enumerate()
        .filter(|(_, (&a, &c))| a > 0 && a != c)
        .map(|(seq, (&a, &c))| {
            if c == 0 {
                format!("write {seq} was acknowledged at revision {a} but is not in the store")
            } else {
                format!(
                    "write {seq} was acknowledged at revision {a} but is stored at revision {c}"
                )
            }
        })
        .collect()
}

/// The writer's result.
struct Writes {
    /// Revision of each acknowledged write, 0 for the others.
    revs: Vec<i64>,
    issued: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    first_errors: Vec<String>,
    /// From the first scheduled write to the last answer.
    elapsed: Duration,
    /// Put latency.
    hist: Histogram<u64>,
    /// How late writes were sent against their schedule.
    lag: Histogram<u64>,
    stopped_by_time_limit: bool,
}

#[derive(Default)]
struct WriteShared {
    errors: AtomicU64,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    first_errors: Mutex<Vec<String>>,
}

/// Puts `writes` values on the schedule of `rate` per second from `start`.
#[allow(clippy::too_many_arguments)]
async fn write(
    client: KvClient<Channel>,
    epoch: Instant,
    start: Instant,
    prefix: Vec<u8>,
    writes: u64,
    rate: u64,
    val_size: usize,
    in_flight: usize,
    request_timeout: Duration,
    deadline: Instant,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Writes> {
    let revs: Arc<Vec<AtomicI64>> = Arc::new((0..writes).map(|_| AtomicI64::new(0)).collect());
    let shared = Arc::new(WriteShared::default());
    let permits = Arc::new(Semaphore::new(in_flight));
    let period = Duration::from_nanos(1_000_000_000 / rate).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(start.into(), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(writes as usize);
    let mut lag = new_hist()?;
    let mut issued = 0;
    let mut stopped_by_time_limit = false;
    'schedule: while issued < writes {
        let now = tick.tick().await.into_std();
        let due = writes_due(now.saturating_duration_since(start), rate).min(writes);
        while issued < due {
            if Instant::now() >= deadline {
                stopped_by_time_limit = true;
                break 'schedule;
            }
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .map_err(|_| anyhow!("write permits closed"))?;
            let seq = issued;
            issued += 1;
            let late = Instant::now().saturating_duration_since(start + due_at(seq, rate));
            lag.saturating_record((late.as_micros() as u64).clamp(1, HIST_MAX_US));
            let mut client = client.clone();
            let key = write_key(&prefix, seq);
            let revs = Arc::clone(&revs);
            let shared = Arc::clone(&shared);
            let acked = Arc::clone(&acked);
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let t0 = Instant::now();
                let value = encode_value(seq, (t0 - epoch).as_nanos() as u64, val_size);
                let res = tokio::time::timeout(
                    request_timeout,
                    client.put(PutRequest {
                        key,
                        value,
                        ..Default::default()
                    }),
                )
                .await;
                let took = t0.elapsed();
                let err = match res {
                    Ok(Ok(r)) => match r.into_inner().header {
                        Some(h) if h.revision > 0 => {
                            revs[seq as usize].store(h.revision, Ordering::Relaxed);
                            acked.fetch_add(1, Ordering::Relaxed);
                            return Some(took);
                        }
                        _ => (
                            "NoRevision".to_string(),
                            "put answer without a revision".into(),
                        ),
                    },
                    Ok(Err(s)) => (format!("{:?}", s.code()), s.message().to_string()),
                    Err(_) => (
                        "ClientTimeout".to_string(),
                        format!("no answer within {request_timeout:?}"),
                    ),
                };
                shared.errors.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.error_kinds).entry(err.0.clone()).or_insert(0) += 1;
                let mut first = lock(&shared.first_errors);
                if first.len() < 5 {
                    first.push(format!("write {seq}: {}: {}", err.0, err.1));
                }
                None
            }));
        }
    }
    let mut hist = new_hist()?;
    for t in tasks {
        match t.await {
            Ok(Some(took)) => {
                hist.saturating_record((took.as_micros() as u64).clamp(1, HIST_MAX_US));
            }
            Ok(None) => {}
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                lock(&shared.first_errors).push(format!("write task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    let revs = revs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let error_kinds = std::mem::take(&mut *lock(&shared.error_kinds));
    let first_errors = std::mem::take(&mut *lock(&shared.first_errors));
    Ok(Writes {
        revs,
        issued,
        errors: shared.errors.load(Ordering::Relaxed),
        error_kinds,
        first_errors,
        elapsed,
        hist,
        lag,
        stopped_by_time_limit,
    })
}

fn quantiles_us(h: &Histogram<u64>) -> serde_json::Value {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    serde_json::json!({
        "min": if h.is_empty() { 0 } else { h.min() },
        "mean": if h.is_empty() { 0.0 } else { h.mean() },
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p99_9": q(0.999),
        "max": if h.is_empty() { 0 } else { h.max() },
    })
}

/// Runs the watch fan-out workload on connections already open.
pub(crate) async fn run(
    args: &BenchArgs,
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    server: serde_json::Value,
    run_start: Instant,
) -> anyhow::Result<()> {
    let hard_deadline = run_start + args.time_limit;
    let say = |msg: String| {
        if !args.quiet {
            eprintln!("bench: {msg}");
        }
    };
    let n = args.watchers;
    let per = args.watchers_per_stream.min(n);
    let n_streams = n.div_ceil(per);
    let writes = planned_writes(args);
    let prefix = args.watch_prefix.as_bytes().to_vec();
    let range_end = prefix_end(&prefix);
    let epoch = Instant::now();

    // The writer has a connection of its own, so that its puts do not queue
    // behind the event flood on the watchers' connections.
    let writer_channel = connect(&endpoints[0]).await?;

    // Server memory: baseline, then sampled throughout.
    let pid = args.server_pid;
    let rss_before = pid.and_then(|p| proc_kb(p, "VmRSS"));
    if let (Some(p), None) = (pid, rss_before) {
        bail!("--server-pid {p}: cannot read /proc/{p}/status");
    }
    let rss_peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let sampler = pid.map(|p| {
        let peak = Arc::clone(&rss_peak);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(100));
            loop {
                t.tick().await;
                if let Some(kb) = proc_kb(p, "VmRSS") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
            }
        })
    });

    // 1. Watchers.
    say(format!(
        "creating {n} watchers on {:?}: {n_streams} streams of {per} over {} connections",
        args.watch_prefix,
        channels.len()
    ));
    let create_start = Instant::now();
    let create_deadline = (create_start + args.create_timeout).min(hard_deadline);
    let mut opens = stream::iter(0..n_streams)
        .map(|i| {
            let watchers = per.min(n - i * per);
            open_stream(
                i,
                channels[i % channels.len()].clone(),
                prefix.clone(),
                range_end.clone(),
                watchers,
            )
        })
        .buffer_unordered(OPEN_CONCURRENCY);
    let mut by_conn: Vec<Vec<OpenStream>> = (0..channels.len()).map(|_| Vec::new()).collect();
    let mut created = 0usize;
    let mut start_rev = 0;
    let mut last_note = Instant::now();
    while created < n {
        match tokio::time::timeout_at(create_deadline.into(), opens.next()).await {
            Ok(Some(Ok(s))) => {
                created += s.watch_ids.len();
                start_rev = start_rev.max(s.created_rev);
                by_conn[s.index % channels.len()].push(s);
            }
            Ok(Some(Err(e))) => bail!("creating watchers: {e} ({created} of {n} created)"),
            Ok(None) => break,
            Err(_) => bail!(
                "only {created} of {n} watchers were created within {:?} ({} streams over {} connections; \
                 a server limit on concurrent streams per connection? try more --conns)",
                create_deadline - create_start,
                n_streams,
                channels.len()
            ),
        }
        if !args.quiet && last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            say(format!("{created} of {n} watchers created"));
        }
    }
    drop(opens);
    let create_s = create_start.elapsed().as_secs_f64();
    say(format!("{created} watchers created in {create_s:.2} s"));

    // 2. Readers, one per connection.
    let ctx = Arc::new(ReaderCtx {
        epoch,
        prefix: prefix.clone(),
        writes,
        received: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = signal::channel(false);
    let readers: Vec<_> = by_conn
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            Ok(tokio::spawn(read_streams(
                Arc::clone(&ctx),
                s,
                stop_rx.clone(),
                new_hist()?,
            )))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut rss_after = None;
    if let Some(p) = pid {
        tokio::time::sleep(SETTLE).await;
        rss_after = proc_kb(p, "VmRSS");
    }

    // 3. Writes, paced.
    say(format!(
        "writing {writes} values of {} B at {} /s under {:?} (up to {} in flight)",
        args.val_size, args.rate, args.watch_prefix, args.clients
    ));
    let cpu_before = process_cpu_seconds();
    let acked = Arc::new(AtomicU64::new(0));
    let write_start = Instant::now();
    let progress = (!args.quiet).then(|| {
        let ctx = Arc::clone(&ctx);
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            t.tick().await;
            loop {
                t.tick().await;
                eprintln!(
                    "bench: watch: {} writes acknowledged, {} events received, {:.0}s",
                    acked.load(Ordering::Relaxed),
                    ctx.received.load(Ordering::Relaxed),
                    write_start.elapsed().as_secs_f64()
                );
            }
        })
    });
    let writer = KvClient::new(writer_channel);
    let w = write(
        writer.clone(),
        epoch,
        write_start,
        prefix.clone(),
        writes,
        args.rate,
        args.val_size,
        args.clients,
        args.request_timeout,
        hard_deadline,
        Arc::clone(&acked),
    )
    .await?;
    let writes_done = Instant::now();
    let acked_n = w.revs.iter().filter(|&&r| r > 0).count() as u64;

    // What the store holds: every committed write, including those whose put
    // timed out or failed on the client's side, is due to every watcher.
    let mut store_errors = Vec::new();
    let revs = match committed_writes(
        writer,
        &prefix,
        &range_end,
        writes,
        start_rev,
        args.request_timeout,
    )
    .await
    {
        Ok(committed) => {
            store_errors = check_committed(&w.revs, &committed);
            committed
        }
        Err(e) => {
            say(format!(
                "warning: cannot read back the writes ({e}); expecting the acknowledged ones only"
            ));
            w.revs.clone()
        }
    };
    let committed_n = revs.iter().filter(|&&r| r > 0).count() as u64;

    // 4. Drain: wait until every watcher has every committed write.
    let target = committed_n * created as u64;
    let drain_deadline = (writes_done + args.drain_timeout).min(hard_deadline);
    let mut drained = true;
    while ctx.received.load(Ordering::Relaxed) < target {
        if Instant::now() >= drain_deadline {
            drained = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_s = writes_done.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut hist = new_hist()?;
    let mut errs = ReaderErrors::default();
    let mut tally = Tally::default();
    let mut dup = 0;
    let mut ooo = 0;
    let mut responses = 0;
    let mut events_total = 0;
    let mut last_event: Option<Instant> = None;
    let mut gap_details = Vec::new();
    let mut reader_panics = 0;
    for r in readers {
        let r = match r.await {
            Ok(r) => r,
            Err(e) => {
                reader_panics += 1;
                errs.note(format!("reader task failed: {e}"));
                continue;
            }
        };
        merge(&mut hist, &r.hist)?;
        errs.foreign += r.errors.foreign;
        errs.unknown_watch += r.errors.unknown_watch;
        errs.canceled += r.errors.canceled;
        errs.stream_errors += r.errors.stream_errors;
        for m in r.errors.first {
            errs.note(m);
        }
        responses += r.responses;
        events_total += r.events;
        last_event = last_event.max(r.last_event);
        for ws in &r.watchers {
            tally += ws.tally(&revs, &mut gap_details);
            dup += ws.duplicates;
            ooo += ws.out_of_order;
        }
    }
    let cpu_after = process_cpu_seconds();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(s) = sampler {
        s.abort();
    }
    let rss_end = pid.and_then(|p| proc_kb(p, "VmRSS"));
    if let Some(kb) = rss_end {
        rss_peak.fetch_max(kb, Ordering::Relaxed);
    }
    let hwm = pid.and_then(|p| proc_kb(p, "VmHWM"));
    for m in store_errors.iter().chain(&gap_details) {
        errs.note(m.clone());
    }

    let correctness_errors = store_errors.len() as u64
        + tally.missing
        + dup
        + ooo
        + errs.foreign
        + errs.unknown_watch
        + errs.canceled
        + errs.stream_errors
        + reader_panics;
    let delivery_s = last_event
        .map(|l| l.saturating_duration_since(write_start).as_secs_f64())
        .unwrap_or(0.0);
    let events_per_sec = if delivery_s > 0.0 {
        tally.received as f64 / delivery_s
    } else {
        0.0
    };
    let write_rate = acked_n as f64 / w.elapsed.as_secs_f64().max(1e-9);
    let stopped_by = if w.stopped_by_time_limit || (!drained && Instant::now() >= hard_deadline) {
        "time_limit"
    } else if !drained {
        "drain_timeout"
    } else {
        "complete"
    };
    let per_watcher = rss_before
        .zip(rss_after)
        .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / created as f64);
    let result = serde_json::json!({
        "workload": "watch",
        "endpoints": endpoints,
        "server": server,
        "conns": channels.len(),
        "watchers": created,
        "watchers_per_stream": per,
        "streams": n_streams,
        "watch_prefix": args.watch_prefix,
        "rate": args.rate,
        "duration_s": due_at(writes, args.rate).as_secs_f64(),
        "val_size": args.val_size,
        "max_in_flight_writes": args.clients,
        "create_s": create_s,
        "stopped_by": stopped_by,
        "writes": {
            "planned": writes,
            "issued": w.issued,
            "acknowledged": acked_n,
            "committed": committed_n,
            "not_stored_as_acknowledged": store_errors.len(),
            "errors": w.errors,
            "error_kinds": w.error_kinds,
            "first_errors": w.first_errors,
            "elapsed_s": w.elapsed.as_secs_f64(),
            "per_sec": write_rate,
            "put_latency_us": quantiles_us(&w.hist),
            "send_lag_us": quantiles_us(&w.lag),
        },
        "events": {
            "expected": tally.expected,
            "received": tally.received,
            "missing": tally.missing,
            "undelivered": tally.undelivered,
            "duplicates": dup,
            "out_of_order": ooo,
            "foreign": errs.foreign,
            "unknown_watch_id": errs.unknown_watch,
            "canceled_watchers": errs.canceled,
            "stream_errors": errs.stream_errors,
            "unlisted_received": tally.unlisted_received,
            "total_events_read": events_total,
            "responses": responses,
            "events_per_response": if responses > 0 { events_total as f64 / responses as f64 } else { 0.0 },
        },
        "correctness_errors": correctness_errors,
        "first_errors": errs.first,
        "drain_s": drain_s,
        "delivery_s": delivery_s,
        // For the comparison script: delivered events per second, and errors.
        "ok": tally.received,
        "errors": correctness_errors + tally.undelivered,
        "ops_per_sec": events_per_sec,
        "client_cpu_s": cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        "client_cpu_total_s": cpu_after,
        "latency_us": quantiles_us(&hist),
        "server_rss": pid.map(|p| serde_json::json!({
            "pid": p,
            "before_kb": rss_before,
            "after_create_kb": rss_after,
            "peak_kb": rss_peak.load(Ordering::Relaxed),
            "end_kb": rss_end,
            "hwm_kb": hwm,
            "per_watcher_bytes": per_watcher,
        })),
    });

    if args.json {
        println!("{result}");
    } else {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &hist;
        println!(
            "watch fan-out against {} ({})",
            endpoints.join(","),
            server["version"].as_str().unwrap_or("version unknown")
        );
        println!(
            "  {created} watchers on {:?}, {n_streams} streams of {per} over {} conns, created in {create_s:.2} s",
            args.watch_prefix,
            channels.len()
        );
        println!(
            "  writes: {acked_n} of {writes} acknowledged ({} errors, {committed_n} committed) at {write_rate:.1}/s (target {}/s), values {} B; put p99 {:.3} ms, send lag p99 {:.3} ms",
            w.errors,
            args.rate,
            args.val_size,
            ms(w.hist.value_at_quantile(0.99)),
            ms(w.lag.value_at_quantile(0.99))
        );
        println!(
            "  events: {} of {} expected received; {events_per_sec:.0} events/s over {delivery_s:.2} s ({stopped_by}, drained {drain_s:.2} s after the last write)",
            tally.received, tally.expected
        );
        println!(
            "  delivery latency ms: {}",
            crate::latency::latency_summary_ms(h)
        );
        println!(
            "  errors: {} writes not stored as acknowledged, {} missing, {} duplicates, {} out of order, {} foreign, {} unknown watch ids, {} canceled, {} stream errors; {} undelivered at the deadline",
            store_errors.len(), tally.missing, dup, ooo, errs.foreign, errs.unknown_watch, errs.canceled, errs.stream_errors, tally.undelivered
        );
        if let Some(b) = rss_before {
            println!(
                "  server RSS: {:.1} MB before, {:.1} MB after creating the watchers ({:.0} B per watcher), peak {:.1} MB",
                b as f64 / 1024.0,
                rss_after.unwrap_or(0) as f64 / 1024.0,
                per_watcher.unwrap_or(0.0),
                rss_peak.load(Ordering::Relaxed) as f64 / 1024.0
            );
        }
        for e in &errs.first {
            println!("    {e}");
        }
        for e in &w.first_errors {
            println!("    {e}");
        }
    }
    if stopped_by == "time_limit" {
        say(format!(
            "warning: cut short by --time-limit {:?}: {} of {writes} writes issued{}",
            args.time_limit,
            w.issued,
            if drained { "" } else { ", events still due" }
        ));
    }
    if correctness_errors > 0 {
        bail!(
            "watch: {correctness_errors} correctness errors ({} writes not stored as acknowledged, {} missing, {dup} duplicates, {ooo} out of order, {} foreign, {} unknown watch ids, {} canceled watchers, {} stream errors); first: {}",
            store_errors.len(),
            tally.missing,
            errs.foreign,
            errs.unknown_watch,
            errs.canceled,
            errs.stream_errors,
            errs.first.first().map_or("", String::as_str)
        );
    }
    if tally.undelivered > 0 {
        bail!(
            "watch: {} of {} expected events not delivered within --drain-timeout {:?} after the last write",
            tally.undelivered,
            tally.expected,
            args.drain_timeout
        );
    }
    if w.errors as f64 > args.max_error_rate * w.issued.max(1) as f64 {
        bail!(
            "watch: {} of {} writes failed ({:?})",
            w.errors,
            w.issued,
            w.error_kinds
        );
    }
    if tally.received == 0 {
        return Err(anyhow!("no event was received"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_write_number_and_send_time() {
        let v = encode_value(42, 1_234_567_890_123, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(decode_value(&v), Some((42, 1_234_567_890_123)));
        assert_eq!(encode_value(1, 2, 3).len(), VALUE_HEADER);
        assert_eq!(
            decode_value(&encode_value(u64::MAX, 0, 16)),
            Some((u64::MAX, 0))
        );
        assert_eq!(decode_value(b"short"), None);
    }

    #[test]
    fn keys_carry_write_number() {
        let k = write_key(b"/fanout/", 7);
        assert_eq!(k, b"/fanout/0000000007".to_vec());
        assert_eq!(key_seq(b"/fanout/", &k), Some(7));
        assert_eq!(key_seq(b"/other/", &k), None);
        assert_eq!(key_seq(b"/fanout/", b"/fanout/12"), None);
        assert_eq!(key_seq(b"/fanout/", b"/fanout/00000000x7"), None);
    }

    #[test]
    fn prefix_range_end() {
        assert_eq!(prefix_end(b"/fanout/"), b"/fanout0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn schedule_does_not_drift() {
        assert_eq!(writes_due(Duration::ZERO, 1000), 1);
        assert_eq!(writes_due(Duration::from_micros(999), 1000), 1);
        assert_eq!(writes_due(Duration::from_millis(1), 1000), 2);
        assert_eq!(writes_due(Duration::from_secs(10), 1000), 10_001);
        // A late tick catches up on everything due (a burst).
        assert_eq!(writes_due(Duration::from_millis(250), 1000), 251);
        assert_eq!(writes_due(Duration::from_millis(1500), 3), 5);
        assert_eq!(due_at(0, 1000), Duration::ZERO);
        assert_eq!(due_at(1500, 1000), Duration::from_millis(1500));
        assert_eq!(due_at(1, 3), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn planned_writes_follow_rate_duration_and_total() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            b: BenchArgs,
        }
        let a = Cli::parse_from(["x", "--workload", "watch"]).b;
        assert_eq!(planned_writes(&a), 10_000);
        assert!(crate::args::validate(&a).is_ok());
        assert!(super::validate(&a).is_ok());
        let a = Cli::parse_from([
            "x",
            "--workload",
            "watch",
            "--duration",
            "2s",
            "--rate",
            "50",
        ])
        .b;
        assert_eq!(planned_writes(&a), 100);
        let a = Cli::parse_from(["x", "--workload", "watch", "--total", "7"]).b;
        assert_eq!(planned_writes(&a), 7);
        let a = Cli::parse_from(["x", "--workload", "watch", "--val-size", "8"]).b;
        assert!(super::validate(&a).is_err());
        let a = Cli::parse_from(["x", "--workload", "watch", "--watchers", "0"]).b;
        assert!(super::validate(&a).is_err());
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let mut w = WatcherState::new(0, 0, 4);
        for (seq, rev) in [(0, 10), (1, 11), (2, 12), (3, 13)] {
            assert_eq!(w.observe(seq, rev), Seen::New);
        }
        let mut first = Vec::new();
        let t = w.tally(&[10, 11, 12, 13], &mut first);
        assert_eq!(
            t,
            Tally {
                expected: 4,
                received: 4,
                ..Default::default()
            }
        );
        assert!(first.is_empty());
        assert_eq!((w.duplicates, w.out_of_order), (0, 0));
    }

    #[test]
    fn duplicates_and_reordering_are_counted() {
        let mut w = WatcherState::new(3, 1, 4);
        assert_eq!(w.observe(0, 10), Seen::New);
        assert_eq!(w.observe(2, 12), Seen::New);
        assert_eq!(w.observe(2, 12), Seen::Duplicate);
        assert_eq!(w.observe(1, 11), Seen::OutOfOrder);
        assert_eq!(w.observe(3, 13), Seen::New);
        assert_eq!((w.received, w.duplicates, w.out_of_order), (4, 1, 1));
        assert_eq!(w.last_rev, 13);
    }

    #[test]
    fn gaps_are_missing_and_tails_are_undelivered() {
        // Writes 0..6 at revisions 10..16; write 4 failed (not acknowledged).
        let revs = [10, 11, 12, 13, 0, 15, 16];
        let mut w = WatcherState::new(0, 5, 7);
        w.observe(0, 10);
        w.observe(2, 12); // 1 skipped: a gap
        w.observe(4, 14); // the unacknowledged write did land
        w.observe(5, 15);
        // 3 is a gap too; 6 (after the last received revision) is late.
        let mut first = Vec::new();
        let t = w.tally(&revs, &mut first);
        assert_eq!(
            t,
            Tally {
                expected: 6,
                received: 3,
                missing: 2,
                undelivered: 1,
                unlisted_received: 1,
            }
        );
        assert_eq!(first.len(), 2);
        assert!(first[0].contains("write 1 (revision 11)"), "{}", first[0]);
    }

    #[test]
    fn acknowledged_writes_must_be_stored_as_acknowledged() {
        assert!(check_committed(&[10, 0, 12], &[10, 11, 12]).is_empty());
        let e = check_committed(&[10, 11, 12], &[10, 0, 13]);
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("write 1") && e[0].contains("not in the store"));
        assert!(e[1].contains("stored at revision 13"));
    }

    #[test]
    fn bitset_grows_for_unplanned_numbers() {
        let mut w = WatcherState::new(0, 0, 1);
        assert_eq!(w.observe(1000, 5), Seen::New);
        assert!(w.has(1000));
        assert!(!w.has(999));
        assert!(!w.has(100_000));
    }

    #[test]
    fn proc_status_fields() {
        let s = "Name:\tetcd\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        assert_eq!(status_kb(s, "VmRSS"), Some(10240));
        assert_eq!(status_kb(s, "VmHWM"), Some(20480));
        assert_eq!(status_kb(s, "VmSwap"), None);
        if cfg!(target_os = "linux") {
            assert!(proc_kb(std::process::id(), "VmRSS").is_some_and(|kb| kb > 0));
        }
    }
}
