//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz), built with the
//! `fuzzing` feature only. Each takes arbitrary bytes from outside — a Raft
//! log file after a crash or a disk error, a peer's message, a snapshot
//! file — and must answer with a typed error, never a panic, a hang or an
//! unbounded allocation. Where the input is accepted, each checks what must
//! then hold.

use std::path::Path;

use cairn_proto::peer as pb;
use prost::Message;

use crate::replication::log_file::{LogFile, LOG_DIR};

/// A Raft log directory holding a segment and a state file made of `data`
/// (the first two bytes say where the state file's bytes end), opened as
/// at a restart. An accepted log must reopen to the same entries (recovery
/// is idempotent), and take an append after recovery.
pub fn raft_log_recovery(data: &[u8]) {
    let split = match data {
        [a, b, ..] => (usize::from(*a) << 8 | usize::from(*b)).min(data.len() - 2),
        _ => return,
    };
    let (state, segment) = data[2..].split_at(split);
    let Ok(dir) = tempfile::tempdir() else { return };
    let log_dir = dir.path().join(LOG_DIR);
    if std::fs::create_dir_all(&log_dir).is_err()
        || std::fs::write(log_dir.join("00000000000000000001.seg"), segment).is_err()
        || std::fs::write(log_dir.join("state"), state).is_err()
    {
        return;
    }
    let Ok((mut log, first)) = LogFile::open(dir.path()) else {
        return;
    };
    drop(log);
    let (log2, second) = match LogFile::open(dir.path()) {
        Ok(x) => x,
        Err(e) => panic!("an accepted log failed to reopen: {e}"),
    };
    assert_eq!(first.entries, second.entries, "recovery is not idempotent");
    assert_eq!(first.committed, second.committed);
    assert_eq!(first.state, second.state);
    log = log2;
    let next = second.entries.keys().next_back().map_or(1, |i| i + 1);
    let mut records = Vec::new();
    crate::replication::log_file::encode_entry(&mut records, next, b"after recovery");
    if log.append(&records, Some(next)).is_err() {
        return;
    }
    drop(log);
    match LogFile::open(dir.path()) {
        Ok((_, third)) => assert_eq!(
            third.entries.get(&next).map(Vec::as_slice),
            Some(&b"after recovery"[..]),
            "an append after recovery was lost"
        ),
        Err(e) => panic!("the log failed to reopen after an append: {e}"),
    }
}

/// Every peer-protocol message Cairn decodes from another member, as its
/// peer server would: the protobuf, then the conversion to openraft's types.
/// The first byte picks the message.
pub fn peer_message(data: &[u8]) {
    use crate::replication::codec;
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(m) = pb::AppendEntriesRequest::decode(bytes) {
                let _ = codec::append_request_from_pb(m);
            }
        }
        1 => {
            if let Ok(m) = pb::AppendEntriesResponse::decode(bytes) {
                let _ = codec::append_response_from_pb(m);
            }
        }
        2 => {
            if let Ok(m) = pb::VoteRequest::decode(bytes) {
                let _ = codec::vote_from_pb(m.vote);
                let _ = codec::opt_log_id_from_pb(m.last_log_id);
            }
        }
        3 => {
            if let Ok(m) = pb::SnapshotChunk::decode(bytes) {
                if let Some(pb::snapshot_chunk::Payload::Head(h)) = m.payload {
                    let _ = codec::vote_from_pb(h.vote);
                    if let Some(meta) = h.meta {
                        let _ = codec::stored_membership_from_pb(meta);
                    }
                }
            }
        }
        4 => {
            if let Ok(e) = codec::decode_entry(bytes) {
                // What decodes must encode back to the same entry.
                let again = codec::decode_entry(&codec::encode_entry(&e));
                assert_eq!(again.ok(), Some(e), "entry codec does not round-trip");
            }
        }
        5 => {
            if let Ok(m) = pb::Command::decode(bytes) {
                let _ = codec::command_from_pb(m);
            }
        }
        6 => {
            if let Ok(m) = pb::StreamAppendResponse::decode(bytes) {
                let _ = codec::stream_append_result_from_pb(m);
            }
        }
        _ => {
            let _ = crate::replication::member_list_of_blob(Some(bytes));
        }
    }
}

/// A snapshot file in etcd's format, as `cairn snapshot restore` and
/// `snapshot status` read it: the SHA-256 trailer, bbolt's pages, etcd's
/// buckets, every key.
pub fn etcd_snapshot(data: &[u8]) {
    use crate::mvcc::etcd_snapshot::file::SnapshotFile;
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("snapshot.db");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    for skip_hash_check in [false, true] {
        if let Ok(snap) = SnapshotFile::open(&path, skip_hash_check) {
            let _ = crate::mvcc::etcd_snapshot::status::status(&snap);
        }
    }
    walk_bbolt(&path);
}

