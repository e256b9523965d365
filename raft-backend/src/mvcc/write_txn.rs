//! The writer's transaction, as etcd's `storeTxnWrite`: it reads what the
//! keyspace holds, its own writes included (later ops of an etcd txn see
//! earlier ones), and records new key versions and their events. Every
//! change made through one shares revision `begin_rev + 1`.
//!
//! Each version goes into the key index before the SQLite transaction
//! commits (see `KeyIndex`); readers ignore versions above their snapshot.

use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use rusqlite::{params, Connection};

use crate::error::Result;
use crate::mvcc::key_index::{KeyIndex, Version};
use crate::mvcc::key_range::KeyRange;
use crate::mvcc::txn_read::TxnRead;

pub struct WriteTxn<'c> {
    conn: &'c Connection,
    index: &'c KeyIndex,
    begin_rev: i64,
    compact_rev: i64,
    /// Changes made through this transaction; all share revision `begin_rev + 1`.
    changes: i64,
    events: Vec<Event>,
    /// Whether a put's event gets its previous kv (see `PrevKvInterest`).
    prev_values: bool,
}

impl<'c> WriteTxn<'c> {
    /// A write on top of revision `begin_rev`, inside the writer's SQLite
    /// transaction on `conn`, whose revision counters the caller knows.
    pub fn new(
        conn: &'c Connection,
        index: &'c KeyIndex,
        begin_rev: i64,
        compact_rev: i64,
    ) -> Self {
        WriteTxn {
            conn,
            index,
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

    /// The revision this transaction started on.
    pub fn begin_rev(&self) -> i64 {
        self.begin_rev
    }

    /// The revision every change of this transaction gets.
    pub fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
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
    pub fn put_kv(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<()> {
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
    pub fn record_put(&mut self, kv: KeyValue, prev: Option<KeyValue>) -> Result<()> {
        self.insert_history(&kv, false)?;
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(())
    }

    /// Stores a tombstone for a live key and records its event.
    pub fn record_delete(&mut self, prev: KeyValue, rev: i64) -> Result<()> {
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

    /// Deletes every live key of `kr` at the next revision; returns them.
    pub fn delete_keys(&mut self, kr: &KeyRange) -> Result<Vec<KeyValue>> {
        let cur = self.current_rev();
        let victims = self.fetch(kr, cur, None, true)?;
        let rev = self.write_rev();
        for kv in &victims {
            self.record_delete(kv.clone(), rev)?;
        }
        Ok(victims)
    }

    /// Stores a lease row; whether one may be granted is the caller's rule.
    pub fn insert_lease(&mut self, id: i64, ttl: i64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO leases (id, ttl) VALUES (?1, ?2)")?
            .execute(params![id, ttl])?;
        Ok(())
    }

    /// Removes a lease row (its keys are the caller's to delete).
    pub fn remove_lease(&mut self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM leases WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }
}

impl TxnRead for WriteTxn<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }

    fn current_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    // The writer owns every change to the index: no generation to check.
    fn version_at(&self, key: &[u8], rev: i64) -> Result<Option<Version>> {
        self.index.at(None, key, rev)
    }

    fn ids_at(&self, kr: &KeyRange, rev: i64, limit: Option<usize>) -> Result<Vec<i64>> {
        self.index.ids_at(None, kr, rev, limit)
    }

    fn count_at(&self, kr: &KeyRange, rev: i64) -> Result<i64> {
        self.index.count_at(None, kr, rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{read_with, TestStore};

    #[test]
    fn a_write_sees_its_own_changes_and_a_reader_none_before_the_commit() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let mut reader = s.reader();
        let tx = s.conn.unchecked_transaction().unwrap();
        let mut w = WriteTxn::new(&tx, &s.index, s.state.current_rev, s.state.compact_rev);
        assert_eq!((w.current_rev(), w.has_changes()), (2, false));
        w.put_kv(b"a", b"2".to_vec(), 0).unwrap();
        w.put_kv(b"b", b"1".to_vec(), 0).unwrap();
        // Every change of one write txn is at one revision, seen by its reads.
        assert_eq!(w.current_rev(), 3);
        let a = w.get(b"a").unwrap().unwrap();
        assert_eq!(
            (a.value.as_slice(), a.version, a.mod_revision),
            (&b"2"[..], 2, 3)
        );
        // The index holds the new versions already; a reader's snapshot is
        // below them.
        read_with(&mut reader, &s.index, |r| {
            assert_eq!(r.current_rev(), 2);
            assert_eq!(r.get(b"a").unwrap().unwrap().value, b"1");
            assert_eq!(r.get(b"b").unwrap(), None);
        });
        let events = w.into_events();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].prev_kv.as_ref().map(|p| p.value.as_slice()),
            Some(&b"1"[..])
        );
        assert_eq!(events[1].prev_kv, None);
        s.state.current_rev = 3;
        s.state.persist(&tx).unwrap();
        tx.commit().unwrap();
        read_with(&mut reader, &s.index, |r| {
            assert_eq!(r.current_rev(), 3);
            assert_eq!(r.get(b"a").unwrap().unwrap().value, b"2");
            assert_eq!(r.get(b"b").unwrap().unwrap().value, b"1");
        });
    }

    #[test]
    fn without_prev_values_an_update_event_has_no_prev_kv_but_a_delete_has() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let events = s
            .write(|w| {
                w.skip_prev_values();
                w.put_kv(b"a", b"2".to_vec(), 0)?;
                Ok(std::mem::take(&mut w.events))
            })
            .unwrap();
        assert_eq!(events[0].prev_kv, None);
        let events = s
            .write(|w| {
                w.skip_prev_values();
                w.delete_keys(&KeyRange::new(b"a", b""))?;
                Ok(std::mem::take(&mut w.events))
            })
            .unwrap();
        assert_eq!(
            events[0].prev_kv.as_ref().map(|p| p.value.as_slice()),
            Some(&b"2"[..])
        );
    }
}
