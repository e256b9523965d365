//! Comparable forms of watch events and responses, and one watcher's history.
//!
//! * [`Ev`], [`K`], [`NResp`]: events and responses with every field that two
//!   servers must agree on (cluster_id, member_id and raft_term are left out;
//!   they differ between any two clusters).
//! * [`Flat`]: one watcher's flattened history on a stream: Created, events,
//!   Canceled, with fragments joined and per-response invariants checked.

use std::collections::BTreeMap;
use std::fmt;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb;

use crate::dump::Escaped;

/// A key-value with every field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct K {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create: i64,
    pub modr: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<&mvccpb::KeyValue> for K {
    fn from(kv: &mvccpb::KeyValue) -> K {
        K {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create: kv.create_revision,
            modr: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

impl K {
    /// The same key-value as the `etcd-client` crate returns it.
    pub fn from_client(kv: &etcd_client::KeyValue) -> K {
        K {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create: kv.create_revision(),
            modr: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

impl fmt::Debug for K {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: &[u8] = if self.value.len() > 48 {
            &self.value[..48]
        } else {
            &self.value
        };
        write!(
            f,
            "{{{:?}={:?}{} c{} m{} v{} l{}}}",
            Escaped(&self.key),
            Escaped(v),
            if self.value.len() > 48 {
                format!("..({} bytes)", self.value.len())
            } else {
                String::new()
            },
            self.create,
            self.modr,
            self.version,
            self.lease
        )
    }
}

/// An event with every field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ev {
    pub put: bool,
    pub kv: K,
    pub prev: Option<K>,
}

impl Ev {
    pub fn rev(&self) -> i64 {
        self.kv.modr
    }
}

impl From<&mvccpb::Event> for Ev {
    fn from(e: &mvccpb::Event) -> Ev {
        Ev {
            put: e.r#type == mvccpb::event::EventType::Put as i32,
            kv: e.kv.as_ref().map(K::from).unwrap_or_else(|| K {
                key: b"<no kv>".to_vec(),
                value: Vec::new(),
                create: -1,
                modr: -1,
                version: -1,
                lease: -1,
            }),
            prev: e.prev_kv.as_ref().map(K::from),
        }
    }
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} {:?}",
            if self.put { "PUT" } else { "DEL" },
            self.kv.modr,
            self.kv
        )?;
        if let Some(p) = &self.prev {
            write!(f, " prev={p:?}")?;
        }
        Ok(())
    }
}

/// A watch response without cluster_id, member_id and raft_term.
#[derive(Clone, PartialEq, Eq)]
pub struct NResp {
    pub revision: i64,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
    pub events: Vec<Ev>,
}

impl From<&pb::WatchResponse> for NResp {
    fn from(r: &pb::WatchResponse) -> NResp {
        NResp {
            revision: r.header.as_ref().map(|h| h.revision).unwrap_or(-1),
            watch_id: r.watch_id,
            created: r.created,
            canceled: r.canceled,
            compact_revision: r.compact_revision,
            cancel_reason: r.cancel_reason.clone(),
            fragment: r.fragment,
            events: r.events.iter().map(Ev::from).collect(),
        }
    }
}

impl fmt::Debug for NResp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resp{{id {} hdr-rev {}", self.watch_id, self.revision)?;
        if self.created {
            write!(f, " CREATED")?;
        }
        if self.canceled {
            write!(f, " CANCELED")?;
        }
        if self.compact_revision != 0 {
            write!(f, " compact_revision {}", self.compact_revision)?;
        }
        if !self.cancel_reason.is_empty() {
            write!(f, " reason {:?}", self.cancel_reason)?;
        }
        if self.fragment {
            write!(f, " FRAGMENT")?;
        }
        if !self.events.is_empty() {
            write!(f, " {} events {:?}", self.events.len(), self.events)?;
        }
        write!(f, "}}")
    }
}

impl NResp {
    /// A progress response: no events, not created, not canceled.
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled
    }
}

/// What one watcher saw, flattened (independent of how etcd or Cairn
/// grouped events into responses, which is timing-dependent in etcd too).
#[derive(Clone, PartialEq, Eq)]
pub enum Item {
    /// A Created response (header revision; canceled and reason for a
    /// refused creation).
    Created {
        revision: i64,
        canceled: bool,
        reason: String,
    },
    Event(Ev),
    /// A cancel (header revision left out: see the compacted-watch test).
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Created {
                revision,
                canceled,
                reason,
            } => write!(
                f,
                "Created(hdr {revision}, canceled {canceled}, {reason:?})"
            ),
            Item::Event(e) => write!(f, "{e:?}"),
            Item::Canceled {
                compact_revision,
                reason,
            } => write!(f, "Canceled(compact {compact_revision}, {reason:?})"),
        }
    }
}

