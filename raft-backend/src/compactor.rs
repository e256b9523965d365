//! Physical compaction, off the apply path.
//!
//! Apply only records the compact revision (reads below it fail from then on);
//! this thread then removes the history rows nobody can read any more, in small
//! transactions so that the writer is never held up for long. Rows at or below
//! the compact revision never change again, so the two never conflict.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

use crate::error::Result;
use crate::schema::{self, meta};

/// Keys compacted per transaction.
const BATCH_KEYS: i64 = 1000;

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
/// Key by key: the walk back from a key's newest row finds the row that
/// stands at `target`; every row behind it goes, and so does that row if it
/// is a tombstone (with the key's `live` entry, if nothing came after it).
fn compact_to(conn: &mut Connection, target: i64) -> Result<u64> {
    let mut cursor: Vec<u8> = Vec::new();
    let mut removed = 0u64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let keys: Vec<(Vec<u8>, i64)> = {
            let mut stmt = tx
                .prepare_cached("SELECT key, hid FROM live WHERE key > ?1 ORDER BY key LIMIT ?2")?;
            let rows =
                stmt.query_map(params![cursor, BATCH_KEYS], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let Some((last, _)) = keys.last() else {
            schema::set_meta(&tx, meta::COMPACT_DONE_REV, target)?;
            tx.commit()?;
            return Ok(removed);
        };
        cursor = last.clone();
        for (key, newest) in &keys {
            removed += compact_key(&tx, key, *newest, target)?;
        }
        tx.commit()?;
    }
}

fn compact_key(tx: &Connection, key: &[u8], newest: i64, target: i64) -> Result<u64> {
    let mut step = tx.prepare_cached("SELECT rev, prev, tombstone FROM history WHERE id = ?1")?;
    let mut row = |id: i64| {
        step.query_row([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .optional()
    };
    let mut at = Some(newest);
    let standing = loop {
        let Some(id) = at else { return Ok(0) };
        let Some((rev, prev, tombstone)) = row(id)? else {
            return Ok(0);
        };
        if rev <= target {
            break (id, prev, tombstone);
        }
        at = prev;
    };
    let mut delete = tx.prepare_cached("DELETE FROM history WHERE id = ?1")?;
    let mut removed = 0;
    let (id, mut older, tombstone) = standing;
    // Rows a previous compaction removed end the chain.
    while let Some(o) = older {
        let Some((_, prev, _)) = row(o)? else { break };
        delete.execute([o])?;
        removed += 1;
        older = prev;
    }
    if tombstone {
        delete.execute([id])?;
        removed += 1;
        if id == newest {
            tx.prepare_cached("DELETE FROM live WHERE key = ?1")?
                .execute([key])?;
        }
    }
    Ok(removed)
}
