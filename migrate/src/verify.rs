//! `cairn migrate verify`: both sides compared at one revision R, by
//! HashKV and key by key (key, value, create_revision, mod_revision,
//! version, lease). Reads at the fixed R, so the source may take writes.

use std::collections::VecDeque;
use std::time::Duration;

use cairn_proto::mvccpb::KeyValue;

use crate::connect::Conn;
use crate::error::{Error, Result, ETCD_FUTURE_REV};
use crate::kvread::{self, next_limit, Cursor, Page, PAGE_KEYS};
use crate::source::Source;
use crate::target::Target;

/// Differences printed at most (the rest are counted).
pub const MAX_SHOWN: usize = 100;

/// What verify found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The revision compared.
    pub revision: i64,
    /// Keys on each side at R.
    pub source_keys: u64,
    /// Keys on the target at R.
    pub target_keys: u64,
    /// How many keys differ.
    pub differences: u64,
    /// The first [`MAX_SHOWN`] differences, one line each.
    pub shown: Vec<String>,
    /// The HashKV line.
    pub hash_line: String,
    /// Whether HashKV differs (false when equal or not comparable).
    pub hash_differs: bool,
}

impl VerifyReport {
    /// Whether nothing differs.
    pub fn ok(&self) -> bool {
        self.differences == 0 && !self.hash_differs
    }

    /// Every line verify prints: the HashKV line, the differences, the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.hash_line.clone()];
        out.extend(self.shown.iter().cloned());
        if self.differences > self.shown.len() as u64 {
            out.push(format!(
                "... and {} more differences",
                self.differences - self.shown.len() as u64
            ));
        }
        out.push(self.summary());
        out
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        format!(
            "verify at revision {}: {} keys on the source, {} on the target, {} differences, hashkv {}: {}",
            self.revision,
            self.source_keys,
            self.target_keys,
            self.differences,
            if self.hash_differs { "differs" } else if self.hash_line.contains("not compar") { "not compared" } else { "equal" },
            if self.ok() { "OK" } else { "DIFFERENT" }
        )
    }

    fn record(&mut self, line: String) {
        self.differences += 1;
        if self.shown.len() < MAX_SHOWN {
            self.shown.push(line);
        }
    }
}

/// A key as printed: ASCII as is, other bytes escaped.
pub fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// The fields in which two key-values of the same key differ.
pub fn kv_differences(s: &KeyValue, t: &KeyValue) -> Vec<String> {
    let mut out = Vec::new();
    if s.value != t.value {
        out.push(format!(
            "value: source {} bytes, target {} bytes",
            s.value.len(),
            t.value.len()
        ));
    }
    let fields = [
        ("create_revision", s.create_revision, t.create_revision),
        ("mod_revision", s.mod_revision, t.mod_revision),
        ("version", s.version, t.version),
        ("lease", s.lease, t.lease),
    ];
    for (name, a, b) in fields {
        if a != b {
            out.push(format!("{name}: source {a}, target {b}"));
        }
    }
    out
}

/// Compares the fronts of two key-ordered queues while both have keys (or
/// a side is exhausted); what stays needs the next page of a side.
pub fn merge(
    src: &mut VecDeque<KeyValue>,
    tgt: &mut VecDeque<KeyValue>,
    src_done: bool,
    tgt_done: bool,
    report: &mut VerifyReport,
) {
    loop {
        match (src.front(), tgt.front()) {
            (Some(a), Some(b)) => match a.key.cmp(&b.key) {
                std::cmp::Ordering::Equal => {
                    let d = kv_differences(a, b);
                    if !d.is_empty() {
                        report.record(format!("differs: {}: {}", show_key(&a.key), d.join("; ")));
                    }
                    src.pop_front();
                    tgt.pop_front();
                }
                std::cmp::Ordering::Less => {
                    report.record(format!("only on the source: {}", show_key(&a.key)));
                    src.pop_front();
                }
                std::cmp::Ordering::Greater => {
                    report.record(format!("only on the target: {}", show_key(&b.key)));
                    tgt.pop_front();
                }
            },
            (Some(a), None) if tgt_done => {
                report.record(format!("only on the source: {}", show_key(&a.key)));
                src.pop_front();
            }
            (None, Some(b)) if src_done => {
                report.record(format!("only on the target: {}", show_key(&b.key)));
                tgt.pop_front();
            }
            _ => return,
        }
    }
}

