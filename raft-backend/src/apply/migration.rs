//! The migration commands (live migration from etcd; docs/design.md, "Live
//! migration from etcd"), applied inside the writer's transaction like any
//! command: each checks everything that can refuse it first, then writes
//! its data and the `migration` row together.
//!
//! - `MigrationBegin`: refused unless the store is empty (revision 1, no
//!   history, no lease) or importing from the same source; from the same
//!   source it confirms, or with `restart` wipes what was imported and
//!   begins again (watchers are told of a reset).
//! - `ImportBase`: one page of the copy, at `after_key` == the stored resume
//!   key; each key-value keeps its revisions, version and lease, in the row
//!   `mod_revision << 24 | n`. With `done` the revision becomes the start
//!   revision and the compact revision the source's (watchers: a reset).
//! - `ImportRevisions`: at `after_revision` == the current revision, whole
//!   revisions each one above the last; leases granted first, then the
//!   revisions, then lease drops, then the source's compaction.
//! - `MigrationCutover` at the expected revision; `MigrationAbort`.

use std::collections::HashMap;

use cairn_proto::migrate::{
    AbortRequest, BeginRequest, CutoverRequest, ImportBaseRequest, ImportRevisionsRequest,
    MigrationState, Phase,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::KeyValue;
use rusqlite::Connection;

use crate::apply::apply_command::Applied;
use crate::command::{Command, CommandOutput, RevisionEvents};
use crate::error::{Result, StoreError};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::migration::{self, MigrationGate, BASE_ID_SHIFT, MAX_BASE_REVISION};
use crate::mvcc::txn_read::TxnRead;
use crate::mvcc::write_txn::WriteTxn;

/// Applies a migration command (`Command::is_migration`); see the module
/// comment. Answers with the migration's state after it.
pub fn apply(
    conn: &Connection,
    index: &KeyIndex,
    state: &mut ApplyState,
    cmd: &Command,
    prev_values: bool,
) -> Result<Applied> {
    let mut m = migration::load(conn)?;
    let mut next = *state;
    let mut applied = Applied {
        output: CommandOutput::Migration(MigrationState::default()),
        events: Vec::new(),
        compacted_to: None,
        reset: false,
    };
    // Refusals come back from the checks, before anything is written.
    let write = match cmd {
        Command::MigrationBegin(b) => check_begin(conn, &next, &m, b)?,
        Command::ImportBase(b) => check_base(conn, &m, b)?,
        Command::ImportRevisions(r) => check_revisions(&next, &m, r)?,
        Command::MigrationCutover(c) => check_cutover(&next, &m, c)?,
        Command::MigrationAbort(a) => check_abort(&m, a)?,
        _ => {
            return Err(StoreError::Storage(
                "not a migration command in migration apply".into(),
            ))
        }
    };
    let written = (|| -> Result<()> {
        match write {
            Write::Nothing => return Ok(()),
            Write::Begin { wipe } => {
                if wipe {
                    migration::wipe(conn, index)?;
                    next.current_rev = 1;
                    next.compact_rev = -1;
                    applied.reset = true;
                }
                let Command::MigrationBegin(b) = cmd else {
                    unreachable_command()?
                };
                m = begun(b);
            }
            Write::Base { slots } => {
                let Command::ImportBase(b) = cmd else {
                    unreachable_command()?
                };
                write_base(conn, index, &mut next, &mut m, b, &slots, &mut applied)?;
            }
            Write::Revisions => {
                let Command::ImportRevisions(r) = cmd else {
                    unreachable_command()?
                };
                write_revisions(conn, index, &mut next, &mut m, r, prev_values, &mut applied)?;
            }
            Write::Phase { phase, unix_ms } => {
                m.phase = phase as i32;
                m.phase_since_unix_ms = unix_ms;
            }
        }
        migration::save(conn, &m)
    })();
    match written {
        Ok(()) => {}
        Err(e) if e.is_storage_fault() => return Err(e),
        // Every refusal is checked above; one here is a bug, and under Raft a
        // fault that stops this member rather than let it diverge.
        Err(e) => {
            return Err(StoreError::Storage(format!(
                "migration command refused after writing ({e}): a missing pre-check"
            )))
        }
    }
    next.migration = MigrationGate::of(&m);
    m.target_revision = next.current_rev;
    *state = next;
    applied.output = CommandOutput::Migration(m);
    Ok(applied)
}

fn unreachable_command<T>() -> Result<T> {
    Err(StoreError::Storage(
        "migration command changed under apply".into(),
    ))
}

/// What a command that passed its checks writes.
enum Write {
    Nothing,
    Begin {
        wipe: bool,
    },
    /// Each key-value's n (see `migration::BASE_ID_SHIFT`), in page order.
    Base {
        slots: Vec<i64>,
    },
    Revisions,
    Phase {
        phase: Phase,
        unix_ms: i64,
    },
}

fn phase_of(m: &MigrationState) -> Phase {
    Phase::try_from(m.phase).unwrap_or(Phase::None)
}

fn wrong_phase(m: &MigrationState) -> StoreError {
    StoreError::MigrationWrongPhase {
        phase: phase_of(m).as_str_name(),
    }
}

fn invalid(what: impl Into<String>) -> StoreError {
    StoreError::MigrationInvalid(what.into())
}

/// A key as the out-of-step messages name it.
pub fn describe_key(key: &[u8]) -> String {
    if key.is_empty() {
        "the first key".into()
    } else {
        format!("key {:?}", String::from_utf8_lossy(key))
    }
}

fn check_begin(
    conn: &Connection,
    state: &ApplyState,
    m: &MigrationState,
    b: &BeginRequest,
) -> Result<Write> {
    if b.start_revision < 1 || b.start_revision > MAX_BASE_REVISION {
        return Err(invalid(format!(
            "start_revision {} is out of range",
            b.start_revision
        )));
    }
    if b.compact_revision < -1 || b.compact_revision > b.start_revision {
        return Err(invalid(format!(
            "compact_revision {} is not in [-1, start_revision {}]",
            b.compact_revision, b.start_revision
        )));
    }
    if matches!(phase_of(m), Phase::Copying | Phase::Following) {
        if m.source_cluster_id != b.source_cluster_id {
            return Err(StoreError::MigrationOtherSource {
                importing: m.source_cluster_id,
                requested: b.source_cluster_id,
            });
        }
        return Ok(if b.restart {
            Write::Begin { wipe: true }
        } else {
            Write::Nothing
        });
    }
    if state.current_rev != 1 || !migration::store_is_empty(conn)? {
        return Err(StoreError::MigrationNotEmpty {
            revision: state.current_rev,
        });
    }
    Ok(Write::Begin { wipe: false })
}

fn begun(b: &BeginRequest) -> MigrationState {
    MigrationState {
        phase: Phase::Copying as i32,
        source_cluster_id: b.source_cluster_id,
        source_version: b.source_version.clone(),
        start_revision: b.start_revision,
        compact_revision: b.compact_revision,
        target_revision: 1,
        keys_copied: 0,
        bytes_copied: 0,
        copy_resume_after: Vec::new(),
        source_revision: b.start_revision,
        source_seen_unix_ms: b.unix_ms,
        phase_since_unix_ms: b.unix_ms,
        history_none: b.history_none,
        shared_revision_keys: 0,
    }
}

fn check_base(conn: &Connection, m: &MigrationState, b: &ImportBaseRequest) -> Result<Write> {
    match phase_of(m) {
        Phase::Copying => {}
        // A page after the last one (a retried `done` page).
        Phase::Following => {
            return Err(StoreError::MigrationOutOfStep {
                holds: format!("the copy is complete (revision {})", m.start_revision),
                names: describe_key(&b.after_key),
            })
        }
        _ => return Err(wrong_phase(m)),
    }
    if b.after_key != m.copy_resume_after {
        return Err(StoreError::MigrationOutOfStep {
            holds: format!(
                "the copy resumes after {}",
                describe_key(&m.copy_resume_after)
            ),
            names: describe_key(&b.after_key),
        });
    }
    let mut last: &[u8] = &b.after_key;
    let mut next_slot: HashMap<i64, i64> = HashMap::new();
    let mut slots = Vec::with_capacity(b.kvs.len());
    for kv in &b.kvs {
        if kv.key.is_empty() || (!last.is_empty() && kv.key.as_slice() <= last) {
            return Err(invalid(format!(
                "{} is not after {} (a page is in ascending key order)",
                describe_key(&kv.key),
                describe_key(last)
            )));
        }
        last = &kv.key;
        if kv.mod_revision < 2 || kv.mod_revision > m.start_revision {
            return Err(invalid(format!(
                "{} has mod_revision {}, not in [2, start_revision {}]",
                describe_key(&kv.key),
                kv.mod_revision,
                m.start_revision
            )));
        }
        if kv.create_revision < 2 || kv.create_revision > kv.mod_revision || kv.version < 1 {
            return Err(invalid(format!(
                "{} has create_revision {} and version {}",
                describe_key(&kv.key),
                kv.create_revision,
                kv.version
            )));
        }
        let n = match next_slot.get_mut(&kv.mod_revision) {
            Some(n) => n,
            None => next_slot
                .entry(kv.mod_revision)
                .or_insert(migration::next_base_slot(conn, kv.mod_revision)?),
        };
        if *n >= 1 << BASE_ID_SHIFT {
            return Err(invalid(format!(
                "more than {} keys at revision {}",
                1i64 << BASE_ID_SHIFT,
                kv.mod_revision
            )));
        }
        slots.push(*n);
        *n += 1;
    }
    for l in &b.leases {
        if l.id == 0 {
            return Err(invalid("lease ID 0"));
        }
    }
    Ok(Write::Base { slots })
}

fn write_base(
    conn: &Connection,
    index: &KeyIndex,
    state: &mut ApplyState,
    m: &mut MigrationState,
    b: &ImportBaseRequest,
    slots: &[i64],
    applied: &mut Applied,
) -> Result<()> {
    for l in &b.leases {
        migration::upsert_lease(conn, l.id, l.granted_ttl)?;
    }
    for (kv, n) in b.kvs.iter().zip(slots) {
        migration::insert_base_row(conn, index, kv, *n)?;
        // The second key at a revision makes two that share it; each later
        // one adds itself.
        m.shared_revision_keys += match *n {
            0 => 0,
            1 => 2,
            _ => 1,
        };
        m.keys_copied += 1;
        m.bytes_copied += (kv.key.len() + kv.value.len()) as i64;
    }
    if let Some(kv) = b.kvs.last() {
        m.copy_resume_after = kv.key.clone();
    }
    m.source_revision = b.source_revision;
    m.source_seen_unix_ms = b.unix_ms;
    if b.done {
        m.phase = Phase::Following as i32;
        m.phase_since_unix_ms = b.unix_ms;
        state.current_rev = m.start_revision;
        if m.compact_revision > state.compact_rev {
            state.compact_rev = m.compact_revision;
            applied.compacted_to = Some(m.compact_revision);
        }
        // Revisions up to the start revision appeared at once, without
        // events: watchers read them from history.
        applied.reset = true;
    }
    Ok(())
}

fn check_revisions(
    state: &ApplyState,
    m: &MigrationState,
    r: &ImportRevisionsRequest,
) -> Result<Write> {
    if phase_of(m) != Phase::Following {
        return Err(wrong_phase(m));
    }
    if r.after_revision != state.current_rev {
        return Err(StoreError::MigrationOutOfStep {
            holds: format!("the target is at revision {}", state.current_rev),
            names: format!("revision {}", r.after_revision),
        });
    }
    let mut expect = state.current_rev + 1;
    for rev in &r.revisions {
        if rev.revision != expect {
            return Err(StoreError::MigrationOutOfStep {
                holds: format!(
                    "the target is at revision {} (after the request's revisions before it)",
                    expect - 1
                ),
                names: format!("revision {}", rev.revision - 1),
            });
        }
        for ev in &rev.events {
            let Some(kv) = ev.kv.as_ref().filter(|kv| !kv.key.is_empty()) else {
                return Err(invalid(format!(
                    "an event of revision {} has no key",
                    rev.revision
                )));
            };
            if ev.r#type == EventType::Put as i32 {
                if kv.create_revision < 2 || kv.create_revision > rev.revision || kv.version < 1 {
                    return Err(invalid(format!(
                        "the put of {} at revision {} has create_revision {} and version {}",
                        describe_key(&kv.key),
                        rev.revision,
                        kv.create_revision,
                        kv.version
                    )));
                }
            } else if ev.r#type != EventType::Delete as i32 {
                return Err(invalid(format!(
                    "an event of revision {} has type {}",
                    rev.revision, ev.r#type
                )));
            }
        }
        expect += 1;
    }
    let last = expect - 1;
    if r.compact_to > last {
        return Err(invalid(format!(
            "compact_to {} is past revision {}, where this request leaves the target",
            r.compact_to, last
        )));
    }
    if r.lease_grants.iter().any(|l| l.id == 0) {
        return Err(invalid("lease ID 0"));
    }
    Ok(Write::Revisions)
}

