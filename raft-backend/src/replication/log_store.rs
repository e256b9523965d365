//! The Raft log as openraft sees it: durable in segment files (`log_file`),
//! served from memory.
//!
//! One thread owns the files and takes operations in the order openraft
//! issued them. Consecutive appends share one write and one fdatasync (group
//! commit); openraft hears that entries are durable only after it. A member
//! that is the whole cluster may instead write an append on the caller's
//! thread while that thread is idle (`InlineAppends`): the same write and the
//! same fdatasync, without the two thread wake-ups around them. The
//! unpurged entries also stay in memory, which is what openraft reads when it
//! replicates and applies; the log is purged behind state-machine snapshot
//! points, which bounds that memory.
//!
//! The store commits without fsync of its own, so before entries are purged
//! the store is synced (`PurgeBarrier`): a purged entry is always in state
//! that survives power loss. A failed write leaves the files out of step with
//! what openraft was told; every later append then fails, and openraft stops
//! this member rather than let it diverge (the server then exits, see
//! `crate::StorageFault`). So does a failed sync of the store before a
//! purge: a failed fsync is never retried as if the next could succeed.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;
use tokio::sync::oneshot;

use super::codec;
use super::log_file::{self, LogFile};
use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::handoff::{Handoff, Owner};
use crate::mvcc::StoreMetrics;

/// Where earlier builds kept the log (one SQLite file); imported once.
const SQLITE_LOG_FILE: &str = "raft.db";

/// Upper bound on appends folded into one write, to bound ack latency.
const MAX_GROUP: usize = 256;

/// An append plus fdatasync slower than this is logged (etcd: 1 s).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Cached {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

