//! What can be wrong with a file handed to the reader, named so that an
//! operator restoring a snapshot learns which of the likely mistakes it was.

use std::io;

pub type Result<T> = std::result::Result<T, BoltError>;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// Neither meta page carries bbolt's magic number.
    #[error("not a bbolt database (no valid meta page)")]
    NotBolt,
    /// The file ends before a page its meta page or tree refers to.
    #[error("bbolt file is truncated: page {page} ends at byte {needed}, the file has {len}")]
    Truncated { page: u64, needed: u64, len: u64 },
    /// Both meta pages are bbolt's but fail their checksum.
    #[error("bbolt meta pages fail their checksum")]
    BadChecksum,
    /// A bbolt layout version other than 2 (the only one there is).
    #[error("bbolt file version {0} is not supported (expected 2)")]
    Version(u32),
    /// A page is not what the tree says it should be.
    #[error("corrupt bbolt file: {0}")]
    Corrupt(String),
    /// The writer was handed keys out of order (bbolt's pages are sorted).
    #[error("bucket {bucket:?}: keys must be written in ascending order")]
    KeyOrder { bucket: String },
    /// The writer was handed the same top-level bucket twice.
    #[error("bucket {0:?} written twice")]
    DuplicateBucket(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BoltError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        BoltError::Io {
            context: context.into(),
            source,
        }
    }
}
