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

/// Where a paginated read of the whole keyspace stands.
///
/// etcd 3.5 counts every key of a Range's interval for the response's
/// `count`, even with a limit: pages of `[after, end of keyspace)` make a copy
/// quadratic (1M keys: 6.6k keys/s at the start, 20k at the end). So each
/// page reads a window of keys that share a prefix with where it starts,
/// narrowed (a longer prefix) while a window counts more than
/// [`WINDOW_PAGES`] pages, widened when one runs out small. Windows follow one
/// another without a gap: the next starts where the last one ended.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// The last key read (None: none yet).
    pub after: Option<Vec<u8>>,
    /// Where the next window starts (inclusive), once a window ran out.
    from: Option<Vec<u8>>,
    /// How many bytes of its start key a window shares.
    prefix_len: usize,
}

/// Pages' worth of keys a window may count before the next one is narrowed.
pub const WINDOW_PAGES: i64 = 16;

impl Cursor {
    /// A read that starts after `after` (the first key when None).
    pub fn after(after: Option<Vec<u8>>) -> Cursor {
        Cursor {
            after,
            ..Default::default()
        }
    }

    /// The window the next page reads: `[start, end)`, `end` `[0]` for the
    /// end of the keyspace.
    fn window(&self) -> (Vec<u8>, Vec<u8>) {
        let start = self
            .from
            .clone()
            .unwrap_or_else(|| key_after(self.after.as_deref().unwrap_or_default()));
        let prefix = &start[..self.prefix_len.min(start.len())];
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        (start, end)
    }
}

/// The smallest key above every key that starts with `prefix` (None: there
/// is none, or the prefix is empty: the end of the keyspace).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The next page of a [`Cursor`]'s read at `revision`: up to `limit` keys
/// in key order, `more` false only at the end of the keyspace. Returns the
/// cursor after it. A page may come back empty with `more` set after many
/// empty windows in a row: ask again.
pub async fn range_window(
    conn: &Conn,
    cursor: &Cursor,
    revision: i64,
    limit: i64,
) -> Result<(Page, Cursor)> {
    let mut cur = cursor.clone();
    // Bounded: every empty window widens the next one.
    for _ in 0..64 {
        let (start, end) = cur.window();
        let at_end = end == [0];
        let (page, count) = range_between(conn, start, end.clone(), revision, limit).await?;
        if count > WINDOW_PAGES * limit.max(1) {
            let local = match (page.kvs.first(), page.kvs.last()) {
                (Some(f), Some(l)) if page.kvs.len() > 1 => common_prefix(&f.key, &l.key),
                _ => 0,
            };
            cur.prefix_len = (cur.prefix_len + 1).max(local);
        } else if !page.more && count < limit {
            cur.prefix_len = cur.prefix_len.saturating_sub(1);
        }
        if let Some(last) = page.kvs.last() {
            cur.after = Some(last.key.clone());
        }
        if page.more {
            cur.from = None;
            return Ok((page, cur));
        }
        if at_end {
            return Ok((page, cur));
        }
        // This window ran out; the next starts where it ended.
        cur.from = Some(end);
        if !page.kvs.is_empty() {
            return Ok((Page { more: true, ..page }, cur));
        }
    }
    let header_revision = revision;
    Ok((
        Page {
            kvs: Vec::new(),
            more: true,
            header_revision,
        },
        cur,
    ))
}

/// Keys in `[key, range_end)` at `revision`, at most `limit`, in key order;
/// with the count etcd gives of the whole interval.
async fn range_between(
    conn: &Conn,
    key: Vec<u8>,
    range_end: Vec<u8>,
    revision: i64,
    limit: i64,
) -> Result<(Page, i64)> {
    let req = RangeRequest {
        key,
        range_end,
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
    Ok((
        Page {
            kvs: resp.kvs,
            more: resp.more,
            header_revision: resp.header.map(|h| h.revision).unwrap_or_default(),
        },
        resp.count,
    ))
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
    #[test]
    fn prefix_ends_and_windows() {
        use super::{prefix_end, Cursor};
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
        let mut c = Cursor::after(Some(b"/registry/pods/a".to_vec()));
        assert_eq!(c.window(), (b"/registry/pods/a\0".to_vec(), vec![0]));
        c.prefix_len = 10;
        assert_eq!(
            c.window(),
            (b"/registry/pods/a\0".to_vec(), b"/registry0".to_vec())
        );
        c.from = Some(b"/registry0".to_vec());
        assert_eq!(c.window(), (b"/registry0".to_vec(), b"/registry1".to_vec()));
    }

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
