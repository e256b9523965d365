//! The target: Cairn's migration service (`cairnpb.migrate.v1.Migration`)
//! and the etcd reads it serves while importing.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::LeaseLeasesRequest;
use cairn_proto::migrate::migration_client::MigrationClient;
use cairn_proto::migrate::{
    AbortRequest, BeginRequest, CutoverRequest, ImportBaseRequest, ImportRevisionsRequest,
    MigrationState, Phase, StateRequest,
};

use crate::connect::{connect, timed, Conn, EndpointConfig, Side, Svc, MAX_DECODE, MAX_ENCODE};
use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch, the migrator's clock.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The phase's name as `cairn migrate status` prints it.
pub fn phase_name(phase: i32) -> &'static str {
    match Phase::try_from(phase) {
        Ok(Phase::None) => "none",
        Ok(Phase::Copying) => "copying",
        Ok(Phase::Following) => "following",
        Ok(Phase::CutOver) => "cut-over",
        Ok(Phase::Aborted) => "aborted",
        Err(_) => "unknown",
    }
}

/// The target Cairn cluster.
#[derive(Clone)]
pub struct Target {
    /// The connection (balanced over the given URLs).
    pub conn: Conn,
}

impl Target {
    /// Connects and reads the migration state: the target is reachable and is Cairn.
    pub async fn connect(cfg: &EndpointConfig) -> Result<(Target, MigrationState)> {
        let conn = connect(Side::Target, cfg).await?;
        let t = Target { conn };
        // The first contact, briefly retried: a connection was made
        // (connect checked that), so an answer that is no gRPC means a
        // server that is not Cairn.
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            match timed(&t.conn, "State", t.client().state(StateRequest {})).await {
                Ok(state) => return Ok((t, state)),
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(t.map("State", e)),
            }
        }
        Err(match last {
            Some(Error::Call {
                code: tonic::Code::Unavailable,
                ..
            })
            | None => Error::NotCairn {
                urls: t.conn.urls.clone(),
            },
            Some(e) => e,
        })
    }

    /// The URLs as given.
    pub fn urls(&self) -> &str {
        &self.conn.urls
    }

    fn client(&self) -> MigrationClient<Svc> {
        MigrationClient::new(self.conn.svc.clone())
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_ENCODE)
    }

    fn map(&self, call: &'static str, e: Error) -> Error {
        match e {
            Error::Call {
                code: tonic::Code::Unimplemented,
                ..
            } => Error::NotCairn {
                urls: self.conn.urls.clone(),
            },
            Error::Call {
                code: tonic::Code::FailedPrecondition,
                message,
                ..
            } => Error::Refused { call, message },
            Error::Call {
                code: tonic::Code::Aborted,
                message,
                ..
            } => Error::OutOfStep { call, message },
            other => other,
        }
    }

    /// Runs a migration call, again while the target is unavailable (a
    /// leader election), a bounded number of times. Retrying is safe: every
    /// call that changes the target names the position it expects.
    async fn call<T, F, Fut>(&self, call: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(MigrationClient<Svc>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut delay = std::time::Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match timed(&self.conn, call, f(self.client())).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < 10 => {
                    tracing::warn!(error = %e, attempt, "{call} on the target failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(self.map(call, e)),
            }
        }
    }

    /// The migration state of whichever member answers.
    pub async fn state(&self) -> Result<MigrationState> {
        self.call(
            "State",
            |mut c| async move { c.state(StateRequest {}).await },
        )
        .await
    }

    /// Begins (or confirms, or with `restart` restarts) the import.
    pub async fn begin(&self, req: BeginRequest) -> Result<MigrationState> {
        self.call("Begin", |mut c| {
            let req = req.clone();
            async move { c.begin(req).await }
        })
        .await
    }

    /// Imports one page of the copy.
    pub async fn import_base(&self, req: ImportBaseRequest) -> Result<MigrationState> {
        self.call("ImportBase", |mut c| {
            let req = req.clone();
            async move { c.import_base(req).await }
        })
        .await
    }

    /// Imports whole revisions (and leases, and compaction).
    pub async fn import_revisions(&self, req: ImportRevisionsRequest) -> Result<MigrationState> {
        self.call("ImportRevisions", |mut c| {
            let req = req.clone();
            async move { c.import_revisions(req).await }
        })
        .await
    }

    /// Ends the import at `expected_revision`.
    pub async fn cutover(&self, expected_revision: i64) -> Result<MigrationState> {
        let req = CutoverRequest {
            expected_revision,
            unix_ms: unix_ms(),
        };
        self.call("Cutover", |mut c| async move { c.cutover(req).await })
            .await
    }

    /// Gives the import up.
    pub async fn abort(&self) -> Result<MigrationState> {
        let req = AbortRequest { unix_ms: unix_ms() };
        self.call("Abort", |mut c| async move { c.abort(req).await })
            .await
    }

    /// The IDs of the leases the target holds (etcd's LeaseLeases).
    pub async fn leases(&self) -> Result<Vec<i64>> {
        let client = LeaseClient::new(self.conn.svc.clone()).max_decoding_message_size(MAX_DECODE);
        let mut client = client;
        let resp = timed(
            &self.conn,
            "LeaseLeases",
            client.lease_leases(LeaseLeasesRequest {}),
        )
        .await?;
        Ok(resp.leases.into_iter().map(|l| l.id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names() {
        assert_eq!(phase_name(Phase::None as i32), "none");
        assert_eq!(phase_name(Phase::Copying as i32), "copying");
        assert_eq!(phase_name(Phase::Following as i32), "following");
        assert_eq!(phase_name(Phase::CutOver as i32), "cut-over");
        assert_eq!(phase_name(Phase::Aborted as i32), "aborted");
    }
}
