//! Opening a file as an etcd snapshot: the bbolt database, then (for a file
//! `snapshot save` wrote) the SHA-256 of everything before it. bbolt files
//! are whole pages, so a file 32 bytes past a multiple of 512 carries the
//! hash, as etcdutl decides; a member's `member/snap/db` has none.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cairn_bbolt::{BoltError, Db};
use sha2::{Digest, Sha256};

use crate::mvcc::etcd_snapshot::layout;
use crate::StoreError;

pub const HASH_LEN: u64 = 32;

/// Why a file cannot be read (or restored) as an etcd snapshot. Each names
/// the file and what an operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not bbolt, truncated, bad meta checksums, a corrupt page: bbolt's words.
    #[error("{path}: {error}")]
    Bolt { path: PathBuf, error: BoltError },
    #[error("{path}: snapshot hash mismatch (the file's SHA-256 is {actual}, its trailer says {expected}): the file is damaged")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: the snapshot has no SHA-256 trailer: it was cut short, or it is a member's db file (restore that with --skip-hash-check)")]
    MissingHash { path: PathBuf },
    #[error("{path}: a bbolt file but not an etcd backend: bucket(s) {missing} missing")]
    MissingBuckets { path: PathBuf, missing: String },
    #[error("{path}: the snapshot has storage version {found}; this Cairn reads etcd storage up to {}.{}", layout::NEWEST_STORAGE_VERSION.0, layout::NEWEST_STORAGE_VERSION.1)]
    NewerStorageVersion { path: PathBuf, found: String },
    #[error("{path}: malformed {what}: {detail}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An etcd snapshot or backend file, opened and checked.
pub struct SnapshotFile {
    pub path: PathBuf,
    pub db: Db,
    /// Whether the file carried a hash (checked unless the caller skipped it).
    pub had_hash: bool,
}

impl SnapshotFile {
    /// Opens `path`: checks the hash trailer (unless `skip_hash_check`, or
    /// when there is none and `skip_hash_check` allows that), bbolt's meta
    /// pages, etcd's buckets and the storage version.
    pub fn open(path: &Path, skip_hash_check: bool) -> Result<SnapshotFile, SnapshotError> {
        let io = |context: &str| {
            let context = format!("{context} {}", path.display());
            move |error| SnapshotError::Io { context, error }
        };
        let file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let had_hash = len >= HASH_LEN && len % 512 == HASH_LEN;
        let db_len = if had_hash { len - HASH_LEN } else { len };
        let bolt = |error| SnapshotError::Bolt {
            path: path.to_path_buf(),
            error,
        };
        // bbolt's own checks first: a file cut short names that, rather
        // than a hash mismatch, even when its length looks like a trailer's.
        let db = Db::from_file(file, db_len).map_err(bolt)?;
        if had_hash && !skip_hash_check {
            verify_hash(path, db_len)?;
        }
        if !had_hash && !skip_hash_check {
            return Err(SnapshotError::MissingHash {
                path: path.to_path_buf(),
            });
        }
        let names = db.bucket_names().map_err(bolt)?;
        let missing: Vec<String> = layout::REQUIRED
            .iter()
            .filter(|b| !names.iter().any(|n| n.as_slice() == **b))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        if !missing.is_empty() {
            return Err(SnapshotError::MissingBuckets {
                path: path.to_path_buf(),
                missing: missing.join(", "),
            });
        }
        let this = SnapshotFile {
            path: path.to_path_buf(),
            db,
            had_hash,
        };
        if let Some(v) = this.meta_value(layout::STORAGE_VERSION)? {
            let parsed = layout::parse_version(&v);
            if parsed.is_none_or(|p| p > layout::NEWEST_STORAGE_VERSION) {
                return Err(SnapshotError::NewerStorageVersion {
                    path: path.to_path_buf(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                });
            }
        }
        Ok(this)
    }

    pub fn bolt_error(&self, error: BoltError) -> SnapshotError {
        SnapshotError::Bolt {
            path: self.path.clone(),
            error,
        }
    }

    pub fn malformed(&self, what: &'static str, detail: impl Into<String>) -> SnapshotError {
        SnapshotError::Malformed {
            path: self.path.clone(),
            what,
            detail: detail.into(),
        }
    }

    /// A value of the `meta` bucket.
    pub fn meta_value(&self, name: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.value(layout::META, name)
    }

    /// A value of a top-level bucket (scanning it: etcd's small buckets only).
    pub fn value(&self, bucket: &[u8], name: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let Some(b) = self.db.bucket(bucket).map_err(|e| self.bolt_error(e))? else {
            return Ok(None);
        };
        for e in b.entries() {
            let e = e.map_err(|e| self.bolt_error(e))?;
            if e.key == name {
                return Ok(Some(e.value));
            }
        }
        Ok(None)
    }

    /// A compaction mark of `meta` (a 17-byte revision) as its main revision.
    pub fn compact_mark(&self, name: &[u8]) -> Result<Option<i64>, SnapshotError> {
        match self.meta_value(name)? {
            None => Ok(None),
            Some(v) => layout::parse_revision_key(&v)
                .map(|(main, _, _)| Some(main))
                .ok_or_else(|| self.malformed("compaction mark", format!("{} bytes", v.len()))),
        }
    }
}

/// Checks the SHA-256 of the first `db_len` bytes against the 32 after them.
fn verify_hash(path: &Path, db_len: u64) -> Result<(), SnapshotError> {
    let io = |error| SnapshotError::Io {
        context: format!("read {}", path.display()),
        error,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = db_len;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n]).map_err(io)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut expected = [0u8; HASH_LEN as usize];
    file.read_exact(&mut expected).map_err(io)?;
    let actual = hasher.finalize();
    if actual.as_slice() != expected {
        return Err(SnapshotError::HashMismatch {
            path: path.to_path_buf(),
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    Ok(())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
