//! The store's writer: committed log entries → SQLite, in log order.
//!
//! One thread owns the SQLite write connection. Entries arrive without the
//! caller waiting for them to be applied, so while one commit runs the next
//! batches queue up; the thread applies everything queued in one IMMEDIATE
//! transaction and commits once (without an fsync: the log is the durable
//! record), and only then publishes the events to the watch hub and answers.
//! Most of a commit's cost is per page written, and puts to nearby keys
//! share pages, so fewer, larger commits write much less.
//!
//! A refused command (a compacted revision, a missing lease) is a
//! deterministic answer that every member reaches alike. A storage fault is
//! not: it fails the transaction, and from then on this thread refuses every
//! batch, so that the replication wing stops this member rather than let it
//! diverge, as etcd panics.
//!
//! Entries are plain: an index, a term and a payload. A membership entry's
//! payload is opaque bytes, stored as they are (see `membership_blob`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot, watch};

use crate::apply::apply_command::apply;
use crate::command::{AppliedBatch, Command, CommandOutput};
use crate::error::{Result, StoreError};
use crate::handoff::{Handoff, Owner};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::checkpointer::WalRestart;
use crate::mvcc::compactor::Compactor;
use crate::mvcc::file_size::FileSize;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::metrics::StoreMetrics;
use crate::mvcc::prev_kv_interest::PrevKvInterest;
use crate::mvcc::{defragment, membership_blob, snapshot};

/// One committed log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// An entry with nothing to apply (a new leader's first).
    Blank,
    Command(Command),
    /// A new membership, encoded by the replication wing.
    Membership(Vec<u8>),
}

/// What applying one entry gave: the command's output or refusal, `None`
/// for blank and membership entries.
pub type EntryResult = Option<Result<CommandOutput>>;

/// Called on the writer thread once a batch is decided: after its commit
/// and after its events went to the watch hub, with one result per entry in
/// order; or with the error every batch after a storage fault is refused
/// with. Dropped uncalled when the batch itself fails.
pub type Answer = Box<dyn FnOnce(Result<Vec<EntryResult>>) + Send>;