/// Per watch id: the flattened items, progress responses (kept apart), the
/// highest event revision, and response-level invariant violations.
#[derive(Default)]
pub struct Flat {
    pub items: BTreeMap<i64, Vec<Item>>,
    /// (watch_id, header revision) of progress responses, in arrival order.
    pub progress: Vec<(i64, i64)>,
    pub last_event_rev: BTreeMap<i64, i64>,
    /// Invariant violations found while feeding responses.
    pub violations: Vec<String>,
    /// An unfinished fragmented response: (watch_id, events so far).
    open_fragment: Option<(i64, NResp)>,
    pub responses: usize,
    /// Whole responses whose events span more than one revision.
    pub multi_revision: usize,
    /// Watch ids of Created responses, in arrival order (-1 for refusals).
    pub created_order: Vec<i64>,
}

impl Flat {
    /// Feeds one response. Fragments are joined; the invariants checked on
    /// every whole response are: events in revision order, a header
    /// revision at or above every event revision, per watcher revisions
    /// never go back, and
    /// fragments of one response are contiguous on the stream.
    pub fn feed(&mut self, r: &pb::WatchResponse) {
        self.responses += 1;
        let n = NResp::from(r);
        let whole = match self.open_fragment.take() {
            Some((id, mut acc)) => {
                if n.watch_id != id {
                    self.violations.push(format!(
                        "fragmented response of watcher {id} interleaved with {n:?}"
                    ));
                }
                acc.events.extend(n.events.iter().cloned());
                acc.fragment = n.fragment;
                if n.fragment {
                    self.open_fragment = Some((id, acc));
                    return;
                }
                acc
            }
            None if n.fragment => {
                self.open_fragment = Some((n.watch_id, n));
                return;
            }
            None => n,
        };
        self.feed_whole(whole);
    }

    fn feed_whole(&mut self, n: NResp) {
        let id = n.watch_id;
        if n.created {
            self.created_order.push(id);
            self.items.entry(id).or_default().push(Item::Created {
                revision: n.revision,
                canceled: n.canceled,
                reason: n.cancel_reason.clone(),
            });
            return;
        }
        if n.is_progress() {
            self.progress.push((id, n.revision));
            return;
        }
        if n.events.windows(2).any(|w| w[0].rev() != w[1].rev()) {
            self.multi_revision += 1;
        }
        let mut prev_rev = 0;
        for e in &n.events {
            if e.rev() < prev_rev {
                self.violations
                    .push(format!("events out of revision order in {n:?}"));
            }
            prev_rev = e.rev();
            if e.rev() > n.revision {
                self.violations.push(format!(
                    "event at revision {} above header revision {} in {n:?}",
                    e.rev(),
                    n.revision
                ));
            }
            let last = self.last_event_rev.entry(id).or_insert(0);
            if e.rev() < *last {
                self.violations.push(format!(
                    "watcher {id}: event at revision {} after one at {}",
                    e.rev(),
                    *last
                ));
            }
            *last = (*last).max(e.rev());
            self.items
                .entry(id)
                .or_default()
                .push(Item::Event(e.clone()));
        }
        if n.canceled {
            self.items.entry(id).or_default().push(Item::Canceled {
                compact_revision: n.compact_revision,
                reason: n.cancel_reason.clone(),
            });
        }
    }

    pub fn items(&self, id: i64) -> &[Item] {
        self.items.get(&id).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn events(&self, id: i64) -> Vec<Ev> {
        self.items(id)
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn canceled(&self, id: i64) -> bool {
        self.items(id)
            .iter()
            .any(|i| matches!(i, Item::Canceled { .. }))
    }
}

/// Describes the first difference between two item lists (or None).
pub fn first_difference<T: PartialEq + fmt::Debug>(a: &[T], b: &[T]) -> Option<String> {
    let n = a.len().max(b.len());
    for i in 0..n {
        if a.get(i) != b.get(i) {
            let lo = i.saturating_sub(2);
            let ctx = |v: &[T]| -> String {
                v[lo.min(v.len())..(i + 3).min(v.len())]
                    .iter()
                    .enumerate()
                    .map(|(j, x)| format!("\n      [{}] {x:?}", lo + j))
                    .collect()
            };
            return Some(format!(
                "first difference at index {i} (lengths {} vs {}):\n    etcd:{}\n    cairn:{}",
                a.len(),
                b.len(),
                ctx(a),
                ctx(b)
            ));
        }
    }
    None
}