fn write_revisions(
    conn: &Connection,
    index: &KeyIndex,
    state: &mut ApplyState,
    m: &mut MigrationState,
    r: &ImportRevisionsRequest,
    prev_values: bool,
    applied: &mut Applied,
) -> Result<()> {
    for l in &r.lease_grants {
        migration::upsert_lease(conn, l.id, l.granted_ttl)?;
    }
    for rev in &r.revisions {
        let mut wtx = WriteTxn::new(conn, index, rev.revision - 1, state.compact_rev);
        for ev in &rev.events {
            // check_revisions refused events without a kv.
            let Some(kv) = ev.kv.as_ref() else { continue };
            if ev.r#type == EventType::Delete as i32 {
                // A key the target does not hold has nothing to delete.
                if let Some(prev) = wtx.get(&kv.key)? {
                    wtx.record_delete(prev, rev.revision)?;
                }
            } else {
                let prev = if prev_values { wtx.get(&kv.key)? } else { None };
                // The lease is kept as the source had it, held here or not:
                // the source is the authority.
                let kv = KeyValue {
                    mod_revision: rev.revision,
                    ..kv.clone()
                };
                wtx.record_put(kv, prev)?;
            }
        }
        // A revision moves the counter even if it changed nothing here, so
        // that later ones keep the source's numbering.
        state.current_rev = rev.revision;
        if wtx.has_changes() {
            applied.events.push(RevisionEvents {
                revision: rev.revision,
                events: wtx.into_events(),
            });
        }
    }
    for id in &r.lease_drops {
        migration::drop_lease(conn, *id)?;
    }
    // 0 says the source did not move; a store never compacted (-1) stays so,
    // as the source does.
    if r.compact_to > 0 && r.compact_to > state.compact_rev {
        state.compact_rev = r.compact_to;
        // The state names the compact revision the target holds: a migrator
        // resuming, and `cairn migrate status`, read it from here.
        m.compact_revision = r.compact_to;
        applied.compacted_to = Some(r.compact_to);
    }
    m.source_revision = r.source_revision;
    m.source_seen_unix_ms = r.unix_ms;
    Ok(())
}

