//! Every key's revisions, in memory, as etcd's treeIndex keeps them.
//!
//! The store's rows are only appended; finding "key K as of revision R" is a
//! lookup here followed by one row read by id. Kept in SQLite (schema 2's
//! `live` table), the same lookup structure cost every write a B-tree leaf
//! rewritten at a random place, which the checkpoints then wrote back.
//!
//! Consistency with the readers' SQLite snapshots:
//! - The writer adds a write's versions before its transaction commits, so
//!   a snapshot never holds a row the index lacks. A reader ignores versions
//!   above its snapshot's revision, which is all an uncommitted write has.
//! - Compaction prunes here before it deletes rows, and refuses from then on
//!   any read below the revision it pruned to.
//! - A snapshot install replaces the whole index and bumps its generation; a
//!   read that began on the old generation is told to start again.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::mvcc::key_range::KeyRange;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub rev: i64,
    /// The history row.
    pub id: i64,
    pub tombstone: bool,
    /// The row's create revision and version (0 for a tombstone), so that a
    /// put learns them without reading the row.
    pub create_rev: i64,
    pub version: i64,
}

#[derive(Default)]
struct Inner {
    /// Each key's versions, oldest first.
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Reads below this revision may miss pruned versions.
    pruned_to: i64,
    generation: u64,
    /// Set by `clear` until the wipe's transaction is over (`release`):
    /// a read that starts meanwhile would pair the old rows with the empty
    /// index, so it is told to start again.
    held: bool,
}

#[derive(Default)]
pub struct KeyIndex(RwLock<Inner>);

/// Which index a read started on: see the module comment.
pub type Generation = u64;

/// Keys visited per read-lock hold by `newest_at_each`.
const EACH_BATCH: usize = 4096;

impl KeyIndex {
    /// Builds the index from every row of `history`.
    pub fn load(conn: &Connection) -> Result<KeyIndex> {
        let started = std::time::Instant::now();
        let index = KeyIndex::default();
        index.exclusive().reload(conn)?;
        let (keys, versions) = {
            let inner = index.read();
            (
                inner.keys.len(),
                inner.keys.values().map(Vec::len).sum::<usize>(),
            )
        };
        tracing::info!(
            keys,
            versions,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "key index built"
        );
        Ok(index)
    }

