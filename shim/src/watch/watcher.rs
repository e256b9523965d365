//! One watcher: what it covers, how its events are filtered and shaped.

use cairn_proto::cairnpb::wire::WatchResponse;
use cairn_proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use cairn_proto::mvccpb::{event::EventType, Event};
use cairn_raft_backend::{KeyRange, PrevKvWanted};
use prost::bytes::Bytes;
use prost::Message;

use super::shared_events::{is_creation, SharedEvents};

pub type StreamId = u64;

#[derive(Debug)]
pub struct Watcher {
    pub id: i64,
    pub stream: StreamId,
    pub range: KeyRange,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
    /// The lowest revision this watcher has not been sent yet.
    pub next_rev: i64,
    /// Synced watchers are fed live from the apply stream; unsynced ones
    /// catch up from history first.
    pub synced: bool,
    /// Events were sent since the last progress tick (then no notify is due).
    pub sent_since_tick: bool,
    /// Held while the watcher lives, so that the store loads previous kvs.
    _prev_kv_wanted: Option<PrevKvWanted>,
}

impl Watcher {
    pub fn new(
        id: i64,
        stream: StreamId,
        req: &WatchCreateRequest,
        range: KeyRange,
        next_rev: i64,
        prev_kv_wanted: Option<PrevKvWanted>,
    ) -> Self {
        Watcher {
            id,
            stream,
            range,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            synced: false,
            sent_since_tick: false,
            _prev_kv_wanted: prev_kv_wanted,
        }
    }

    fn wants(&self, e: &Event, max_rev: i64) -> bool {
        let Some(kv) = &e.kv else {
            return false;
        };
        if kv.mod_revision < self.next_rev
            || kv.mod_revision > max_rev
            || !self.range.contains(&kv.key)
        {
            return false;
        }
        let is_put = e.r#type == EventType::Put as i32;
        !(is_put && self.no_put || !is_put && self.no_delete)
    }

    /// Whether `events`, from a batch applied while no watcher wanted
    /// previous kvs, hold one this watcher needs: an update of a key it
    /// covers, sent to a watcher that asked for prev_kv.
    pub fn misses_prev_kv(&self, events: &[Event]) -> bool {
        self.prev_kv
            && events.iter().any(|e| {
                self.wants(e, i64::MAX)
                    && e.r#type == EventType::Put as i32
                    && e.prev_kv.is_none()
                    && !is_creation(e)
            })
    }

    /// The events of `shared` at or below `max_rev` this watcher should
    /// see, encoded as it asked for them.
    pub fn select(&self, shared: &SharedEvents, max_rev: i64) -> Vec<Bytes> {
        shared
            .events()
            .iter()
            .enumerate()
            .filter(|(_, e)| self.wants(e, max_rev))
            .map(|(i, _)| shared.encoded(i, self.prev_kv))
            .collect()
    }
}

/// Splits a response whose size reaches `max_bytes` into fragments, each
/// flagged `fragment` but the last, as etcd does for watchers that ask for it.
pub fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut out = Vec::new();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp.clone()
    };
    let mut cur = template.clone();
    for ev in resp.events {
        cur.events.push(ev);
        if cur.events.len() > 1 && cur.encoded_len() >= max_bytes {
            let overflow = cur.events.pop();
            out.push(std::mem::replace(&mut cur, template.clone()));
            cur.events.extend(overflow);
        }
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn put(key: &str, rev: i64, size: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                version: 2,
                value: vec![b'x'; size],
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    #[test]
    fn filters_and_prev_kv() {
        let req = WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        };
        let w = Watcher::new(0, 0, &req, KeyRange::new(b"a", b"c"), 5, None);
        let del = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: "b".into(),
                mod_revision: 6,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let events = [put("a", 4, 1), put("b", 5, 1), put("c", 6, 1), del];
        let shared = SharedEvents::new(&events);
        let got: Vec<Event> = w
            .select(&shared, i64::MAX)
            .into_iter()
            .map(|b| Event::decode(b).unwrap())
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kv.as_ref().unwrap().key, b"b");
        assert!(got[0].prev_kv.is_none(), "prev_kv only when asked");
        assert!(w.select(&shared, 4).is_empty(), "nothing above max_rev");
    }

    #[test]
    fn an_update_without_its_prev_kv_is_missed_only_by_prev_kv_watchers() {
        let update = Event {
            prev_kv: None,
            ..put("b", 6, 1)
        };
        let mut creation = update.clone();
        if let Some(kv) = creation.kv.as_mut() {
            kv.create_revision = kv.mod_revision;
        }
        let with_prev = WatchCreateRequest {
            prev_kv: true,
            ..Default::default()
        };
        let w = Watcher::new(0, 0, &with_prev, KeyRange::new(b"a", b"c"), 5, None);
        assert!(w.misses_prev_kv(std::slice::from_ref(&update)));
        assert!(!w.misses_prev_kv(&[creation]), "a creation has no prev_kv");
        assert!(!w.misses_prev_kv(&[put("b", 6, 1)]), "it has its prev_kv");
        let outside = Event {
            prev_kv: None,
            ..put("c", 6, 1)
        };
        assert!(!w.misses_prev_kv(&[outside]), "not a key it covers");
        let before = Event {
            prev_kv: None,
            ..put("b", 4, 1)
        };
        assert!(!w.misses_prev_kv(&[before]), "below its next revision");
        let plain = Watcher::new(
            1,
            0,
            &Default::default(),
            KeyRange::new(b"a", b"c"),
            5,
            None,
        );
        assert!(!plain.misses_prev_kv(&[update]));
    }

    #[test]
    fn fragments_split_at_the_limit_and_flag_all_but_last() {
        let resp = WatchResponse {
            watch_id: 7,
            events: (0..10)
                .map(|i| put(&format!("k{i}"), 2, 100).encode_to_vec().into())
                .collect(),
            ..Default::default()
        };
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        let joined: Vec<_> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(joined, resp.events);
        assert_eq!(fragments(resp, 1 << 20).len(), 1);
    }
}
