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

/// The leader's answer on the peer wire for `e`. A leader that stops is no
/// leader to its followers (Unavailable); any other fault travels with its
/// message (Internal).
pub(crate) fn to_status(e: &StoreError) -> tonic::Status {
    match e {
        StoreError::NoLeader => tonic::Status::failed_precondition("not leader"),
        StoreError::Membership(m) => tonic::Status::invalid_argument(m.to_string()),
        StoreError::Timeout => tonic::Status::deadline_exceeded("request timed out"),
        StoreError::LeaderChanged => tonic::Status::aborted("leader changed"),
        StoreError::Stopped => tonic::Status::unavailable(e.to_string()),
        other => tonic::Status::internal(other.to_string()),
    }
}

/// Maps a peer's gRPC answer back to the store error it stands for.
/// Unreachable or stopping leaders (Unavailable, Cancelled) are no leader;
/// a fault on the leader (Internal, or a code this member does not expect)
/// keeps its message as `Remote`, so a follower's client sees what the
/// leader's would.
pub(crate) fn from_status(s: tonic::Status) -> StoreError {
    use tonic::Code;
    match s.code() {
        Code::FailedPrecondition | Code::Unavailable | Code::Cancelled => StoreError::NoLeader,
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => {
            StoreError::Membership(MembershipError::from_message(s.message()))
        }
        Code::DeadlineExceeded => StoreError::Timeout,
        Code::Aborted => StoreError::LeaderChanged,
        Code::Internal => StoreError::Remote(s.message().to_string()),
        other => StoreError::Remote(format!("{other:?}: {}", s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_leader_answers_a_follower_reads_back() {
        for e in [
            StoreError::NoLeader,
            StoreError::Timeout,
            StoreError::LeaderChanged,
            StoreError::Membership(MembershipError::MemberNotFound),
            StoreError::Membership(MembershipError::NotLearner),
            StoreError::Membership(MembershipError::LearnerNotReady),
            StoreError::Membership(MembershipError::BadLeaderTransferee),
            StoreError::Membership(MembershipError::Refused("change in progress".into())),
        ] {
            assert_eq!(from_status(to_status(&e)), e);
        }
    }

    #[test]
    fn a_fault_on_the_leader_keeps_its_message() {
        let e = StoreError::Storage("disk I/O error".into());
        let back = from_status(to_status(&e));
        assert_eq!(back, StoreError::Remote("storage: disk I/O error".into()));
        assert_eq!(back.to_string(), e.to_string());
        let e = StoreError::Corrupt("bad row".into());
        assert_eq!(from_status(to_status(&e)).to_string(), e.to_string());
    }

    #[test]
    fn a_stopping_or_unreachable_leader_is_no_leader() {
        assert_eq!(
            from_status(to_status(&StoreError::Stopped)),
            StoreError::NoLeader
        );
        assert_eq!(
            from_status(tonic::Status::unavailable("connection refused")),
            StoreError::NoLeader
        );
    }

    #[test]
    fn an_unexpected_code_is_not_mistaken_for_no_leader() {
        let back = from_status(tonic::Status::permission_denied("other cluster"));
        assert_eq!(
            back,
            StoreError::Remote("PermissionDenied: other cluster".into())
        );
    }
}
