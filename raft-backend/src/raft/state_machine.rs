//! openraft's view of the MVCC store: apply committed entries, and build or
//! install snapshots.
//!
//! The store is its own snapshot, as etcd's backend is: "building" one only
//! records the log id the store has reached (the log store syncs the store
//! before it purges entries behind it, see `PurgeBarrier`), so it costs
//! nothing however large the store is. Copying happens only when a member
//! needs a snapshot sent: a read transaction pins the store at its current
//! applied log id (newer than the recorded one, as etcd sends its current
//! backend), and the sender copies that view into a file with SQLite's
//! online backup while writes go on. The receiver installs the file by
//! replacing every table's rows in one transaction.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use rusqlite::Connection;
use tokio::sync::watch;

use super::applier::{last_applied, load_membership, Applier, ApplierMsg};
use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::mvcc::ApplyState;

const SNAP_DIR: &str = "snap";

/// A snapshot's data: on the sending member, the live store pinned at the
/// snapshot's log id; on the receiving member, the file that arrived.
#[derive(Debug)]
pub enum SnapshotData {
    Pinned(PinnedStore),
    Received(PathBuf),
}

/// A read transaction on the store, held open so the view cannot move.
pub struct PinnedStore {
    conn: Mutex<Connection>,
    snap_dir: PathBuf,
}

impl std::fmt::Debug for PinnedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedStore")
    }
}

/// A copy of a pinned store, removed when dropped.
pub struct SnapshotCopy {
    pub path: PathBuf,
}

impl Drop for SnapshotCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl PinnedStore {
    /// Copies the pinned view into a new file (blocking; the store's writer
    /// goes on meanwhile, since a WAL reader does not hold it up).
    pub fn copy_to_file(&self) -> io::Result<SnapshotCopy> {
        let copy = SnapshotCopy {
            path: unique(&self.snap_dir, "send"),
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut dest = Connection::open(&copy.path).map_err(io_err)?;
        // One step copies every page inside the pinned read transaction; the
        // backup API only opens a transaction of its own when none is open.
        let backup = rusqlite::backup::Backup::new(&conn, &mut dest).map_err(io_err)?;
        backup.step(-1).map_err(io_err)?;
        drop(backup);
        drop(dest);
        Ok(copy)
    }
}

/// Batches handed to the applier and not yet committed, beyond which
/// `apply` waits: bounds the work queued behind a slow disk.
const MAX_INFLIGHT_APPLIES: usize = 64;

type Inflight = VecDeque<tokio::sync::oneshot::Receiver<crate::error::Result<()>>>;

#[derive(Clone)]
pub struct StateMachine {
    pub(crate) applier: Arc<Applier>,
    inflight: Arc<Mutex<Inflight>>,
    db_path: PathBuf,
    snap_dir: PathBuf,
    state: watch::Receiver<ApplyState>,
    membership: watch::Receiver<StoredMembership>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn unique(dir: &Path, prefix: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    dir.join(format!("{prefix}-{nanos}-{n}.db"))
}

/// The applied log id and membership recorded in the store `conn` reads.
fn read_meta(conn: &Connection) -> io::Result<SnapshotMeta> {
    let state = ApplyState::load(conn).map_err(io_err)?;
    let membership = load_membership(conn).map_err(io_err)?;
    Ok(SnapshotMeta {
        last_log_id: last_applied(&state),
        last_membership: membership,
    })
}

impl StateMachine {
    pub(crate) fn new(
        data_dir: &Path,
        db_path: PathBuf,
        applier: Arc<Applier>,
        state: watch::Receiver<ApplyState>,
        membership: watch::Receiver<StoredMembership>,
    ) -> io::Result<Self> {
        let snap_dir = data_dir.join(SNAP_DIR);
        std::fs::create_dir_all(&snap_dir)?;
        // Leftovers of a copy or a transfer that a crash interrupted (and
        // the snapshot file earlier versions kept; the store replaces it).
        for entry in std::fs::read_dir(&snap_dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(StateMachine {
            applier,
            inflight: Arc::default(),
            db_path,
            snap_dir,
            state,
            membership,
        })
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the handed-over batches that are committed; the first failure
    /// among them is returned.
    fn settle(&self) -> io::Result<()> {
        let mut q = self.inflight();
        while let Some(rx) = q.front_mut() {
            match rx.try_recv() {
                Ok(r) => {
                    q.pop_front();
                    r.map_err(io_err)?;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(io_err("apply thread stopped"))
                }
            }
        }
        Ok(())
    }

    /// Where a snapshot arriving from the leader is written before install.
    pub fn receive_path(&self) -> PathBuf {
        unique(&self.snap_dir, "recv")
    }

    /// Opens a read transaction on the store and reads, inside it, the log
    /// id and membership it has reached. `None` before anything is applied.
    fn pin_blocking(db_path: &Path, snap_dir: &Path) -> io::Result<Option<Snapshot<SnapshotData>>> {
        // Its own reader, not a pooled one: it stays open until the copy is sent.
        let conn = crate::mvcc::schema::open_reader(db_path).map_err(io_err)?;
        conn.execute_batch("BEGIN DEFERRED").map_err(io_err)?;
        // The first read starts the transaction's view; the meta comes from it.
        let meta = read_meta(&conn)?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::Pinned(PinnedStore {
                conn: Mutex::new(conn),
                snap_dir: snap_dir.to_path_buf(),
            }),
        }))
    }

