//! A fault that stopped this member's Raft core: its storage failed (a log
//! write or fsync, an apply, a snapshot), or the core panicked.
//!
//! After a failed write or fsync the files no longer match what this member
//! told its peers, and after a failed fsync the page cache's state is
//! unknown (Linux marks the pages clean and reports the error once), so no
//! retry can be trusted: the member stops, as etcd does (`lg.Fatal` on a
//! failed WAL save or backend commit), and a restart recovers from what is
//! durable. The caller (the server) exits with this fault's message.

use std::fmt;

/// What stopped the Raft core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFault {
    /// openraft's report of the fault, with the underlying error's text.
    pub message: String,
    /// The filesystem under the data dir is full (ENOSPC, EDQUOT or
    /// SQLITE_FULL): freeing space and restarting brings the member back.
    pub disk_full: bool,
}

/// What the OS and SQLite say when a filesystem is full, as they reach the
/// fault's text: io::Error's Display ends in "(os error N)", SQLite's
/// SQLITE_FULL reads "database or disk is full", and the Raft log's own
/// messages name ENOSPC.
const DISK_FULL_MARKS: [&str; 5] = [
    "(os error 28)",  // ENOSPC
    "(os error 122)", // EDQUOT
    "database or disk is full",
    "No space left on device",
    "ENOSPC",
];

impl StorageFault {
    pub fn new(message: String) -> StorageFault {
        let disk_full = DISK_FULL_MARKS.iter().any(|m| message.contains(m));
        StorageFault { message, disk_full }
    }
}

impl fmt::Display for StorageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_from_other_faults() {
        let enospc = std::io::Error::from_raw_os_error(28);
        let eio = std::io::Error::from_raw_os_error(5);
        let full = [
            format!("storage error: raft log append failed: {enospc}"),
            "storage: database or disk is full".to_string(),
            "no room for a new 64 MiB Raft log segment in /d (ENOSPC)".to_string(),
            format!("{}", std::io::Error::from_raw_os_error(122)),
        ];
        for m in full {
            assert!(StorageFault::new(m.clone()).disk_full, "{m}");
        }
        for m in [
            format!("raft log append failed: {eio}"),
            "panicked".to_string(),
            "storage: database disk image is malformed".to_string(),
        ] {
            assert!(!StorageFault::new(m.clone()).disk_full, "{m}");
        }
    }
}
