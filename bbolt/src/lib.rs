//! bbolt files as etcd writes them: its backend (`member/snap/db`) and the
//! snapshots `etcdctl snapshot save` fetches.
//!
//! etcd opens bbolt with `NoFreelistSync`, so its Linux files have no
//! freelist page (the meta page names page id `u64::MAX` instead), which the
//! general-purpose Rust readers refuse. This crate reads and writes only what
//! etcd's files need: the two meta pages with their FNV-64a checksum, branch
//! and leaf pages (with overflow), top-level buckets stored in their own
//! pages or inline in their parent's leaf. It does not update a file in
//! place, and it keeps no freelist: a file it writes has every page in use.
//!
//! The format's authority is etcd-io/bbolt's source; no code is taken from it.

mod error;
mod page;
mod reader;
mod writer;

pub use error::{BoltError, Result};
pub use page::DEFAULT_PAGE_SIZE;
pub use reader::{Bucket, Db, Entries, Entry};
pub use writer::{BucketWriter, DbWriter};
