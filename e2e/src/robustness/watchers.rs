//! The campaign's watchers, as kube-apiserver's reflectors watch: one prefix
//! per stream, from a known revision + 1, with prev_kv and progress_notify,
//! and a WatchProgressRequest every few hundred milliseconds. A stream ends
//! when its member fails, or after a few seconds by choice; the next one
//! resumes from the last revision seen (a compacted start means a fresh
//! start, as a reflector relists). Every stream is recorded whole for
//! [`crate::robustness::watch_check`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::events::{Ev, K};
use crate::robustness::load::PREFIXES;
use crate::robustness::shared::{connect, Shared, REQUEST_TIMEOUT};
use crate::robustness::watch_check::{Seen, Stream};

/// Streams one watcher opens at most (the stop flag ends it long before).
const MAX_STREAMS: usize = 100_000;

/// One watcher task: streams one after another until `shared` says stop.
pub async fn watcher(id: usize, seed: u64, shared: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(1000 + id as u64));
    let prefix = PREFIXES[id % PREFIXES.len()];
    // The revision to resume from (0: the current one).
    let mut resume = 0;
    for n in 0..MAX_STREAMS {
        if shared.stopped() {
            break;
        }
        let Some(ep) = shared.pick_endpoint(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let stream = Stream {
            what: format!("watcher {id} stream {n} on {ep}"),
            prefix: prefix.as_bytes().to_vec(),
            start: resume,
            prev_kv: true,
            seen: Vec::new(),
        };
        let life = Duration::from_millis(rng.random_range(1000..6000));
        let (stream, next) = run_stream(&ep, stream, life, &mut rng, &shared).await;
        resume = next;
        if stream.start > 0 && !stream.seen.is_empty() {
            shared.push(&shared.streams, stream);
        }
    }
}

/// Runs one stream for `life` (or until it fails); returns it and the
/// revision the next stream resumes from.
async fn run_stream(
    ep: &str,
    mut s: Stream,
    life: Duration,
    rng: &mut StdRng,
    shared: &Shared,
) -> (Stream, i64) {
    let Ok(mut c) = connect(ep).await else {
        let resume = resume_from(&s);
        return (s, resume);
    };
    if s.start == 0 {
        // A fresh start (a reflector's list): from the current revision + 1.
        let Ok(Ok(r)) = tokio::time::timeout(REQUEST_TIMEOUT, c.get("health", None)).await else {
            return (s, 0);
        };
        s.start = r.header().map_or(0, |h| h.revision()) + 1;
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(s.start)
        .with_prev_key()
        .with_progress_notify();
    let Ok(Ok((mut watcher, mut responses))) =
        tokio::time::timeout(REQUEST_TIMEOUT, c.watch(s.prefix.clone(), Some(opts))).await
    else {
        let resume = resume_from(&s);
        return (s, resume);
    };
    let end = Instant::now() + life;
    let mut next_progress = Instant::now();
    // Bounded by `end`: every iteration waits at most until the next progress request.
    while Instant::now() < end && !shared.stopped() {
        if Instant::now() >= next_progress {
            if watcher.request_progress().await.is_err() {
                break;
            }
            next_progress = Instant::now() + Duration::from_millis(rng.random_range(100..600));
        }
        let wait = next_progress
            .min(end)
            .saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(wait, responses.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(r))) => r,
            Ok(_) => break,
        };
        if r.canceled() {
            // Compacted (a fresh start next), or the member lost its leader.
            let resume = if r.compact_revision() > 0 {
                0
            } else {
                resume_from(&s)
            };
            return (s, resume);
        }
        record(&mut s, &r);
    }
    let _ = watcher.cancel().await;
    let resume = resume_from(&s);
    (s, resume)
}

/// Where the next stream resumes: after the last event, else where this
/// one started (a progress notification promises nothing about a resumed
/// stream's start, so it is not used).
fn resume_from(s: &Stream) -> i64 {
    s.seen
        .iter()
        .rev()
        .find_map(|x| match x {
            Seen::Event(e) => Some(e.rev() + 1),
            Seen::Progress(_) => None,
        })
        .unwrap_or(s.start)
}

/// Appends a response's events, or its progress notification.
pub fn record(s: &mut Stream, r: &WatchResponse) {
    if r.created() {
        return;
    }
    if r.events().is_empty() {
        s.seen
            .push(Seen::Progress(r.header().map_or(0, |h| h.revision())));
        return;
    }
    for e in r.events() {
        s.seen.push(Seen::Event(event(e)));
    }
}

pub fn event(e: &etcd_client::Event) -> Ev {
    Ev {
        put: e.event_type() == EventType::Put,
        kv: e.kv().map(K::from_client).unwrap_or_else(|| K {
            key: b"<no kv>".to_vec(),
            value: Vec::new(),
            create: -1,
            modr: -1,
            version: -1,
            lease: -1,
        }),
        prev: e.prev_kv().map(K::from_client),
    }
}
