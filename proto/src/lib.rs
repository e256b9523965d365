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
}

pub use cairnpb::peer::v1 as peer;
