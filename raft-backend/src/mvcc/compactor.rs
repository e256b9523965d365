//! Physical compaction, off the apply path.
//!
//! Apply only records the compact revision (reads below it fail from then on);
//! this thread then removes the history rows nobody can read any more, in small
//! transactions so that the writer is never held up for long. Rows at or below
//! the compact revision never change again, so the two never conflict.
//!
//! The key index lets go of a key's old versions before their rows are
//! deleted, so a pass that fails (a disk fault) keeps the row ids it could
//! not delete and deletes them with the next pass; otherwise nothing would
//! name those rows again until a restart rebuilt the index.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::sync::Arc;

use prometheus::IntCounter;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::watch;

use crate::error::Result;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::schema::{self, meta};

/// Keys compacted per transaction.
const BATCH_KEYS: usize = 1000;

pub struct Compactor {
    targets: mpsc::Sender<i64>,
    done: watch::Receiver<i64>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread and resumes a compaction a crash interrupted.
    pub fn start(path: &Path, index: Arc<KeyIndex>, failures: IntCounter) -> Result<Self> {
        let mut conn = schema::open_writer(path)?;
        let scheduled = schema::get_meta(&conn, meta::COMPACT_REV)?;
        let finished = schema::get_meta(&conn, meta::COMPACT_DONE_REV)?;
        let (targets, rx) = mpsc::channel::<i64>();
        let (done_tx, done) = watch::channel(finished);
        if scheduled > finished {
            let _ = targets.send(scheduled);
        }
        let thread = std::thread::Builder::new()
            .name("cairn-compactor".into())
            .spawn(move || {
                // Rows a failed pass let go of in the index but did not delete.
                let mut left = Vec::new();
                while let Ok(mut target) = rx.recv() {
                    // Only the newest request matters: it covers the older ones.
                    while let Ok(next) = rx.try_recv() {
                        target = target.max(next);
                    }
                    match compact_to(&mut conn, &index, target, &mut left) {
                        Ok(removed) => {
                            tracing::info!(revision = target, removed, "compaction finished");
                            done_tx.send_replace(target);
                        }
                        Err(e) => {
                            failures.inc();
                            tracing::error!(
                                revision = target,
                                left = left.len(),
                                error = %e,
                                "compaction failed; the next one retries what it left"
                            )
                        }
                    }
                }
            })
            .map_err(|e| crate::StoreError::io("spawn compactor", e))?;
        Ok(Compactor {
            targets,
            done,
            thread: Some(thread),
        })
    }

    /// Asks for history up to `revision` to be removed. Call after the
    /// compaction command is durable.
    pub fn schedule(&self, revision: i64) {
        let _ = self.targets.send(revision);
    }

    /// Resolves once physical compaction has reached `revision`.
    pub async fn wait(&self, revision: i64) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d >= revision).await;
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after its current batch.
        let (closed, _) = mpsc::channel();
        self.targets = closed;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes every row at or below `target` that is a tombstone or has a newer
/// row at or below `target`: what remains is each key's state at `target`.
/// Key by key, the index is pruned first (reads below `target` are refused
/// from then on), then the rows it let go are deleted, with those a failed
/// pass left in `left`; a failure puts the batch's ids back there.
fn compact_to(
    conn: &mut Connection,
    index: &KeyIndex,
    target: i64,
    left: &mut Vec<i64>,
) -> Result<u64> {
    let mut cursor: Option<Vec<u8>> = None;
    let mut removed = 0u64;
    loop {
        let (mut ids, next) = index.compact(target, cursor.as_deref(), BATCH_KEYS);
        ids.append(left);
        let done = next.is_none().then_some(target);
        match delete_rows(conn, &ids, done) {
            Ok(n) => removed += n,
            Err(e) => {
                *left = ids;
                return Err(e);
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(removed),
        }
    }
}

/// Deletes the rows `ids` (those already gone count for nothing) in one
/// transaction, which also records `done` as the finished compaction.
fn delete_rows(conn: &mut Connection, ids: &[i64], done: Option<i64>) -> Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut removed = 0u64;
    {
        let mut delete = tx.prepare_cached("DELETE FROM history WHERE id = ?1")?;
        for id in ids {
            removed += delete.execute([id])? as u64;
        }
    }
    if let Some(target) = done {
        schema::set_meta(&tx, meta::COMPACT_DONE_REV, target)?;
    }
    tx.commit()?;
    Ok(removed)
}
