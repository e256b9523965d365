//! `snapshot status`: what etcdutl reports of a snapshot file, computed as
//! etcdutl computes it, so that the two agree on the same file.

use crate::mvcc::etcd_snapshot::file::{SnapshotError, SnapshotFile};
use crate::mvcc::etcd_snapshot::layout;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C over every bucket's name, keys and values, in order.
    pub hash: u32,
    /// The newest revision in the `key` bucket.
    pub revision: i64,
    /// Keys in all buckets.
    pub total_key: u64,
    /// The database's size (without the hash trailer).
    pub total_size: u64,
    /// The storage version the file declares ("" for etcd before 3.6).
    pub version: String,
}

pub fn status(snap: &SnapshotFile) -> Result<SnapshotStatus, SnapshotError> {
    let bolt = |e| snap.bolt_error(e);
    let (mut hash, mut revision, mut total_key) = (0u32, 0i64, 0u64);
    for name in snap.db.bucket_names().map_err(bolt)? {
        hash = crc32c::crc32c_append(hash, &name);
        let is_key = name == layout::KEY;
        let Some(bucket) = snap.db.bucket(&name).map_err(bolt)? else {
            continue;
        };
        for e in bucket.entries() {
            let e = e.map_err(bolt)?;
            hash = crc32c::crc32c_append(hash, &e.key);
            hash = crc32c::crc32c_append(hash, &e.value);
            if is_key {
                if let Some((main, _, _)) = layout::parse_revision_key(&e.key) {
                    revision = main;
                }
            }
            total_key += 1;
        }
    }
    let version = snap
        .meta_value(layout::STORAGE_VERSION)?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    Ok(SnapshotStatus {
        hash,
        revision,
        total_key,
        total_size: snap.db.size(),
        version,
    })
}
