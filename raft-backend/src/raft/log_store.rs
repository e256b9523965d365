//! The Raft log: durable in its own SQLite file (`raft.db`), served from memory.
//!
//! One thread owns the write connection and takes operations in the order
//! openraft issued them. Consecutive appends share one transaction, so many
//! proposals share one fsync (group commit); openraft hears that entries are
//! durable only after that commit. The unpurged entries also stay in memory,
//! which is what openraft reads when it replicates and applies; the log is
//! purged behind state-machine snapshots, which bounds that memory.
//!
//! The store commits without fsync of its own, so before entries are purged
//! the store is synced (`PurgeBarrier`): a purged entry is always in state
//! that survives power loss. A failed truncate would bring conflicting
//! entries back at restart; every later append then fails, and openraft stops
//! this member rather than let it diverge.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::codec;
use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::metrics::StoreMetrics;

pub const LOG_FILE: &str = "raft.db";

const DDL: &str = "
CREATE TABLE IF NOT EXISTS log (
    idx   INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
";

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Upper bound on appends folded into one transaction, to bound ack latency.
const MAX_GROUP: usize = 256;

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
    Put {
        name: &'static str,
        value: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// The commit index, which needs no fsync of its own (see
    /// `save_committed`): it rides along in the next append's transaction.
    Committed(Vec<u8>),
}

/// Makes the state machine durable up to everything applied so far; run
/// before each purge, because the purged entries can no longer replay it.
pub type PurgeBarrier = Box<dyn Fn() -> io::Result<()> + Send>;

/// Cheap to clone: the reader and the storage share the cache and the thread.
#[derive(Clone)]
pub struct LogStore {
    cache: Arc<Mutex<Cached>>,
    tx: mpsc::Sender<Op>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn decode_log_id(bytes: &[u8]) -> io::Result<LogId> {
    cairn_proto::peer::LogId::decode(bytes)
        .map(codec::log_id_from_pb)
        .map_err(io_err)
}

impl LogStore {
    pub fn open(
        data_dir: &Path,
        metrics: StoreMetrics,
        before_purge: PurgeBarrier,
    ) -> io::Result<Self> {
        let conn = Connection::open(data_dir.join(LOG_FILE)).map_err(io_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(io_err)?;
        // FULL: a commit fsyncs the WAL, so an entry reported flushed survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(io_err)?;
        conn.execute_batch(DDL).map_err(io_err)?;
        let mut cached = Cached::default();
        {
            let mut stmt = conn
                .prepare("SELECT entry FROM log ORDER BY idx")
                .map_err(io_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(io_err)?;
            for row in rows {
                let e = codec::decode_entry(&row.map_err(io_err)?).map_err(io_err)?;
                cached.entries.insert(e.log_id.index, e);
            }
            let get = |name: &str| -> io::Result<Option<Vec<u8>>> {
                conn.query_row("SELECT value FROM state WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(io_err)
            };
            if let Some(v) = get(VOTE)? {
                let v = cairn_proto::peer::Vote::decode(v.as_slice()).map_err(io_err)?;
                cached.vote = Some(codec::vote_from_pb(Some(v)).map_err(io_err)?);
            }
            if let Some(c) = get(COMMITTED)? {
                cached.committed = Some(decode_log_id(&c)?);
            }
            if let Some(p) = get(PURGED)? {
                cached.last_purged = Some(decode_log_id(&p)?);
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cairn-raft-log".into())
            .spawn(move || run(conn, rx, metrics, before_purge))?;
        Ok(LogStore {
            cache: Arc::new(Mutex::new(cached)),
            tx,
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cached> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.tx
            .send(op)
            .map_err(|_| io_err("raft log writer has stopped"))
    }

    async fn put_durable(&self, name: &'static str, value: Vec<u8>) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Put { name, value, done })?;
        rx.await
            .map_err(|_| io_err("raft log writer has stopped"))?
    }
}

fn run(
    mut conn: Connection,
    rx: mpsc::Receiver<Op>,
    metrics: StoreMetrics,
    before_purge: PurgeBarrier,
) {
    let mut next = rx.recv().ok();
    let mut committed: Option<Vec<u8>> = None;
    // Set once the file no longer matches what openraft was told.
    let mut failed: Option<String> = None;
    while let Some(op) = next.take() {
        match op {
            Op::Append { rows, done } => {
                let mut group = vec![(rows, done)];
                // Fold in every append already waiting: one commit, one fsync.
                // When none is, give up the CPU once first: an append being
                // submitted right now then joins this fsync instead of
                // paying for the next one.
                let mut yielded = false;
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Op::Append { rows, done }) => group.push((rows, done)),
                        Ok(Op::Committed(c)) => committed = Some(c),
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
                let started = Instant::now();
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => {
                        append_group(&mut conn, &group, committed.take()).map_err(|e| e.to_string())
                    }
                };
                metrics.wal_fsync.observe(started.elapsed().as_secs_f64());
                for (_, done) in group {
                    done.io_completed(result.clone().map_err(io_err));
                }
                if next.is_some() {
                    continue;
                }
            }
            Op::Committed(c) => committed = Some(c),
            Op::TruncateAfter(after) => {
                let from = after.map(|i| i as i64).unwrap_or(-1);
                if let Err(e) = conn.execute("DELETE FROM log WHERE idx > ?1", [from]) {
                    // The conflicting entries would come back at restart.
                    tracing::error!(error = %e, "raft log truncate failed; refusing further writes");
                    failed.get_or_insert(format!("raft log truncate failed: {e}"));
                }
            }
            Op::Purge { log_id, upto } => {
                if let Err(e) = before_purge() {
                    // Keeping the entries is always safe; try again next time.
                    tracing::error!(error = %e, "syncing the store before a raft log purge failed; log kept");
                } else {
                    // One transaction: the purged mark and the deletion land together.
                    let r = conn.transaction().and_then(|tx| {
                        put_state(&tx, PURGED, &log_id)?;
                        tx.execute("DELETE FROM log WHERE idx <= ?1", [upto as i64])?;
                        tx.commit()
                    });
                    if let Err(e) = r {
                        // Rolled back: the entries and the older purge mark
                        // stay, which a restart reads back consistently.
                        tracing::error!(error = %e, "raft log purge failed; log kept");
                    }
                }
            }
            Op::Put { name, value, done } => {
                let r = put_state(&conn, name, &value).map_err(io_err);
                let _ = done.send(r);
            }
        }
        next = rx.recv().ok();
    }
    // Shutting down: keep the last commit index seen, if it was not yet written.
    if let Some(c) = committed {
        if let Err(e) = put_state(&conn, COMMITTED, &c) {
            tracing::warn!(error = %e, "raft log: saving the commit index at shutdown");
        }
    }
}

fn put_state(conn: &Connection, name: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO state (name, value) VALUES (?1, ?2)",
        params![name, value],
    )
    .map(drop)
}

type AppendGroup = [(Vec<(u64, Vec<u8>)>, IOFlushed<TypeConfig>)];

fn append_group(
    conn: &mut Connection,
    group: &AppendGroup,
    committed: Option<Vec<u8>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    if let Some(c) = committed {
        put_state(&tx, COMMITTED, &c)?;
    }
    {
        let mut stmt =
            tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")?;
        for (rows, _) in group {
            for (idx, bytes) in rows {
                stmt.execute(params![*idx as i64, bytes])?;
            }
        }
    }
    tx.commit()
}

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
        self.put_durable(VOTE, codec::vote_to_pb(vote).encode_to_vec())
            .await?;
        self.cache().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.cache().committed = committed;
        if let Some(c) = committed {
            // Not waited for, and not fsynced on its own: it is written in
            // the next append's transaction. Losing it only means re-learning
            // the commit index after a crash. (Written on its own, it cost a
            // second fsync per write on every member.)
            self.send(Op::Committed(codec::log_id_to_pb(&c).encode_to_vec()))?;
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
        let rows = entries
            .iter()
            .map(|e| (e.log_id.index, codec::encode_entry(e)))
            .collect();
        self.cache()
            .entries
            .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
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