    /// Holds every reader and writer off until the returned guard reloads
    /// the index or is dropped: a snapshot install runs under it.
    pub fn exclusive(&self) -> Exclusive<'_> {
        Exclusive(self.write())
    }
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `start` (which opens the reader's snapshot) so that no install
    /// can come between it and the generation it returns with.
    pub fn begin<T>(&self, start: impl FnOnce() -> Result<T>) -> Result<(T, Generation)> {
        let inner = self.read();
        if inner.held {
            return Err(StoreError::Reopened);
        }
        let t = start()?;
        Ok((t, inner.generation))
    }

    fn checked(
        &self,
        generation: Option<Generation>,
        rev: i64,
    ) -> Result<RwLockReadGuard<'_, Inner>> {
        let inner = self.read();
        if generation.is_some_and(|g| g != inner.generation) {
            return Err(StoreError::Reopened);
        }
        if rev < inner.pruned_to {
            return Err(StoreError::Compacted);
        }
        Ok(inner)
    }

    /// The key's newest version at or below `rev` (tombstones included).
    pub fn at(
        &self,
        generation: Option<Generation>,
        key: &[u8],
        rev: i64,
    ) -> Result<Option<Version>> {
        let inner = self.checked(generation, rev)?;
        Ok(inner.keys.get(key).and_then(|vs| newest_at(vs, rev)))
    }

    /// The key's newest version, whatever its revision.
    pub fn newest(&self, key: &[u8]) -> Option<Version> {
        self.read().keys.get(key).and_then(|vs| vs.last().copied())
    }

    /// The row ids of the keys of `kr` that exist at `rev`, in key order, at
    /// most `limit` of them.
    pub fn ids_at(
        &self,
        generation: Option<Generation>,
        kr: &KeyRange,
        rev: i64,
        limit: Option<usize>,
    ) -> Result<Vec<i64>> {
        let inner = self.checked(generation, rev)?;
        let mut ids = Vec::new();
        for (_, vs) in range(&inner.keys, kr) {
            if limit.is_some_and(|l| ids.len() >= l) {
                break;
            }
            if let Some(v) = newest_at(vs, rev).filter(|v| !v.tombstone) {
                ids.push(v.id);
            }
        }
        Ok(ids)
    }

    /// How many keys of `kr` exist at `rev`.
    pub fn count_at(&self, generation: Option<Generation>, kr: &KeyRange, rev: i64) -> Result<i64> {
        let inner = self.checked(generation, rev)?;
        Ok(range(&inner.keys, kr)
            .filter(|(_, vs)| newest_at(vs, rev).is_some_and(|v| !v.tombstone))
            .count() as i64)
    }

    /// Calls `f` with every key's newest versions at revisions `a` and `b`
    /// (tombstones included), in key order: whole-keyspace work such as
    /// HashKV, without a scan of the rows. The read lock is taken per
    /// `EACH_BATCH` keys, so that the writer's writes wait for one batch,
    /// not for the whole keyspace. Versions up to the reader's revision do
    /// not change meanwhile, except by compaction, and a compaction past
    /// `min(a, b)` in the middle is caught by the check each batch repeats
    /// (`Compacted`), as a snapshot install is (`Reopened`).
    pub fn newest_at_each(
        &self,
        generation: Option<Generation>,
        a: i64,
        b: i64,
        mut f: impl FnMut(Option<Version>, Option<Version>),
    ) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let inner = self.checked(generation, a.min(b))?;
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut last = None;
            for (key, vs) in inner
                .keys
                .range::<[u8], _>((start, Bound::Unbounded))
                .take(EACH_BATCH)
            {
                f(newest_at(vs, a), newest_at(vs, b));
                last = Some(key);
            }
            match last {
                Some(key) => after = Some(key.clone()),
                None => return Ok(()),
            }
        }
    }

    /// Records a version the writer is writing.
    pub fn push(&self, key: &[u8], v: Version) {
        let mut inner = self.write();
        match inner.keys.get_mut(key) {
            Some(vs) => vs.push(v),
            None => {
                inner.keys.insert(key.to_vec(), vec![v]);
            }
        }
    }

    /// Forgets every version: a migration that starts again wipes the
    /// store, in the writer's transaction. A read begun before is told to
    /// start again, as after a reload, and so is one that starts before the
    /// writer calls `release` (its snapshot would still hold the rows).
    pub fn clear(&self) {
        let mut inner = self.write();
        inner.keys.clear();
        inner.pruned_to = 0;
        inner.generation += 1;
        inner.held = true;
    }

    /// The transaction that called `clear` is over: reads may start again.
    pub fn release(&self) {
        self.write().held = false;
    }

    /// Forgets every version above `rev`: a batch that failed to commit.
    pub fn truncate_after(&self, rev: i64) {
        let mut inner = self.write();
        inner.keys.retain(|_, vs| {
            vs.retain(|v| v.rev <= rev);
            !vs.is_empty()
        });
    }

    /// Prunes up to `max_keys` keys after `cursor` to their state at
    /// `target`: the version standing at `target` stays unless it is a
    /// tombstone, and every older one goes. Returns the row ids removed and
    /// the cursor to continue from (`None` when done).
    pub fn compact(
        &self,
        target: i64,
        cursor: Option<&[u8]>,
        max_keys: usize,
    ) -> (Vec<i64>, Option<Vec<u8>>) {
        let mut inner = self.write();
        inner.pruned_to = inner.pruned_to.max(target);
        let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let mut removed = Vec::new();
        let mut emptied = Vec::new();
        let mut last = None;
        for (n, (key, vs)) in inner
            .keys
            .range_mut::<[u8], _>((start, Bound::Unbounded))
            .enumerate()
        {
            if n == max_keys {
                break;
            }
            last = Some(key.clone());
            // Versions at or below the target: all but the newest go, and it
            // goes too when it is a tombstone.
            let below = vs.partition_point(|v| v.rev <= target);
            let Some(standing) = below.checked_sub(1).map(|i| vs[i]) else {
                continue;
            };
            let drop_to = if standing.tombstone { below } else { below - 1 };
            removed.extend(vs.drain(..drop_to).map(|v| v.id));
            if vs.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            inner.keys.remove(&key);
        }
        (removed, last)
    }
}

pub struct Exclusive<'a>(RwLockWriteGuard<'a, Inner>);

impl Exclusive<'_> {
    /// Replaces the index with the rows `conn` sees.
    pub fn reload(mut self, conn: &Connection) -> Result<()> {
        let mut keys: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
        let mut stmt = conn.prepare(
            "SELECT key, rev, id, tombstone, create_rev, version FROM history ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: Vec<u8> = r.get(0)?;
            keys.entry(key).or_default().push(Version {
                rev: r.get(1)?,
                id: r.get(2)?,
                tombstone: r.get(3)?,
                create_rev: r.get(4)?,
                version: r.get(5)?,
            });
        }
        self.0.keys = keys;
        self.0.pruned_to = 0;
        self.0.generation += 1;
        self.0.held = false;
        Ok(())
    }
}

fn newest_at(vs: &[Version], rev: i64) -> Option<Version> {
    let n = vs.partition_point(|v| v.rev <= rev);
    n.checked_sub(1).map(|i| vs[i])
}

