//! One consistent view of the keyspace inside a SQLite transaction, with etcd's
//! range, compare, put, delete and txn semantics.
//!
//! The same code serves reads (a read transaction, no writes) and apply (the
//! writer's transaction). Writes made through a view are visible to later reads
//! through it, exactly as later ops of an etcd txn see earlier ones. Which row
//! holds a key as of a revision comes from the in-memory `KeyIndex`; the rows
//! themselves from SQLite.

use cairn_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::key_index::{Generation, KeyIndex, Version};
use crate::key_range::KeyRange;
use crate::schema::meta;

// Enum values of the wire protocol, named once here.
const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;
const CMP_EQUAL: i32 = 0;
const CMP_GREATER: i32 = 1;
const CMP_LESS: i32 = 2;
const CMP_NOT_EQUAL: i32 = 3;
const CMPT_VERSION: i32 = 0;
const CMPT_CREATE: i32 = 1;
const CMPT_MOD: i32 = 2;
const CMPT_VALUE: i32 = 3;
const CMPT_LEASE: i32 = 4;

pub struct View<'c> {
    conn: &'c Connection,
    index: &'c KeyIndex,
    /// The index a reader's snapshot started with; `None` for the writer,
    /// which owns every change to both.
    generation: Option<Generation>,
    begin_rev: i64,
    compact_rev: i64,
    /// Changes made through this view; all share revision `begin_rev + 1`.
    changes: i64,
    events: Vec<Event>,
    /// Whether a put's event gets its previous kv (see `PrevKvInterest`).
    prev_values: bool,
}

/// Changes read from history (`View::events_between`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRead {
    pub events: Vec<Event>,
    /// Every event up to this revision is in `events`: the read's upper
    /// bound, or the last revision read when a size bound stopped it.
    pub complete_to: i64,
}

impl<'c> View<'c> {
    /// A reader's view at the state `conn`'s transaction sees; its snapshot
    /// starts here, paired with the index as it is.
    pub fn open(conn: &'c Connection, index: &'c KeyIndex) -> Result<Self> {
        let ((begin_rev, compact_rev), generation) = index.begin(|| {
            Ok(conn
                .prepare_cached(
                    "SELECT (SELECT value FROM meta WHERE name = ?1),
                            (SELECT value FROM meta WHERE name = ?2)",
                )?
                .query_row([meta::CURRENT_REV, meta::COMPACT_REV], |r| {
                    Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
                })?)
        })?;
        let missing = || StoreError::Corrupt("revision counters missing from meta".into());
        Ok(View {
            conn,
            index,
            generation: Some(generation),
            begin_rev: begin_rev.ok_or_else(missing)?,
            compact_rev: compact_rev.ok_or_else(missing)?,
            changes: 0,
            events: Vec::new(),
            prev_values: true,
        })
    }

    /// The writer's view, whose revision counters the caller already knows.
    pub fn with_revisions(
        conn: &'c Connection,
        index: &'c KeyIndex,
        begin_rev: i64,
        compact_rev: i64,
    ) -> Self {
        View {
            conn,
            index,
            generation: None,
            begin_rev,
            compact_rev,
            changes: 0,
            events: Vec::new(),
            prev_values: true,
        }
    }

    /// Puts from here on record their events without the previous kv when
    /// they update a key: no watcher wants it.
    pub fn skip_prev_values(&mut self) {
        self.prev_values = false;
    }

