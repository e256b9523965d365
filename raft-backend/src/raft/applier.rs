//! Apply: committed Raft entries → the MVCC store, in log order.
//!
//! One thread owns the SQLite write connection. openraft hands over
//! committed entries without waiting for them to be applied (see
//! `StateMachine::apply`), so while one commit runs the next batches queue
//! up; the thread applies everything queued in one IMMEDIATE transaction and
//! commits once, and only then releases the answers and publishes the events
//! to the watch hub. Most of a commit's cost is per page written, and puts to
//! nearby keys share pages, so fewer, larger commits write much less.
//!
//! A refused command (a compacted revision, a missing lease) is a
//! deterministic answer that every member reaches alike. A storage fault is
//! not: it fails the transaction, and from then on this thread refuses every
//! batch, so that openraft stops this member rather than let it diverge, as
//! etcd panics.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::ApplyResponder;
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, oneshot, watch};

use super::codec;
use super::types::{Entry, EntryPayload, LogId, StoredMembership, TypeConfig};
use super::waiters::Waiters;
use crate::command::{AppliedBatch, Command, CommandOutput, RevisionEvents};
use crate::error::{Result, StoreError};
use crate::mvcc::apply_command::{apply, ApplyState};
use crate::mvcc::checkpointer::WalRestart;
use crate::mvcc::compactor::Compactor;
use crate::mvcc::file_size::FileSize;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::metrics::StoreMetrics;
use crate::mvcc::prev_kv_interest::PrevKvInterest;

const MEMBERSHIP: &str = "membership";

pub(crate) enum ApplierMsg {
    Apply {
        entries: Vec<(Entry, Option<ApplyResponder<TypeConfig>>)>,
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

pub(crate) struct ApplierOutputs {
    pub member_id: u64,
    pub state: watch::Sender<ApplyState>,
    pub events: broadcast::Sender<Arc<AppliedBatch>>,
    pub compactor: Arc<Compactor>,
    pub metrics: StoreMetrics,
    pub waiters: Waiters,
    pub membership: watch::Sender<StoredMembership>,
    /// Bumped after a commit that granted or revoked leases (see `Store::lease_changes`).
    pub lease_changes: Arc<std::sync::atomic::AtomicU64>,
    /// Asked for by the checkpointer when the WAL should start over.
    pub wal_restart: WalRestart,
    pub index: Arc<KeyIndex>,
    pub prev_kv: PrevKvInterest,
    /// Refreshed after the checkpoints, defragmentations and installs done here.
    pub file_size: FileSize,
}

pub(crate) struct Applier {
    tx: Option<mpsc::Sender<ApplierMsg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The membership recorded in the state machine (None before the first one).
pub(crate) fn load_membership(conn: &Connection) -> Result<StoredMembership> {
    let raw: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM raft_state WHERE name = ?1",
            [MEMBERSHIP],
            |r| r.get(0),
        )
        .optional()?;
    match raw {
        None => Ok(StoredMembership::default()),
        Some(b) => {
            let pb = cairn_proto::peer::SnapshotMeta::decode(b.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("stored membership: {e}")))?;
            codec::stored_membership_from_pb(pb)
                .map_err(|e| StoreError::Corrupt(format!("stored membership: {e}")))
        }
    }
}

fn save_membership(conn: &Connection, m: &StoredMembership) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO raft_state (name, value) VALUES (?1, ?2)")?
        .execute(params![
            MEMBERSHIP,
            codec::stored_membership_to_pb(m).encode_to_vec()
        ])?;
    Ok(())
}

/// The last applied log id as the state machine recorded it.
pub(crate) fn last_applied(state: &ApplyState) -> Option<LogId> {
    (state.applied_index > 0).then(|| LogId::new(state.applied_term.into(), state.applied_index))
}

