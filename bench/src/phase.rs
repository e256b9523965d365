//! One measured phase of the put and range workloads: `clients` workers,
//! each with one request in flight, until a count, a duration or the error
//! rate stops them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::kv::KvConn;
use crate::latency::{lock, merge, new_hist, HIST_MAX_US};

/// Completed requests (of a phase) before the error-rate check may abort.
pub(crate) const ERROR_CHECK_MIN_SAMPLES: u64 = 100;

/// SplitMix64: small, fast, good enough to pick keys; avoids a `rand` dependency.
#[derive(Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias < 2^-40 for
    /// any key space a benchmark would use).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Key layout shared by all clients.
pub(crate) struct Keys {
    pub(crate) prefix: Vec<u8>,
    pub(crate) width: usize,
}

impl Keys {
    pub(crate) fn key(&self, idx: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + self.width);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(format!("{idx:0width$}", width = self.width).as_bytes());
        k
    }
}

/// What one request of a phase does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    /// Put key number `ticket` (populating the key space in order).
    Populate,
    /// Put a random key.
    Put,
    /// Range a random key.
    Range,
}

/// Counters shared by the clients of one phase.
#[derive(Default)]
pub(crate) struct PhaseShared {
    pub(crate) issued: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) abort: AtomicBool,
    pub(crate) error_kinds: Mutex<BTreeMap<String, u64>>,
    pub(crate) first_errors: Mutex<Vec<String>>,
}

/// Why a phase stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stop {
    Count,
    Duration,
    TimeLimit,
    Errors,
}

impl Stop {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stop::Count => "count",
            Stop::Duration => "duration",
            Stop::TimeLimit => "time_limit",
            Stop::Errors => "error_rate",
        }
    }
}

pub(crate) struct PhaseResult {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) error_kinds: BTreeMap<String, u64>,
    pub(crate) first_errors: Vec<String>,
    pub(crate) elapsed: Duration,
    pub(crate) hist: Histogram<u64>,
    pub(crate) stop: Stop,
}

/// Everything the clients need, shared.
pub(crate) struct Ctx {
    pub(crate) clients: Vec<KvConn>,
    pub(crate) keys: Keys,
    pub(crate) value: Vec<u8>,
    pub(crate) key_space: u64,
    pub(crate) serializable: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) max_error_rate: f64,
    pub(crate) seed: u64,
    pub(crate) quiet: bool,
}

/// Runs one phase: every client issues requests until `limit` requests were
/// issued in all, `deadline` passes, or the error rate aborts it.
pub(crate) async fn run_phase(
    ctx: &Arc<Ctx>,
    name: &'static str,
    op: Op,
    limit: Option<u64>,
    deadline: Instant,
    deadline_stop: Stop,
    record: bool,
) -> anyhow::Result<PhaseResult> {
    let shared = Arc::new(PhaseShared::default());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(ctx.clients.len());
    for (i, client) in ctx.clients.iter().enumerate() {
        let ctx = Arc::clone(ctx);
        let shared = Arc::clone(&shared);
        let mut client = client.clone();
        let salt = match op {
            Op::Populate => 1,
            Op::Put => 2,
            Op::Range => 3,
        } + if record { 16 } else { 0 };
        let mut rng = Rng(ctx
            .seed
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add(salt << 32)
            .wrapping_add(i as u64));
        let mut hist = new_hist()?;
        tasks.push(tokio::spawn(async move {
            loop {
                if shared.abort.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let ticket = shared.issued.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| ticket >= l) {
                    break;
                }
                let idx = match op {
                    Op::Populate => ticket,
                    Op::Put | Op::Range => rng.below(ctx.key_space),
                };
                let key = ctx.keys.key(idx);
                let t0 = Instant::now();
                let res = tokio::time::timeout(ctx.request_timeout, async {
                    match op {
                        Op::Populate | Op::Put => client.put(key, ctx.value.clone()).await,
                        Op::Range => match client.range(key, ctx.serializable).await {
                            Ok(1) => Ok(()),
                            Ok(n) => Err((
                                "WrongResult".to_string(),
                                format!("range of one key returned {n} kvs"),
                            )),
                            Err(e) => Err(e),
                        },
                    }
                })
                .await;
                let took = t0.elapsed();
                let res = res.unwrap_or_else(|_| {
                    Err((
                        "ClientTimeout".to_string(),
                        format!("no answer within {:?}", ctx.request_timeout),
                    ))
                });
                match res {
                    Ok(()) => {
                        if record {
                            let us = (took.as_micros() as u64).clamp(1, HIST_MAX_US);
                            hist.saturating_record(us);
                        }
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((kind, msg)) => {
                        let errors = shared.errors.fetch_add(1, Ordering::Relaxed) + 1;
                        *lock(&shared.error_kinds).entry(kind.clone()).or_insert(0) += 1;
                        {
                            let mut first = lock(&shared.first_errors);
                            if first.len() < 5 {
                                first.push(format!("{kind}: {msg}"));
                            }
                        }
                        let done = shared.ok.load(Ordering::Relaxed) + errors;
                        if done >= ERROR_CHECK_MIN_SAMPLES
                            && errors as f64 > ctx.max_error_rate * done as f64
                        {
                            shared.abort.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            hist
        }));
    }

    // Progress on stderr every 5 s while the clients run.
    let progress = (!ctx.quiet).then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let ok = shared.ok.load(Ordering::Relaxed);
                let err = shared.errors.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (ok - last.0) as f64 / (now - last.1).as_secs_f64();
                last = (ok, now);
                eprintln!(
                    "bench: {name}: {ok} ok, {err} errors, {rate:.0} ok/s, {:.0}s",
                    (now - start).as_secs_f64()
                );
            }
        })
    });

    let mut hist = new_hist()?;
    for t in tasks {
        match t.await {
            Ok(h) => merge(&mut hist, &h)?,
            Err(e) => {
                // A panicking client is a bug in this module, not a server error;
                // still account for it so that it is not silent.
                shared.errors.fetch_add(1, Ordering::Relaxed);
                lock(&shared.first_errors).push(format!("client task failed: {e}"));
                *lock(&shared.error_kinds)
                    .entry("ClientPanic".into())
                    .or_insert(0) += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    let issued = shared.issued.load(Ordering::Relaxed);
    let stop = if shared.abort.load(Ordering::Relaxed) {
        Stop::Errors
    } else if limit.is_some_and(|l| issued >= l) {
        Stop::Count
    } else {
        deadline_stop
    };
    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let error_kinds = std::mem::take(&mut *lock(&shared.error_kinds));
    let first_errors = std::mem::take(&mut *lock(&shared.first_errors));
    Ok(PhaseResult {
        ok,
        errors,
        error_kinds,
        first_errors,
        elapsed,
        hist,
        stop,
    })
}

/// Fails with a readable message when a phase aborted on errors.
pub(crate) fn check_phase(name: &str, r: &PhaseResult) -> anyhow::Result<()> {
    if r.stop == Stop::Errors {
        bail!(
            "{name} aborted: {} of {} requests failed ({:?}); first errors: {}",
            r.errors,
            r.ok + r.errors,
            r.error_kinds,
            r.first_errors.join(" | ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_size() {
        let k = Keys {
            prefix: b"b/".to_vec(),
            width: 6,
        };
        assert_eq!(k.key(42), b"b/000042".to_vec());
        assert_eq!(k.key(999_999).len(), 8);
    }

    #[test]
    fn rng_below_stays_in_range_and_covers_it() {
        let mut r = Rng(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
