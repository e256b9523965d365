//! A model of a single-writer keyspace, for gap, duplicate and prev_kv checks.

use std::collections::BTreeMap;

use crate::events::{Ev, K};
use crate::watch::Create;

/// The expected event of every acknowledged single-key write, built from
/// the writes' own responses: revision (header), and the key's previous
/// state from the model.
#[derive(Default)]
pub struct Model {
    pub state: BTreeMap<Vec<u8>, K>,
    /// revision -> the one event of that revision.
    pub events: BTreeMap<i64, Ev>,
}

impl Model {
    /// Records an acknowledged put of `key`=`value` at `rev` (lease 0).
    pub fn put(&mut self, key: &[u8], value: &[u8], rev: i64, lease: i64) {
        let prev = self.state.get(key).cloned();
        let kv = K {
            key: key.to_vec(),
            value: value.to_vec(),
            create: prev.as_ref().map(|p| p.create).unwrap_or(rev),
            modr: rev,
            version: prev.as_ref().map(|p| p.version).unwrap_or(0) + 1,
            lease,
        };
        self.state.insert(key.to_vec(), kv.clone());
        let old = self.events.insert(
            rev,
            Ev {
                put: true,
                kv,
                prev,
            },
        );
        assert!(old.is_none(), "two writes acknowledged at revision {rev}");
    }

    /// Records an acknowledged delete of an existing `key` at `rev`.
    pub fn delete(&mut self, key: &[u8], rev: i64) {
        let prev = self.state.remove(key);
        let old = self.events.insert(
            rev,
            Ev {
                put: false,
                kv: K {
                    key: key.to_vec(),
                    value: Vec::new(),
                    create: 0,
                    modr: rev,
                    version: 0,
                    lease: 0,
                },
                prev,
            },
        );
        assert!(old.is_none(), "two writes acknowledged at revision {rev}");
    }

    /// The events a watcher on `w` from `start` should see, shaped as the
    /// server sends them (prev_kv only when asked and not for creations).
    pub fn expected(&self, w: &Create, start: i64) -> Vec<Ev> {
        self.events
            .range(start..)
            .map(|(_, e)| e)
            .filter(|e| w.contains(&e.kv.key) && w.passes(e.put))
            .map(|e| {
                let mut e = e.clone();
                let creation = e.put && e.kv.create == e.kv.modr;
                if !w.0.prev_kv || creation {
                    e.prev = None;
                }
                e
            })
            .collect()
    }
}
