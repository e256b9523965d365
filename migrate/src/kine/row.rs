//! What one row of kine's table means in etcd's model.
//!
//! Kine writes a row per change (k3s-io/kine v0.16.4,
//! `pkg/logstructured/logstructured.go` and `pkg/drivers/generic`):
//! * a create: `created = 1`, `create_revision = 0` (the row's own id is
//!   the key's create revision), `prev_revision` = the delete row before a
//!   re-create, or 0;
//! * an update: `created = 0`, `create_revision` = the create row's id,
//!   `prev_revision` = the key's previous row;
//! * a delete: `deleted = 1`, `prev_revision` = the deleted row;
//! * a fill record (`Fill`): `name = "gap-<id>"`, `deleted = 1`,
//!   `prev_revision = 0`, written when an id stays missing for a second;
//! * the compaction bookkeeping: one row named `compact_rev_key`, whose
//!   `prev_revision` kine updates in place to the compact revision.
//!
//! `lease` holds a TTL in seconds, not a lease ID: kine's LeaseGrant answers
//! with the TTL as the ID, and its TTL loop deletes each key that many
//! seconds after it saw the key's latest write (`pkg/ttl/ttl.go`).

use cairn_proto::migrate::ImportLease;
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};

/// The name of kine's compaction bookkeeping row, and the key
/// kube-apiserver keeps its own compaction in.
pub const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";
/// Where kine keeps kube-apiserver's `compact_rev_key` (its own row has the
/// name), the value prefixed by a version kine counts itself:
/// "<version>|<value>" (kine's `pkg/server/compact.go`, `EncodeVersion`);
/// kine serves it as `compact_rev_key` with that version and value.
pub const APISERVER_COMPACT_KEY: &[u8] = b"compact_rev_key_apiserver";

/// kine's `DecodeVersion`: "<version>|<value>", or a bare version from
/// kines before Kubernetes 1.34 read the value (then the value is "0").
pub fn decode_version(value: &[u8]) -> (i64, Vec<u8>) {
    let parse = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    match value.iter().position(|b| *b == b'|') {
        Some(i) => (parse(&value[..i]), value[i + 1..].to_vec()),
        None => (parse(value), b"0".to_vec()),
    }
}

/// The key a row changes, as kine serves it.
pub fn key_of(row: &Row) -> Vec<u8> {
    if row.name == APISERVER_COMPACT_KEY {
        COMPACT_REV_KEY.to_vec()
    } else {
        row.name.clone()
    }
}

/// One row of `kine`, as read (without `old_value`, which the target
/// derives from its own history).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub name: Vec<u8>,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: i64,
    pub prev_revision: i64,
    /// A TTL in seconds; 0 for none.
    pub lease: i64,
    pub value: Vec<u8>,
}

/// What a row does to the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key is created (`version` 1) or updated.
    Put,
    /// The key is deleted.
    Delete,
    /// A revision that changes no key: a fill record or kine's compaction
    /// bookkeeping. Imported empty, so that later revisions keep their numbers.
    Nothing,
}

impl Row {
    /// A fill record: kine names it after its own id and marks it deleted.
    pub fn is_fill(&self) -> bool {
        self.deleted
            && self.prev_revision == 0
            && self.name == format!("gap-{}", self.id).as_bytes()
    }

    /// A revision without a row that no row can fill any more, imported as
    /// kine's fill record for it would be.
    pub fn absent(id: i64) -> Row {
        Row {
            id,
            name: format!("gap-{id}").into_bytes(),
            deleted: true,
            ..Default::default()
        }
    }

    /// What the row does to the key space.
    pub fn change(&self) -> Change {
        if self.name == COMPACT_REV_KEY || self.is_fill() {
            Change::Nothing
        } else if self.deleted {
            Change::Delete
        } else {
            Change::Put
        }
    }

    /// The revision that created this incarnation of the key.
    pub fn created_at(&self) -> i64 {
        if self.created {
            self.id
        } else {
            self.create_revision
        }
    }
}

/// The target's lease for a put with kine TTL `ttl` at `revision`: one
/// lease per put, numbered by the put's revision, so that every key expires
/// on its own TTL as kine expires it (kine has no shared leases), and a
/// resumed migrator derives the same IDs.
pub fn lease_for(revision: i64, ttl: i64) -> Option<ImportLease> {
    (ttl > 0).then_some(ImportLease {
        id: revision,
        granted_ttl: ttl,
        remaining_ttl: ttl,
    })
}

/// The key-value a put row leaves, given the key's `version` after it
/// (kube-apiserver's compaction key carries its version in its value).
pub fn put_kv(row: &Row, version: i64) -> KeyValue {
    let (key, version, value) = if row.name == APISERVER_COMPACT_KEY {
        let (v, value) = decode_version(&row.value);
        (COMPACT_REV_KEY.to_vec(), v, value)
    } else {
        (row.name.clone(), version, row.value.clone())
    };
    KeyValue {
        key,
        create_revision: row.created_at(),
        mod_revision: row.id,
        version,
        value,
        lease: if row.lease > 0 { row.id } else { 0 },
    }
}