    pub fn index(&self) -> &'c KeyIndex {
        self.index
    }

    /// The revision a read through this view observes.
    pub fn current_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    /// Reads below this revision are refused (-1 before the first compaction).
    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// The connection whose transaction this view reads.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// Every key's newest versions at revisions `a` and `b`, from the index
    /// this view's snapshot is paired with (see `KeyIndex::newest_at_each`).
    pub(crate) fn newest_at_each(
        &self,
        a: i64,
        b: i64,
        f: impl FnMut(Option<Version>, Option<Version>),
    ) -> Result<()> {
        self.index.newest_at_each(self.generation, a, b, f)
    }

    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    // ---- reads -------------------------------------------------------------

    /// etcd's Range: filters, sort and `more` applied after fetching, `count`
    /// counting every key in range at the revision regardless of filters and limit.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse> {
        let cur = self.current_rev();
        if r.revision > cur {
            return Err(StoreError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        let kr = KeyRange::new(&r.key, &r.range_end);
        let header = Some(ResponseHeader {
            revision: cur,
            ..Default::default()
        });
        if r.count_only {
            return Ok(RangeResponse {
                header,
                count: self.count(&kr, rev)?,
                ..Default::default()
            });
        }
        let post_filtered = r.sort_order != SORT_NONE
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let fetch_limit = if post_filtered || r.limit <= 0 {
            None
        } else {
            Some(r.limit + 1)
        };
        let with_values = !r.keys_only || r.sort_target == TARGET_VALUE;
        let mut kvs = self.fetch(&kr, rev, fetch_limit, with_values)?;
        let count = match fetch_limit {
            Some(l) if kvs.len() as i64 >= l => self.count(&kr, rev)?,
            _ => kvs.len() as i64,
        };
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        sort_kvs(&mut kvs, r.sort_order, r.sort_target);
        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }

    /// The newest live version of one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.live_version(key)? {
            Some(v) => self.row(v.id, true).map(Some),
            None => Ok(None),
        }
    }

    /// The index entry of the key's newest live version.
    fn live_version(&self, key: &[u8]) -> Result<Option<Version>> {
        Ok(self
            .index
            .at(self.generation, key, self.current_rev())?
            .filter(|v| !v.tombstone))
    }

    fn row(&self, id: i64, with_value: bool) -> Result<KeyValue> {
        let sql = if with_value {
            "SELECT key, create_rev, rev, version, lease, value FROM history WHERE id = ?1"
        } else {
            "SELECT key, create_rev, rev, version, lease, NULL FROM history WHERE id = ?1"
        };
        self.conn
            .prepare_cached(sql)?
            .query_row([id], row_to_kv)
            .optional()?
            // The index named a row this snapshot lacks: they disagree.
            .ok_or_else(|| StoreError::Corrupt(format!("history row {id} is missing")))
    }

    /// Every key of `kr` as it was at `rev`, in key order, at most `limit`.
    fn fetch(
        &self,
        kr: &KeyRange,
        rev: i64,
        limit: Option<i64>,
        with_values: bool,
    ) -> Result<Vec<KeyValue>> {
        let limit = limit.map(|l| l.max(0) as usize);
        self.index
            .ids_at(self.generation, kr, rev, limit)?
            .into_iter()
            .map(|id| self.row(id, with_values))
            .collect()
    }

    fn count(&self, kr: &KeyRange, rev: i64) -> Result<i64> {
        self.index.count_at(self.generation, kr, rev)
    }

    /// etcd's compare: over a range every key must satisfy it; a missing key
    /// compares as zeroes, except that a VALUE compare on a missing key is false.
    fn compare(&self, c: &Compare) -> Result<bool> {
        let kr = KeyRange::new(&c.key, &c.range_end);
        let cur = self.current_rev();
        let kvs = self.fetch(&kr, cur, None, c.target == CMPT_VALUE)?;
        if kvs.is_empty() {
            return Ok(c.target != CMPT_VALUE && compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    /// Every change with a revision in `[from, to]`, in apply order, each with
    /// the key's previous version (none if it did not exist or was compacted).
    /// Stops after the revision in which `max_events`, or `max_bytes` of keys
    /// and values, is reached, so a revision's events are never split; the
    /// answer says up to which revision it is complete.
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead> {
        // Checked in the same snapshot as the read: rows below the compact
        // revision may already be gone, and a missing event must be an error.
        if from < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        let mut read = HistoryRead {
            events: Vec::new(),
            complete_to: to,
        };
        let Some(first) = self.first_row_from(from)? else {
            return Ok(read);
        };
        // Row order is revision order (see `schema`): scan from the first
        // row on and stop past `to`.
        let mut stmt = self.conn.prepare_cached(
            "SELECT h.key, h.create_rev, h.rev, h.version, h.lease, h.value, h.tombstone,
                    p.key, p.create_rev, p.rev, p.version, p.lease, p.value, p.tombstone
             FROM history h
             LEFT JOIN history p ON p.id = h.prev
             WHERE h.id >= ?1
             ORDER BY h.id",
        )?;
        let mut rows = stmt.query(params![first])?;
        let mut bytes = 0usize;
        let mut last_rev = None;
        while let Some(r) = rows.next()? {
            let kv = row_to_kv(r)?;
            if kv.mod_revision > to {
                break;
            }
            if let Some(rev) = last_rev {
                let full = read.events.len() >= max_events || bytes >= max_bytes;
                if full && rev != kv.mod_revision {
                    read.complete_to = rev;
                    break;
                }
            }
            last_rev = Some(kv.mod_revision);
            let tombstone: bool = r.get(6)?;
            let prev_tombstone: Option<bool> = r.get(13)?;
            let prev_kv = match prev_tombstone {
                Some(false) => Some(KeyValue {
                    key: r.get(7)?,
                    create_revision: r.get(8)?,
                    mod_revision: r.get(9)?,
                    version: r.get(10)?,
                    lease: r.get(11)?,
                    value: r.get::<_, Option<Vec<u8>>>(12)?.unwrap_or_default(),
                }),
                _ => None,
            };
            bytes += kv.key.len()
                + kv.value.len()
                + prev_kv.as_ref().map_or(0, |p| p.key.len() + p.value.len());
            read.events.push(if tombstone {
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: kv.key,
                        mod_revision: kv.mod_revision,
                        ..Default::default()
                    }),
                    prev_kv,
                }
            } else {
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv,
                }
            });
        }
        Ok(read)
    }

    /// The id of the first row at or above revision `rev`, if any. Row ids
    /// grow with revisions but have gaps where compaction removed rows, so
    /// this bisects the id space, asking for the first row at or after each
    /// probe: about two dozen seeks of the primary key.
    pub(crate) fn first_row_from(&self, rev: i64) -> Result<Option<i64>> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM history")?
            .query_row([], |r| r.get(0))?;
        let Some(last) = last else {
            return Ok(None);
        };
        let mut at_or_after = self
            .conn
            .prepare_cached("SELECT id, rev FROM history WHERE id >= ?1 ORDER BY id LIMIT 1")?;
        // Rows up to `below` are all older than `rev`; `found` is the
        // earliest row seen that is not; rows in (below, above) are unseen.
        let (mut below, mut above) = (0i64, last.saturating_add(1));
        let mut found = None;
        while above - below > 1 {
            let probe = below + (above - below) / 2;
            let row: Option<(i64, i64)> = at_or_after
                .query_row([probe], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((id, row_rev)) if id < above => {
                    if row_rev >= rev {
                        found = Some(id);
                        above = probe;
                    } else {
                        below = id;
                    }
                }
                // No row in [probe, above).
                _ => above = probe,
            }
        }
        Ok(found)
    }

    // ---- writes ------------------------------------------------------------

    fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// Appends a row for `kv` and records it in the index, before the
    /// commit (see `KeyIndex`).
    fn insert_history(&mut self, kv: &KeyValue, tombstone: bool) -> Result<()> {
        let prev = self.index.newest(&kv.key).map(|v| v.id);
        self.conn
            .prepare_cached(
                "INSERT INTO history (key, rev, sub, create_rev, version, lease, value, tombstone, prev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                kv.key,
                kv.mod_revision,
                self.changes,
                kv.create_revision,
                kv.version,
                kv.lease,
                if tombstone { None } else { Some(&kv.value) },
                tombstone,
                prev
            ])?;
        self.changes += 1;
        let id = self.conn.last_insert_rowid();
        self.index.push(
            &kv.key,
            Version {
                rev: kv.mod_revision,
                id,
                tombstone,
                create_rev: kv.create_revision,
                version: kv.version,
            },
        );
        Ok(())
    }

    /// Writes one key version at the next revision. Lease existence and the
    /// ignore_* rules are checked by the caller, as etcd checks them before apply.
    fn put_kv(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<()> {
        let rev = self.write_rev();
        let live = self.live_version(key)?;
        let (create_revision, version) = match live {
            Some(v) => (v.create_rev, v.version + 1),
            None => (rev, 1),
        };
        let prev = match live {
            Some(v) if self.prev_values => Some(self.row(v.id, true)?),
            _ => None,
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev,
            version,
            value,
            lease,
        };
        self.record_put(kv, prev)
    }

    /// Stores a fully formed key version (apply or import) and records its event.
    pub(crate) fn record_put(&mut self, kv: KeyValue, prev: Option<KeyValue>) -> Result<()> {
        self.insert_history(&kv, false)?;
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(())
    }

    /// Stores a tombstone for a live key and records its event.
    pub(crate) fn record_delete(&mut self, prev: KeyValue, rev: i64) -> Result<()> {
        let kv = KeyValue {
            key: prev.key.clone(),
            mod_revision: rev,
            ..Default::default()
        };
        self.insert_history(&kv, true)?;
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv: Some(prev),
        });
        Ok(())
    }

    fn delete_keys(&mut self, kr: &KeyRange) -> Result<Vec<KeyValue>> {
        let cur = self.current_rev();
        let victims = self.fetch(kr, cur, None, true)?;
        let rev = self.write_rev();
        for kv in &victims {
            self.record_delete(kv.clone(), rev)?;
        }
        Ok(victims)
    }

    /// Live keys attached to lease `id`, in key order: the rows that carry
    /// the lease and are still their key's newest.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, key FROM history WHERE lease = ?1 AND lease != 0")?;
        let rows = stmt.query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let cur = self.current_rev();
        let mut keys = Vec::new();
        for row in rows {
            let (row_id, key) = row?;
            if self
                .index
                .at(self.generation, &key, cur)?
                .is_some_and(|v| v.id == row_id && !v.tombstone)
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Every lease, as (id, granted TTL in seconds).
    pub fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, ttl FROM leases ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        if self.lease_exists(id)? {
            return Err(StoreError::LeaseExists);
        }
        self.conn
            .prepare_cached("INSERT INTO leases (id, ttl) VALUES (?1, ?2)")?
            .execute(params![id, ttl])?;
        Ok(())
    }

    /// Removes the lease and deletes its keys at one new revision (none if it had no keys).
    pub fn lease_revoke(&mut self, id: i64) -> Result<()> {
        if !self.lease_exists(id)? {
            return Err(StoreError::LeaseNotFound);
        }
        let rev = self.write_rev();
        for key in self.lease_keys(id)? {
            if let Some(prev) = self.get(&key)? {
                self.record_delete(prev, rev)?;
            }
        }
        self.conn
            .prepare_cached("DELETE FROM leases WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    pub fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// A Put outside a txn: lease first, then the ignore_* rules, as etcd orders them.
    pub fn put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        if p.lease != 0 && !self.lease_exists(p.lease)? {
            return Err(StoreError::LeaseNotFound);
        }
        self.apply_put(p)
    }

    fn apply_put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.get(&p.key)?
        } else {
            None
        };
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        self.put_kv(&p.key, value, lease)?;
        Ok(PutResponse {
            header: Some(ResponseHeader {
                revision: self.write_rev(),
                ..Default::default()
            }),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    pub fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let kr = KeyRange::new(&d.key, &d.range_end);
        let deleted = self.delete_keys(&kr)?;
        let revision = if !deleted.is_empty() || self.changes > 0 {
            self.write_rev()
        } else {
            self.begin_rev
        };
        Ok(DeleteRangeResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
        })
    }

    /// etcd's Txn: every compare (nested ones included) is evaluated against the
    /// state before the txn, the chosen ops are checked, and only then applied.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse> {
        let mut path = Vec::new();
        self.compare_path(t, &mut path)?;
        // etcd checks the chosen path's puts first (only when the txn writes),
        // then its ranges; the first failure of either pass is the answer.
        if !is_txn_readonly(t) {
            self.check_ops(t, &path, &mut 0, Check::Puts, &mut Vec::new())?;
        }
        self.check_ops(t, &path, &mut 0, Check::Ranges, &mut Vec::new())?;
        let mut cursor = 0;
        let mut resp = self.apply_txn(t, &path, &mut cursor)?;
        resp.header = Some(ResponseHeader {
            revision: self.current_rev(),
            ..Default::default()
        });
        Ok(resp)
    }

    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in branch(t, ok) {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.compare_path(inner, path)?;
            }
        }
        Ok(())
    }

    /// `deleted` collects, in execution order, the ranges the txn's own
    /// deletes remove: a later put that needs its key's previous value
    /// (ignore_value, ignore_lease) must not find it there. etcd's interval
    /// check lets a from-key delete followed by such a put through, and etcd
    /// then fails mid-apply (3.5.1 and 3.6 panic); refusing it here keeps
    /// "every refusal happens before any write" true.
    fn check_ops(
        &self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        check: Check,
        deleted: &mut Vec<KeyRange>,
    ) -> Result<()> {
        let taken = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        for op in branch(t, taken) {
            match &op.request {
                Some(request_op::Request::RequestTxn(inner)) => {
                    self.check_ops(inner, path, cursor, check, deleted)?
                }
                Some(request_op::Request::RequestDeleteRange(d)) if check == Check::Puts => {
                    deleted.push(KeyRange::new(&d.key, &d.range_end));
                }
                Some(request_op::Request::RequestPut(p)) if check == Check::Puts => {
                    if (p.ignore_value || p.ignore_lease)
                        && (deleted.iter().any(|r| r.contains(&p.key))
                            || self.get(&p.key)?.is_none())
                    {
                        return Err(StoreError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.lease_exists(p.lease)? {
                        return Err(StoreError::LeaseNotFound);
                    }
                }
                Some(request_op::Request::RequestRange(r))
                    if check == Check::Ranges && r.revision != 0 =>
                {
                    if r.revision > self.current_rev() {
                        return Err(StoreError::FutureRev);
                    }
                    if r.revision < self.compact_rev {
                        return Err(StoreError::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse> {
        let taken = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let mut responses = Vec::new();
        for op in branch(t, taken) {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.apply_put(p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    let mut r = self.apply_txn(inner, path, cursor)?;
                    r.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(r)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: taken,
            responses,
        })
    }
}

/// Which ops of a txn's chosen path a checking pass looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// True when no branch at any depth writes; such a txn needs no log entry.
pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
            Some(request_op::Request::RequestTxn(inner)) => is_txn_readonly(inner),
            _ => true,
        })
}

/// True when any branch at any depth puts; such a txn is refused under NOSPACE.
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::TargetUnion;
    let ord = match c.target {
        CMPT_VALUE => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        target => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::CreateRevision(v)), CMPT_CREATE)
                | (Some(TargetUnion::ModRevision(v)), CMPT_MOD)
                | (Some(TargetUnion::Version(v)), CMPT_VERSION)
                | (Some(TargetUnion::Lease(v)), CMPT_LEASE) => *v,
                _ => 0,
            };
            let have = match target {
                CMPT_CREATE => kv.create_revision,
                CMPT_MOD => kv.mod_revision,
                CMPT_VERSION => kv.version,
                CMPT_LEASE => kv.lease,
                _ => 0,
            };
            have.cmp(&want)
        }
    };
    match c.result {
        CMP_EQUAL => ord.is_eq(),
        CMP_NOT_EQUAL => ord.is_ne(),
        CMP_GREATER => ord.is_gt(),
        CMP_LESS => ord.is_lt(),
        _ => true,
    }
}

fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    // A non-key target with no order sorts ascending, as etcd does.
    let order = if target != TARGET_KEY && order == SORT_NONE {
        SORT_ASCEND
    } else {
        order
    };
    if order == SORT_NONE {
        return;
    }
    let by = |a: &KeyValue, b: &KeyValue| match target {
        TARGET_VERSION => a.version.cmp(&b.version),
        TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
        TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
        TARGET_VALUE => a.value.cmp(&b.value),
        _ => a.key.cmp(&b.key),
    };
    if order == SORT_DESCEND {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}

pub(crate) fn row_to_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        create_revision: r.get(1)?,
        mod_revision: r.get(2)?,
        version: r.get(3)?,
        lease: r.get(4)?,
        value: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
    })
}