    async fn pin(&self) -> io::Result<Option<Snapshot<SnapshotData>>> {
        let db = self.db_path.clone();
        let dir = self.snap_dir.clone();
        tokio::task::spawn_blocking(move || Self::pin_blocking(&db, &dir))
            .await
            .map_err(io_err)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Records where the store is; nothing is copied (see the module doc).
    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotData>> {
        let snapshot = self
            .pin()
            .await?
            .ok_or_else(|| io_err("no entry applied yet: nothing to snapshot"))?;
        tracing::info!(last_log_id = ?snapshot.meta.last_log_id, "state-machine snapshot point");
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = *self.state.borrow();
        Ok((last_applied(&state), self.membership.borrow().clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Handed over without waiting, so that batches queue behind a running
        // commit and the applier folds them into its next one. Clients are
        // answered by the applier after its commit, and reads wait for the
        // store's applied index, so nothing observes an entry before it is
        // in the store. openraft's own applied index runs ahead by the
        // queue, which is safe: snapshot points are read from the store, and
        // the log is purged only behind them. A failure is reported on a
        // later call, and openraft then stops this member.
        self.settle()?;
        while self.inflight().len() >= MAX_INFLIGHT_APPLIES {
            let oldest = self.inflight().pop_front();
            if let Some(rx) = oldest {
                rx.await
                    .map_err(|_| io_err("apply thread stopped"))?
                    .map_err(io_err)?;
            }
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.applier
            .send(ApplierMsg::Apply {
                entries: batch,
                reply,
            })
            .map_err(io_err)?;
        self.inflight().push_back(rx);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        tracing::info!(last_log_id = ?meta.last_log_id, "installing snapshot from the leader");
        let path = match snapshot {
            SnapshotData::Received(path) => path,
            // openraft installs only what arrived from a leader.
            SnapshotData::Pinned(_) => {
                return Err(io_err("cannot install this member's own store"))
            }
        };
        let result = self
            .applier
            .call(|reply| ApplierMsg::Install {
                path: path.clone(),
                reply,
            })
            .await
            .map_err(io_err);
        // Installed rows live in the store now, which serves later snapshots.
        let _ = std::fs::remove_file(&path);
        result
    }

    /// The store as it is now, pinned: sent to a member that needs a snapshot.
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotData>>> {
        self.pin().await
    }
}
