//! Events encoded once for every watcher that receives them.
//!
//! One write to a prefix that 10,000 watchers cover is 10,000 copies of the
//! same event. Cloning and encoding each copy was most of the fan-out's CPU and
//! the copies queued per stream were most of its memory. A response now holds
//! reference-counted bytes of the encoded `mvccpb.Event` (see
//! `cairnpb/watch_wire.proto`), so the event is encoded at most twice (with
//! and without its previous kv) whatever the number of watchers.

use std::cell::OnceCell;

use cairn_proto::mvccpb::{event::EventType, Event};
use prost::bytes::Bytes;
use prost::Message;

pub struct SharedEvents<'a> {
    events: &'a [Event],
    with_prev: Vec<OnceCell<Bytes>>,
    without_prev: Vec<OnceCell<Bytes>>,
}

impl<'a> SharedEvents<'a> {
    pub fn new(events: &'a [Event]) -> Self {
        SharedEvents {
            events,
            with_prev: events.iter().map(|_| OnceCell::new()).collect(),
            without_prev: events.iter().map(|_| OnceCell::new()).collect(),
        }
    }

    pub fn events(&self) -> &'a [Event] {
        self.events
    }

    /// Event `i` as a watcher that did (`prev_kv`) or did not ask for previous
    /// kvs receives it.
    pub fn encoded(&self, i: usize, prev_kv: bool) -> Bytes {
        let e = &self.events[i];
        if prev_kv && !is_creation(e) || e.prev_kv.is_none() {
            self.with_prev[i]
                .get_or_init(|| e.encode_to_vec().into())
                .clone()
        } else {
            self.without_prev[i]
                .get_or_init(|| {
                    let bare = Event {
                        r#type: e.r#type,
                        kv: e.kv.clone(),
                        prev_kv: None,
                    };
                    bare.encode_to_vec().into()
                })
                .clone()
        }
    }
}

/// A put that created its key. etcd sends no prev_kv with one, even where the
/// key existed before a delete.
pub fn is_creation(e: &Event) -> bool {
    e.r#type == EventType::Put as i32
        && e.kv
            .as_ref()
            .is_some_and(|kv| kv.create_revision == kv.mod_revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn kv(key: &str, create: i64, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            create_revision: create,
            mod_revision: rev,
            version: 1,
            value: b"v".to_vec(),
            lease: 0,
        }
    }

    fn decode(b: Bytes) -> Event {
        Event::decode(b).unwrap()
    }

    #[test]
    fn encodes_each_shape_once_and_drops_prev_kv_when_not_wanted() {
        let update = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv("a", 2, 5)),
            prev_kv: Some(kv("a", 2, 4)),
        };
        let creation = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv("b", 5, 5)),
            // A creation after a delete: the store links the tombstone.
            prev_kv: Some(kv("b", 3, 4)),
        };
        let delete = Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv("c", 0, 5)),
            prev_kv: Some(kv("c", 2, 3)),
        };
        let events = [update.clone(), creation.clone(), delete.clone()];
        let shared = SharedEvents::new(&events);

        assert_eq!(decode(shared.encoded(0, true)), update);
        let bare = decode(shared.encoded(0, false));
        assert_eq!(bare.kv, update.kv);
        assert!(bare.prev_kv.is_none());
        // The same bytes, not another encoding, go to the next watcher.
        assert_eq!(
            shared.encoded(0, true).as_ptr(),
            shared.encoded(0, true).as_ptr()
        );

        let created = decode(shared.encoded(1, true));
        assert!(created.prev_kv.is_none(), "no prev_kv on a creation");
        assert_eq!(created.kv, creation.kv);

        assert_eq!(decode(shared.encoded(2, true)), delete);
        assert_eq!(
            decode(shared.encoded(2, false)).r#type,
            EventType::Delete as i32
        );
    }
}
