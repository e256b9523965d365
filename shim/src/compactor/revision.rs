//! `--auto-compaction-mode revision`: etcd's `Revision` compactor. Every
//! interval (etcd: 5 minutes) the leader compacts to the current revision
//! minus the retention, unless that is not positive or was done last time.

use std::sync::Arc;
use std::time::Duration;

use super::{compact_logged, Compactable};

/// Runs until aborted.
pub(super) async fn run<C: Compactable>(member: Arc<C>, retention: i64, interval: Duration) {
    let mut prev = 0;
    loop {
        tokio::time::sleep(interval).await;
        if !member.is_leader() {
            continue;
        }
        let rev = member.current_revision().saturating_sub(retention);
        if rev <= 0 || rev == prev {
            continue;
        }
        if compact_logged(&*member, "revision", rev, interval).await {
            prev = rev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{at, Fake};
    use super::super::REVISION_INTERVAL;
    use super::*;

    const MIN: u64 = 60;

    /// etcd's TestRevision and TestRevisionPause, retention 10: nothing while
    /// the revision is under the retention or unchanged, nothing on a
    /// follower, and a check every 5 minutes otherwise.
    #[tokio::test(start_paused = true)]
    async fn compacts_current_minus_retention_every_five_minutes() {
        let fake = Fake::frozen(1);
        let _task = fake.spawn(|m| run(m, 10, REVISION_INTERVAL));
        fake.until(5 * MIN + 1).await;
        assert_eq!(fake.attempts(), []);

        fake.set_rev(100);
        fake.until(10 * MIN + 1).await;
        assert_eq!(fake.compactions(), [at(10 * MIN, 90)]);

        fake.until(15 * MIN + 1).await;
        assert_eq!(fake.attempts(), [at(10 * MIN, 90)], "unchanged revision");

        fake.set_rev(200);
        fake.until(20 * MIN + 1).await;
        assert_eq!(fake.compactions(), [at(10 * MIN, 90), at(20 * MIN, 190)]);

        fake.set_leader(false);
        fake.set_rev(300);
        fake.until(3 * 60 * MIN + 1).await;
        assert_eq!(fake.attempts().len(), 2, "a follower does not compact");

        fake.set_leader(true);
        fake.until(3 * 60 * MIN + 5 * MIN + 1).await;
        assert_eq!(
            fake.compactions(),
            [at(10 * MIN, 90), at(20 * MIN, 190), at(185 * MIN, 290)]
        );
    }

    /// A failed compaction is tried again at the next check.
    #[tokio::test(start_paused = true)]
    async fn failure_is_retried_at_the_next_check() {
        let fake = Fake::frozen(50);
        fake.fail_next(1);
        let _task = fake.spawn(|m| run(m, 10, REVISION_INTERVAL));
        fake.until(10 * MIN + 1).await;
        assert_eq!(fake.attempts(), [at(5 * MIN, 40), at(10 * MIN, 40)]);
        assert_eq!(fake.compactions(), [at(10 * MIN, 40)]);
    }
}