/// The etcd event of a row that changes a key.
pub fn event(row: &Row, version: i64) -> Option<Event> {
    match row.change() {
        Change::Put => Some(Event {
            r#type: EventType::Put as i32,
            kv: Some(put_kv(row, version)),
            prev_kv: None,
        }),
        Change::Delete => Some(Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key_of(row),
                mod_revision: row.id,
                ..Default::default()
            }),
            prev_kv: None,
        }),
        Change::Nothing => None,
    }
}

/// The version of a key that kine's table shows at a revision, counted as
/// etcd counts it (puts since the key's creation): `puts` is the number of
/// the incarnation's rows that remain up to that revision, `has_create`
/// whether its create row is among them. Compaction leaves only the latest
/// row at or below the compact revision, so where the create row is gone
/// the count is a lower bound: the rows that remain plus one for the
/// creation. Returns (version, exact).
pub fn version_from_rows(puts: i64, has_create: bool) -> (i64, bool) {
    if has_create {
        (puts.max(1), true)
    } else {
        (puts.max(1) + 1, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, name: &str) -> Row {
        Row {
            id,
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn creates_updates_and_deletes_are_puts_and_deletes() {
        let create = Row {
            created: true,
            lease: 60,
            value: b"v".to_vec(),
            ..row(7, "/registry/events/e1")
        };
        assert_eq!(create.change(), Change::Put);
        assert_eq!(
            put_kv(&create, 1),
            KeyValue {
                key: b"/registry/events/e1".to_vec(),
                create_revision: 7,
                mod_revision: 7,
                version: 1,
                value: b"v".to_vec(),
                lease: 7,
            }
        );
        assert_eq!(
            lease_for(create.id, create.lease),
            Some(ImportLease {
                id: 7,
                granted_ttl: 60,
                remaining_ttl: 60
            })
        );
        let update = Row {
            create_revision: 7,
            prev_revision: 7,
            ..row(9, "/registry/events/e1")
        };
        assert_eq!(update.change(), Change::Put);
        let kv = put_kv(&update, 2);
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
            (7, 9, 2, 0)
        );
        assert_eq!(lease_for(update.id, update.lease), None);
        let delete = Row {
            deleted: true,
            prev_revision: 9,
            ..row(10, "/registry/events/e1")
        };
        assert_eq!(delete.change(), Change::Delete);
        let ev = event(&delete, 0).unwrap();
        assert_eq!(ev.r#type, EventType::Delete as i32);
        assert_eq!(ev.kv.unwrap().mod_revision, 10);
    }

    #[test]
    fn fill_records_and_compaction_bookkeeping_change_no_key() {
        let fill = Row {
            deleted: true,
            ..row(12, "gap-12")
        };
        assert!(fill.is_fill());
        assert_eq!(fill.change(), Change::Nothing);
        assert!(event(&fill, 0).is_none());
        let compact = Row {
            created: true,
            ..row(1, "compact_rev_key")
        };
        assert_eq!(compact.change(), Change::Nothing);
        // A user's key that merely starts with "gap-" is a key: kine names a
        // fill after its own id, and deletes of keys name their previous row.
        let user = Row {
            created: true,
            ..row(13, "gap-12")
        };
        assert_eq!(user.change(), Change::Put);
        let user_delete = Row {
            deleted: true,
            prev_revision: 13,
            ..row(14, "gap-14")
        };
        assert_eq!(user_delete.change(), Change::Delete);
    }

    #[test]
    fn kube_apiservers_compaction_key_is_served_as_kine_serves_it() {
        let update = Row {
            created: false,
            create_revision: 20,
            prev_revision: 20,
            value: b"3|1234".to_vec(),
            ..row(30, "compact_rev_key_apiserver")
        };
        let kv = put_kv(&update, 99);
        assert_eq!(
            (
                kv.key.as_slice(),
                kv.version,
                kv.value.as_slice(),
                kv.create_revision
            ),
            (b"compact_rev_key".as_slice(), 3, b"1234".as_slice(), 20)
        );
        // Older kines stored the version alone.
        assert_eq!(decode_version(b"7"), (7, b"0".to_vec()));
        let delete = Row {
            deleted: true,
            prev_revision: 30,
            ..row(31, "compact_rev_key_apiserver")
        };
        assert_eq!(
            event(&delete, 0).unwrap().kv.unwrap().key,
            b"compact_rev_key"
        );
    }

    #[test]
    fn versions_count_the_remaining_puts() {
        // All rows since the creation remain: exact.
        assert_eq!(version_from_rows(3, true), (3, true));
        // Compaction took the create row and others: the remaining puts plus the creation.
        assert_eq!(version_from_rows(1, false), (2, false));
        assert_eq!(version_from_rows(4, false), (5, false));
    }
}
