//! Physical compaction, off the apply path.
//!
//! Apply only records the compact revision (reads below it fail from then on);
//! this thread then removes the history rows nobody can read any more, in small
//! transactions so that the writer is never held up for long. Rows at or below
//! the compact revision never change again, so the two never conflict.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::watch;

use crate::error::Result;
use crate::key_index::KeyIndex;
use crate::schema::{self, meta};

/// Keys compacted per transaction.
const BATCH_KEYS: usize = 1000;

pub struct Compactor {
    targets: mpsc::Sender<i64>,
    done: watch::Receiver<i64>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread and resumes a compaction a crash interrupted.
    pub fn start(path: &Path, index: Arc<KeyIndex>) -> Result<Self> {
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
                while let Ok(mut target) = rx.recv() {
                    // Only the newest request matters: it covers the older ones.
                    while let Ok(next) = rx.try_recv() {
                        target = target.max(next);
                    }
                    match compact_to(&mut conn, &index, target) {
                        Ok(removed) => {
                            tracing::info!(revision = target, removed, "compaction finished");
                            done_tx.send_replace(target);
                        }
                        Err(e) => {
                            tracing::error!(revision = target, error = %e, "compaction failed")
                        }
                    }
                }
            })
            .map_err(|e| crate::StoreError::Storage(format!("spawn compactor: {e}")))?;
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
/// from then on), then the rows it let go are deleted.
fn compact_to(conn: &mut Connection, index: &KeyIndex, target: i64) -> Result<u64> {
    let mut cursor: Option<Vec<u8>> = None;
    let mut removed = 0u64;
    loop {
        let (ids, next) = index.compact(target, cursor.as_deref(), BATCH_KEYS);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM history WHERE id = ?1")?;
            for id in &ids {
                removed += delete.execute([id])? as u64;
            }
        }
        if next.is_none() {
            schema::set_meta(&tx, meta::COMPACT_DONE_REV, target)?;
        }
        tx.commit()?;
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(removed),
        }
    }
}
