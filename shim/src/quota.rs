//! The backend quota: past it, raise the NOSPACE alarm and refuse writes that
//! add data, as etcd does, until space is freed and the alarm is disarmed.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use cairn_raft_backend::Command;
use tonic::Status;

use crate::errors::{store_status, EtcdError};
use crate::node::Node;

/// etcd's rough per-key overhead in its size estimate.
const KV_OVERHEAD: i64 = 256;

/// How stale the file size a write is checked against may be.
const SIZE_MAX_AGE: Duration = Duration::from_millis(100);

/// The store file's size, read from the file system at most every
/// [`SIZE_MAX_AGE`] for the writes that fit. A stat on every write was ~4% of
/// a member's CPU at 20k puts/s; etcd checks against a size its backend keeps
/// in memory. The file grows only when a checkpoint copies pages into it, and
/// the check is an estimate either way (concurrent writes all pass until the
/// alarm is up, in etcd too).
pub struct DbFileSize {
    bytes: AtomicI64,
    /// When `bytes` was read, in ms since `epoch`; 0: never.
    read_at: AtomicU64,
    epoch: Instant,
}

impl Default for DbFileSize {
    fn default() -> Self {
        Self::new()
    }
}

impl DbFileSize {
    pub fn new() -> Self {
        DbFileSize {
            bytes: AtomicI64::new(0),
            read_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The size, at most [`SIZE_MAX_AGE`] old.
    fn get(&self, path: &Path) -> i64 {
        // +1: 0 means never read.
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let read_at = self.read_at.load(Ordering::Acquire);
        if read_at != 0 && now.saturating_sub(read_at) < SIZE_MAX_AGE.as_millis() as u64 {
            return self.bytes.load(Ordering::Relaxed);
        }
        self.read(path, now)
    }

    /// The size as the file system has it now.
    fn fresh(&self, path: &Path) -> i64 {
        self.read(path, self.epoch.elapsed().as_millis() as u64 + 1)
    }

    fn read(&self, path: &Path, now: u64) -> i64 {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len() as i64);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Release);
        bytes
    }
}

/// Checks that a write costing `cost` bytes fits; raises the alarm if not.
pub async fn check(node: &Node, cost: i64) -> Result<(), Status> {
    if cost == 0 {
        return Ok(());
    }
    let fits = |size: i64| size + cost + KV_OVERHEAD < node.quota_bytes;
    let path = node.store.path();
    if fits(node.db_file_size.get(path)) {
        return Ok(());
    }
    // A refusal is decided on the size now: a defragmentation may just have
    // shrunk the file.
    let size = node.db_file_size.fresh(path);
    if fits(size) {
        return Ok(());
    }
    tracing::warn!(
        size,
        quota = node.quota_bytes,
        "backend quota exceeded, raising NOSPACE alarm"
    );
    node.store
        .propose(Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: node.id.member_id,
            alarm: AlarmType::Nospace as i32,
        }))
        .await
        .map_err(store_status)?;
    Err(EtcdError::NoSpace.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_size_is_reread_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let size = DbFileSize::new();
        let first = Instant::now();
        assert_eq!(size.get(&path), 10);
        std::fs::write(&path, [0u8; 20]).unwrap();
        let cached = size.get(&path);
        // Within the age limit the cached size answers.
        if first.elapsed() < SIZE_MAX_AGE {
            assert_eq!(cached, 10);
        }
        assert_eq!(size.fresh(&path), 20, "a fresh read is never cached");
        std::fs::write(&path, [0u8; 30]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while size.get(&path) != 30 {
            assert!(Instant::now() < deadline, "size never re-read");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
