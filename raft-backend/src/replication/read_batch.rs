//! One quorum confirmation for every linearizable read waiting for it, as
//! etcd's `linearizableReadLoop` does.
//!
//! A read needs a read index confirmed by a round that *started after the
//! read arrived*: a round already under way may have read the commit index
//! before a write the client saw acknowledged, and would let the read miss
//! it. So reads queue; one task takes every read queued so far, runs one
//! round, and answers them all with its index; reads that arrive during the
//! round form the next batch. Under load one round serves many reads; alone,
//! a read waits for at most the round in flight plus its own.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StoreError};

type Waiter = oneshot::Sender<Result<u64>>;

/// The queue of reads waiting for a confirmed read index.
pub(crate) struct ReadBatcher {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl ReadBatcher {
    /// Starts the batching task; `round` runs one confirmation and yields the
    /// read index. The task ends when the batcher is dropped.
    pub(crate) fn start<F, Fut>(round: F) -> ReadBatcher
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64>> + Send,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            let mut last = None;
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = waiting.try_recv() {
                    batch.push(next);
                }
                let index = match last.filter(|_| stale_round_planted()) {
                    Some(stale) => Ok(stale),
                    // Every read in `batch` arrived before this round starts.
                    None => round().await,
                };
                if let Ok(i) = index {
                    last = Some(i);
                }
                for waiter in batch {
                    let _ = waiter.send(index.clone());
                }
            }
        });
        ReadBatcher { queue }
    }

    /// A read index confirmed by a round that started after this call.
    pub(crate) async fn read_index(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Fail point `read_index_stale_round` (builds with the `failpoints` feature) plants the bug
/// this module exists to prevent: reads are answered with the index of a
/// round that started before they arrived. The e2e suite checks that the
/// robustness campaign's linearizability check catches it.
fn stale_round_planted() -> bool {
    fail::fail_point!("read_index_stale_round", |_| true);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A round that takes 10 ms and answers with a commit index that a
    /// writer keeps raising; it records when each round started.
    fn rounds(commit: Arc<AtomicU64>, started: Arc<AtomicU64>) -> ReadBatcher {
        ReadBatcher::start(move || {
            let commit = commit.clone();
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                let index = commit.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(index)
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_one_round() {
        let commit = Arc::new(AtomicU64::new(7));
        let started = Arc::new(AtomicU64::new(0));
        let batcher = Arc::new(rounds(commit, started.clone()));
        let reads: Vec<_> = (0..100)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.read_index().await })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), 7);
        }
        // The first read's round, then one for all that queued behind it.
        assert!(started.load(Ordering::SeqCst) <= 2, "{started:?} rounds");
    }

    /// The property linearizability rests on: a read that arrives while a
    /// round is under way is not answered by that round, whose index may
    /// predate a write acknowledged before the read began.
    #[tokio::test(start_paused = true)]
    async fn a_read_arriving_mid_round_waits_for_the_next() {
        let commit = Arc::new(AtomicU64::new(1));
        let started = Arc::new(AtomicU64::new(0));
        let batcher = Arc::new(rounds(commit.clone(), started));
        let b = batcher.clone();
        let early = tokio::spawn(async move { b.read_index().await });
        // The first round has read commit index 1 and is under way.
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A write commits at 2 and is acknowledged; then a read begins.
        commit.store(2, Ordering::SeqCst);
        let late = batcher.read_index().await.unwrap();
        assert_eq!(early.await.unwrap().unwrap(), 1);
        assert_eq!(late, 2, "a read was answered by a round older than itself");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_fails_its_batch_only() {
        let fail = Arc::new(AtomicU64::new(1));
        let f = fail.clone();
        let batcher = ReadBatcher::start(move || {
            let failing = f.swap(0, Ordering::SeqCst) == 1;
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if failing {
                    Err(StoreError::NoLeader)
                } else {
                    Ok(3)
                }
            }
        });
        assert_eq!(batcher.read_index().await, Err(StoreError::NoLeader));
        assert_eq!(batcher.read_index().await, Ok(3));
    }
}
