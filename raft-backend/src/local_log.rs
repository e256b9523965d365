//! The single-member log: propose → durable log → apply, with group commit.
//!
//! One thread owns the write connection. It takes every proposal waiting,
//! applies them in order inside one SQLite transaction, and commits once: one WAL fsync makes the whole batch durable, and only then is any
//! proposal in it acknowledged. For one member the SQLite WAL is the log, so a
//! command is durable and applied in the same step. A replicated log replaces
//! this module and drives the same `apply` function with committed entries.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot, watch};

use crate::apply::{apply, ApplyState};
use crate::command::{AppliedBatch, Command, CommandOutput, RevisionEvents};
use crate::compactor::Compactor;
use crate::error::{Result, StoreError};
use crate::metrics::StoreMetrics;

/// Upper bound on commands per group commit, to bound ack latency.
const MAX_BATCH: usize = 2048;
/// The single member's term never changes.
const TERM: u64 = 1;

pub(crate) enum WriterMsg {
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<CommandOutput>>,
    },
    /// Rewrites the database file to return free pages (etcd's defragment).
    Defragment { reply: oneshot::Sender<Result<()>> },
}

pub(crate) struct LocalLog {
    tx: Option<mpsc::Sender<WriterMsg>>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) struct LogOutputs {
    pub state: watch::Sender<ApplyState>,
    pub events: broadcast::Sender<Arc<AppliedBatch>>,
    pub compactor: Arc<Compactor>,
    pub metrics: StoreMetrics,
}

impl LocalLog {
    pub fn start(conn: Connection, out: LogOutputs) -> Result<Self> {
        let state = ApplyState::load(&conn)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cairn-apply".into())
            .spawn(move || run(conn, state, rx, out))
            .map_err(|e| StoreError::Storage(format!("spawn apply thread: {e}")))?;
        Ok(LocalLog {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn send(&self, msg: WriterMsg) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(StoreError::Stopped)?
            .send(msg)
            .map_err(|_| StoreError::Stopped)
    }
}

impl Drop for LocalLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut conn: Connection,
    mut state: ApplyState,
    rx: mpsc::Receiver<WriterMsg>,
    out: LogOutputs,
) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Propose { cmd, reply } => pending.push((cmd, reply)),
                WriterMsg::Defragment { reply } => {
                    // Everything proposed before the defragment commits first.
                    commit_batch(&mut conn, &mut state, &mut pending, &out);
                    let _ = reply.send(defragment(&conn));
                }
            }
            if pending.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        out.metrics.proposals_pending.set(pending.len() as i64);
        commit_batch(&mut conn, &mut state, &mut pending, &out);
    }
}

type Pending = Vec<(Command, oneshot::Sender<Result<CommandOutput>>)>;

fn commit_batch(
    conn: &mut Connection,
    state: &mut ApplyState,
    pending: &mut Pending,
    out: &LogOutputs,
) {
    if pending.is_empty() {
        return;
    }
    let batch: Pending = std::mem::take(pending);
    let before = *state;
    let mut results = Vec::with_capacity(batch.len());
    let mut applied = AppliedBatch::default();
    let mut compacted_to = None;
    let outcome = (|| -> Result<()> {
        // IMMEDIATE takes the write lock up front and waits for the compactor if
        // it holds it; a deferred transaction would fail on the upgrade instead.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (cmd, _) in &batch {
            state.applied_index += 1;
            state.applied_term = TERM;
            match apply(&tx, state, cmd) {
                Ok(a) => {
                    if let Some((revision, events)) = a.events {
                        applied.revisions.push(RevisionEvents { revision, events });
                    }
                    compacted_to = a.compacted_to.or(compacted_to);
                    results.push(Ok(a.output));
                }
                // A fault leaves the transaction in doubt: roll the batch back.
                Err(e) if e.is_storage_fault() => return Err(e),
                // A refused command wrote nothing.
                Err(e) => results.push(Err(e)),
            }
        }
        state.persist(&tx)?;
        let started = Instant::now();
        tx.commit()?;
        let took = started.elapsed().as_secs_f64();
        out.metrics.wal_fsync.observe(took);
        out.metrics.backend_commit.observe(took);
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            out.metrics.batch_size.observe(batch.len() as f64);
            out.metrics.proposals_committed.inc_by(batch.len() as u64);
            out.metrics
                .proposals_applied
                .set(state.applied_index as i64);
            applied.current_revision = state.current_rev;
            out.state.send_replace(*state);
            if let Some(rev) = compacted_to {
                out.compactor.schedule(rev);
            }
            if !applied.revisions.is_empty() {
                // No subscriber is not an error: the watch hub may not be running.
                let _ = out.events.send(Arc::new(applied));
            }
            for ((_, reply), result) in batch.into_iter().zip(results) {
                if result.is_err() {
                    out.metrics.proposals_failed.inc();
                }
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            // The transaction rolled back: nothing in the batch happened.
            tracing::error!(error = %e, commands = batch.len(), "group commit failed");
            *state = before;
            out.metrics.proposals_failed.inc_by(batch.len() as u64);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn defragment(conn: &Connection) -> Result<()> {
    conn.execute_batch("VACUUM")?;
    // Fold the rewritten pages back into the main file and shrink the WAL.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
