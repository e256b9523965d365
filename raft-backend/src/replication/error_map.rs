//! Error mapping, both ways: openraft's errors to the store errors a caller
//! sees, and store errors to and from gRPC statuses on the peer wire (a
//! leader's answer to a forwarded write, ReadIndex or membership change
//! becomes the follower's error).

use openraft::errors::ClientWriteError;

use super::membership_error::MembershipError;
use super::types::TypeConfig;
use crate::error::StoreError;

/// A fault of the Raft core itself.
pub(super) fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("raft: {e}"))
}

/// What a failed `client_write` means to the proposer.
pub(super) fn write_error(
    e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> StoreError {
    match e.api_error() {
        Some(e) => client_write_error(e.clone()),
        None => StoreError::Stopped,
    }
}

pub(super) fn client_write_error(e: ClientWriteError<TypeConfig>) -> StoreError {
    match e {
        ClientWriteError::ForwardToLeader(_) => StoreError::NoLeader,
        ClientWriteError::LogEntryDiscarded(_) => StoreError::LeaderChanged,
        other => StoreError::Storage(other.to_string()),
    }
}

/// What a refused membership change means to the caller.
pub(super) fn change_membership_error(
    e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> StoreError {
    match e.api_error() {
        Some(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader,
        Some(other) => StoreError::Membership(MembershipError::Refused(other.to_string())),
        None => StoreError::Stopped,
    }
}

/// Marks a status the leader itself sent for a fault, so that a follower
/// tells it from a call that failed on the way (a transport error, which
/// tonic may also report as Internal or Unknown).
const LEADER_FAULT: &str = "cairn-leader-fault";

/// The leader's answer on the peer wire for `e`. A leader that stops is no
/// leader to its followers (Unavailable); a full store stays NoSpace; any
/// other fault travels with its message (Internal). Both are marked as the
/// leader's own answer.
pub(crate) fn to_status(e: &StoreError) -> tonic::Status {
    match e {
        StoreError::NoLeader => tonic::Status::failed_precondition("not leader"),
        StoreError::Membership(m) => tonic::Status::invalid_argument(m.to_string()),
        StoreError::Timeout => tonic::Status::deadline_exceeded("request timed out"),
        StoreError::LeaderChanged => tonic::Status::aborted("leader changed"),
        StoreError::Stopped => tonic::Status::unavailable(e.to_string()),
        StoreError::NoSpace => leader_fault(tonic::Status::resource_exhausted(e.to_string())),
        other => leader_fault(tonic::Status::internal(other.to_string())),
    }
}

fn leader_fault(mut s: tonic::Status) -> tonic::Status {
    s.metadata_mut().insert(
        LEADER_FAULT,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// Maps a peer's gRPC answer back to the store error it stands for. A
/// fault the leader reported keeps its message as `Remote`, so a
/// follower's client sees what the leader's would; a call that failed
/// on the way (unreachable, stopping or unknown leader) is no leader.
pub(crate) fn from_status(s: tonic::Status) -> StoreError {
    let from_leader = s.metadata().contains_key(LEADER_FAULT);
    from_answer(s.code(), s.message(), from_leader)
}

/// The error in one write's outcome of a forwarded batch: the leader's
/// own answer, never the transport's.
pub(crate) fn from_outcome(code: i32, message: &str) -> StoreError {
    from_answer(code.into(), message, true)
}

fn from_answer(code: tonic::Code, message: &str, from_leader: bool) -> StoreError {
    use tonic::Code;
    match code {
        Code::FailedPrecondition => StoreError::NoLeader,
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => {
            StoreError::Membership(MembershipError::from_message(message))
        }
        Code::DeadlineExceeded => StoreError::Timeout,
        Code::Aborted => StoreError::LeaderChanged,
        Code::Unavailable | Code::Cancelled => StoreError::NoLeader,
        Code::ResourceExhausted if from_leader => StoreError::NoSpace,
        Code::Internal if from_leader => StoreError::Remote(message.to_string()),
        other if from_leader => StoreError::Remote(format!("{other:?}: {message}")),
        _ => StoreError::NoLeader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` as a follower receives it: sent as HTTP/2 headers and trailers.
    fn over_the_wire(s: tonic::Status) -> tonic::Status {
        let resp = s.into_http::<()>();
        tonic::Status::from_header_map(resp.headers()).unwrap()
    }

    #[test]
    fn what_a_leader_answers_a_follower_reads_back() {
        for e in [
            StoreError::NoLeader,
            StoreError::Timeout,
            StoreError::LeaderChanged,
            StoreError::NoSpace,
            StoreError::Membership(MembershipError::MemberNotFound),
            StoreError::Membership(MembershipError::NotLearner),
            StoreError::Membership(MembershipError::LearnerNotReady),
            StoreError::Membership(MembershipError::BadLeaderTransferee),
            StoreError::Membership(MembershipError::Refused("change in progress".into())),
        ] {
            assert_eq!(from_status(over_the_wire(to_status(&e))), e);
            let s = to_status(&e);
            assert_eq!(from_outcome(s.code() as i32, s.message()), e);
        }
    }

    #[test]
    fn a_fault_on_the_leader_keeps_its_message() {
        for e in [
            StoreError::Storage("disk I/O error".into()),
            StoreError::Corrupt("bad row".into()),
        ] {
            let back = from_status(over_the_wire(to_status(&e)));
            assert_eq!(back, StoreError::Remote(e.to_string()));
            assert_eq!(back.to_string(), e.to_string());
            let s = to_status(&e);
            assert_eq!(
                from_outcome(s.code() as i32, s.message()),
                StoreError::Remote(e.to_string())
            );
        }
    }

    #[test]
    fn a_stopping_or_unreachable_leader_is_no_leader() {
        let stopped = from_status(over_the_wire(to_status(&StoreError::Stopped)));
        assert_eq!(stopped, StoreError::NoLeader);
        for s in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::cancelled("operation was canceled"),
            // A call cut off on the way, as tonic reports it: not the leader's.
            tonic::Status::internal("h2 protocol error: stream reset"),
            tonic::Status::unknown("transport error"),
        ] {
            assert_eq!(from_status(s), StoreError::NoLeader);
        }
    }
}