impl Applier {
    pub fn start(conn: Connection, out: ApplierOutputs) -> Result<Self> {
        let state = ApplyState::load(&conn)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cairn-apply".into())
            .spawn(move || run(conn, state, rx, out))
            .map_err(|e| StoreError::Storage(format!("spawn apply thread: {e}")))?;
        Ok(Applier {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn send(&self, msg: ApplierMsg) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(StoreError::Stopped)?
            .send(msg)
            .map_err(|_| StoreError::Stopped)
    }

    pub async fn call<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T>>) -> ApplierMsg,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(msg(reply))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Upper bound on entries folded into one transaction, to bound how long
/// the first of them waits for its answer.
const MAX_FOLDED_ENTRIES: usize = 4096;

fn run(
    mut conn: Connection,
    mut state: ApplyState,
    rx: mpsc::Receiver<ApplierMsg>,
    out: ApplierOutputs,
) {
    // Set by a storage fault: the store no longer matches the log.
    let mut failed: Option<StoreError> = None;
    let mut next = rx.recv().ok();
    while let Some(msg) = next.take() {
        if let Some(e) = &failed {
            refuse(msg, e);
            next = rx.recv().ok();
            continue;
        }
        match msg {
            ApplierMsg::Apply { entries, reply } => {
                let mut folded = entries;
                let mut replies = vec![reply];
                while folded.len() < MAX_FOLDED_ENTRIES {
                    match rx.try_recv() {
                        Ok(ApplierMsg::Apply { entries, reply }) => {
                            folded.extend(entries);
                            replies.push(reply);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let r = apply_batch(&mut conn, &mut state, folded, &out);
                if let Err(e) = &r {
                    failed = Some(e.clone());
                }
                for reply in replies {
                    let _ = reply.send(r.clone());
                }
                // After the answers: the batch is committed whatever happens here.
                if r.is_ok() {
                    match out.wal_restart.run_if_requested(&conn) {
                        Ok(true) => out.file_size.refresh(),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "WAL checkpoint before a rewind failed")
                        }
                    }
                }
                if next.is_some() {
                    continue;
                }
            }
            ApplierMsg::Install { path, reply } => {
                // No read may pair the new rows with the old index, or the
                // reverse: readers wait, and those under way start again.
                let exclusive = out.index.exclusive();
                let r = install(&mut conn, &path).and_then(|()| {
                    out.file_size.refresh();
                    exclusive.reload(&conn)?;
                    state = ApplyState::load(&conn)?;
                    let m = load_membership(&conn)?;
                    out.membership.send_replace(m);
                    Ok(())
                });
                if r.is_ok() {
                    out.lease_changes
                        .fetch_add(1, std::sync::atomic::Ordering::Release);
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
            ApplierMsg::Defragment { reply } => {
                let r = defragment(&conn);
                out.file_size.refresh();
                let _ = reply.send(r);
            }
        }
        next = rx.recv().ok();
    }
}

fn refuse(msg: ApplierMsg, e: &StoreError) {
    let err = || StoreError::Storage(format!("store failed earlier: {e}"));
    match msg {
        ApplierMsg::Apply { entries, reply } => {
            for (_, responder) in entries {
                if let Some(r) = responder {
                    r.send(Some(Err(err())));
                }
            }
            let _ = reply.send(Err(err()));
        }
        ApplierMsg::Install { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        ApplierMsg::Defragment { reply } => {
            let _ = reply.send(Err(err()));
        }
    }
}

type Responder = Option<ApplyResponder<TypeConfig>>;
/// Per entry: who answers it, (origin, request id) for a command, its result.
type EntryResult = (Responder, Option<(u64, u64)>, Option<Result<CommandOutput>>);

fn apply_batch(
    conn: &mut Connection,
    state: &mut ApplyState,
    entries: Vec<(Entry, Responder)>,
    out: &ApplierOutputs,
) -> Result<()> {
    let before = *state;
    let mut results: Vec<EntryResult> = Vec::with_capacity(entries.len());
    let prev_values = out.prev_kv.wanted();
    let mut applied = AppliedBatch {
        prev_kv_complete: prev_values,
        ..AppliedBatch::default()
    };
    let mut compacted_to = None;
    let mut new_membership = None;
    let mut lease_changes = 0u64;
    let outcome = (|| -> Result<()> {
        // IMMEDIATE takes the write lock up front and waits for the compactor if
        // it holds it; a deferred transaction would fail on the upgrade instead.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (entry, responder) in entries {
            state.applied_index = entry.log_id.index;
            state.applied_term = entry.log_id.leader_id.term;
            match entry.payload {
                EntryPayload::Blank => results.push((responder, None, None)),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    save_membership(&tx, &stored)?;
                    new_membership = Some(stored);
                    results.push((responder, None, None));
                }
                EntryPayload::Normal(lc) => {
                    if matches!(lc.cmd, Command::LeaseGrant(_) | Command::LeaseRevoke(_)) {
                        lease_changes += 1;
                    }
                    let result = match apply(&tx, &out.index, state, &lc.cmd, prev_values) {
                        Ok(a) => {
                            if let Some((revision, events)) = a.events {
                                applied.revisions.push(RevisionEvents { revision, events });
                            }
                            compacted_to = a.compacted_to.or(compacted_to);
                            Ok(a.output)
                        }
                        // A fault leaves the transaction in doubt: fail the batch.
                        Err(e) if e.is_storage_fault() => return Err(e),
                        // A refused command wrote nothing, on every member alike.
                        Err(e) => Err(e),
                    };
                    results.push((responder, Some((lc.origin, lc.request_id)), Some(result)));
                }
            }
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
        out.index.truncate_after(before.current_rev);
        return Err(e);
    }
    out.metrics.batch_size.observe(results.len() as f64);
    out.metrics
        .proposals_applied
        .set(state.applied_index as i64);
    applied.current_revision = state.current_rev;
    out.state.send_replace(*state);
    if lease_changes > 0 {
        out.lease_changes
            .fetch_add(lease_changes, std::sync::atomic::Ordering::Release);
    }
    if let Some(m) = new_membership {
        out.membership.send_replace(m);
    }
    if let Some(rev) = compacted_to {
        out.compactor.schedule(rev);
    }
    if !applied.revisions.is_empty() {
        // No subscriber is not an error: the watch hub may not be running.
        let _ = out.events.send(Arc::new(applied));
    }
    out.metrics.proposals_committed.inc_by(results.len() as u64);
    for (responder, ids, result) in results {
        if matches!(result, Some(Err(_))) {
            out.metrics.proposals_failed.inc();
        }
        // A client of this member whose write went through the leader; the
        // entry has a responder too only if this member has since become
        // the leader the write was forwarded to.
        let waiter = ids
            .filter(|(origin, _)| *origin == out.member_id)
            .map(|(_, id)| id);
        match (waiter, responder, result) {
            (Some(id), None, Some(r)) => out.waiters.resolve(id, r),
            (Some(id), Some(responder), result) => {
                if let Some(r) = &result {
                    out.waiters.resolve(id, r.clone());
                }
                responder.send(result);
            }
            (None, Some(responder), result) => responder.send(result),
            _ => {}
        }
    }
    Ok(())
}

/// Replaces every table's rows with the snapshot's, in one transaction, so
/// that readers see the old state or the new one and never a mix.
fn install(conn: &mut Connection, snapshot: &Path) -> Result<()> {
    let path = snapshot.to_str().ok_or_else(|| {
        StoreError::Storage(format!("snapshot path {} is not UTF-8", snapshot.display()))
    })?;
    // A leader of an earlier version sends its own layout: bring the copy to
    // this one first (one of a later version is refused, with its version).
    drop(crate::mvcc::schema::open_writer(snapshot)?);
    conn.execute("ATTACH DATABASE ?1 AS snap", [path])?;
    let copy = (|| -> Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for table in ["history", "meta", "leases", "alarms", "raft_state"] {
            tx.execute_batch(&format!(
                "DELETE FROM main.{table}; INSERT INTO main.{table} SELECT * FROM snap.{table};"
            ))?;
        }
        tx.commit()?;
        Ok(())
    })();
    let detach = conn.execute("DETACH DATABASE snap", []);
    copy?;
    detach?;
    // The log is purged behind an installed snapshot: make it durable first.
    if let Some(path) = conn.path() {
        crate::mvcc::schema::sync_to_disk(Path::new(path))
            .map_err(|e| StoreError::Storage(format!("sync installed snapshot: {e}")))?;
    }
    Ok(())
}

/// Attempts at folding a defragmented database back into its file.
const DEFRAG_CHECKPOINT_TRIES: u32 = 100;

fn defragment(conn: &Connection) -> Result<()> {
    conn.execute_batch("VACUUM")?;
    // Fold the rewritten pages back into the main file and shrink the WAL, so
    // that the file's size (Status, the quota) drops before the call returns,
    // as etcd's does. The background checkpointer may hold the checkpoint
    // lock for a moment, and then this reports busy without waiting: retry.
    for _ in 0..DEFRAG_CHECKPOINT_TRIES {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!("defragment: the file shrinks at a later checkpoint (WAL busy for 1 s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::mvcc::apply_command::{apply, ApplyState};
    use crate::mvcc::read_txn::ReadTxn;
    use cairn_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    fn entry(index: u64, cmd: Command) -> (Entry, Option<ApplyResponder<TypeConfig>>) {
        let payload = EntryPayload::Normal(crate::raft::types::LogCommand {
            origin: 1,
            request_id: index,
            cmd,
        });
        (
            Entry {
                log_id: LogId::new(1u64.into(), index),
                payload,
            },
            None,
        )
    }

    #[tokio::test]
    async fn after_a_storage_fault_every_later_batch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = crate::mvcc::schema::open_writer(&path).unwrap();
        // A fault in the middle of a write, as a full or failing disk gives.
        conn.execute_batch(
            "CREATE TRIGGER fault BEFORE INSERT ON history WHEN NEW.key = x'626164'
             BEGIN SELECT RAISE(ABORT, 'injected I/O error'); END;",
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        let index = Arc::new(KeyIndex::load(&conn).unwrap());
        let metrics = StoreMetrics::new(&registry).unwrap();
        let compactor =
            Compactor::start(&path, index.clone(), metrics.compaction_failures.clone()).unwrap();
        let out = ApplierOutputs {
            member_id: 1,
            state: watch::channel(ApplyState::load(&conn).unwrap()).0,
            events: broadcast::channel(16).0,
            compactor: Arc::new(compactor),
            metrics,
            waiters: Waiters::default(),
            membership: watch::channel(StoredMembership::default()).0,
            lease_changes: Default::default(),
            wal_restart: WalRestart::default(),
            prev_kv: PrevKvInterest::default(),
            file_size: FileSize::new(&path),
            index,
        };
        let applier = Applier::start(conn, out).unwrap();
        let batch = |entries| move |reply| ApplierMsg::Apply { entries, reply };
        applier
            .call(batch(vec![entry(1, put("a", "1"))]))
            .await
            .unwrap();
        let fault = applier
            .call(batch(vec![
                entry(2, put("b", "1")),
                entry(3, put("bad", "1")),
            ]))
            .await;
        assert!(
            matches!(&fault, Err(StoreError::Storage(m)) if m.contains("injected")),
            "{fault:?}"
        );
        // A write that would succeed on its own is refused: the store no
        // longer matches the log, and openraft must stop this member.
        let later = applier.call(batch(vec![entry(4, put("c", "1"))])).await;
        assert!(
            matches!(&later, Err(StoreError::Storage(m)) if m.contains("failed earlier")),
            "{later:?}"
        );
        drop(applier);
        // Nothing of the failed batch or after it reached the store.
        let conn = crate::mvcc::schema::open_reader(&path).unwrap();
        let keys: Vec<Vec<u8>> = conn
            .prepare("SELECT key FROM history ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(keys, vec![b"a".to_vec()]);
    }

    #[test]
    fn a_snapshot_in_an_earlier_layout_is_upgraded_before_it_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        // The sender's store, then turned into version 1's layout.
        let snap = dir.path().join("snap.db");
        {
            let conn = crate::mvcc::schema::open_writer(&snap).unwrap();
            let mut state = ApplyState::load(&conn).unwrap();
            let del = Command::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            });
            let index = KeyIndex::load(&conn).unwrap();
            for cmd in [put("a", "1"), put("b", "1"), put("a", "2"), del] {
                let tx = conn.unchecked_transaction().unwrap();
                apply(&tx, &index, &mut state, &cmd, true).unwrap();
                state.persist(&tx).unwrap();
                tx.commit().unwrap();
            }
            conn.execute_batch(crate::mvcc::schema::DOWNGRADE_TO_V1_FOR_TESTS)
                .unwrap();
        }
        let mut conn = crate::mvcc::schema::open_writer(&dir.path().join("store.db")).unwrap();
        let index = KeyIndex::default();
        let exclusive = index.exclusive();
        install(&mut conn, &snap).unwrap();
        exclusive.reload(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        let read = ReadTxn::open(&tx, &index).unwrap();
        assert_eq!(crate::mvcc::TxnRead::current_rev(&read), 5);
        let at = |rev| {
            crate::txn::range(
                &read,
                &RangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    revision: rev,
                    ..Default::default()
                },
            )
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect::<Vec<_>>()
        };
        let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(at(0), vec![kv("a", "2")]);
        assert_eq!(at(4), vec![kv("a", "2"), kv("b", "1")]);
        assert_eq!(at(3), vec![kv("a", "1"), kv("b", "1")]);
        assert_eq!(
            crate::mvcc::schema::get_meta(&tx, crate::mvcc::schema::meta::SCHEMA_VERSION).unwrap(),
            crate::mvcc::schema::SCHEMA_VERSION
        );
    }
}
