//! The history scan: every change between two revisions, in apply order,
//! each with its key's previous version, as a watcher that catches up reads
//! them (etcd's watchable store reads the same from its backend).

use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::mvcc::read_txn::ReadTxn;
use crate::mvcc::txn_read::{row_to_kv, TxnRead};

/// Changes read from history (`events_between`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRead {
    pub events: Vec<Event>,
    /// Every event up to this revision is in `events`: the read's upper
    /// bound, or the last revision read when a size bound stopped it.
    pub complete_to: i64,
}

/// Every change with a revision in `[from, to]`, in apply order, each with
/// the key's previous version (none if it did not exist or was compacted).
/// Stops after the revision in which `max_events`, or `max_bytes` of keys
/// and values, is reached, so a revision's events are never split; the
/// answer says up to which revision it is complete.
pub fn events_between(
    txn: &ReadTxn<'_>,
    from: i64,
    to: i64,
    max_events: usize,
    max_bytes: usize,
) -> Result<HistoryRead> {
    // Checked in the same snapshot as the read: rows below the compact
    // revision may already be gone, and a missing event must be an error.
    if from < txn.compact_rev() {
        return Err(StoreError::Compacted);
    }
    let mut read = HistoryRead {
        events: Vec::new(),
        complete_to: to,
    };
    let Some(first) = first_row_from(txn.conn(), from)? else {
        return Ok(read);
    };
    // Row order is revision order (see `schema`): scan from the first
    // row on and stop past `to`.
    let mut stmt = txn.conn().prepare_cached(
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
pub(crate) fn first_row_from(conn: &Connection, rev: i64) -> Result<Option<i64>> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT max(id) FROM history")?
        .query_row([], |r| r.get(0))?;
    let Some(last) = last else {
        return Ok(None);
    };
    let mut at_or_after =
        conn.prepare_cached("SELECT id, rev FROM history WHERE id >= ?1 ORDER BY id LIMIT 1")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::testing::TestStore;
    use cairn_proto::etcdserverpb::{
        request_op, CompactionRequest, PutRequest, RequestOp, TxnRequest,
    };

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_size_bound_never_splits_a_revision() {
        let mut s = TestStore::new();
        s.put("a", "1"); // 2
        s.apply(Command::Txn(TxnRequest {
            success: vec![put_op("b"), put_op("c")],
            ..Default::default()
        }))
        .unwrap(); // 3
        s.put("a", "2"); // 4
        let read = s.read(|r| events_between(r, 2, 4, 2, usize::MAX)).unwrap();
        // Two events reached the bound inside revision 3: its other comes too.
        let revs: Vec<i64> = read
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!((revs, read.complete_to), (vec![2, 3, 3], 3));
        let all = s
            .read(|r| events_between(r, 3, 10, 100, usize::MAX))
            .unwrap();
        assert_eq!(all.events.len(), 3);
        assert_eq!(all.complete_to, 10);
        let last = &all.events[2];
        assert_eq!(
            last.prev_kv.as_ref().map(|p| p.value.as_slice()),
            Some(&b"1"[..]),
            "history gives every event its previous kv"
        );
    }

    #[test]
    fn a_read_below_the_compact_revision_is_refused() {
        let mut s = TestStore::new();
        s.put("a", "1");
        s.put("a", "2");
        s.apply(Command::Compact(CompactionRequest {
            revision: 3,
            ..Default::default()
        }))
        .unwrap();
        let r = s.read(|r| events_between(r, 2, 3, 10, usize::MAX));
        assert_eq!(r, Err(StoreError::Compacted));
        let r = s.read(|r| events_between(r, 3, 3, 10, usize::MAX)).unwrap();
        assert_eq!(r.events.len(), 1);
    }
}
