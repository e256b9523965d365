//! Conversions between openraft's types and the versioned peer protocol in
//! `proto/cairnpb/peer.proto`. The same encoding is used on the wire and in the
//! on-disk log, so both change only by adding fields.

use std::collections::{BTreeMap, BTreeSet};

use cairn_proto::migrate;
use cairn_proto::peer as pb;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult,
};
use openraft::vote::RaftLeaderId;
use openraft::vote::RaftVote;
use prost::Message;

use super::types::{
    Entry, EntryPayload, LogCommand, LogId, MemberInfo, Membership, StoredMembership, TypeConfig,
    Vote,
};
use crate::command::Command;

/// A peer message or stored record that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct DecodeError {
    pub what: &'static str,
    pub detail: String,
}

fn missing(what: &'static str, field: &str) -> DecodeError {
    DecodeError {
        what,
        detail: format!("{field} is missing"),
    }
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    let lid = v.leader_id();
    pb::Vote {
        leader_id: Some(pb::LeaderId {
            term: lid.term,
            node_id: lid.voted_for,
        }),
        committed: v.is_committed(),
    }
}

pub fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote, DecodeError> {
    let v = v.ok_or_else(|| missing("vote", "vote"))?;
    let lid = v.leader_id.ok_or_else(|| missing("vote", "leader_id"))?;
    let leader = openraft::impls::leader_id_std::LeaderId::new(lid.term, lid.node_id);
    Ok(Vote::from_leader_id(leader, v.committed))
}

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: l.leader_id.term,
            node_id: 0,
        }),
        index: l.index,
    }
}

pub fn log_id_from_pb(l: pb::LogId) -> LogId {
    LogId::new(
        l.leader_id.map(|x| x.term).unwrap_or_default().into(),
        l.index,
    )
}

pub fn opt_log_id_to_pb(l: Option<&LogId>) -> Option<pb::LogId> {
    l.map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(l: Option<pb::LogId>) -> Option<LogId> {
    l.map(log_id_from_pb)
}

pub fn member_to_pb(id: u64, m: &MemberInfo) -> pb::Member {
    pb::Member {
        id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
    }
}

pub fn member_from_pb(m: pb::Member) -> (u64, MemberInfo) {
    (
        m.id,
        MemberInfo {
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
        },
    )
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| pb::VoterSet {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| member_to_pb(*id, n)).collect(),
    }
}

pub fn membership_from_pb(m: pb::Membership) -> Result<Membership, DecodeError> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .into_iter()
        .map(|c| c.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<u64, MemberInfo> = m.nodes.into_iter().map(member_from_pb).collect();
    Membership::new(configs, nodes).map_err(|e| DecodeError {
        what: "membership",
        detail: e.to_string(),
    })
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: None,
        last_membership_log_id: opt_log_id_to_pb(m.log_id().as_ref()),
        last_membership: Some(membership_to_pb(m.membership())),
        snapshot_id: String::new(),
    }
}

pub fn stored_membership_from_pb(m: pb::SnapshotMeta) -> Result<StoredMembership, DecodeError> {
    let membership = match m.last_membership {
        Some(x) => membership_from_pb(x)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(
        opt_log_id_from_pb(m.last_membership_log_id),
        membership,
    ))
}

pub fn command_to_pb(c: &LogCommand) -> pb::Command {
    use pb::command::Op;
    let op = match &c.cmd {
        Command::Put(x) => Op::Put(x.clone()),
        Command::DeleteRange(x) => Op::DeleteRange(x.clone()),
        Command::Txn(x) => Op::Txn(x.clone()),
        Command::Compact(x) => Op::Compact(*x),
        Command::Alarm(x) => Op::Alarm(*x),
        Command::LeaseGrant(x) => Op::LeaseGrant(*x),
        Command::LeaseRevoke(x) => Op::LeaseRevoke(*x),
        Command::MigrationBegin(x) => Op::MigrationBegin(x.clone()),
        Command::ImportBase(x) => Op::ImportBase(x.clone()),
        Command::ImportRevisions(x) => Op::ImportRevisions(x.clone()),
        Command::MigrationCutover(x) => Op::MigrationCutover(*x),
        Command::MigrationAbort(x) => Op::MigrationAbort(*x),
        Command::ClusterVersionSet(x) => Op::ClusterVersionSet(x.clone()),
        Command::DowngradeInfoSet(x) => Op::DowngradeInfoSet(x.clone()),
    };
    pb::Command {
        origin: c.origin,
        request_id: c.request_id,
        op: Some(op),
    }
}

