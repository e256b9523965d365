//! The reference watcher: one watcher of the whole keyspace from revision
//! 1, with prev_kv, that resumes on another member whenever its stream fails
//! and so collects every event of the run (the [`History`] the checks judge
//! against). It publishes how far it got in `Shared::reference_seen`, which
//! bounds the compactor, so a resume is never refused as compacted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use etcd_client::WatchOptions;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

use crate::events::Ev;
use crate::robustness::history::History;
use crate::robustness::shared::{connect, Shared, REQUEST_TIMEOUT};
use crate::robustness::watchers::event;

/// Responses one stream is read for at most (it ends long before).
const MAX_RESPONSES: u64 = 100_000_000;

/// Collects events until it has every event up to the revision sent on
/// `until` (which starts at `i64::MAX`: run until told), or `deadline`
/// passes after that.
pub async fn reference(
    shared: Arc<Shared>,
    mut until: watch::Receiver<i64>,
    patience: Duration,
) -> Result<History> {
    let mut rng = StdRng::seed_from_u64(0x0ef);
    let mut events: Vec<Ev> = Vec::new();
    let mut seen = 1i64;
    let mut deadline: Option<Instant> = None;
    // Why the last stream ended, for the report.
    let mut why = String::from("no stream yet");
    // Bounded by the deadline once the end is known; until then, by the run.
    for attempt in 0..u64::MAX {
        let target = *until.borrow_and_update();
        if target != i64::MAX && deadline.is_none() {
            deadline = Some(Instant::now() + patience);
        }
        if seen >= target {
            return Ok(History::new(events));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "the reference watcher reached revision {seen} of {target} in {patience:?} \
                 ({attempt} streams; the last ended: {why})"
            );
        }
        let Some(ep) = shared.pick_endpoint(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut c = match connect(&ep).await {
            Ok(c) => c,
            Err(e) => {
                why = format!("{e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let opts = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(seen + 1)
            .with_prev_key();
        let (mut watcher, mut stream) =
            match tokio::time::timeout(REQUEST_TIMEOUT, c.watch(vec![0u8], Some(opts))).await {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    why = format!("{ep}: watch from {}: {e}", seen + 1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    why = format!("{ep}: watch from {}: no Created response", seen + 1);
                    continue;
                }
            };
        let mut next_progress = Instant::now();
        // Bounded: a response or a progress request per iteration, until the
        // stream fails or the deadline passes once the end is known.
        for _ in 0..MAX_RESPONSES {
            let target = *until.borrow();
            if target != i64::MAX && deadline.is_none() {
                deadline = Some(Instant::now() + patience);
            }
            if seen >= target || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if Instant::now() >= next_progress {
                if watcher.request_progress().await.is_err() {
                    break;
                }
                next_progress = Instant::now() + Duration::from_millis(200);
            }
            let wait = next_progress.saturating_duration_since(Instant::now());
            let r = match tokio::time::timeout(wait, stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => {
                    why = format!("{ep}: the stream ended at revision {seen}");
                    break;
                }
                Ok(Err(e)) => {
                    why = format!("{ep}: the stream failed at revision {seen}: {e}");
                    break;
                }
            };
            if r.canceled() {
                if r.compact_revision() > 0 {
                    bail!(
                        "the reference watcher's resume from revision {} was refused as compacted at {} \
                         (the compactor never compacts above {seen})",
                        seen + 1,
                        r.compact_revision()
                    );
                }
                why = format!("{ep}: canceled: {}", r.cancel_reason());
                break;
            }
            if r.events().is_empty() {
                // A progress notification: every event up to it was sent.
                let rev = r.header().map_or(0, |h| h.revision());
                seen = seen.max(rev);
            }
            for e in r.events() {
                let ev = event(e);
                seen = seen.max(ev.rev());
                events.push(ev);
            }
            shared.reference_seen.store(seen, Ordering::SeqCst);
        }
        let _ = watcher.cancel().await;
    }
    bail!("unreachable: the attempt counter overflowed")
}
