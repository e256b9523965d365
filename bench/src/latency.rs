//! Latency histograms: one shape for every workload, one summary line.

use hdrhistogram::Histogram;

/// Highest latency the histograms track exactly (60 s, in microseconds);
/// anything slower is recorded as this value.
pub(crate) const HIST_MAX_US: u64 = 60_000_000;

pub(crate) fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3)
        .map_err(|e| anyhow::anyhow!("latency histogram: {e:?}"))
}

/// Adds `from`'s samples to `into`; both come from [`new_hist`].
pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(from)
        .map_err(|e| anyhow::anyhow!("merge latency histograms: {e:?}"))
}

/// Locks a mutex of counters; a client task that panicked while holding it
/// left counts that are still worth reporting.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// "p50 … p90 … p99 … p99.9 … max … (mean …)" in milliseconds, from a
/// microsecond histogram: the one latency line every workload prints.
pub(crate) fn latency_summary_ms(h: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
        ms(q(0.5)),
        ms(q(0.9)),
        ms(q(0.99)),
        ms(q(0.999)),
        ms(if h.is_empty() { 0 } else { h.max() }),
        if h.is_empty() { 0.0 } else { h.mean() / 1000.0 }
    )
}
