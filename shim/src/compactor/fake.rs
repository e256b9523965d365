//! A member for the compactor's schedule tests, on tokio's paused clock: its
//! revision either moves one per read (etcd's `fakeRevGetter`) or stands
//! where the test puts it, and it records when it was asked to compact what.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_raft_backend::StoreError;
use tokio::time::Instant;

use super::Compactable;

/// (seconds since the test began, revision).
pub type At = (Duration, i64);

pub fn at(secs: u64, revision: i64) -> At {
    (Duration::from_secs(secs), revision)
}

pub struct Fake {
    start: Instant,
    rev: AtomicI64,
    stepping: bool,
    leader: AtomicBool,
    failures: AtomicUsize,
    attempts: Mutex<Vec<At>>,
    done: Mutex<Vec<At>>,
}

/// Aborts the compactor when the test ends.
pub struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Fake {
    fn new(rev: i64, stepping: bool) -> Arc<Self> {
        Arc::new(Fake {
            start: Instant::now(),
            rev: AtomicI64::new(rev),
            stepping,
            leader: AtomicBool::new(true),
            failures: AtomicUsize::new(0),
            attempts: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
        })
    }

    /// Reads 1, 2, 3, ...
    pub fn stepping() -> Arc<Self> {
        Self::new(0, true)
    }

    /// Reads `rev` until `set_rev`.
    pub fn frozen(rev: i64) -> Arc<Self> {
        Self::new(rev, false)
    }

    pub fn set_rev(&self, rev: i64) {
        self.rev.store(rev, Ordering::SeqCst);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
    }

    /// The next `n` compactions fail.
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    pub fn spawn<F: Future<Output = ()> + Send + 'static>(
        self: &Arc<Self>,
        run: impl FnOnce(Arc<Self>) -> F,
    ) -> Task {
        Task(tokio::spawn(run(self.clone())))
    }

    /// Lets the (paused) clock run to `secs` after the start.
    pub async fn until(&self, secs: u64) {
        tokio::time::sleep_until(self.start + Duration::from_secs(secs)).await;
    }

    pub fn attempts(&self) -> Vec<At> {
        self.attempts.lock().unwrap().clone()
    }

    /// The compactions that succeeded.
    pub fn compactions(&self) -> Vec<At> {
        self.done.lock().unwrap().clone()
    }
}

impl Compactable for Fake {
    fn current_revision(&self) -> i64 {
        if self.stepping {
            self.rev.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.rev.load(Ordering::SeqCst)
        }
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let when = (self.start.elapsed(), revision);
        self.attempts.lock().unwrap().push(when);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::NoLeader);
        }
        self.done.lock().unwrap().push(when);
        Ok(())
    }
}