/// One side's paginated Range at R.
struct Pager {
    cursor: Cursor,
    done: bool,
    limit: i64,
    buf: VecDeque<KeyValue>,
    count: u64,
}

impl Pager {
    fn new() -> Pager {
        Pager {
            cursor: Cursor::default(),
            done: false,
            limit: PAGE_KEYS,
            buf: VecDeque::new(),
            count: 0,
        }
    }

    fn take(&mut self, (page, cursor): (Page, Cursor)) {
        self.cursor = cursor;
        if !page.kvs.is_empty() {
            self.limit = next_limit(page.kvs.len(), page.bytes(), PAGE_KEYS);
        }
        self.done = !page.more;
        self.count += page.kvs.len() as u64;
        self.buf.extend(page.kvs);
    }

    fn needs_page(&self) -> bool {
        self.buf.is_empty() && !self.done
    }
}

async fn hash_with_retry(
    conn: &Conn,
    revision: i64,
) -> Result<cairn_proto::etcdserverpb::HashKvResponse> {
    let mut last = None;
    for _ in 0..20 {
        match kvread::hash_kv(conn, revision).await {
            Ok(h) => return Ok(h),
            // The member that answered has not applied R yet.
            Err(e @ Error::Call { .. }) if e.to_string().contains(ETCD_FUTURE_REV) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Timeout("HashKV".into())))
}

/// The latest revision both sides hold.
pub async fn default_revision(src: &Source, tgt: &Target) -> Result<i64> {
    let s = src.current_revision().await?;
    let t = kvread::current_revision(&tgt.conn).await?;
    Ok(s.min(t))
}

/// Compares both sides at `revision`. `history_none`: the target's history
/// starts later than the source's, so their HashKVs are not comparable
/// unless the compact revisions agree.
pub async fn verify(
    src: &Source,
    tgt: &Target,
    revision: i64,
    history_none: bool,
    shared_revision_keys: i64,
) -> Result<VerifyReport> {
    verify_with(src, tgt, revision, history_none, shared_revision_keys, true).await
}