pub fn command_from_pb(c: pb::Command) -> Result<LogCommand, DecodeError> {
    use pb::command::Op;
    let cmd = match c.op.ok_or_else(|| missing("command", "op"))? {
        Op::Put(x) => Command::Put(x),
        Op::DeleteRange(x) => Command::DeleteRange(x),
        Op::Txn(x) => Command::Txn(x),
        Op::Compact(x) => Command::Compact(x),
        Op::Alarm(x) => Command::Alarm(x),
        Op::LeaseGrant(x) => Command::LeaseGrant(x),
        Op::LeaseRevoke(x) => Command::LeaseRevoke(x),
        // The one-revision import of earlier builds (never proposed by
        // them): the same thing as a one-revision ImportRevisions.
        Op::Import(x) => Command::ImportRevisions(migrate::ImportRevisionsRequest {
            after_revision: x.revision - 1,
            revisions: vec![migrate::ImportRevision {
                revision: x.revision,
                events: x.events,
            }],
            ..Default::default()
        }),
        Op::MigrationBegin(x) => Command::MigrationBegin(x),
        Op::ImportBase(x) => Command::ImportBase(x),
        Op::ImportRevisions(x) => Command::ImportRevisions(x),
        Op::MigrationCutover(x) => Command::MigrationCutover(x),
        Op::MigrationAbort(x) => Command::MigrationAbort(x),
        Op::ClusterVersionSet(x) => Command::ClusterVersionSet(x),
        Op::DowngradeInfoSet(x) => Command::DowngradeInfoSet(x),
    };
    Ok(LogCommand {
        origin: c.origin,
        request_id: c.request_id,
        cmd,
    })
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(c) => Payload::Command(command_to_pb(c)),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    use pb::entry::Payload;
    let log_id = log_id_from_pb(e.log_id.ok_or_else(|| missing("entry", "log_id"))?);
    let payload = match e.payload.ok_or_else(|| missing("entry", "payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Command(c) => EntryPayload::Normal(command_from_pb(c)?),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)?),
    };
    Ok(Entry { log_id, payload })
}

pub fn append_request_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(r.prev_log_id.as_ref()),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(r.leader_commit.as_ref()),
    }
}

pub fn append_request_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(r.vote)?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id),
        entries: r
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(r.leader_commit),
    })
}

pub fn append_response_from_pb(
    r: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, DecodeError> {
    Ok(match pb::AppendResult::try_from(r.result) {
        Ok(pb::AppendResult::AppendSuccess) => AppendEntriesResponse::Success,
        Ok(pb::AppendResult::AppendPartial) => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(r.last_log_id))
        }
        Ok(pb::AppendResult::AppendConflict) => AppendEntriesResponse::Conflict,
        Ok(pb::AppendResult::AppendHigherVote) => {
            AppendEntriesResponse::HigherVote(vote_from_pb(r.vote)?)
        }
        Err(_) => {
            return Err(DecodeError {
                what: "append response",
                detail: format!("unknown result {}", r.result),
            })
        }
    })
}

pub fn append_response_to_pb(r: AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    let mut out = pb::AppendEntriesResponse::default();
    match r {
        AppendEntriesResponse::Success => out.result = pb::AppendResult::AppendSuccess as i32,
        AppendEntriesResponse::PartialSuccess(l) => {
            out.result = pb::AppendResult::AppendPartial as i32;
            out.last_log_id = opt_log_id_to_pb(l.as_ref());
        }
        AppendEntriesResponse::Conflict => out.result = pb::AppendResult::AppendConflict as i32,
        AppendEntriesResponse::HigherVote(v) => {
            out.result = pb::AppendResult::AppendHigherVote as i32;
            out.vote = Some(vote_to_pb(&v));
        }
    }
    out
}

