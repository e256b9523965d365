//! The database file's size, refreshed by whatever changes it.
//!
//! In WAL mode commits only append to the WAL: the main file changes size
//! only when pages are copied into it (a checkpoint) or when it is rewritten
//! (defragmentation, a snapshot install). Those refresh this after they run,
//! so the quota check every write makes reads an atomic rather than paying a
//! stat per write, as etcd too checks against a size its backend keeps in
//! memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct FileSize {
    path: Arc<PathBuf>,
    bytes: Arc<AtomicI64>,
}

impl FileSize {
    /// Reads the size of `path` now.
    pub fn new(path: &Path) -> Self {
        let size = FileSize {
            path: Arc::new(path.to_path_buf()),
            bytes: Arc::new(AtomicI64::new(0)),
        };
        size.refresh();
        size
    }

    /// Reads the size again; called after anything that may have changed it.
    /// A failed stat keeps the last size.
    pub fn refresh(&self) {
        if let Ok(m) = std::fs::metadata(&*self.path) {
            self.bytes.store(m.len() as i64, Ordering::Release);
        }
    }

    pub fn bytes(&self) -> i64 {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_size_until_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let size = FileSize::new(&path);
        let shared = size.clone();
        std::fs::write(&path, [0u8; 20]).unwrap();
        assert_eq!(shared.bytes(), 10);
        size.refresh();
        assert_eq!(shared.bytes(), 20, "clones share the refreshed size");
    }
}