/// Reads every bucket and key of a bbolt file.
fn walk_bbolt(path: &Path) {
    let Ok(db) = cairn_bbolt::Db::open(path) else {
        return;
    };
    let Ok(names) = db.bucket_names() else { return };
    for name in names {
        if let Ok(Some(bucket)) = db.bucket(&name) {
            for entry in bucket.entries() {
                if entry.is_err() {
                    break;
                }
            }
        }
    }
}

/// Seed inputs for the raft-backend targets, by target name: well-formed
/// inputs the fuzzer mutates from (fuzz/corpus/<target>/seed-*).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::replication::log_file::{encode_committed, encode_entry, encode_truncate};
    let mut seeds = Vec::new();

    // A log with entries, a commit record, a truncation and a rewrite.
    let mut segment = Vec::new();
    for i in 1..=4u64 {
        encode_entry(&mut segment, i, format!("entry {i}").as_bytes());
    }
    encode_committed(&mut segment, b"commit-log-id");
    encode_truncate(&mut segment, Some(2));
    encode_entry(&mut segment, 3, b"rewritten");
    let state = Vec::new();
    let mut input = (state.len() as u16).to_be_bytes().to_vec();
    input.extend_from_slice(&state);
    input.extend_from_slice(&segment);
    seeds.push(("raft_log_recovery", input.clone()));
    // The same with a torn last record.
    input.truncate(input.len() - 3);
    seeds.push(("raft_log_recovery", input));

    let leader = |term, node_id| Some(pb::LeaderId { term, node_id });
    let vote = Some(pb::Vote {
        leader_id: leader(3, 1),
        committed: true,
    });
    let log_id = |term, index| {
        Some(pb::LogId {
            leader_id: leader(term, 1),
            index,
        })
    };
    let membership = pb::Membership {
        configs: vec![pb::VoterSet { ids: vec![1, 2, 3] }],
        nodes: (1..=3)
            .map(|id| pb::Member {
                id,
                name: format!("m{id}"),
                peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
                client_urls: vec![],
            })
            .collect(),
    };
    let put = pb::Command {
        origin: 1,
        request_id: 7,
        op: Some(pb::command::Op::Put(
            cairn_proto::etcdserverpb::PutRequest {
                key: b"/registry/pods/default/p".to_vec(),
                value: b"v".to_vec(),
                lease: 0,
                ..Default::default()
            },
        )),
    };
    let entries = vec![
        pb::Entry {
            log_id: log_id(3, 5),
            payload: Some(pb::entry::Payload::Command(put.clone())),
        },
        pb::Entry {
            log_id: log_id(3, 6),
            payload: Some(pb::entry::Payload::Membership(membership.clone())),
        },
    ];
    let peer = |kind: u8, m: &dyn Fn(&mut Vec<u8>)| {
        let mut b = vec![kind];
        m(&mut b);
        b
    };
    seeds.push((
        "peer_messages",
        peer(0, &|b| {
            pb::AppendEntriesRequest {
                vote,
                prev_log_id: log_id(3, 4),
                entries: entries.clone(),
                leader_commit: log_id(3, 4),
            }
            .encode(b)
            .ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(1, &|b| {
            pb::AppendEntriesResponse {
                result: pb::AppendResult::AppendConflict as i32,
                last_log_id: log_id(2, 9),
                vote,
            }
            .encode(b)
            .ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(2, &|b| {
            pb::VoteRequest {
                vote,
                last_log_id: log_id(3, 6),
                leadership_transfer: false,
            }
            .encode(b)
            .ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(3, &|b| {
            pb::SnapshotChunk {
                payload: Some(pb::snapshot_chunk::Payload::Head(pb::SnapshotHead {
                    vote,
                    meta: Some(pb::SnapshotMeta {
                        last_log_id: log_id(3, 6),
                        last_membership_log_id: log_id(3, 6),
                        last_membership: Some(membership.clone()),
                        snapshot_id: "3-6".into(),
                    }),
                })),
            }
            .encode(b)
            .ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(4, &|b| {
            entries[0].encode(b).ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(5, &|b| {
            put.encode(b).ok();
        }),
    ));
    seeds.push((
        "peer_messages",
        peer(6, &|b| {
            pb::StreamAppendResponse {
                result: Some(pb::stream_append_response::Result::Conflict(pb::LogId {
                    leader_id: leader(2, 2),
                    index: 8,
                })),
            }
            .encode(b)
            .ok();
        }),
    ));
    seeds
}