pub fn stream_append_result_to_pb(r: &StreamAppendResult<TypeConfig>) -> pb::StreamAppendResponse {
    use pb::stream_append_response::Result as R;
    let result = match r {
        Ok(matching) => R::Matching(pb::Matching {
            log_id: opt_log_id_to_pb(matching.as_ref()),
        }),
        Err(StreamAppendError::Conflict(l)) => R::Conflict(log_id_to_pb(l)),
        Err(StreamAppendError::HigherVote(v)) => R::HigherVote(vote_to_pb(v)),
    };
    pb::StreamAppendResponse {
        result: Some(result),
    }
}

pub fn stream_append_result_from_pb(
    r: pb::StreamAppendResponse,
) -> Result<StreamAppendResult<TypeConfig>, DecodeError> {
    use pb::stream_append_response::Result as R;
    Ok(
        match r
            .result
            .ok_or_else(|| missing("stream append response", "result"))?
        {
            R::Matching(m) => Ok(opt_log_id_from_pb(m.log_id)),
            R::Conflict(l) => Err(StreamAppendError::Conflict(log_id_from_pb(l))),
            R::HigherVote(v) => Err(StreamAppendError::HigherVote(vote_from_pb(Some(v))?)),
        },
    )
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    entry_to_pb(e).encode_to_vec()
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let pb = pb::Entry::decode(bytes).map_err(|e| DecodeError {
        what: "log entry",
        detail: e.to_string(),
    })?;
    entry_from_pb(pb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::PutRequest;

    #[test]
    fn entries_round_trip() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            7,
            MemberInfo {
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: vec![],
            },
        );
        nodes.insert(9, MemberInfo::default());
        let m = Membership::new(vec![BTreeSet::from([7])], nodes).unwrap();
        let entries = [
            Entry {
                log_id: LogId::new(3.into(), 10),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new(3.into(), 11),
                payload: EntryPayload::Normal(LogCommand {
                    origin: 7,
                    request_id: 42,
                    cmd: Command::Put(PutRequest {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    }),
                }),
            },
            Entry {
                log_id: LogId::new(4.into(), 12),
                payload: EntryPayload::Membership(m),
            },
            Entry {
                log_id: LogId::new(4.into(), 13),
                payload: EntryPayload::Normal(LogCommand {
                    origin: 7,
                    request_id: 43,
                    cmd: Command::ImportRevisions(migrate::ImportRevisionsRequest {
                        after_revision: 5,
                        revisions: vec![migrate::ImportRevision {
                            revision: 6,
                            events: vec![Default::default()],
                        }],
                        lease_drops: vec![3],
                        compact_to: 4,
                        ..Default::default()
                    }),
                }),
            },
            Entry {
                log_id: LogId::new(4.into(), 14),
                payload: EntryPayload::Normal(LogCommand {
                    origin: 7,
                    request_id: 44,
                    cmd: Command::MigrationBegin(migrate::BeginRequest {
                        source_cluster_id: u64::MAX,
                        restart: true,
                        ..Default::default()
                    }),
                }),
            },
        ];
        for e in entries {
            let back = decode_entry(&encode_entry(&e)).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn an_import_of_earlier_builds_decodes_as_a_one_revision_import() {
        let old = pb::Command {
            origin: 1,
            request_id: 2,
            op: Some(pb::command::Op::Import(pb::ImportRevision {
                revision: 9,
                events: vec![],
            })),
        };
        let cmd = command_from_pb(old).unwrap().cmd;
        assert_eq!(
            cmd,
            Command::ImportRevisions(migrate::ImportRevisionsRequest {
                after_revision: 8,
                revisions: vec![migrate::ImportRevision {
                    revision: 9,
                    events: vec![],
                }],
                ..Default::default()
            })
        );
    }

    #[test]
    fn votes_round_trip() {
        let v = Vote::new_committed(5, 9);
        assert_eq!(vote_from_pb(Some(vote_to_pb(&v))).unwrap(), v);
        let v = Vote::new(6, 1);
        assert_eq!(vote_from_pb(Some(vote_to_pb(&v))).unwrap(), v);
        assert!(vote_from_pb(None).is_err());
    }
}
