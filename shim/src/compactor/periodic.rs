//! `--auto-compaction-mode periodic`: etcd's `Periodic` compactor.
//!
//! It samples the current revision every tenth of min(retention, 1h) and keeps
//! one retention's worth of samples; the oldest is the revision as of one
//! retention ago. It first compacts once a whole retention has passed, then
//! every min(retention, 1h), to that oldest sample. A failure is retried at the
//! next sample, with the window moved on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{compact_logged, Compactable};

const HOUR: Duration = Duration::from_secs(3600);

/// Samples per compaction interval (etcd's `retryDivisor`).
const RETRY_DIVISOR: u32 = 10;

/// How often a revision is sampled (and a failed compaction retried); at
/// least a millisecond, tokio's timer resolution.
pub(super) fn retry_interval(period: Duration) -> Duration {
    (period.min(HOUR) / RETRY_DIVISOR).max(Duration::from_millis(1))
}

/// Runs until aborted.
pub(super) async fn run<C: Compactable>(member: Arc<C>, period: Duration) {
    let retry = retry_interval(period);
    let compact_interval = period.min(HOUR);
    let retentions = usize::try_from(period.as_nanos() / retry.as_nanos())
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut revs: VecDeque<i64> = VecDeque::new();
    let mut last_revision = 0;
    let mut last_success = Instant::now();
    // The first compaction waits a whole retention, later ones an interval.
    let mut wait = period;
    loop {
        revs.push_back(member.current_revision());
        if revs.len() > retentions {
            revs.pop_front();
        }
        tokio::time::sleep(retry).await;
        if !member.is_leader() {
            continue;
        }
        let Some(&rev) = revs.front() else { continue };
        if last_success.elapsed() < wait || rev == last_revision {
            continue;
        }
        wait = compact_interval;
        if compact_logged(&*member, "periodic", rev, retry).await {
            last_revision = rev;
            last_success = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{at, Fake};
    use super::*;

    const MIN: u64 = 60;

    /// etcd's TestPeriodicHourly: 2h retention, the revision moving one per
    /// sample (6 min); the first compaction at 2h, then hourly.
    #[tokio::test(start_paused = true)]
    async fn two_hours_compacts_hourly_after_the_first_two() {
        let fake = Fake::stepping();
        let _task = fake.spawn(|m| run(m, Duration::from_secs(2 * 3600)));
        fake.until(5 * 60 * MIN + 1).await;
        assert_eq!(
            fake.compactions(),
            [
                at(120 * MIN, 1),
                at(180 * MIN, 10),
                at(240 * MIN, 20),
                at(300 * MIN, 30)
            ]
        );
    }

    /// etcd's TestPeriodicMinutes: 5 min retention, a sample every 30 s; a
    /// compaction every 5 min to the revision of 5 min before.
    #[tokio::test(start_paused = true)]
    async fn five_minutes_compacts_every_five_minutes() {
        let fake = Fake::stepping();
        let _task = fake.spawn(|m| run(m, Duration::from_secs(5 * MIN)));
        fake.until(30 * MIN + 1).await;
        let want = [1, 10, 20, 30, 40, 50];
        let want: Vec<_> = (1..).zip(want).map(|(i, r)| at(i * 5 * MIN, r)).collect();
        assert_eq!(fake.compactions(), want);
    }

    /// etcd's TestPeriodicPause: three hours as a follower, then leader; the
    /// first tick as leader compacts to the sample from one hour before it.
    #[tokio::test(start_paused = true)]
    async fn follower_samples_but_never_compacts() {
        let fake = Fake::stepping();
        fake.set_leader(false);
        let _task = fake.spawn(|m| run(m, HOUR));
        fake.until(198 * MIN + 1).await;
        assert_eq!(fake.compactions(), []);
        fake.set_leader(true);
        fake.until(204 * MIN + 1).await;
        // Samples at 0, 6, ... min read 1, 2, ...; at 204 min the oldest kept
        // is from 138 min: revision 24 (etcd's 1 + 2n + 1 with n = 11).
        assert_eq!(fake.compactions(), [at(204 * MIN, 24)]);
    }

    /// etcd's TestPeriodicSkipRevNotChange: no compaction while the revision
    /// stands still, and one as soon as an older sample differs.
    #[tokio::test(start_paused = true)]
    async fn unchanged_revision_is_not_compacted_again() {
        let fake = Fake::frozen(100);
        let _task = fake.spawn(|m| run(m, Duration::from_secs(5 * MIN)));
        fake.until(30 * MIN + 1).await;
        assert_eq!(fake.compactions(), [at(5 * MIN, 100)]);
        fake.set_rev(101);
        // First sampled at 30.5 min; that sample is the oldest of the eleven
        // kept after the one at 35.5 min.
        fake.until(36 * MIN + 1).await;
        assert_eq!(fake.compactions(), [at(5 * MIN, 100), at(36 * MIN, 101)]);
    }

    /// A failed compaction is retried one sample later, to the oldest
    /// sample then (here the same: the window has just filled).
    #[tokio::test(start_paused = true)]
    async fn failure_is_retried_at_the_next_sample() {
        let fake = Fake::stepping();
        fake.fail_next(1);
        let _task = fake.spawn(|m| run(m, Duration::from_secs(2 * 3600)));
        fake.until(2 * 60 * MIN + 7 * MIN).await;
        assert_eq!(fake.attempts(), [at(120 * MIN, 1), at(126 * MIN, 1)]);
        assert_eq!(fake.compactions(), [at(126 * MIN, 1)]);
    }

    #[test]
    fn samples_every_tenth_of_at_most_an_hour() {
        assert_eq!(
            retry_interval(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        assert_eq!(retry_interval(HOUR), Duration::from_secs(360));
        assert_eq!(retry_interval(24 * HOUR), Duration::from_secs(360));
        assert_eq!(
            retry_interval(Duration::from_nanos(5)),
            Duration::from_millis(1)
        );
    }
}
