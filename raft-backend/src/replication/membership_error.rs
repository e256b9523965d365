//! Why a membership change (or a leader transfer) was refused. The messages
//! are etcd's, without its "etcdserver: " prefix, which the shim adds: clients
//! match some of them by text.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    #[error("member not found")]
    MemberNotFound,
    #[error("can only promote a learner member")]
    NotLearner,
    /// etcd's rule: a learner becomes a voter only once it holds 90% of the
    /// leader's log, so that it cannot stall commits.
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// Raft refused the change (another one is under way, ...), in its words.
    #[error("{0}")]
    Refused(String),
}

impl MembershipError {
    /// Reads back the message `Display` wrote: a refusal crosses the peer
    /// wire as its message, which members of earlier versions also send.
    pub fn from_message(message: &str) -> Self {
        use MembershipError::*;
        [
            MemberNotFound,
            NotLearner,
            LearnerNotReady,
            BadLeaderTransferee,
        ]
        .into_iter()
        .find(|e| e.to_string() == message)
        .unwrap_or_else(|| Refused(message.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reads_back_from_its_message() {
        for e in [
            MembershipError::MemberNotFound,
            MembershipError::NotLearner,
            MembershipError::LearnerNotReady,
            MembershipError::BadLeaderTransferee,
            MembershipError::Refused("a change is in progress".into()),
        ] {
            assert_eq!(MembershipError::from_message(&e.to_string()), e);
        }
    }
}
