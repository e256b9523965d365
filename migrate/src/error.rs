//! The migrator's errors: one clear line each, naming the side and what failed.

use crate::connect::Side;

/// Everything that can stop a `cairn migrate` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is wrong (bad URL, unreadable file, missing password).
    #[error("{0}")]
    BadInput(String),
    /// No endpoint of a side answered.
    #[error("cannot reach the {side} at {urls}: {detail}")]
    Unreachable {
        side: Side,
        urls: String,
        detail: String,
    },
    /// The TLS handshake with a side failed.
    #[error("TLS handshake with the {side} at {urls} failed: {detail}")]
    Tls {
        side: Side,
        urls: String,
        detail: String,
    },
    /// The source does not answer etcd v3's Maintenance.Status.
    #[error("the source at {urls} is not etcd v3: {detail}")]
    NotEtcd { urls: String, detail: String },
    /// The target does not serve the migration service.
    #[error("the target at {urls} is not Cairn: it does not serve cairnpb.migrate.v1.Migration")]
    NotCairn { urls: String },
    /// The source's etcd is older than 3.4.
    #[error("the source runs etcd {version}; migration needs etcd 3.4 or newer")]
    SourceTooOld { version: String },
    /// Authenticating to a side failed.
    #[error("cannot authenticate to the {side} at {urls} as {user}: {detail}")]
    Auth {
        side: Side,
        urls: String,
        user: String,
        detail: String,
    },
    /// The source compacted past a revision the migrator still needs.
    #[error("the source compacted to revision {compact_revision}, past revision {needed} that the migration needs")]
    Compacted { needed: i64, compact_revision: i64 },
    /// A gRPC call to a side failed.
    #[error("{side} {call} failed: {code:?}: {message}")]
    Call {
        side: Side,
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// The target refused a migration call (FailedPrecondition).
    #[error("the target refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    /// The target is not where the call expected it (Aborted, "out of step").
    #[error("the target is out of step on {call}: {message}")]
    OutOfStep { call: &'static str, message: String },
    /// The target's import was aborted.
    #[error("the target's import was aborted; it holds a partial copy and refuses writes until it is wiped")]
    TargetAborted,
    /// Something the migrator saw contradicts what etcd guarantees; never guessed around.
    #[error("{0}")]
    Inconsistent(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A kine database cannot be read as kine's (not a database, not kine's
    /// table, a schema this migrator does not know, a refused login).
    #[error("kine database {db}: {detail}")]
    Kine { db: String, detail: String },
    /// A kine database failed a read for a passing reason (locked, a
    /// connection lost); worth a retry.
    #[error("kine database {db}: {detail}")]
    KineBusy { db: String, detail: String },
}

/// The migrator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// etcd's message for a read below the compact revision.
pub const ETCD_COMPACTED: &str = "required revision has been compacted";
/// etcd's message for a read above the current revision.
pub const ETCD_FUTURE_REV: &str = "required revision is a future revision";

impl Error {
    /// Wraps a failed call to `side`.
    pub fn call(side: Side, call: &'static str, status: tonic::Status) -> Error {
        // tonic reports a broken connection as Unknown "transport error":
        // it is a side being unavailable, worth a retry.
        let code = match status.code() {
            tonic::Code::Unknown if status.message().contains("transport error") => {
                tonic::Code::Unavailable
            }
            c => c,
        };
        Error::Call {
            side,
            call,
            code,
            message: status.message().to_string(),
        }
    }

    /// Whether this is etcd's "required revision has been compacted".
    pub fn is_compacted(&self) -> bool {
        matches!(self, Error::Compacted { .. })
            || matches!(self, Error::Call { message, .. } if message.contains(ETCD_COMPACTED))
    }

    /// Whether a retry may succeed (the side was unavailable, a connection
    /// broke, or a call timed out). A side that no endpoint of answers at
    /// the start is told apart before any call, by [`crate::connect::connect`].
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Call {
                code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded,
                ..
            } | Error::Unreachable { .. }
                | Error::KineBusy { .. }
        )
    }
}

/// The full text of an error and its sources, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_worth_a_retry() {
        let e = crate::connect::classify_status(
            Side::Source,
            "http://a",
            "Range",
            tonic::Status::unavailable("transport error: tcp connect error"),
        );
        assert!(matches!(e, Error::Unreachable { .. }));
        assert!(e.is_transient());
        let compacted = Error::call(
            Side::Source,
            "Range",
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
        );
        assert!(compacted.is_compacted());
        assert!(!compacted.is_transient());
        let broken = Error::call(
            Side::Source,
            "Watch",
            tonic::Status::unknown("transport error"),
        );
        assert!(broken.is_transient());
    }
}
