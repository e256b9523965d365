//! Every error a client can see, with etcd's gRPC code and exact message.
//! Clients (clientv3, kube-apiserver) match some of these by message, so the
//! strings must not drift; they are defined here and nowhere else.

use cairn_raft_backend::{MembershipError, StoreError};
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: server stopped")]
    Stopped,
}

impl EtcdError {
    pub fn code(self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseExist => Code::FailedPrecondition,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound => Code::NotFound,
            NoLeader | Timeout | LeaderChanged | Unhealthy | Stopped => Code::Unavailable,
            NotLeader | MemberExist | PeerUrlExist => Code::FailedPrecondition,
            MemberNotFound => Code::NotFound,
            MemberBadUrls => Code::InvalidArgument,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Maps a store error to what etcd answers in the same situation.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Compacted => EtcdError::Compacted.into(),
        StoreError::FutureRev => EtcdError::FutureRev.into(),
        StoreError::KeyNotFound => EtcdError::KeyNotFound.into(),
        StoreError::LeaseNotFound => EtcdError::LeaseNotFound.into(),
        StoreError::NoSpace => EtcdError::NoSpace.into(),
        StoreError::LeaseExists => EtcdError::LeaseExist.into(),
        // Live migration (docs/design.md, "Messages"): client writes in
        // etcd's words, the migration service's own refusals as "cairn: ".
        StoreError::MigrationImporting { .. } | StoreError::MigrationAborted { .. } => {
            Status::failed_precondition(format!("etcdserver: {e}"))
        }
        StoreError::MigrationNotEmpty { .. }
        | StoreError::MigrationOtherSource { .. }
        | StoreError::MigrationWrongPhase { .. } => {
            Status::failed_precondition(format!("cairn: {e}"))
        }
        StoreError::MigrationOutOfStep { .. } => Status::aborted(format!("cairn: {e}")),
        StoreError::MigrationInvalid(_) => Status::invalid_argument(format!("cairn: {e}")),
        StoreError::Stopped => EtcdError::Stopped.into(),
        // Retried by clients, as etcd's own Unavailable answers are.
        StoreError::Reopened => Status::unavailable(format!("etcdserver: {e}")),
        StoreError::NoLeader => EtcdError::NoLeader.into(),
        StoreError::LeaderChanged => EtcdError::LeaderChanged.into(),
        StoreError::Timeout => EtcdError::Timeout.into(),
        StoreError::Membership(MembershipError::MemberNotFound) => EtcdError::MemberNotFound.into(),
        // The remaining membership refusals (not a learner, bad transferee, ...)
        // are FailedPrecondition in etcd, with its wording after the prefix.
        StoreError::Membership(m) => Status::failed_precondition(format!("etcdserver: {m}")),
        // A fault on the leader a forwarded request reached, as the
        // leader's own client would see it.
        StoreError::Remote(msg) => {
            tracing::warn!(error = %msg, "the leader failed a forwarded request");
            Status::internal(format!("etcdserver: {msg}"))
        }
        // Refused at start, never an answer to a request.
        StoreError::ReleaseRefused(m) => Status::failed_precondition(format!("etcdserver: {m}")),
        StoreError::InvalidVersion(_) => Status::invalid_argument(format!("etcdserver: {e}")),
        StoreError::Storage(_)
        | StoreError::Sqlite(_)
        | StoreError::Io { .. }
        | StoreError::Corrupt(_)
        | StoreError::NewerSchema { .. } => {
            let msg = e.storage_detail().unwrap_or_default();
            tracing::error!(error = %msg, "storage error");
            Status::internal(format!("etcdserver: storage: {msg}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        let s: Status = EtcdError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = store_status(StoreError::NoSpace);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
        let s = store_status(StoreError::Membership(MembershipError::MemberNotFound));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: member not found")
        );
        let s = store_status(StoreError::Membership(MembershipError::NotLearner));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member"
            )
        );
        let s = store_status(StoreError::MigrationImporting {
            source_cluster_id: 0xcdf818194e3a8c32,
            phase: "FOLLOWING",
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: cairn is importing from etcd cluster cdf818194e3a8c32 (phase FOLLOWING); writes are refused until cutover"
            )
        );
        let s = store_status(StoreError::MigrationAborted {
            source_cluster_id: 0xab,
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "etcdserver: cairn's import from etcd cluster ab was aborted; this cluster holds a partial copy and refuses writes"
            )
        );
        let s = store_status(StoreError::MigrationNotEmpty { revision: 12 });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "cairn: target is not empty (revision 12); a migration needs an empty Cairn cluster"
            )
        );
        let s = store_status(StoreError::MigrationOtherSource {
            importing: 0xa,
            requested: 0xb,
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "cairn: target is importing from etcd cluster a, not b"
            )
        );
        let s = store_status(StoreError::MigrationWrongPhase { phase: "NONE" });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::FailedPrecondition,
                "cairn: no import in progress (phase NONE)"
            )
        );
        let s = store_status(StoreError::MigrationOutOfStep {
            holds: "the target is at revision 10".into(),
            names: "revision 12".into(),
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::Aborted,
                "cairn: migration out of step: the target is at revision 10, request starts after revision 12"
            )
        );
        let s: Status = EtcdError::RequestTooLarge.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: request is too large")
        );
    }
}