enum Op {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        done: IOFlushed<TypeConfig>,
    },
    TruncateAfter(Option<u64>),
    Purge {
        log_id: Vec<u8>,
        upto: u64,
    },
    Vote {
        value: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// The newest commit index not yet written, as (index, encoded log id). It
/// needs no fsync of its own (see `save_committed`) and rides along in the
/// next append's write; kept here rather than sent, because waking the
/// writer for it cost every member a context switch per write.
type PendingCommit = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

fn lock_pending(p: &PendingCommit) -> MutexGuard<'_, Option<(u64, Vec<u8>)>> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes the state machine durable up to everything applied so far; run
/// before each purge, because the purged entries can no longer replay it.
pub type PurgeBarrier = Box<dyn Fn() -> io::Result<()> + Send>;

/// Cheap to clone: the reader and the storage share the cache and the thread.
#[derive(Clone)]
pub struct LogStore {
    cache: Arc<Mutex<Cached>>,
    writer: Arc<Handoff<Writer>>,
    pending_commit: PendingCommit,
    inline: InlineAppends,
}

/// Whether appends may be written on the caller's thread when the log's
/// thread is idle. Worth it only where nothing else waits on that caller
/// (openraft's core) during the fdatasync: on a member that is the whole
/// cluster. With followers, the leader's core would hold their replication
/// back for its own fsync. Only a matter of speed: both ways write the same
/// bytes in the same order and report durability after the same fsync.
#[derive(Clone, Default)]
pub struct InlineAppends(Arc<AtomicBool>);

impl InlineAppends {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    fn on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn decode_log_id(bytes: &[u8]) -> io::Result<LogId> {
    cairn_proto::peer::LogId::decode(bytes)
        .map(codec::log_id_from_pb)
        .map_err(io_err)
}

/// Moves a log kept by an earlier build in SQLite (`raft.db`) into the
/// segment files, then removes it. Runs only while the new log is empty.
fn import_sqlite_log(data_dir: &Path, log: &mut LogFile) -> io::Result<bool> {
    let path = data_dir.join(SQLITE_LOG_FILE);
    if !path.exists() {
        return Ok(false);
    }
    let conn = rusqlite::Connection::open(&path).map_err(io_err)?;
    let get = |name: &str| -> io::Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension;
        conn.query_row("SELECT value FROM state WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(io_err)
    };
    let state = log_file::LogState {
        vote: get("vote")?,
        purged: get("purged")?,
    };
    let committed = get("committed")?;
    let mut buf = Vec::new();
    let mut max = None;
    {
        let mut stmt = conn
            .prepare("SELECT idx, entry FROM log ORDER BY idx")
            .map_err(io_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(io_err)?;
        for row in rows {
            let (idx, entry) = row.map_err(io_err)?;
            log_file::encode_entry(&mut buf, idx as u64, &entry);
            max = Some(idx as u64);
        }
    }
    if let Some(c) = &committed {
        log_file::encode_committed(&mut buf, c);
    }
    drop(conn);
    log.append(&buf, max)?;
    log.write_state(&state)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    tracing::info!("imported the raft log of an earlier build from {SQLITE_LOG_FILE}");
    Ok(true)
}

impl LogStore {
    pub fn open(
        data_dir: &Path,
        metrics: StoreMetrics,
        before_purge: PurgeBarrier,
    ) -> io::Result<Self> {
        let (mut log, mut rec) = LogFile::open(data_dir)?;
        if rec.entries.is_empty()
            && rec.state == log_file::LogState::default()
            && import_sqlite_log(data_dir, &mut log)?
        {
            drop(log);
            (log, rec) = LogFile::open(data_dir)?;
        }
        let mut cached = Cached::default();
        if let Some(p) = &rec.state.purged {
            cached.last_purged = Some(decode_log_id(p)?);
        }
        // A segment may still hold entries at or below the purge point.
        let from = cached.last_purged.map(|p| p.index + 1).unwrap_or(0);
        for (index, bytes) in rec.entries.range(from..) {
            let e = codec::decode_entry(bytes).map_err(io_err)?;
            if e.log_id.index != *index {
                return Err(io_err(format!(
                    "raft log: record at index {index} holds entry {}",
                    e.log_id.index
                )));
            }
            cached.entries.insert(*index, e);
        }
        if let Some(v) = &rec.state.vote {
            let v = cairn_proto::peer::Vote::decode(v.as_slice()).map_err(io_err)?;
            cached.vote = Some(codec::vote_from_pb(Some(v)).map_err(io_err)?);
        }
        if let Some(c) = &rec.committed {
            cached.committed = Some(decode_log_id(c)?);
        }
        let pending_commit = PendingCommit::default();
        let writer = Writer {
            log,
            state: rec.state,
            metrics,
            before_purge,
            failed: None,
            pending_commit: pending_commit.clone(),
            written_upto: cached
                .entries
                .keys()
                .next_back()
                .copied()
                .or(cached.last_purged.map(|p| p.index))
                .unwrap_or(0),
        };
        Ok(LogStore {
            cache: Arc::new(Mutex::new(cached)),
            writer: Arc::new(Handoff::start("cairn-raft-log", writer)?),
            pending_commit,
            inline: InlineAppends::default(),
        })
    }

    /// The switch for writing appends on the caller's thread (off at first).
    pub fn inline_appends(&self) -> InlineAppends {
        self.inline.clone()
    }

    fn cache(&self) -> MutexGuard<'_, Cached> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.writer
            .send(op)
            .map_err(|_| io_err("raft log writer has stopped"))
    }
}

/// The thread that owns the files.
struct Writer {
    log: LogFile,
    state: log_file::LogState,
    metrics: StoreMetrics,
    before_purge: PurgeBarrier,
    /// Set once the files no longer match what openraft was told.
    failed: Option<String>,
    pending_commit: PendingCommit,
    /// The highest entry index written. A commit index is only written
    /// beside entries that reach it: a leader may learn a commit from its
    /// followers before its own copy of the entries is written, and a
    /// restart must never find a commit index past the end of the log.
    written_upto: u64,
}

impl Owner for Writer {
    type Msg = Op;

    /// Does `op` and, if it is an append, every append already queued behind
    /// it (one write, one fsync).
    fn take(&mut self, op: Op, rx: &mpsc::Receiver<Op>) -> (usize, Option<Op>) {
        let mut next = None;
        match op {
            Op::Append { rows, done } => {
                let mut group = vec![(rows, done)];
                // Fold in every append already waiting: one write, one
                // fsync. When none is, give up the CPU once first: an
                // append being submitted right now then joins this fsync
                // instead of paying for the next one.
                let mut yielded = false;
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Op::Append { rows, done }) => group.push((rows, done)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) if !yielded => {
                            yielded = true;
                            std::thread::yield_now();
                        }
                        Err(_) => break,
                    }
                }
                let n = group.len();
                self.write_group(group);
                return (n, next);
            }
            Op::TruncateAfter(after) => {
                let mut buf = Vec::new();
                log_file::encode_truncate(&mut buf, after);
                // Made durable by the next append's fsync: until then a
                // crash brings back entries that were never committed,
                // as if the truncation had not happened yet.
                if let Err(e) = self.log.write(&buf) {
                    self.fail(format!("raft log truncate failed: {e}"));
                }
                self.written_upto = self.written_upto.min(after.unwrap_or(0));
            }
            Op::Purge { log_id, upto } => self.purge(log_id, upto),
            Op::Vote { value, done } => {
                let _ = done.send(self.save_state(|s| s.vote = Some(value)));
            }
        }
        (1, next)
    }

    /// Shutting down: keeps the last commit index seen, if not yet written.
    fn stopped(&mut self) {
        if let (Some(c), None) = (self.commit_to_write(self.written_upto), &self.failed) {
            let mut buf = Vec::new();
            log_file::encode_committed(&mut buf, &c);
            if let Err(e) = self.log.append(&buf, None) {
                tracing::warn!(error = %e, "raft log: saving the commit index at shutdown");
            }
        }
    }
}

