//! Reads that both sides answer with etcd's KV and Maintenance API: a page
//! of keys at a fixed revision, the current revision, HashKV.

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{HashKvRequest, HashKvResponse, RangeRequest};
use cairn_proto::mvccpb::KeyValue;

use crate::connect::{timed, timed_for, Conn, MAX_DECODE, MAX_ENCODE};
use crate::error::Result;

/// Keys per page at most.
pub const PAGE_KEYS: i64 = 1000;
/// Bytes (keys plus values) a page aims at: later pages ask for fewer keys when values are large.
pub const PAGE_BYTES: usize = 4 << 20;

/// One page of a paginated Range.
#[derive(Debug, Default)]
pub struct Page {
    /// Key-values in ascending key order.
    pub kvs: Vec<KeyValue>,
    /// Whether keys follow the last one.
    pub more: bool,
    /// The side's revision when it answered (the header's).
    pub header_revision: i64,
}

impl Page {
    /// Bytes of keys plus values in this page.
    pub fn bytes(&self) -> usize {
        self.kvs.iter().map(kv_bytes).sum()
    }
}

/// Key plus value bytes of one key-value.
pub fn kv_bytes(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len()
}

/// The first key after `after` (the smallest key when none).
pub fn key_after(after: &[u8]) -> Vec<u8> {
    let mut k = after.to_vec();
    k.push(0);
    k
}

/// How many keys to ask for next, from the last page's size: at most
/// `max_keys` (by default [`PAGE_KEYS`]), about [`PAGE_BYTES`] of keys and
/// values, at least 1.
pub fn next_limit(last_keys: usize, last_bytes: usize, max_keys: i64) -> i64 {
    let max_keys = max_keys.max(1);
    if last_keys == 0 || last_bytes == 0 {
        return max_keys;
    }
    let avg = (last_bytes / last_keys).max(1);
    ((PAGE_BYTES / avg) as i64).clamp(1, max_keys)
}

/// A KV client on `conn` with generous message sizes.
pub fn kv_client(conn: &Conn) -> KvClient<crate::connect::Svc> {
    KvClient::new(conn.svc.clone())
        .max_decoding_message_size(MAX_DECODE)
        .max_encoding_message_size(MAX_ENCODE)
}

/// A Maintenance client on `conn`.
pub fn maintenance_client(conn: &Conn) -> MaintenanceClient<crate::connect::Svc> {
    MaintenanceClient::new(conn.svc.clone())
        .max_decoding_message_size(MAX_DECODE)
        .max_encoding_message_size(MAX_ENCODE)
}

/// Keys after `after` (all keys when None) at `revision` (0: the current
/// one), at most `limit`, sorted by key, linearizable.
pub async fn range_page(
    conn: &Conn,
    after: Option<&[u8]>,
    revision: i64,
    limit: i64,
) -> Result<Page> {
    let req = RangeRequest {
        key: key_after(after.unwrap_or_default()),
        range_end: vec![0],
        limit,
        revision,
        // No sort: etcd returns keys in ascending order anyway, and any
        // sort (even by key, ascending) makes it read every key to the end
        // of the range before it applies the limit (rangeLimit in etcd's
        // apply code), which makes a paginated copy quadratic.
        sort_order: SortOrder::None as i32,
        sort_target: SortTarget::Key as i32,
        ..Default::default()
    };
    let resp = timed(conn, "Range", kv_client(conn).range(req)).await?;
    if let Some(w) = resp.kvs.windows(2).find(|w| w[0].key >= w[1].key) {
        return Err(crate::error::Error::Inconsistent(format!(
            "the {} returned a page out of key order ({} before {})",
            conn.side,
            w[0].key.escape_ascii(),
            w[1].key.escape_ascii()
        )));
    }
    Ok(Page {
        kvs: resp.kvs,
        more: resp.more,
        header_revision: resp.header.map(|h| h.revision).unwrap_or_default(),
    })
}

/// The number of keys at `revision`.
pub async fn count(conn: &Conn, revision: i64) -> Result<i64> {
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        count_only: true,
        ..Default::default()
    };
    let resp = timed(conn, "Range (count)", kv_client(conn).range(req)).await?;
    Ok(resp.count)
}

/// The side's current revision, read linearizably.
pub async fn current_revision(conn: &Conn) -> Result<i64> {
    let req = RangeRequest {
        key: vec![0],
        limit: 1,
        ..Default::default()
    };
    let resp = timed(conn, "Range (revision)", kv_client(conn).range(req)).await?;
    Ok(resp.header.map(|h| h.revision).unwrap_or_default())
}

/// Whether a Range at `revision` succeeds (false: the side compacted past it).
pub async fn readable_at(conn: &Conn, revision: i64) -> Result<bool> {
    let req = RangeRequest {
        key: vec![0],
        limit: 1,
        revision,
        ..Default::default()
    };
    match timed(conn, "Range (compaction check)", kv_client(conn).range(req)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_compacted() => Ok(false),
        Err(e) => Err(e),
    }
}

/// HashKV at `revision` from whichever member answers.
pub async fn hash_kv(conn: &Conn, revision: i64) -> Result<HashKvResponse> {
    // HashKV reads every key and revision the member holds: minutes on a big store.
    timed_for(
        conn,
        "HashKV",
        std::time::Duration::from_secs(600),
        maintenance_client(conn).hash_kv(HashKvRequest { revision }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_after_appends_a_zero() {
        assert_eq!(key_after(b""), vec![0]);
        assert_eq!(key_after(b"a"), b"a\0".to_vec());
    }

    #[test]
    fn limits_follow_value_sizes() {
        assert_eq!(next_limit(0, 0, PAGE_KEYS), PAGE_KEYS);
        assert_eq!(next_limit(1000, 100_000, PAGE_KEYS), PAGE_KEYS);
        // 1 MiB values: four a page.
        assert_eq!(next_limit(10, 10 << 20, PAGE_KEYS), 4);
        // Huge values: still one at a time.
        assert_eq!(next_limit(1, 64 << 20, PAGE_KEYS), 1);
    }
}
