//! The etcd v3 API exactly as etcd 3.6 puts it on the wire: same package names,
//! field numbers and method paths, so unmodified etcd clients talk to Cairn.
//!
//! The `.proto` files under `proto/` keep etcd's definitions with the gogoproto,
//! gateway and version annotations removed; those change Go code generation only,
//! never the bytes on the wire.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Cairn's own member-to-member protocol (Raft, forwarding, discovery).
pub mod cairnpb {
    pub mod peer {
        pub mod v1 {
            tonic::include_proto!("cairnpb.peer.v1");

            /// The peer protocol version this build speaks; sent as `cairn-peer-version`.
            pub const PROTOCOL_VERSION: u32 = 1;
        }
    }

    /// Cairn's migration service on the client port (live import from etcd).
    pub mod migrate {
        pub mod v1 {
            tonic::include_proto!("cairnpb.migrate.v1");
        }
    }

    /// Server-side encodings of etcd messages (see `watch_wire.proto`).
    pub mod wire {
        tonic::include_proto!("cairnpb.wire");
    }
}

/// The etcdserverpb.Watch service as the server implements it: requests as
/// etcd's, responses as [`cairnpb::wire::WatchResponse`], whose events are
/// encoded once for all watchers.
pub mod watch_codec;

pub mod encoded_watch {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}

pub use cairnpb::migrate::v1 as migrate;
pub use cairnpb::peer::v1 as peer;

#[cfg(test)]
mod tests {
    use super::cairnpb::wire;
    use super::etcdserverpb::{ResponseHeader, WatchResponse};
    use super::mvccpb::{event::EventType, Event, KeyValue};
    use prost::Message;

    /// The pre-encoded response must decode, byte for byte, as etcd's.
    #[test]
    fn wire_watch_response_decodes_as_etcds() {
        let kv = |key: &str, rev| KeyValue {
            key: key.into(),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            value: vec![7; 300],
            lease: 9,
        };
        let events = vec![
            Event {
                r#type: EventType::Put as i32,
                kv: Some(kv("a", 5)),
                prev_kv: Some(kv("a", 4)),
            },
            Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv("b", 5)),
                prev_kv: None,
            },
        ];
        let header = Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 5,
            raft_term: 3,
        });
        let etcd = WatchResponse {
            header,
            watch_id: 4,
            created: true,
            canceled: true,
            compact_revision: 6,
            cancel_reason: "why".into(),
            fragment: true,
            events: events.clone(),
        };
        let ours = wire::WatchResponse {
            header,
            watch_id: 4,
            created: true,
            canceled: true,
            compact_revision: 6,
            cancel_reason: "why".into(),
            fragment: true,
            events: events.iter().map(|e| e.encode_to_vec().into()).collect(),
        };
        assert_eq!(ours.encode_to_vec(), etcd.encode_to_vec());
        assert_eq!(ours.encoded_len(), etcd.encoded_len());
        let decoded = WatchResponse::decode(ours.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, etcd);
    }
}