fn range<'a>(
    keys: &'a BTreeMap<Vec<u8>, Vec<Version>>,
    kr: &KeyRange,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<Version>)> + 'a {
    kr.bounds()
        .map(|bounds| keys.range::<[u8], _>(bounds))
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rev: i64, id: i64, tombstone: bool) -> Version {
        Version {
            rev,
            id,
            tombstone,
            create_rev: 0,
            version: 0,
        }
    }

    fn interval(a: &str, b: &str) -> KeyRange {
        KeyRange::Interval {
            start: a.as_bytes().to_vec(),
            end: Some(b.as_bytes().to_vec()),
        }
    }

    #[test]
    fn newest_at_each_visits_every_key_once_across_lock_batches() {
        let ix = KeyIndex::default();
        let keys = EACH_BATCH * 2 + 7;
        let key = |k: usize| format!("k{k:06}").into_bytes();
        for k in 0..keys {
            let id = k as i64 * 2;
            ix.push(&key(k), v(2 + id, id, false));
            // Every third key is deleted later.
            if k % 3 == 0 {
                ix.push(&key(k), v(3 + id, id + 1, true));
            }
        }
        let last = 3 + keys as i64 * 2;
        let mut seen = Vec::new();
        ix.newest_at_each(None, 10, last, |a, b| seen.push((a, b)))
            .unwrap();
        let want: Vec<_> = (0..keys)
            .map(|k| {
                let at = |rev| ix.at(None, &key(k), rev).unwrap();
                (at(10), at(last))
            })
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn reads_see_each_key_as_of_their_revision() {
        let ix = KeyIndex::default();
        ix.push(b"a", v(2, 1, false));
        ix.push(b"b", v(3, 2, false));
        ix.push(b"a", v(4, 3, false));
        ix.push(b"b", v(5, 4, true));
        let all = interval("a", "z");
        assert_eq!(ix.ids_at(None, &all, 3, None).unwrap(), vec![1, 2]);
        assert_eq!(ix.ids_at(None, &all, 5, None).unwrap(), vec![3]);
        assert_eq!(ix.ids_at(None, &all, 4, Some(1)).unwrap(), vec![3]);
        assert_eq!(ix.count_at(None, &all, 4).unwrap(), 2);
        assert_eq!(ix.at(None, b"b", 5).unwrap(), Some(v(5, 4, true)));
        assert_eq!(ix.at(None, b"a", 1).unwrap(), None);
        ix.truncate_after(4);
        assert_eq!(ix.newest(b"b"), Some(v(3, 2, false)));
    }

    #[test]
    fn compaction_keeps_what_stands_at_the_target_and_refuses_reads_below() {
        let ix = KeyIndex::default();
        ix.push(b"a", v(2, 1, false));
        ix.push(b"a", v(3, 2, false));
        ix.push(b"b", v(4, 3, false));
        ix.push(b"b", v(5, 4, true));
        ix.push(b"c", v(6, 5, false));
        ix.push(b"a", v(7, 6, false));
        let (mut removed, cursor) = ix.compact(5, None, 2);
        assert_eq!(cursor.as_deref(), Some(&b"b"[..]));
        let (more, cursor) = ix.compact(5, cursor.as_deref(), 2);
        removed.extend(more);
        assert_eq!(cursor.as_deref(), Some(&b"c"[..]));
        assert_eq!(ix.compact(5, cursor.as_deref(), 2), (vec![], None));
        removed.sort();
        assert_eq!(removed, vec![1, 3, 4]);
        assert_eq!(ix.newest(b"b"), None);
        assert_eq!(ix.at(None, b"a", 5).unwrap(), Some(v(3, 2, false)));
        assert!(matches!(ix.at(None, b"a", 4), Err(StoreError::Compacted)));
    }

    #[test]
    fn reads_wait_out_a_wipe_until_its_transaction_is_over() {
        let ix = KeyIndex::default();
        ix.push(b"a", v(2, 1, false));
        let ((), before) = ix.begin(|| Ok(())).unwrap();
        ix.clear();
        assert!(matches!(
            ix.at(Some(before), b"a", 2),
            Err(StoreError::Reopened)
        ));
        // A read starting now would see the old rows with the empty index.
        assert!(matches!(ix.begin(|| Ok(())), Err(StoreError::Reopened)));
        ix.release();
        let ((), after) = ix.begin(|| Ok(())).unwrap();
        assert_eq!(ix.at(Some(after), b"a", 2).unwrap(), None);
    }

    #[test]
    fn a_read_begun_before_a_reload_is_told_to_start_again() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE history (id INTEGER PRIMARY KEY, key BLOB, rev INTEGER, tombstone INTEGER,
                                   create_rev INTEGER, version INTEGER);
             INSERT INTO history VALUES (1, x'61', 2, 0, 2, 1), (2, x'61', 3, 1, 0, 0),
                                        (3, x'62', 4, 0, 4, 1), (4, x'62', 5, 0, 4, 2);",
        )
        .unwrap();
        let ix = KeyIndex::load(&conn).unwrap();
        // A put learns the key's create revision and version from here.
        let b = ix.newest(b"b").unwrap();
        assert_eq!((b.rev, b.id, b.create_rev, b.version), (5, 4, 4, 2));
        let ((), generation) = ix.begin(|| Ok(())).unwrap();
        assert_eq!(
            ix.at(Some(generation), b"a", 3).unwrap(),
            Some(v(3, 2, true))
        );
        ix.exclusive().reload(&conn).unwrap();
        assert!(matches!(
            ix.at(Some(generation), b"a", 3),
            Err(StoreError::Reopened)
        ));
    }
}
