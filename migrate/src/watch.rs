//! Watching the source: one Watch stream from a revision, its events
//! grouped into whole revisions.
//!
//! etcd sends the events of one revision (a Txn's several puts and deletes)
//! in one response, in their sub-revision order, unless the watch asked for
//! fragments (the migrator does not); a revision that seems to continue
//! across responses is reported as an inconsistency, never patched over.

use std::time::Duration;

use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use cairn_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::connect::{MAX_DECODE, MAX_ENCODE};
use crate::error::{Error, Result};
use crate::source::Source;

/// One source revision: its events in their sub-revision order.
#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    /// The revision.
    pub revision: i64,
    /// Its events.
    pub events: Vec<Event>,
}

impl Revision {
    /// Encoded size of the events (what it adds to an import call).
    pub fn encoded_len(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.encoded_len() + 4)
            .sum::<usize>()
            + 12
    }
}

/// What one watch response brought.
#[derive(Debug)]
pub enum WatchItem {
    /// Whole revisions, ascending.
    Revisions(Vec<Revision>),
    /// No events; the source's revision moved (progress notification or request).
    Progress,
    /// etcd canceled the watch: it compacted to this revision, past the start.
    Compacted(i64),
}

/// Groups one response's events into whole revisions by `kv.mod_revision`,
/// in arrival order. `last` is the newest revision already handed out: a
/// response must start above it (a revision is never split across responses).
pub fn group_events(events: Vec<Event>, last: i64) -> Result<Vec<Revision>, String> {
    let mut out: Vec<Revision> = Vec::new();
    for ev in events {
        let rev = ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default();
        if rev <= 0 {
            return Err("the source sent a watch event without a revision".into());
        }
        match out.last_mut() {
            Some(cur) if cur.revision == rev => cur.events.push(ev),
            Some(cur) if rev < cur.revision => {
                return Err(format!(
                    "the source's watch went back from revision {} to {rev}",
                    cur.revision
                ))
            }
            _ => {
                if rev <= last {
                    return Err(format!(
                        "the source's watch sent revision {rev} after revision {last} was complete \
                         (a revision split across responses, or a repeat)"
                    ));
                }
                out.push(Revision {
                    revision: rev,
                    events: vec![ev],
                });
            }
        }
    }
    Ok(out)
}

/// A Watch stream on the source.
pub struct SourceWatch {
    requests: mpsc::Sender<WatchRequest>,
    stream: Streaming<WatchResponse>,
    last: i64,
    /// The newest source revision any response header named.
    pub source_revision: i64,
}

impl SourceWatch {
    /// Opens a watch on `[key, range_end)` from `start_revision` (all keys:
    /// key `\0`, range_end `\0`) and waits until etcd confirms it; again
    /// while that fails for a passing reason (an expired auth token too).
    pub async fn open(
        src: &Source,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
        progress_notify: bool,
    ) -> Result<SourceWatch> {
        src.retry("opening a watch on the source", || {
            Self::open_once(
                src,
                key.clone(),
                range_end.clone(),
                start_revision,
                progress_notify,
            )
        })
        .await
    }

