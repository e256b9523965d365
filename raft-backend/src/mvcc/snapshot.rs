//! The store as a snapshot, as etcd's backend is its own: copying a pinned
//! view of it to a file, and installing such a file in place of the state.
//!
//! A read transaction pins the store at the point it has reached; the
//! sender copies that view into a file with SQLite's online backup while
//! writes go on. The receiver installs the file by replacing every table's
//! rows in one transaction (see `install`); the writer then rebuilds the key
//! index from them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::{membership_blob, schema};

pub(crate) const SNAP_DIR: &str = "snap";

/// A snapshot's data: on the sending member, the live store pinned at the
/// snapshot's point; on the receiving member, the file that arrived.
#[derive(Debug)]
pub enum SnapshotData {
    Pinned(PinnedStore),
    Received(SnapshotFile),
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

/// What a pinned store has reached: the applied state and the membership
/// blob, read inside its transaction.
pub struct PinnedPoint {
    pub state: ApplyState,
    pub membership: Option<Vec<u8>>,
}

/// A snapshot file in the snap dir (a pinned store's copy being sent, or a
/// transfer that arrived), removed when dropped: once sent, once installed,
/// or when openraft lets a received snapshot go without installing it (one
/// that is no newer than what this member already has).
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where snapshot copies and transfers live inside a data dir, emptied of
/// leftovers of a copy or a transfer that a crash interrupted (and of the
/// snapshot file earlier versions kept; the store replaces it).
pub fn snapshot_dir(data_dir: &Path) -> io::Result<PathBuf> {
    let snap_dir = data_dir.join(SNAP_DIR);
    std::fs::create_dir_all(&snap_dir)?;
    for entry in std::fs::read_dir(&snap_dir)?.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(snap_dir)
}

/// A new file name in `dir`, for a copy being sent or a snapshot arriving.
pub fn unique(dir: &Path, prefix: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    dir.join(format!("{prefix}-{nanos}-{n}.db"))
}

impl PinnedStore {
    /// Opens a read transaction on the store at `db_path` (blocking) and
    /// reads, inside it, the point it has reached.
    pub fn pin(db_path: &Path, snap_dir: &Path) -> Result<(PinnedStore, PinnedPoint)> {
        // Its own reader, not a pooled one: it stays open until the copy is sent.
        let conn = schema::open_reader(db_path)?;
        conn.execute_batch("BEGIN DEFERRED")?;
        // The first read starts the transaction's view; the point comes from it.
        let point = PinnedPoint {
            state: ApplyState::load(&conn)?,
            membership: membership_blob::load(&conn)?,
        };
        Ok((
            PinnedStore {
                conn: Mutex::new(conn),
                snap_dir: snap_dir.to_path_buf(),
            },
            point,
        ))
    }