fn check_cutover(state: &ApplyState, m: &MigrationState, c: &CutoverRequest) -> Result<Write> {
    if phase_of(m) != Phase::Following {
        return Err(wrong_phase(m));
    }
    if c.expected_revision != state.current_rev {
        return Err(StoreError::MigrationOutOfStep {
            holds: format!("the target is at revision {}", state.current_rev),
            names: format!("revision {}", c.expected_revision),
        });
    }
    Ok(Write::Phase {
        phase: Phase::CutOver,
        unix_ms: c.unix_ms,
    })
}

fn check_abort(m: &MigrationState, a: &AbortRequest) -> Result<Write> {
    if !matches!(phase_of(m), Phase::Copying | Phase::Following) {
        return Err(wrong_phase(m));
    }
    Ok(Write::Phase {
        phase: Phase::Aborted,
        unix_ms: a.unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::history::events_between;
    use crate::mvcc::key_index::KeyIndex;
    use crate::mvcc::{hash_kv::hash_kv, schema};
    use crate::testing::{pairs, put, range_req, TestStore};
    use cairn_proto::etcdserverpb::{
        request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
        RangeRequest, RequestOp, TxnRequest,
    };
    use cairn_proto::migrate::{ImportLease, ImportRevision};
    use cairn_proto::mvccpb::Event;

    const SOURCE: u64 = 0xcdf8_1819_4e3a_8c32;

    fn begin(start: i64, compact: i64) -> Command {
        Command::MigrationBegin(BeginRequest {
            source_cluster_id: SOURCE,
            source_version: "3.5.1".into(),
            start_revision: start,
            compact_revision: compact,
            unix_ms: 1000,
            ..Default::default()
        })
    }

    fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    fn page(after: &str, kvs: Vec<KeyValue>, done: bool) -> Command {
        Command::ImportBase(ImportBaseRequest {
            after_key: after.into(),
            kvs,
            done,
            source_revision: 20,
            unix_ms: 2000,
            ..Default::default()
        })
    }

    fn put_ev(kv: KeyValue) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        }
    }

    fn del_ev(key: &str) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.into(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn revs(after: i64, revisions: Vec<(i64, Vec<Event>)>) -> ImportRevisionsRequest {
        ImportRevisionsRequest {
            after_revision: after,
            revisions: revisions
                .into_iter()
                .map(|(revision, events)| ImportRevision { revision, events })
                .collect(),
            source_revision: 30,
            unix_ms: 3000,
            ..Default::default()
        }
    }

    fn state_of(out: CommandOutput) -> MigrationState {
        match out {
            CommandOutput::Migration(s) => s,
            other => panic!("not a migration answer: {other:?}"),
        }
    }

    fn get(s: &TestStore, key: &str, rev: i64) -> Vec<KeyValue> {
        s.read(|r| {
            crate::txn::range(
                r,
                &RangeRequest {
                    revision: rev,
                    ..range_req(key, "")
                },
            )
        })
        .unwrap()
        .kvs
    }

    fn ids(s: &TestStore) -> Vec<(i64, i64, i64)> {
        s.conn
            .prepare("SELECT id, rev, sub FROM history ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    /// A store that copied a, b, c (b and c at one revision) at revision 10,
    /// compacted at 10, and follows.
    fn following() -> TestStore {
        let mut s = TestStore::new();
        s.apply(begin(10, 10)).unwrap();
        s.apply(page(
            "",
            vec![kv("a", "1", 2, 7, 2), kv("b", "1", 10, 10, 1)],
            false,
        ))
        .unwrap();
        s.apply(page("b", vec![kv("c", "1", 4, 10, 3)], true))
            .unwrap();
        s
    }

    #[test]
    fn begin_needs_an_empty_store_or_the_same_source() {
        let mut s = TestStore::new();
        let st = state_of(s.apply(begin(10, 5)).unwrap());
        assert_eq!(
            (
                st.phase(),
                st.start_revision,
                st.compact_revision,
                st.target_revision
            ),
            (Phase::Copying, 10, 5, 1)
        );
        assert_eq!(s.state.migration.phase(), Phase::Copying);
        // The same source again only confirms.
        let again = state_of(s.apply(begin(99, 5)).unwrap());
        assert_eq!(again.start_revision, 10);
        let other = s.apply(Command::MigrationBegin(BeginRequest {
            source_cluster_id: 7,
            start_revision: 10,
            compact_revision: -1,
            ..Default::default()
        }));
        assert_eq!(
            other.unwrap_err(),
            StoreError::MigrationOtherSource {
                importing: SOURCE,
                requested: 7
            }
        );
        let bad = s.apply(begin(10, 11));
        assert!(
            matches!(bad, Err(StoreError::MigrationInvalid(_))),
            "{bad:?}"
        );

        let mut used = TestStore::new();
        used.put("a", "1");
        assert_eq!(
            used.apply(begin(10, 5)).unwrap_err(),
            StoreError::MigrationNotEmpty { revision: 2 }
        );
        // A lease alone makes a store not empty either.
        let mut leased = TestStore::new();
        leased
            .apply(Command::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 10 }))
            .unwrap();
        assert_eq!(
            leased.apply(begin(10, 5)).unwrap_err(),
            StoreError::MigrationNotEmpty { revision: 1 }
        );
    }

    #[test]
    fn a_restart_wipes_the_import_and_resets_watchers() {
        let mut s = following();
        s.apply(Command::ImportRevisions(ImportRevisionsRequest {
            lease_grants: vec![ImportLease {
                id: 9,
                granted_ttl: 60,
                remaining_ttl: 50,
            }],
            ..revs(10, vec![(11, vec![put_ev(kv("d", "1", 11, 0, 1))])])
        }))
        .unwrap();
        let restarted = s
            .apply_full(Command::MigrationBegin(BeginRequest {
                restart: true,
                ..match begin(40, 38) {
                    Command::MigrationBegin(b) => b,
                    _ => unreachable!(),
                }
            }))
            .unwrap();
        assert!(restarted.reset);
        let st = state_of(restarted.output);
        assert_eq!(
            (
                st.phase(),
                st.start_revision,
                st.target_revision,
                st.keys_copied
            ),
            (Phase::Copying, 40, 1, 0)
        );
        assert_eq!((s.state.current_rev, s.state.compact_rev), (1, -1));
        assert!(ids(&s).is_empty());
        assert!(s.index.newest(b"a").is_none());
        assert_eq!(s.read(|r| r.leases()).unwrap(), vec![]);
        // The new copy starts from the first key.
        s.apply(page("", vec![kv("a", "2", 2, 39, 3)], true))
            .unwrap();
        assert_eq!(pairs(&get(&s, "a", 0)), vec![("a".into(), "2".into())]);
        assert_eq!((s.state.current_rev, s.state.compact_rev), (40, 38));
    }

    #[test]
    fn base_pages_keep_revisions_and_order_row_ids_by_revision() {
        let mut s = TestStore::new();
        s.apply(begin(10, 10)).unwrap();
        let first = s
            .apply_full(page(
                "",
                vec![kv("a", "1", 2, 7, 2), kv("b", "1", 10, 10, 1)],
                false,
            ))
            .unwrap();
        assert!(!first.reset && first.events.is_empty());
        let st = state_of(first.output);
        assert_eq!(
            (
                st.keys_copied,
                st.bytes_copied,
                st.copy_resume_after.as_slice()
            ),
            (2, 4, &b"b"[..])
        );
        // Until the copy is complete the store stays at revision 1.
        assert_eq!(s.state.current_rev, 1);
        assert!(get(&s, "a", 0).is_empty());
        // A page that does not start where the copy resumes changes nothing.
        let stale = s.apply(page("", vec![kv("a", "1", 2, 7, 2)], false));
        assert_eq!(
            stale.unwrap_err().to_string(),
            "migration out of step: the copy resumes after key \"b\", request starts after the first key"
        );
        let unordered = s.apply(page(
            "b",
            vec![kv("d", "1", 2, 7, 1), kv("c", "1", 2, 7, 1)],
            false,
        ));
        assert!(matches!(unordered, Err(StoreError::MigrationInvalid(_))));
        let done = s
            .apply_full(page("b", vec![kv("c", "1", 4, 10, 3)], true))
            .unwrap();
        assert!(done.reset);
        assert_eq!(done.compacted_to, Some(10));
        let st = state_of(done.output);
        assert_eq!((st.phase(), st.target_revision), (Phase::Following, 10));
        // b and c share a revision: their order within it is a guess.
        assert_eq!(st.shared_revision_keys, 2);
        assert_eq!((s.state.current_rev, s.state.compact_rev), (10, 10));
        // b and c share revision 10: sub-revisions in key order, ids in
        // revision order.
        assert_eq!(
            ids(&s),
            vec![(7 << 24, 7, 0), (10 << 24, 10, 0), ((10 << 24) | 1, 10, 1)]
        );
        let a = &get(&s, "a", 0)[0];
        assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 7, 2));
        let all = s
            .read(|r| crate::txn::range(r, &range_req("a", "z")))
            .unwrap();
        assert_eq!(all.count, 3);
        // Reads below the compact revision are refused, as on the source.
        let r = s.read(|r| {
            crate::txn::range(
                r,
                &RangeRequest {
                    revision: 9,
                    ..range_req("a", "")
                },
            )
        });
        assert_eq!(r.unwrap_err(), StoreError::Compacted);
        // History from the compact revision on reads the copied rows.
        let h = s
            .read(|r| events_between(r, 10, 10, 100, usize::MAX))
            .unwrap();
        let keys: Vec<_> = h
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        // A retried last page is out of step.
        let retried = s.apply(page("b", vec![kv("c", "1", 4, 10, 3)], true));
        assert!(matches!(
            retried,
            Err(StoreError::MigrationOutOfStep { .. })
        ));
        // The key index built at open reads the same rows.
        let reopened = KeyIndex::load(&s.conn).unwrap();
        assert_eq!(reopened.newest(b"c"), s.index.newest(b"c"));
    }

    #[test]
    fn revisions_must_follow_on_and_give_events_per_revision() {
        let mut s = following();
        let gap = s.apply(Command::ImportRevisions(revs(
            11,
            vec![(12, vec![put_ev(kv("a", "2", 2, 0, 3))])],
        )));
        assert_eq!(
            gap.unwrap_err().to_string(),
            "migration out of step: the target is at revision 10, request starts after revision 11"
        );
        let skip = s.apply(Command::ImportRevisions(revs(
            10,
            vec![
                (11, vec![put_ev(kv("a", "2", 2, 0, 3))]),
                (13, vec![del_ev("b")]),
            ],
        )));
        assert!(matches!(skip, Err(StoreError::MigrationOutOfStep { .. })));
        assert_eq!(s.state.current_rev, 10);
        assert_eq!(get(&s, "a", 0)[0].value, b"1");

        let a = s
            .apply_full(Command::ImportRevisions(revs(
                10,
                vec![
                    (11, vec![put_ev(kv("a", "2", 2, 0, 3))]),
                    (12, vec![del_ev("b"), put_ev(kv("d", "1", 12, 0, 1))]),
                    (13, vec![put_ev(kv("b", "2", 13, 0, 1))]),
                ],
            )))
            .unwrap();
        let got: Vec<_> = a
            .events
            .iter()
            .map(|r| (r.revision, r.events.len()))
            .collect();
        assert_eq!(got, vec![(11, 1), (12, 2), (13, 1)]);
        // prev_kv as for a normal put or delete.
        let prev = |r: usize, e: usize| a.events[r].events[e].prev_kv.clone().map(|p| p.value);
        assert_eq!(prev(0, 0), Some(b"1".to_vec()));
        assert_eq!(prev(1, 0), Some(b"1".to_vec()));
        assert_eq!(prev(1, 1), None);
        assert_eq!(state_of(a.output).target_revision, 13);
        let a2 = &get(&s, "a", 0)[0];
        assert_eq!(
            (a2.create_revision, a2.mod_revision, a2.version),
            (2, 11, 3)
        );
        assert!(get(&s, "b", 12).is_empty());
        assert_eq!(get(&s, "b", 13)[0].create_revision, 13);
        // Row ids go on after the copied ones, in revision order.
        let rows = ids(&s);
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn leases_and_the_source_compaction_come_with_revisions() {
        let mut s = following();
        let req = ImportRevisionsRequest {
            lease_grants: vec![ImportLease {
                id: 77,
                granted_ttl: 30,
                remaining_ttl: 20,
            }],
            lease_drops: vec![5],
            compact_to: 11,
            ..revs(
                10,
                vec![
                    (
                        11,
                        vec![put_ev(KeyValue {
                            lease: 77,
                            ..kv("l", "1", 11, 0, 1)
                        })],
                    ),
                    // A lease the target never heard of: recorded as it is.
                    (
                        12,
                        vec![put_ev(KeyValue {
                            lease: 88,
                            ..kv("m", "1", 12, 0, 1)
                        })],
                    ),
                ],
            )
        };
        let too_far = s.apply(Command::ImportRevisions(ImportRevisionsRequest {
            compact_to: 13,
            ..req.clone()
        }));
        assert!(matches!(too_far, Err(StoreError::MigrationInvalid(_))));
        let a = s.apply_full(Command::ImportRevisions(req)).unwrap();
        assert_eq!(a.compacted_to, Some(11));
        assert_eq!((s.state.current_rev, s.state.compact_rev), (12, 11));
        // The migration state names the compaction too, in the answer and
        // in the stored row.
        assert_eq!(state_of(a.output).compact_revision, 11);
        assert_eq!(migration::load(&s.reader()).unwrap().compact_revision, 11);
        assert_eq!(s.read(|r| r.leases()).unwrap(), vec![(77, 30)]);
        assert_eq!(get(&s, "m", 0)[0].lease, 88);
        assert_eq!(s.read(|r| r.lease_keys(77)).unwrap(), vec![b"l".to_vec()]);
        // A compaction that does not move is no compaction.
        let same = s
            .apply_full(Command::ImportRevisions(ImportRevisionsRequest {
                compact_to: 11,
                ..revs(12, vec![])
            }))
            .unwrap();
        assert_eq!(same.compacted_to, None);
    }

    /// The migrator sends `compact_to: 0` when the source did not move; a
    /// source that never compacted reports -1, and so must the target.
    #[test]
    fn a_never_compacted_source_leaves_the_target_uncompacted() {
        let mut s = TestStore::new();
        s.apply(begin(1, -1)).unwrap();
        s.apply(page("", vec![], true)).unwrap();
        let a = s
            .apply_full(Command::ImportRevisions(ImportRevisionsRequest {
                compact_to: 0,
                ..revs(1, vec![(2, vec![put_ev(kv("a", "1", 2, 2, 1))])])
            }))
            .unwrap();
        assert_eq!(a.compacted_to, None);
        assert_eq!((s.state.current_rev, s.state.compact_rev), (2, -1));
    }

    #[test]
    fn client_writes_are_refused_until_cutover() {
        let mut s = TestStore::new();
        s.apply(begin(10, -1)).unwrap();
        let importing = StoreError::MigrationImporting {
            source_cluster_id: SOURCE,
            phase: "COPYING",
        };
        let writes = [
            put("a", "1"),
            Command::DeleteRange(DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            }),
            Command::Txn(TxnRequest {
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(Default::default())),
                }],
                ..Default::default()
            }),
            Command::Compact(CompactionRequest {
                revision: 1,
                ..Default::default()
            }),
            Command::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 10 }),
            Command::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
        ];
        for w in &writes {
            assert_eq!(s.apply(w.clone()).unwrap_err(), importing, "{w:?}");
        }
        assert_eq!(
            importing.to_string(),
            "cairn is importing from etcd cluster cdf818194e3a8c32 (phase COPYING); writes are refused until cutover"
        );
        // A txn that only reads is no write.
        s.apply(Command::Txn(TxnRequest::default())).unwrap();
        // Cutover only once the copy is complete, at the expected revision.
        let early = s.apply(Command::MigrationCutover(CutoverRequest {
            expected_revision: 1,
            unix_ms: 0,
        }));
        assert_eq!(
            early.unwrap_err().to_string(),
            "no import in progress (phase COPYING)"
        );
        s.apply(page("", vec![kv("a", "1", 2, 3, 1)], true))
            .unwrap();
        assert_eq!(
            s.apply(put("a", "2")).unwrap_err(),
            StoreError::MigrationImporting {
                source_cluster_id: SOURCE,
                phase: "FOLLOWING",
            }
        );
        let wrong = s.apply(Command::MigrationCutover(CutoverRequest {
            expected_revision: 11,
            unix_ms: 0,
        }));
        assert!(matches!(wrong, Err(StoreError::MigrationOutOfStep { .. })));
        let st = state_of(
            s.apply(Command::MigrationCutover(CutoverRequest {
                expected_revision: 10,
                unix_ms: 5,
            }))
            .unwrap(),
        );
        assert_eq!((st.phase(), st.phase_since_unix_ms), (Phase::CutOver, 5));
        // Writes go on from the source's numbering.
        match s.apply(put("a", "2")).unwrap() {
            CommandOutput::Put(p) => assert_eq!(p.header.unwrap().revision, 11),
            other => panic!("{other:?}"),
        }
        assert_eq!(get(&s, "a", 0)[0].version, 2);
        for cmd in [
            Command::MigrationAbort(AbortRequest { unix_ms: 0 }),
            Command::ImportRevisions(revs(11, vec![])),
        ] {
            assert_eq!(
                s.apply(cmd).unwrap_err(),
                StoreError::MigrationWrongPhase { phase: "CUT_OVER" }
            );
        }
        // A cut-over store holds data: no second migration into it.
        assert_eq!(
            s.apply(begin(10, -1)).unwrap_err(),
            StoreError::MigrationNotEmpty { revision: 11 }
        );
    }

    #[test]
    fn an_aborted_import_refuses_writes_and_further_imports() {
        let mut s = following();
        let st = state_of(
            s.apply(Command::MigrationAbort(AbortRequest { unix_ms: 9 }))
                .unwrap(),
        );
        assert_eq!(st.phase(), Phase::Aborted);
        let refused = s.apply(put("a", "1")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cairn's import from etcd cluster cdf818194e3a8c32 was aborted; this cluster holds a partial copy and refuses writes"
        );
        assert_eq!(
            s.apply(Command::MigrationAbort(AbortRequest { unix_ms: 9 }))
                .unwrap_err(),
            StoreError::MigrationWrongPhase { phase: "ABORTED" }
        );
        assert_eq!(
            s.apply(begin(10, 10)).unwrap_err(),
            StoreError::MigrationNotEmpty { revision: 10 }
        );
        // Reads are served as usual.
        assert_eq!(get(&s, "a", 0)[0].value, b"1");
    }

    #[test]
    fn the_migration_state_survives_a_reopen() {
        let s = following();
        let conn = schema::open_writer(&s.path).unwrap();
        let st = migration::load(&conn).unwrap();
        assert_eq!(
            (
                st.phase(),
                st.source_cluster_id,
                st.source_version.as_str(),
                st.keys_copied,
                st.copy_resume_after.as_slice(),
                st.source_revision,
                st.source_seen_unix_ms,
            ),
            (Phase::Following, SOURCE, "3.5.1", 3, &b"c"[..], 20, 2000)
        );
        let applied = ApplyState::load(&conn).unwrap();
        assert_eq!(applied.migration.phase(), Phase::Following);
        assert_eq!(applied.migration.source_cluster_id, SOURCE);
        assert_eq!((applied.current_rev, applied.compact_rev), (10, 10));
    }

    /// The source: single-key writes and a txn putting two keys in key
    /// order (etcd does not expose the sub-revisions of a compacted past,
    /// so a copy numbers a revision's keys in key order).
    fn source() -> TestStore {
        let mut s = TestStore::new();
        s.put("a", "1"); // 2
        s.put("b", "1"); // 3
        s.apply(Command::Txn(TxnRequest {
            success: ["c", "d"]
                .iter()
                .map(|k| RequestOp {
                    request: Some(request_op::Request::RequestPut(
                        cairn_proto::etcdserverpb::PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: b"x".to_vec(),
                            ..Default::default()
                        },
                    )),
                })
                .collect(),
            ..Default::default()
        }))
        .unwrap(); // 4
        s.put("a", "2"); // 5
        s.apply(Command::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        }))
        .unwrap(); // 6
        s.put("e", "1"); // 7
        s.apply(Command::Compact(CompactionRequest {
            revision: 6,
            ..Default::default()
        }))
        .unwrap();
        s.put("a", "3"); // 8
        s.apply(Command::DeleteRange(DeleteRangeRequest {
            key: "c".into(),
            ..Default::default()
        }))
        .unwrap(); // 9
        s.put("f", "1"); // 10
        s
    }

    #[test]
    fn hash_kv_of_a_copy_equals_the_sources_from_the_copy_on() {
        let src = source();
        let (start, compact) = (6, 6);
        let base = src
            .read(|r| {
                crate::txn::range(
                    r,
                    &RangeRequest {
                        revision: start,
                        // Every key.
                        range_end: vec![0],
                        ..range_req("\0", "")
                    },
                )
            })
            .unwrap()
            .kvs;
        // a at 5; c and d at 4 (one revision); b deleted.
        assert_eq!(base.len(), 3);
        let mut dst = TestStore::new();
        dst.apply(begin(start, compact)).unwrap();
        dst.apply(page("", base[..1].to_vec(), false)).unwrap();
        let after = String::from_utf8(base[0].key.clone()).unwrap();
        dst.apply(page(&after, base[1..].to_vec(), true)).unwrap();
        let h = src
            .read(|r| events_between(r, start + 1, 10, 1000, usize::MAX))
            .unwrap();
        let mut by_rev: Vec<(i64, Vec<Event>)> = Vec::new();
        for e in h.events {
            let rev = e.kv.as_ref().unwrap().mod_revision;
            match by_rev.last_mut() {
                Some((r, evs)) if *r == rev => evs.push(e),
                _ => by_rev.push((rev, vec![e])),
            }
        }
        // In two calls, as a migrator following the source would.
        let (first, rest) = by_rev.split_at(1);
        dst.apply(Command::ImportRevisions(revs(start, first.to_vec())))
            .unwrap();
        dst.apply(Command::ImportRevisions(revs(7, rest.to_vec())))
            .unwrap();
        for rev in [6, 7, 8, 9, 10] {
            let want = src.read(|r| hash_kv(r, rev)).unwrap();
            let got = dst.read(|r| hash_kv(r, rev)).unwrap();
            assert_eq!(got, want, "hash at revision {rev}");
        }
    }
}
