//! Physical compaction, off the apply path.
//!
//! Apply only records the compact revision (reads below it fail from then on);
//! this thread then removes the history rows nobody can read any more, in small
//! transactions so that the writer is never held up for long. Rows at or below
//! the compact revision never change again, so the two never conflict.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::watch;

use crate::error::Result;
use crate::schema::{self, meta};

/// Rows examined per transaction.
const BATCH_ROWS: i64 = 2000;

pub struct Compactor {
    targets: mpsc::Sender<i64>,
    done: watch::Receiver<i64>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread and resumes a compaction a crash interrupted.
    pub fn start(path: &Path) -> Result<Self> {
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
                    match compact_to(&mut conn, target) {
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
fn compact_to(conn: &mut Connection, target: i64) -> Result<u64> {
    let mut cursor = (i64::MIN, i64::MIN);
    let mut removed = 0u64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, i64, Vec<u8>, bool)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT rev, id, key, tombstone FROM history
                 WHERE rev <= ?1 AND (rev > ?2 OR (rev = ?2 AND id > ?3))
                 ORDER BY rev, id LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![target, cursor.0, cursor.1, BATCH_ROWS], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let Some(last) = rows.last() else {
            schema::set_meta(&tx, meta::COMPACT_DONE_REV, target)?;
            tx.commit()?;
            return Ok(removed);
        };
        cursor = (last.0, last.1);
        for (_, id, key, tombstone) in &rows {
            let superseded = *tombstone
                || tx
                    .prepare_cached(
                        "SELECT 1 FROM history WHERE key = ?1 AND rev <= ?2 AND id > ?3 LIMIT 1",
                    )?
                    .exists(params![key, target, id])?;
            if superseded {
                tx.prepare_cached("DELETE FROM history WHERE id = ?1")?
                    .execute([id])?;
                removed += 1;
            }
        }
        tx.commit()?;
    }
}
