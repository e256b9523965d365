//! openraft's view of the MVCC store: apply committed entries, and build or
//! install snapshots.
//!
//! A snapshot is a consistent copy of the store's SQLite database, made with
//! `VACUUM INTO` from a read transaction, so it is compact and needs no
//! format of its own. It carries its own applied log id and membership, and is
//! installed by replacing every table's rows in one transaction.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use super::applier::{last_applied, load_membership, Applier, ApplierMsg};
use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::apply::ApplyState;

const SNAP_DIR: &str = "snap";
const CURRENT: &str = "snapshot.db";

/// A snapshot on disk: a complete SQLite database of the store.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

#[derive(Clone)]
pub struct StateMachine {
    pub(crate) applier: Arc<Applier>,
    db_path: PathBuf,
    snap_dir: PathBuf,
    state: watch::Receiver<ApplyState>,
    membership: watch::Receiver<StoredMembership>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn unique(dir: &Path, prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    dir.join(format!("{prefix}-{nanos}.db"))
}

/// Reads the applied log id and membership recorded inside a snapshot file.
fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(io_err)?;
    let state = ApplyState::load(&conn).map_err(io_err)?;
    let membership = load_membership(&conn).map_err(io_err)?;
    Ok(SnapshotMeta {
        last_log_id: last_applied(&state),
        last_membership: membership,
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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
        // Leftovers of a build or a transfer that a crash interrupted.
        for entry in std::fs::read_dir(&snap_dir)?.flatten() {
            if entry.file_name() != CURRENT {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(StateMachine {
            applier,
            db_path,
            snap_dir,
            state,
            membership,
        })
    }

    /// Where a snapshot arriving from the leader is written before install.
    pub fn receive_path(&self) -> PathBuf {
        unique(&self.snap_dir, "recv")
    }

    fn current_path(&self) -> PathBuf {
        self.snap_dir.join(CURRENT)
    }

    fn build_blocking(db_path: &Path, snap_dir: &Path) -> io::Result<Snapshot<SnapshotFile>> {
        let tmp = unique(snap_dir, "build");
        // Not a pooled reader: those are query_only, which VACUUM INTO refuses.
        let conn = rusqlite::Connection::open(db_path).map_err(io_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(io_err)?;
        let target = tmp
            .to_str()
            .ok_or_else(|| io_err("snapshot path is not UTF-8"))?;
        conn.execute("VACUUM INTO ?1", [target]).map_err(io_err)?;
        drop(conn);
        // openraft purges the log behind this snapshot once it returns: the
        // store must hold at least this state durably by then (it commits
        // with synchronous=NORMAL), and so must the snapshot file.
        crate::schema::sync_to_disk(db_path)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let meta = read_meta(&tmp)?;
        let current = snap_dir.join(CURRENT);
        std::fs::rename(&tmp, &current)?;
        fsync_dir(snap_dir)?;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            "built state-machine snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path: current },
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotFile>> {
        let db = self.db_path.clone();
        let dir = self.snap_dir.clone();
        tokio::task::spawn_blocking(move || Self::build_blocking(&db, &dir))
            .await
            .map_err(io_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
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
        self.applier
            .call(|reply| ApplierMsg::Apply {
                entries: batch,
                reply,
            })
            .await
            .map_err(io_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        tracing::info!(last_log_id = ?meta.last_log_id, "installing snapshot from the leader");
        let path = snapshot.path.clone();
        self.applier
            .call(|reply| ApplierMsg::Install { path, reply })
            .await
            .map_err(io_err)?;
        // Keep it as this member's current snapshot, to serve others later.
        let current = self.current_path();
        if snapshot.path != current {
            std::fs::rename(&snapshot.path, &current)?;
            fsync_dir(&self.snap_dir)?;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotFile>>> {
        let current = self.current_path();
        if !current.exists() {
            return Ok(None);
        }
        let meta = tokio::task::spawn_blocking({
            let p = current.clone();
            move || read_meta(&p)
        })
        .await
        .map_err(io_err)??;
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotFile { path: current },
        }))
    }
}