enum WriterMsg {
    Apply {
        entries: Vec<LogEntry>,
        answer: Answer,
        /// The batch's fate, sent after `answer` ran.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Replaces the whole state with the snapshot database at `path`.
    Install {
        path: PathBuf,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Rewrites the database file to return free pages (etcd's defragment).
    Defragment { reply: oneshot::Sender<Result<()>> },
}

/// Where the writer publishes what it did.
pub struct WriterOutputs {
    pub state: watch::Sender<ApplyState>,
    pub events: broadcast::Sender<Arc<AppliedBatch>>,
    pub compactor: Arc<Compactor>,
    pub metrics: StoreMetrics,
    /// The stored membership blob, after each commit that changed it.
    pub membership: watch::Sender<Option<Vec<u8>>>,
    /// Checks the membership an installed snapshot carries, before anything
    /// of the install is published: the replication wing's decoder.
    pub check_membership: fn(Option<&[u8]>) -> Result<()>,
    /// Bumped after a commit that granted or revoked leases (see `Store::lease_changes`).
    pub lease_changes: Arc<AtomicU64>,
    /// Asked for by the checkpointer when the WAL should start over.
    pub wal_restart: WalRestart,
    pub index: Arc<KeyIndex>,
    pub prev_kv: PrevKvInterest,
    /// Refreshed after the checkpoints, defragmentations and installs done here.
    pub file_size: FileSize,
}

pub struct Writer {
    thread: Handoff<Applier>,
}

/// What the writer's thread owns.
struct Applier {
    conn: Connection,
    state: ApplyState,
    /// Set by a storage fault: the store no longer matches the log.
    failed: Option<StoreError>,
    out: WriterOutputs,
}

impl Writer {
    pub fn start(conn: Connection, out: WriterOutputs) -> Result<Self> {
        let state = ApplyState::load(&conn)?;
        let applier = Applier {
            conn,
            state,
            failed: None,
            out,
        };
        let thread = Handoff::start("cairn-apply", applier)
            .map_err(|e| StoreError::io("spawn apply thread", e))?;
        Ok(Writer { thread })
    }

    fn send(&self, msg: WriterMsg) -> Result<()> {
        self.thread.send(msg).map_err(|_| StoreError::Stopped)
    }

    /// Hands `entries` over without waiting; the receiver resolves when
    /// their batch is committed (or failed).
    pub fn apply(
        &self,
        entries: Vec<LogEntry>,
        answer: Answer,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterMsg::Apply {
            entries,
            answer,
            reply,
        })?;
        Ok(rx)
    }

    /// Replaces the whole state with the snapshot database at `path`.
    pub async fn install(&self, path: PathBuf) -> Result<()> {
        self.call(|reply| WriterMsg::Install { path, reply }).await
    }

    pub async fn defragment(&self) -> Result<()> {
        self.call(|reply| WriterMsg::Defragment { reply }).await
    }

    async fn call<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterMsg,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(msg(reply))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Upper bound on entries folded into one transaction, to bound how long
/// the first of them waits for its answer.
const MAX_FOLDED_ENTRIES: usize = 4096;

/// The entries of one `Apply` message and who answers them.
struct Handed {
    entries: Vec<LogEntry>,
    answer: Answer,
}

impl Owner for Applier {
    type Msg = WriterMsg;

    /// Does `msg` and, if it is an `Apply`, every `Apply` already queued
    /// behind it, in one transaction.
    fn take(
        &mut self,
        msg: WriterMsg,
        rx: &mpsc::Receiver<WriterMsg>,
    ) -> (usize, Option<WriterMsg>) {
        if let Some(e) = &self.failed {
            refuse(msg, e);
            return (1, None);
        }
        let mut next = None;
        let mut done = 1;
        match msg {
            WriterMsg::Apply {
                entries,
                answer,
                reply,
            } => {
                let mut folded = entries.len();
                let mut handed = vec![Handed { entries, answer }];
                let mut replies = vec![reply];
                while folded < MAX_FOLDED_ENTRIES {
                    match rx.try_recv() {
                        Ok(WriterMsg::Apply {
                            entries,
                            answer,
                            reply,
                        }) => {
                            folded += entries.len();
                            handed.push(Handed { entries, answer });
                            replies.push(reply);
                            done += 1;
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.apply(handed, replies);
                self.restart_wal();
            }
            WriterMsg::Install { path, reply } => {
                let out = &self.out;
                // No read may pair the new rows with the old index, or the
                // reverse: readers wait, and those under way start again.
                let exclusive = out.index.exclusive();
                let r = snapshot::install(&mut self.conn, &path).and_then(|()| {
                    out.file_size.refresh();
                    exclusive.reload(&self.conn)?;
                    self.state = ApplyState::load(&self.conn)?;
                    let m = membership_blob::load(&self.conn)?;
                    (out.check_membership)(m.as_deref())?;
                    out.membership.send_replace(m);
                    Ok(())
                });
                if r.is_ok() {
                    let state = self.state;
                    out.lease_changes.fetch_add(1, Ordering::Release);
                    out.state.send_replace(state);
                    out.compactor.schedule(state.compact_rev);
                    // Watchers cannot be told what changed event by event: the
                    // hub re-reads their history from the new state.
                    let _ = out.events.send(Arc::new(AppliedBatch {
                        revisions: Vec::new(),
                        current_revision: state.current_rev,
                        reset: true,
                        prev_kv_complete: false,
                    }));
                }
                let _ = reply.send(r);
            }
            WriterMsg::Defragment { reply } => {
                let r = defragment::defragment(&self.conn);
                self.out.file_size.refresh();
                let _ = reply.send(r);
            }
        }
        (done, next)
    }
}

impl Applier {
    /// Applies the batches in one transaction and answers them; a storage
    /// fault makes every later message refused.
    fn apply(&mut self, handed: Vec<Handed>, replies: Vec<oneshot::Sender<Result<()>>>) {
        let r = apply_batch(&mut self.conn, &mut self.state, handed, &self.out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        for reply in replies {
            let _ = reply.send(r.clone());
        }
    }

    /// After the answers: the batch is committed whatever happens here.
    fn restart_wal(&mut self) {
        if self.failed.is_some() {
            return;
        }
        match self.out.wal_restart.run_if_requested(&self.conn) {
            Ok(true) => self.out.file_size.refresh(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint before a rewind failed"),
        }
    }
}

fn refuse(msg: WriterMsg, e: &StoreError) {
    let err = || StoreError::Storage(format!("store failed earlier: {e}"));
    match msg {
        WriterMsg::Apply { answer, reply, .. } => {
            answer(Err(err()));
            let _ = reply.send(Err(err()));
        }
        WriterMsg::Install { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        WriterMsg::Defragment { reply } => {
            let _ = reply.send(Err(err()));
        }
    }
}

fn apply_batch(
    conn: &mut Connection,
    state: &mut ApplyState,
    handed: Vec<Handed>,
    out: &WriterOutputs,
) -> Result<()> {
    let before = *state;
    let mut answers = Vec::with_capacity(handed.len());
    let mut results: Vec<Vec<EntryResult>> = Vec::with_capacity(handed.len());
    let prev_values = out.prev_kv.wanted();
    let mut applied = AppliedBatch {
        prev_kv_complete: prev_values,
        ..AppliedBatch::default()
    };
    let mut compacted_to = None;
    let mut new_membership = None;
    let mut lease_changes = 0u64;
    // A migration command writes rows below the current revision, or wipes
    // them: the key index cannot be rolled back by revision then.
    let mut migration = false;
    let outcome = (|| -> Result<()> {
        // IMMEDIATE takes the write lock up front and waits for the compactor if
        // it holds it; a deferred transaction would fail on the upgrade instead.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for Handed { entries, answer } in handed {
            answers.push(answer);
            let mut these = Vec::with_capacity(entries.len());
            for entry in entries {
                state.applied_index = entry.index;
                state.applied_term = entry.term;
                match entry.payload {
                    Payload::Blank => these.push(None),
                    Payload::Membership(blob) => {
                        membership_blob::save(&tx, &blob)?;
                        new_membership = Some(blob);
                        these.push(None);
                    }
                    Payload::Command(cmd) => {
                        // A migration command may grant, drop or wipe leases,
                        // or end the import (the lessor takes over then).
                        if cmd.is_migration()
                            || matches!(cmd, Command::LeaseGrant(_) | Command::LeaseRevoke(_))
                        {
                            lease_changes += 1;
                        }
                        migration |= cmd.is_migration();
                        let result = match apply(&tx, &out.index, state, &cmd, prev_values) {
                            Ok(a) => {
                                // One RevisionEvents per revision, an import's several too.
                                applied.revisions.extend(a.events);
                                applied.reset |= a.reset;
                                compacted_to = a.compacted_to.or(compacted_to);
                                Ok(a.output)
                            }
                            // A fault leaves the transaction in doubt: fail the batch.
                            Err(e) if e.is_storage_fault() => return Err(e),
                            // A refused command wrote nothing, on every member alike.
                            Err(e) => Err(e),
                        };
                        these.push(Some(result));
                    }
                }
            }
            results.push(these);
        }
        state.persist(&tx)?;
        let started = Instant::now();
        tx.commit()?;
        out.metrics
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    })();
    if let Err(e) = outcome {
        tracing::error!(error = %e, "applying committed entries failed");
        *state = before;
        if migration {
            if let Err(reload) = out.index.exclusive().reload(conn) {
                tracing::error!(error = %reload, "rebuilding the key index after a failed batch failed");
            }
        } else {
            out.index.truncate_after(before.current_rev);
        }
        return Err(e);
    }
    if migration {
        // A wipe in the batch held readers off until its commit.
        out.index.release();
    }
    let entries: usize = results.iter().map(Vec::len).sum();
    out.metrics.batch_size.observe(entries as f64);
    out.metrics
        .proposals_applied
        .set(state.applied_index as i64);
    applied.current_revision = state.current_rev;
    out.state.send_replace(*state);
    if lease_changes > 0 {
        out.lease_changes
            .fetch_add(lease_changes, Ordering::Release);
    }
    if let Some(m) = new_membership {
        out.membership.send_replace(Some(m));
    }
    if let Some(rev) = compacted_to {
        out.compactor.schedule(rev);
    }
    if applied.reset {
        // Watchers cannot be told event by event (see `Applied::reset`):
        // the hub re-reads their history, as after a snapshot install.
        applied.revisions.clear();
    }
    if !applied.revisions.is_empty() || applied.reset {
        // No subscriber is not an error: the watch hub may not be running.
        let _ = out.events.send(Arc::new(applied));
    }
    out.metrics.proposals_committed.inc_by(entries as u64);
    for (answer, these) in answers.into_iter().zip(results) {
        for result in &these {
            if matches!(result, Some(Err(_))) {
                out.metrics.proposals_failed.inc();
            }
        }
        answer(Ok(these));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::schema;
    use crate::testing::put;

    fn entry(index: u64, payload: Payload) -> LogEntry {
        LogEntry {
            index,
            term: 1,
            payload,
        }
    }

    fn cmd(index: u64, c: Command) -> LogEntry {
        entry(index, Payload::Command(c))
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        writer: Writer,
        state: watch::Receiver<ApplyState>,
        membership: watch::Receiver<Option<Vec<u8>>>,
        events: broadcast::Receiver<Arc<AppliedBatch>>,
    }

    /// A writer on a new store; `prepare` runs on its connection first.
    fn start(prepare: impl FnOnce(&Connection)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = schema::open_writer(&path).unwrap();
        prepare(&conn);
        let registry = prometheus::Registry::new();
        let index = Arc::new(KeyIndex::load(&conn).unwrap());
        let metrics = StoreMetrics::new(&registry).unwrap();
        let compactor =
            Compactor::start(&path, index.clone(), metrics.compaction_failures.clone()).unwrap();
        let (state_tx, state) = watch::channel(ApplyState::load(&conn).unwrap());
        let (membership_tx, membership) = watch::channel(None);
        let (events_tx, events) = broadcast::channel(16);
        let out = WriterOutputs {
            state: state_tx,
            events: events_tx,
            compactor: Arc::new(compactor),
            metrics,
            membership: membership_tx,
            check_membership: |_| Ok(()),
            lease_changes: Default::default(),
            wal_restart: WalRestart::default(),
            prev_kv: PrevKvInterest::default(),
            file_size: FileSize::new(&path),
            index,
        };
        Fixture {
            writer: Writer::start(conn, out).unwrap(),
            path,
            _dir: dir,
            state,
            membership,
            events,
        }
    }

    /// Hands `entries` over; resolves with the answer and the batch's fate.
    async fn apply(
        writer: &Writer,
        entries: Vec<LogEntry>,
    ) -> (Result<Vec<EntryResult>>, Result<()>) {
        let (tx, rx) = oneshot::channel();
        let done = writer
            .apply(
                entries,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        let fate = done.await.unwrap();
        let answer = rx.await.unwrap_or(Err(StoreError::Stopped));
        (answer, fate)
    }

    fn history_keys(path: &std::path::Path) -> Vec<Vec<u8>> {
        let conn = schema::open_reader(path).unwrap();
        let keys = conn
            .prepare("SELECT key FROM history ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        keys
    }

    #[tokio::test]
    async fn after_a_storage_fault_every_later_batch_is_refused() {
        let f = start(|conn| {
            // A fault in the middle of a write, as a full or failing disk gives.
            conn.execute_batch(
                "CREATE TRIGGER fault BEFORE INSERT ON history WHEN NEW.key = x'626164'
                 BEGIN SELECT RAISE(ABORT, 'injected I/O error'); END;",
            )
            .unwrap();
        });
        let (_, fate) = apply(&f.writer, vec![cmd(1, put("a", "1"))]).await;
        fate.unwrap();
        let (answer, fault) = apply(
            &f.writer,
            vec![cmd(2, put("b", "1")), cmd(3, put("bad", "1"))],
        )
        .await;
        assert!(
            matches!(&fault, Err(StoreError::Sqlite(e)) if e.to_string().contains("injected")),
            "{fault:?}"
        );
        // A failed batch is not answered: its answer is dropped.
        assert_eq!(answer, Err(StoreError::Stopped));
        // A write that would succeed on its own is refused: the store no
        // longer matches the log, and the replication wing must stop this member.
        let (answer, later) = apply(&f.writer, vec![cmd(4, put("c", "1"))]).await;
        for r in [answer.map(|_| ()), later] {
            assert!(
                matches!(&r, Err(StoreError::Storage(m)) if m.contains("failed earlier")),
                "{r:?}"
            );
        }
        drop(f.writer);
        // Nothing of the failed batch or after it reached the store.
        assert_eq!(history_keys(&f.path), vec![b"a".to_vec()]);
    }

    #[tokio::test]
    async fn queued_entries_fold_into_one_commit_and_each_gets_its_result() {
        let mut f = start(|_| {});
        // The first batch's answer runs on the writer thread: holding it
        // there queues the next batches, which the writer then folds.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, answering) = std::sync::mpsc::channel::<()>();
        let first = f
            .writer
            .apply(
                vec![cmd(1, put("a", "1"))],
                Box::new(move |_| {
                    let _ = entered.send(());
                    let _ = held.recv();
                }),
            )
            .unwrap();
        answering.recv().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let batches = vec![
            vec![cmd(2, put("b", "1")), entry(3, Payload::Blank)],
            vec![cmd(
                4,
                Command::LeaseRevoke(cairn_proto::etcdserverpb::LeaseRevokeRequest { id: 7 }),
            )],
            vec![
                entry(5, Payload::Membership(b"members".to_vec())),
                cmd(6, put("c", "1")),
            ],
        ];
        let mut fates = Vec::new();
        for (i, entries) in batches.into_iter().enumerate() {
            let tx = tx.clone();
            let answer: Answer = Box::new(move |r| {
                let _ = tx.send((i, r));
            });
            fates.push(f.writer.apply(entries, answer).unwrap());
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        for fate in fates {
            fate.await.unwrap().unwrap();
        }
        // Answered in order, one result per entry.
        let answers: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            answers.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let answers: Vec<_> = answers.into_iter().map(|(_, r)| r.unwrap()).collect();
        assert!(matches!(
            &answers[0][..],
            [Some(Ok(CommandOutput::Put(_))), None]
        ));
        assert!(matches!(
            &answers[1][..],
            [Some(Err(StoreError::LeaseNotFound))]
        ));
        assert!(matches!(
            &answers[2][..],
            [None, Some(Ok(CommandOutput::Put(_)))]
        ));
        let state = *f.state.borrow();
        assert_eq!((state.applied_index, state.applied_term), (6, 1));
        assert_eq!(state.current_rev, 4);
        assert_eq!(f.membership.borrow().as_deref(), Some(&b"members"[..]));
        // Two commits reached the watch hub: the first batch's, then the
        // three folded ones in one.
        let mut commits = Vec::new();
        while let Ok(batch) = f.events.try_recv() {
            commits.push(
                batch
                    .revisions
                    .iter()
                    .map(|r| r.revision)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(commits, vec![vec![2], vec![3, 4]]);
    }

    #[tokio::test]
    async fn the_membership_blob_survives_a_restart_unchanged() {
        let f = start(|_| {});
        let blob = vec![0u8, 1, 2, 255, 7];
        let (answer, fate) =
            apply(&f.writer, vec![entry(1, Payload::Membership(blob.clone()))]).await;
        fate.unwrap();
        assert_eq!(answer.unwrap(), vec![None]);
        let path = f.path.clone();
        drop(f.writer);
        let conn = schema::open_reader(&path).unwrap();
        assert_eq!(membership_blob::load(&conn).unwrap(), Some(blob));
        assert_eq!(ApplyState::load(&conn).unwrap().applied_index, 1);
    }
}
