//! A read-only transaction: one consistent snapshot of the keyspace, as
//! etcd's `storeTxnRead`. It pairs a SQLite read transaction with the key
//! index of the same generation; a snapshot install between them makes every
//! later read answer `Reopened`, so the caller starts again.

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::mvcc::key_index::{Generation, KeyIndex, Version};
use crate::mvcc::key_range::KeyRange;
use crate::mvcc::schema::meta;
use crate::mvcc::txn_read::TxnRead;

pub struct ReadTxn<'c> {
    conn: &'c Connection,
    index: &'c KeyIndex,
    /// The index this snapshot started with.
    generation: Generation,
    rev: i64,
    compact_rev: i64,
}

impl<'c> ReadTxn<'c> {
    /// A read at the state `conn`'s transaction sees; its snapshot starts
    /// here, paired with the index as it is.
    pub fn open(conn: &'c Connection, index: &'c KeyIndex) -> Result<Self> {
        let ((rev, compact_rev), generation) = index.begin(|| {
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
        Ok(ReadTxn {
            conn,
            index,
            generation,
            rev: rev.ok_or_else(missing)?,
            compact_rev: compact_rev.ok_or_else(missing)?,
        })
    }

    /// Every key's newest versions at revisions `a` and `b`, from the index
    /// this snapshot is paired with (see `KeyIndex::newest_at_each`).
    pub(crate) fn newest_at_each(
        &self,
        a: i64,
        b: i64,
        f: impl FnMut(Option<Version>, Option<Version>),
    ) -> Result<()> {
        self.index.newest_at_each(Some(self.generation), a, b, f)
    }
}

impl TxnRead for ReadTxn<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }

    fn current_rev(&self) -> i64 {
        self.rev
    }

    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    fn version_at(&self, key: &[u8], rev: i64) -> Result<Option<Version>> {
        self.index.at(Some(self.generation), key, rev)
    }

    fn ids_at(&self, kr: &KeyRange, rev: i64, limit: Option<usize>) -> Result<Vec<i64>> {
        self.index.ids_at(Some(self.generation), kr, rev, limit)
    }

    fn count_at(&self, kr: &KeyRange, rev: i64) -> Result<i64> {
        self.index.count_at(Some(self.generation), kr, rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestStore;

    #[test]
    fn a_read_begun_before_an_index_reload_is_told_to_start_again() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let mut conn = s.reader();
        let tx = conn.transaction().unwrap();
        let r = ReadTxn::open(&tx, &s.index).unwrap();
        assert_eq!(r.get(b"a").unwrap().unwrap().value, b"1");
        // What a snapshot install does to the index.
        s.index.exclusive().reload(&s.conn).unwrap();
        assert_eq!(r.get(b"a"), Err(StoreError::Reopened));
        drop(tx);
        let tx = conn.transaction().unwrap();
        let r = ReadTxn::open(&tx, &s.index).unwrap();
        assert_eq!(r.get(b"a").unwrap().unwrap().value, b"1");
    }

    #[test]
    fn a_read_keeps_its_revision_while_writes_commit() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let mut conn = s.reader();
        let tx = conn.transaction().unwrap();
        let index = s.index.clone();
        let r = ReadTxn::open(&tx, &index).unwrap();
        s.put("a", "2");
        s.put("b", "1");
        assert_eq!(r.current_rev(), 2);
        assert_eq!(r.get(b"a").unwrap().unwrap().value, b"1");
        assert_eq!(r.count_at(&KeyRange::new(b"a", b"z"), 2).unwrap(), 1);
    }
}