impl Writer {
    /// One write and one fdatasync for the group, then each append's
    /// callback with the outcome.
    fn write_group(&mut self, group: Vec<Append>) {
        let started = Instant::now();
        let result = self.append_group(&group);
        let took = started.elapsed();
        self.metrics.wal_fsync.observe(took.as_secs_f64());
        if took >= SLOW_SYNC {
            // etcd's warning, at etcd's threshold: the disk, or
            // another writer on it, holds every write up.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                expected_ms = SLOW_SYNC.as_millis() as u64,
                "slow fdatasync"
            );
        }
        for (_, done) in group {
            done.io_completed(result.clone().map_err(io_err));
        }
    }

    /// Writes the state file with `change` applied; the state in memory
    /// follows only once the file is replaced.
    fn save_state(&mut self, change: impl FnOnce(&mut log_file::LogState)) -> io::Result<()> {
        let mut state = self.state.clone();
        change(&mut state);
        self.log.write_state(&state)?;
        self.state = state;
        Ok(())
    }

    fn fail(&mut self, msg: String) {
        tracing::error!(error = %msg, "raft log write failed; refusing further writes");
        self.failed.get_or_insert(msg);
    }

    /// The pending commit index, taken if the log holds its entry once
    /// entries up to `upto` are written; otherwise it stays pending.
    fn commit_to_write(&self, upto: u64) -> Option<Vec<u8>> {
        let mut pending = lock_pending(&self.pending_commit);
        match &*pending {
            Some((index, _)) if *index <= upto => pending.take().map(|(_, c)| c),
            _ => None,
        }
    }

    fn append_group(&mut self, group: &AppendGroup) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut buf = Vec::new();
        let mut max = None;
        for (rows, _) in group {
            for (idx, bytes) in rows {
                log_file::encode_entry(&mut buf, *idx, bytes);
                max = max.max(Some(*idx));
            }
        }
        let upto = self.written_upto.max(max.unwrap_or(0));
        if let Some(c) = self.commit_to_write(upto) {
            log_file::encode_committed(&mut buf, &c);
        }
        match self.log.append(&buf, max) {
            Ok(()) => {
                self.written_upto = upto;
                Ok(())
            }
            Err(e) => {
                // Part of the group may be on disk, part not: nothing after
                // it can be trusted to line up.
                let msg = format!("raft log append failed: {e}");
                self.fail(msg.clone());
                Err(msg)
            }
        }
    }

    fn purge(&mut self, log_id: Vec<u8>, upto: u64) {
        if let Err(e) = (self.before_purge)() {
            // The entries are kept. No later purge may trust a retried sync:
            // after a failed fsync the kernel may have dropped the store's
            // dirty pages and the next fsync succeeds without them. Every
            // later append fails, and openraft stops this member, whose
            // restart replays the store from this log.
            self.fail(format!(
                "syncing the store before a raft log purge failed: {e}"
            ));
            return;
        }
        if let Err(e) = self.save_state(|s| s.purged = Some(log_id)) {
            // The old state file stands: the entries are all still there.
            tracing::error!(error = %e, "raft log purge failed; log kept");
            return;
        }
        if let Err(e) = self.log.remove_segments_upto(upto) {
            // Replay drops entries behind the purge point anyway.
            tracing::warn!(error = %e, "raft log: removing purged segments failed");
        }
    }
}