    /// Copies the pinned view into a new file (blocking; the store's writer
    /// goes on meanwhile, since a WAL reader does not hold it up).
    pub fn copy_to_file(&self) -> io::Result<SnapshotFile> {
        let copy = SnapshotFile {
            path: unique(&self.snap_dir, "send"),
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut dest = Connection::open(&copy.path).map_err(io::Error::other)?;
        // One step copies every page inside the pinned read transaction; the
        // backup API only opens a transaction of its own when none is open.
        let backup = rusqlite::backup::Backup::new(&conn, &mut dest).map_err(io::Error::other)?;
        backup.step(-1).map_err(io::Error::other)?;
        drop(backup);
        drop(dest);
        Ok(copy)
    }
}

/// Replaces every table's rows with the snapshot's, in one transaction, so
/// that readers see the old state or the new one and never a mix. The key
/// index is the caller's to rebuild (under `KeyIndex::exclusive`).
pub fn install(conn: &mut Connection, snapshot: &Path) -> Result<()> {
    let path = snapshot.to_str().ok_or_else(|| {
        StoreError::Storage(format!("snapshot path {} is not UTF-8", snapshot.display()))
    })?;
    // A leader of an earlier version sends its own layout: bring the copy to
    // this one first (one of a later version is refused, with its version).
    drop(schema::open_writer(snapshot)?);
    conn.execute("ATTACH DATABASE ?1 AS snap", [path])?;
    let copy = (|| -> Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for table in [
            "history",
            "meta",
            "leases",
            "alarms",
            "raft_state",
            "migration",
        ] {
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
        schema::sync_to_disk(Path::new(path))
            .map_err(|e| StoreError::io("sync installed snapshot", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply_command::apply;
    use crate::command::Command;
    use crate::mvcc::key_index::KeyIndex;
    use crate::mvcc::read_txn::ReadTxn;
    use crate::mvcc::TxnRead;
    use crate::testing::put;
    use cairn_proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};

    /// A received snapshot that is never installed (openraft drops one no
    /// newer than what the member has) leaves no file behind.
    #[test]
    fn a_received_snapshot_dropped_uninstalled_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let snap_dir = snapshot_dir(dir.path()).unwrap();
        let path = unique(&snap_dir, "recv");
        std::fs::write(&path, b"snapshot").unwrap();
        let data = SnapshotData::Received(SnapshotFile { path: path.clone() });
        assert!(path.exists());
        drop(data);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    /// Writes put a=1, b=1, a=2, delete b (revisions 2 to 5) to `path`.
    fn fill(path: &Path) -> Connection {
        let conn = schema::open_writer(path).unwrap();
        let mut state = ApplyState::load(&conn).unwrap();
        let del = Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        });
        let index = KeyIndex::load(&conn).unwrap();
        for (i, cmd) in [put("a", "1"), put("b", "1"), put("a", "2"), del]
            .into_iter()
            .enumerate()
        {
            let tx = conn.unchecked_transaction().unwrap();
            apply(&tx, &index, &mut state, &cmd, true).unwrap();
            state.applied_index = i as u64 + 1;
            state.persist(&tx).unwrap();
            tx.commit().unwrap();
        }
        conn
    }

    /// Installs `snap` into a new store in `dir` and checks it holds what `fill` wrote.
    fn install_and_check(dir: &Path, snap: &Path) -> Connection {
        let mut conn = schema::open_writer(&dir.join("store.db")).unwrap();
        let index = KeyIndex::default();
        let exclusive = index.exclusive();
        install(&mut conn, snap).unwrap();
        exclusive.reload(&conn).unwrap();
        {
            let tx = conn.transaction().unwrap();
            let read = ReadTxn::open(&tx, &index).unwrap();
            assert_eq!(read.current_rev(), 5);
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
                schema::get_meta(&tx, schema::meta::SCHEMA_VERSION).unwrap(),
                schema::SCHEMA_VERSION
            );
        }
        conn
    }

    #[test]
    fn a_snapshot_in_an_earlier_layout_is_upgraded_before_it_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        // The sender's store, then turned into version 1's layout.
        let snap = dir.path().join("snap.db");
        fill(&snap)
            .execute_batch(schema::DOWNGRADE_TO_V1_FOR_TESTS)
            .unwrap();
        install_and_check(dir.path(), &snap);
    }

    #[test]
    fn a_pinned_copy_installs_as_the_state_it_was_pinned_at() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let db = from.path().join("store.db");
        let conn = fill(&db);
        membership_blob::save(&conn, b"members").unwrap();
        // A member that joins mid-migration learns its phase with the rows.
        let importing = cairn_proto::migrate::MigrationState {
            phase: cairn_proto::migrate::Phase::Following as i32,
            source_cluster_id: 5,
            copy_resume_after: b"z".to_vec(),
            ..Default::default()
        };
        crate::mvcc::migration::save(&conn, &importing).unwrap();
        let snap_dir = snapshot_dir(from.path()).unwrap();
        let (pinned, point) = PinnedStore::pin(&db, &snap_dir).unwrap();
        // Writes after the pin are not in the copy.
        conn.execute_batch("DELETE FROM history").unwrap();
        membership_blob::save(&conn, b"later").unwrap();
        assert_eq!(point.state.applied_index, 4);
        assert_eq!(point.membership.as_deref(), Some(&b"members"[..]));
        let copy = pinned.copy_to_file().unwrap();
        let installed = install_and_check(to.path(), &copy.path);
        assert_eq!(
            ApplyState::load(&installed).unwrap(),
            point.state,
            "the applied point travels with the rows"
        );
        assert_eq!(
            membership_blob::load(&installed).unwrap().as_deref(),
            Some(&b"members"[..])
        );
        assert_eq!(crate::mvcc::migration::load(&installed).unwrap(), importing);
        assert!(ApplyState::load(&installed).unwrap().migration.importing());
        let path = copy.path.clone();
        drop(copy);
        assert!(!path.exists(), "a copy is removed once sent");
    }
}
