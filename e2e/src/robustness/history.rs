//! The reference history: every event of a campaign, in revision order, as
//! one watcher of the whole keyspace from revision 1 received them.
//!
//! The other checks judge the run against it, so it is first checked on its
//! own ([`History::validate`]): no revision missing from the first to the
//! last, and every prev_kv, create_revision and version what the events
//! before it imply. The final state it implies is then compared with every
//! member's (the convergence check), which ties it to what the store holds.

use std::collections::BTreeMap;

use crate::events::{Ev, K};

/// The events of revisions 2..=last, in the order they were sent.
#[derive(Clone, Debug, Default)]
pub struct History {
    events: Vec<Ev>,
}

/// A key-value store's contents: key → its key-value.
pub type State = BTreeMap<Vec<u8>, K>;

impl History {
    pub fn new(events: Vec<Ev>) -> History {
        History { events }
    }

    pub fn events(&self) -> &[Ev] {
        &self.events
    }

    /// The revision of the last event (1, the empty store's, if none).
    pub fn last_rev(&self) -> i64 {
        self.events.last().map_or(1, Ev::rev)
    }

    /// What is wrong with the history on its own: a revision going back or
    /// missing (every revision after 1 is some write's, and every write makes
    /// at least one event), or an event that does not follow from the ones
    /// before it (prev_kv, create_revision, version, a delete of an absent
    /// key).
    pub fn validate(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut state = State::new();
        let mut last = 1;
        for (i, e) in self.events.iter().enumerate() {
            let rev = e.rev();
            if rev < last {
                bad.push(format!("event #{i} {e:?}: revision {rev} after {last}"));
            } else if rev > last + 1 {
                bad.push(format!(
                    "event #{i} {e:?}: revisions {}..={} have no event",
                    last + 1,
                    rev - 1
                ));
            }
            last = last.max(rev);
            if let Err(why) = step(&mut state, e) {
                bad.push(format!("event #{i} {e:?}: {why}"));
            }
            // One anomaly often implies hundreds after it.
            if bad.len() >= 10 {
                bad.push("(stopped after 10)".into());
                break;
            }
        }
        bad
    }

    /// The store's contents after every event.
    pub fn final_state(&self) -> State {
        self.states_at(&[i64::MAX])
            .pop()
            .map_or_else(State::new, |s| s.1)
    }

    /// The store's contents at each revision of `revs` (any order), as
    /// (revision, state) in ascending revision order, in one sweep.
    pub fn states_at(&self, revs: &[i64]) -> Vec<(i64, State)> {
        let mut revs = revs.to_vec();
        revs.sort_unstable();
        revs.dedup();
        let mut out = Vec::with_capacity(revs.len());
        let mut state = State::new();
        let mut next = 0;
        for rev in revs {
            while let Some(e) = self.events.get(next).filter(|e| e.rev() <= rev) {
                // Validation reports inconsistent events; here they apply as sent.
                let _ = step(&mut state, e);
                next += 1;
            }
            out.push((rev, state.clone()));
        }
        out
    }

    /// The key's state just before revision `rev`, from the events before it.
    pub fn before(&self, key: &[u8], rev: i64) -> Option<K> {
        let mut cur = None;
        for e in self.events.iter().take_while(|e| e.rev() < rev) {
            if e.kv.key == key {
                cur = e.put.then(|| e.kv.clone());
            }
        }
        cur
    }
}

/// Applies one event, or says how it contradicts the state before it.
fn step(state: &mut State, e: &Ev) -> Result<(), String> {
    let prev = state.get(&e.kv.key).cloned();
    let result = if e.put {
        let (create, version) = prev
            .as_ref()
            .map_or((e.rev(), 1), |p| (p.create, p.version + 1));
        if e.kv.create != create || e.kv.version != version {
            Err(format!(
                "create_revision {} version {}, expected {create} and {version} after {prev:?}",
                e.kv.create, e.kv.version
            ))
        } else if e.prev != prev {
            Err(format!("prev_kv {:?}, expected {prev:?}", e.prev))
        } else {
            Ok(())
        }
    } else if prev.is_none() {
        Err("a delete of an absent key".into())
    } else if e.prev != prev {
        Err(format!("prev_kv {:?}, expected {prev:?}", e.prev))
    } else {
        Ok(())
    };
    if e.put {
        state.insert(e.kv.key.clone(), e.kv.clone());
    } else {
        state.remove(&e.kv.key);
    }
    result
}

/// Test and self-check helpers: events as a prev_kv watcher receives them.
pub mod build {
    use super::*;

    /// Builds a valid history from writes, one revision each from 2:
    /// `(key, Some(value))` puts, `(key, None)` deletes (of a present key).
    pub fn history(writes: &[(&str, Option<&str>)]) -> History {
        let mut state = State::new();
        let mut events = Vec::new();
        for (i, (key, value)) in writes.iter().enumerate() {
            let rev = i as i64 + 2;
            let key = key.as_bytes().to_vec();
            let prev = state.get(&key).cloned();
            let ev = match value {
                Some(v) => Ev {
                    put: true,
                    kv: K {
                        key: key.clone(),
                        value: v.as_bytes().to_vec(),
                        create: prev.as_ref().map_or(rev, |p| p.create),
                        modr: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: 0,
                    },
                    prev,
                },
                None => Ev {
                    put: false,
                    kv: K {
                        key: key.clone(),
                        value: Vec::new(),
                        create: 0,
                        modr: rev,
                        version: 0,
                        lease: 0,
                    },
                    prev,
                },
            };
            if ev.put {
                state.insert(key, ev.kv.clone());
            } else {
                state.remove(&key);
            }
            events.push(ev);
        }
        History::new(events)
    }
}

#[cfg(test)]
mod tests {
    use super::build::history;

    #[test]
    fn a_consistent_history_is_valid() {
        let h = history(&[
            ("a", Some("1")),
            ("b", Some("2")),
            ("a", Some("3")),
            ("a", None),
        ]);
        assert_eq!(h.validate(), Vec::<String>::new());
        assert_eq!(h.last_rev(), 5);
        let end = h.final_state();
        assert_eq!(end.keys().collect::<Vec<_>>(), vec![b"b"]);
        let at = h.states_at(&[4, 2]);
        assert_eq!(at[0].0, 2);
        assert_eq!(at[1].1[&b"a".to_vec()].value, b"3");
        assert_eq!(h.before(b"a", 4).map(|k| k.modr), Some(2));
        assert_eq!(h.before(b"a", 6), None);
    }

    #[test]
    fn a_missing_revision_is_reported() {
        let mut h = history(&[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]);
        h.events.remove(1);
        let bad = h.validate();
        assert!(bad[0].contains("have no event"), "{bad:?}");
    }

    #[test]
    fn a_wrong_prev_kv_is_reported() {
        let mut h = history(&[("a", Some("1")), ("a", Some("2"))]);
        if let Some(p) = h.events[1].prev.as_mut() {
            p.value = b"other".to_vec();
        }
        let bad = h.validate();
        assert!(bad[0].contains("prev_kv"), "{bad:?}");
    }

    #[test]
    fn a_wrong_version_is_reported() {
        let mut h = history(&[("a", Some("1")), ("a", Some("2"))]);
        h.events[1].kv.version = 5;
        assert!(h.validate()[0].contains("version 5"));
    }
}