/// One append: its encoded entries by index, and whom to tell once durable.
type Append = (Vec<(u64, Vec<u8>)>, IOFlushed<TypeConfig>);
type AppendGroup = [Append];

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let c = self.cache();
        let start = match range.start_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(c.entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.cache().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let c = self.cache();
        let last_purged_log_id = c.last_purged;
        let last_log_id = c
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Vote {
            value: codec::vote_to_pb(vote).encode_to_vec(),
            done,
        })?;
        rx.await
            .map_err(|_| io_err("raft log writer has stopped"))??;
        self.cache().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.cache().committed = committed;
        if let Some(c) = committed {
            // Not waited for, and not fsynced on its own: it is written in
            // the next append's transaction. Losing it only means re-learning
            // the commit index after a crash. (Written on its own, it would
            // cost a second fsync per write on every member.)
            *lock_pending(&self.pending_commit) =
                Some((c.index, codec::log_id_to_pb(&c).encode_to_vec()));
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.cache().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode before taking the lock the replication readers share.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, codec::encode_entry(e)))
            .collect();
        self.cache()
            .entries
            .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
        // A lone entry means no write queued behind it at openraft's core:
        // nothing waits on the core during the fsync. Under load the core
        // batches, and the log's thread (group commit) serves it better:
        // writing batches here too blocked both Raft tasks on I/O at once
        // and cost throughput (docs/benchmarks.md).
        // Only openraft's core sends to the log's thread, one call at a
        // time, and this is that call (see `Handoff::idle`).
        if rows.len() == 1 && self.inline.on() {
            if let Some(mut w) = self.writer.idle() {
                w.write_group(vec![(rows, callback)]);
                return Ok(());
            }
        }
        self.send(Op::Append {
            rows,
            done: callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let after = last_log_id.map(|l| l.index);
        {
            let mut c = self.cache();
            let from = after.map(|i| i + 1).unwrap_or(0);
            let _ = c.entries.split_off(&from);
        }
        self.send(Op::TruncateAfter(after))
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        {
            let mut c = self.cache();
            let keep = c.entries.split_off(&(log_id.index + 1));
            c.entries = keep;
            c.last_purged = Some(log_id);
        }
        self.send(Op::Purge {
            log_id: codec::log_id_to_pb(&log_id).encode_to_vec(),
            upto: log_id.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::types::EntryPayload;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(2u64.into(), index),
            payload: EntryPayload::Blank,
        }
    }

    fn open(dir: &Path) -> LogStore {
        open_with(dir, Box::new(|| Ok(())))
    }

    fn open_with(dir: &Path, barrier: PurgeBarrier) -> LogStore {
        let metrics = StoreMetrics::new(&prometheus::Registry::new()).unwrap();
        LogStore::open(dir, metrics, barrier).unwrap()
    }

    async fn append(log: &mut LogStore, entries: impl Iterator<Item = Entry> + Send) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::<TypeConfig>::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_store_is_synced_before_a_purge_and_a_failed_sync_keeps_the_log_and_stops_appends()
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let syncs = Arc::new(AtomicUsize::new(0));
        {
            let counted = syncs.clone();
            let mut log = open_with(
                dir.path(),
                Box::new(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Err(io::Error::other("disk gone"))
                }),
            );
            append(&mut log, (1..=5).map(entry)).await;
            log.purge(LogId::new(2u64.into(), 3)).await.unwrap();
            // Operations run in order: once this vote is saved, the purge ran.
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            // A failed sync is not retried as if it could work: every later
            // append fails (and openraft stops the member).
            use openraft::type_config::TypeConfigExt;
            let (tx, rx) = TypeConfig::oneshot();
            log.append(
                std::iter::once(entry(6)),
                IOFlushed::<TypeConfig>::signal(tx),
            )
            .await
            .unwrap();
            let err = rx.await.unwrap().unwrap_err().to_string();
            assert!(err.contains("syncing the store"), "{err}");
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        // The store could not be synced, so nothing was purged on disk.
        let mut log = open(dir.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(got, (1..=5).map(entry).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_log_kept_in_sqlite_by_an_earlier_build_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let vote = codec::vote_to_pb(&Vote::new(2, 7)).encode_to_vec();
        let purged = codec::log_id_to_pb(&LogId::new(2u64.into(), 1)).encode_to_vec();
        let committed = codec::log_id_to_pb(&LogId::new(2u64.into(), 3)).encode_to_vec();
        {
            let conn = rusqlite::Connection::open(dir.path().join(SQLITE_LOG_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
                 CREATE TABLE state (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            for i in 2..=4 {
                conn.execute(
                    "INSERT INTO log (idx, entry) VALUES (?1, ?2)",
                    rusqlite::params![i, codec::encode_entry(&entry(i as u64))],
                )
                .unwrap();
            }
            for (name, value) in [
                ("vote", &vote),
                ("purged", &purged),
                ("committed", &committed),
            ] {
                conn.execute(
                    "INSERT INTO state (name, value) VALUES (?1, ?2)",
                    rusqlite::params![name, value],
                )
                .unwrap();
            }
        }
        for _ in 0..2 {
            let mut log = open(dir.path());
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
            assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 7)));
            assert_eq!(
                log.read_committed().await.unwrap().map(|l| l.index),
                Some(3)
            );
            let got = log.try_get_log_entries(2..5).await.unwrap();
            assert_eq!(got, vec![entry(2), entry(3), entry(4)]);
            assert!(!dir.path().join(SQLITE_LOG_FILE).exists());
        }
    }

    #[tokio::test]
    async fn a_commit_index_is_written_only_beside_the_entries_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let commit = |i| Some(LogId::new(2u64.into(), i));
        {
            let mut log = open(dir.path());
            append(&mut log, (1..=3).map(entry)).await;
            log.save_committed(commit(2)).await.unwrap();
            append(&mut log, std::iter::once(entry(4))).await;
            // Learned from a quorum before this member wrote entry 6.
            log.save_committed(commit(6)).await.unwrap();
            append(&mut log, std::iter::once(entry(5))).await;
        }
        {
            let mut log = open(dir.path());
            assert_eq!(log.read_committed().await.unwrap(), commit(2));
            assert_eq!(
                log.get_log_state()
                    .await
                    .unwrap()
                    .last_log_id
                    .map(|l| l.index),
                Some(5)
            );
            log.save_committed(commit(6)).await.unwrap();
            append(&mut log, std::iter::once(entry(6))).await;
        }
        let mut log = open(dir.path());
        assert_eq!(log.read_committed().await.unwrap(), commit(6));
    }

    #[tokio::test]
    async fn an_inline_append_is_durable_when_it_returns_and_never_overtakes_the_thread() {
        use openraft::type_config::TypeConfigExt;
        let dir = tempfile::tempdir().unwrap();
        {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let (synced, syncing) = std::sync::mpsc::channel::<()>();
            let mut log = open_with(
                dir.path(),
                Box::new(move || {
                    let _ = synced.send(());
                    let _ = held.recv();
                    Ok(())
                }),
            );
            log.inline_appends().set(true);
            // The thread idle and one entry: written on this thread, and
            // reported durable before `append` returns.
            let (tx, mut rx) = TypeConfig::oneshot();
            log.append([entry(1)], IOFlushed::<TypeConfig>::signal(tx))
                .await
                .unwrap();
            assert!(matches!(rx.try_recv(), Ok(Ok(()))));

            // The thread held up, by a purge whose store sync waits: a batch
            // goes to it (two entries never go inline), and a lone entry
            // after it must queue behind it.
            log.purge(LogId::new(2u64.into(), 1)).await.unwrap();
            syncing.recv().unwrap();
            let (tx2, rx2) = TypeConfig::oneshot();
            log.append([entry(2), entry(3)], IOFlushed::<TypeConfig>::signal(tx2))
                .await
                .unwrap();
            let (tx4, mut rx4) = TypeConfig::oneshot();
            log.append([entry(4)], IOFlushed::<TypeConfig>::signal(tx4))
                .await
                .unwrap();
            assert!(rx4.try_recv().is_err(), "queued behind the batch");
            release.send(()).unwrap();
            rx2.await.unwrap().unwrap();
            rx4.await.unwrap().unwrap();
        }
        let mut log = open(dir.path());
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(got, (2..=4).map(entry).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
    }

    #[tokio::test]
    async fn the_vote_and_the_purge_point_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            append(&mut log, (1..=5).map(entry)).await;
            log.purge(LogId::new(2u64.into(), 2)).await.unwrap();
            // A vote written after the purge keeps the purge point.
            log.save_vote(&Vote::new(4, 1)).await.unwrap();
        }
        let mut log = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(got, (3..=5).map(entry).collect::<Vec<_>>());
    }
}