/// [`verify`], with the key-by-key diff only if `keys`.
pub async fn verify_with(
    src: &Source,
    tgt: &Target,
    revision: i64,
    history_none: bool,
    shared_revision_keys: i64,
    keys: bool,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        revision,
        ..Default::default()
    };
    let (hs, ht) = tokio::join!(
        hash_with_retry(&src.conn, revision),
        hash_with_retry(&tgt.conn, revision)
    );
    let (hs, ht) = match (hs, ht) {
        (Ok(hs), Ok(ht)) => (hs, ht),
        // etcd refuses HashKV at its compact revision itself (a Range there
        // still works): compare key by key only.
        (Err(e), _) | (_, Err(e))
            if e.is_compacted() && src.compact_revision(revision - 1).await? == revision =>
        {
            report.hash_line = format!(
                "hashkv at revision {revision}: not compared (etcd refuses HashKV at its compact revision)"
            );
            // Whatever the caller asked: nothing else was compared.
            return diff(src, tgt, report).await;
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let hash_text = format!(
        "hashkv at revision {revision}: source {:08x} (compact revision {}), target {:08x} (compact revision {})",
        hs.hash, hs.compact_revision, ht.hash, ht.compact_revision
    );
    if hs.compact_revision != ht.compact_revision && history_none {
        report.hash_line = format!("{hash_text}: not compared (the target's history starts at its compact revision: --history none)");
        // Whatever the caller asked: nothing else was compared.
        return diff(src, tgt, report).await;
    } else if hs.hash == ht.hash && hs.compact_revision == ht.compact_revision {
        report.hash_line = format!("{hash_text}: equal");
    } else if hs.compact_revision != ht.compact_revision {
        // The target mirrors the source's compaction a few seconds later.
        report.hash_line = format!(
            "{hash_text}: DIFFER (the compact revisions differ; a compaction the migrator has not mirrored yet shows so for a few seconds)"
        );
        report.hash_differs = true;
    } else if shared_revision_keys > 0 {
        // Not a difference the data shows: the key-by-key diff decides,
        // and runs whatever the caller asked.
        report.hash_line = format!(
            "{hash_text}: not comparable ({shared_revision_keys} copied keys share a revision with another; etcd exposes no sub-revision of its compacted past, so the copy orders them by key)"
        );
        return diff(src, tgt, report).await;
    } else {
        report.hash_line = format!("{hash_text}: DIFFER");
        report.hash_differs = true;
    }
    if !keys {
        return Ok(report);
    }
    diff(src, tgt, report).await
}

/// The key-by-key part of [`verify`].
async fn diff(src: &Source, tgt: &Target, mut report: VerifyReport) -> Result<VerifyReport> {
    let revision = report.revision;
    let mut s = Pager::new();
    let mut t = Pager::new();
    for _ in 0..u64::MAX {
        let (ps, pt) = tokio::join!(
            async {
                if s.needs_page() {
                    src.range_window(&s.cursor, revision, s.limit)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            },
            async {
                if t.needs_page() {
                    kvread::range_window(&tgt.conn, &t.cursor, revision, t.limit)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            }
        );
        if let Some(p) = ps? {
            s.take(p);
        }
        if let Some(p) = pt? {
            t.take(p);
        }
        merge(&mut s.buf, &mut t.buf, s.done, t.done, &mut report);
        if s.done && t.done && s.buf.is_empty() && t.buf.is_empty() {
            break;
        }
    }
    report.source_keys = s.count;
    report.target_keys = t.count;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn merge_reports_every_kind_of_difference() {
        let mut a: VecDeque<_> = vec![
            kv("a", "1", 2),
            kv("b", "2", 3),
            kv("d", "4", 5),
            kv("e", "5", 6),
        ]
        .into();
        let mut b: VecDeque<_> = vec![kv("a", "1", 2), kv("c", "3", 4), kv("d", "x", 7)].into();
        let mut r = VerifyReport::default();
        merge(&mut a, &mut b, true, true, &mut r);
        assert_eq!(r.differences, 4);
        assert_eq!(
            r.shown,
            vec![
                "only on the source: b".to_string(),
                "only on the target: c".to_string(),
                "differs: d: value: source 1 bytes, target 1 bytes; create_revision: source 5, target 7; mod_revision: source 5, target 7".to_string(),
                "only on the source: e".to_string(),
            ]
        );
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn merge_waits_for_the_next_page_of_a_side_not_done() {
        let mut a: VecDeque<_> = vec![kv("a", "1", 2), kv("b", "1", 2)].into();
        let mut b: VecDeque<_> = vec![kv("a", "1", 2)].into();
        let mut r = VerifyReport::default();
        merge(&mut a, &mut b, false, false, &mut r);
        assert_eq!(r.differences, 0);
        assert_eq!(a.len(), 1, "b waits for the target's next page");
        b.push_back(kv("b", "1", 2));
        merge(&mut a, &mut b, true, true, &mut r);
        assert_eq!(r.differences, 0);
        assert!(r.ok() || r.hash_differs);
    }

    #[test]
    fn shown_differences_are_bounded() {
        let mut a: VecDeque<_> = (0..250).map(|i| kv(&format!("k{i:03}"), "v", 2)).collect();
        let mut b = VecDeque::new();
        let mut r = VerifyReport::default();
        merge(&mut a, &mut b, true, true, &mut r);
        assert_eq!(r.differences, 250);
        assert_eq!(r.shown.len(), MAX_SHOWN);
        let lines = r.lines();
        assert!(lines.contains(&"... and 150 more differences".to_string()));
    }

    #[test]
    fn keys_print_escaped() {
        assert_eq!(show_key(b"/registry/a"), "/registry/a");
        assert_eq!(show_key(b"a\x00\xff"), "a\\x00\\xff");
    }

    #[test]
    fn lease_and_version_differences_are_named() {
        let a = kv("a", "1", 2);
        let mut b = kv("a", "1", 2);
        b.version = 2;
        b.lease = 7;
        assert_eq!(
            kv_differences(&a, &b),
            vec![
                "version: source 1, target 2".to_string(),
                "lease: source 0, target 7".to_string()
            ]
        );
    }
}