    async fn open_once(
        src: &Source,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
        progress_notify: bool,
    ) -> Result<SourceWatch> {
        let (tx, rx) = mpsc::channel(8);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                start_revision,
                progress_notify,
                ..Default::default()
            })),
        };
        tx.send(create)
            .await
            .map_err(|_| Error::Inconsistent("watch request channel closed".into()))?;
        let mut client = WatchClient::new(src.conn.svc.clone())
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_ENCODE);
        let opened = tokio::time::timeout(
            Duration::from_secs(30),
            client.watch(ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| Error::Timeout("opening a watch on the source".into()))?
        .map_err(|s| src.conn.err("Watch", s))?;
        let mut stream = opened.into_inner();
        // The first response confirms the watch.
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .map_err(|_| Error::Timeout("the source did not confirm a watch".into()))?
            .map_err(|s| src.conn.err("Watch", s))?
            .ok_or_else(|| Error::Call {
                side: crate::connect::Side::Source,
                call: "Watch",
                code: tonic::Code::Unavailable,
                message: "the source closed the watch before confirming it".into(),
            })?;
        let mut w = SourceWatch {
            requests: tx,
            stream,
            last: start_revision - 1,
            source_revision: 0,
        };
        w.note_header(&first);
        if first.canceled {
            if first.compact_revision > 0 {
                // Kept for `next`: report it as the first item.
                return Err(Error::Compacted {
                    needed: start_revision,
                    compact_revision: first.compact_revision,
                });
            }
            return Err(Error::Call {
                side: crate::connect::Side::Source,
                call: "Watch",
                code: tonic::Code::Unknown,
                message: format!("the source canceled the watch: {}", first.cancel_reason),
            });
        }
        if !first.created {
            return Err(Error::Inconsistent(
                "the source's first watch response did not confirm the watch".into(),
            ));
        }
        Ok(w)
    }

    fn note_header(&mut self, resp: &WatchResponse) {
        if let Some(h) = &resp.header {
            self.source_revision = self.source_revision.max(h.revision);
        }
    }

    /// Asks the source for a progress notification (its current revision).
    pub fn request_progress(&self) {
        let req = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        };
        let _ = self.requests.try_send(req);
    }

    /// The next response's content.
    pub async fn next(&mut self) -> Result<WatchItem> {
        let resp = self
            .stream
            .message()
            .await
            .map_err(|s| {
                // An established stream that breaks (the member restarted, a
                // connection reset: "h2 protocol error: error reading a body
                // from connection") is worth watching again.
                let s = if s.code() == tonic::Code::Unknown {
                    tonic::Status::unavailable(s.message().to_string())
                } else {
                    s
                };
                Error::call(crate::connect::Side::Source, "Watch", s)
            })?
            .ok_or_else(|| Error::Call {
                side: crate::connect::Side::Source,
                call: "Watch",
                code: tonic::Code::Unavailable,
                message: "the source closed the watch".into(),
            })?;
        self.note_header(&resp);
        if resp.compact_revision > 0 {
            return Ok(WatchItem::Compacted(resp.compact_revision));
        }
        if resp.canceled {
            // Not for compaction (a leader change, an overloaded member): watching again may do.
            return Err(Error::Call {
                side: crate::connect::Side::Source,
                call: "Watch",
                code: tonic::Code::Unavailable,
                message: format!("the source canceled the watch: {}", resp.cancel_reason),
            });
        }
        if resp.fragment {
            return Err(Error::Inconsistent(
                "the source sent a watch fragment the migrator did not ask for".into(),
            ));
        }
        if resp.events.is_empty() {
            return Ok(WatchItem::Progress);
        }
        let revs = group_events(resp.events, self.last).map_err(Error::Inconsistent)?;
        if let Some(r) = revs.last() {
            self.last = r.revision;
        }
        Ok(WatchItem::Revisions(revs))
    }

    /// Waits for etcd to cancel this watch for compaction: Some(compact
    /// revision), or None if the stream ends without saying so.
    pub async fn wait_compacted(&mut self) -> Result<Option<i64>> {
        for _ in 0..10_000 {
            match self.next().await {
                Ok(WatchItem::Compacted(c)) => return Ok(Some(c)),
                Ok(_) => continue,
                Err(Error::Compacted {
                    compact_revision, ..
                }) => return Ok(Some(compact_revision)),
                Err(Error::Call {
                    code: tonic::Code::Unavailable,
                    ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::event::EventType;
    use cairn_proto::mvccpb::KeyValue;

    fn ev(key: &str, rev: i64, put: bool) -> Event {
        Event {
            r#type: if put {
                EventType::Put
            } else {
                EventType::Delete
            } as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn events_group_by_revision_in_order() {
        let events = vec![
            ev("a", 5, true),
            ev("c", 6, true),
            ev("b", 6, false),
            ev("a", 6, true),
            ev("z", 8, true),
        ];
        let revs = group_events(events, 4).unwrap();
        assert_eq!(revs.len(), 3);
        assert_eq!(revs[0].revision, 5);
        assert_eq!(revs[1].revision, 6);
        let keys: Vec<_> = revs[1]
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(keys, vec![b"c".to_vec(), b"b".to_vec(), b"a".to_vec()]);
        assert_eq!(revs[2].revision, 8);
    }

    #[test]
    fn a_revision_split_across_responses_is_refused() {
        let e = group_events(vec![ev("a", 6, true)], 6).unwrap_err();
        assert!(e.contains("split"), "{e}");
    }

    #[test]
    fn going_back_is_refused() {
        assert!(group_events(vec![ev("a", 6, true), ev("b", 5, true)], 0).is_err());
        assert!(group_events(vec![ev("a", 0, true)], 0).is_err());
    }

    #[test]
    fn empty_is_nothing() {
        assert!(group_events(Vec::new(), 3).unwrap().is_empty());
    }
}
