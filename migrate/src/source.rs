//! Reading the source etcd: who it is, its compaction, pages of its state
//! at a revision, its leases, its alarms (the fence). Watching it lives in
//! `watch.rs`.

use std::time::Duration;

use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, LeaseLeasesRequest, LeaseTimeToLiveRequest, StatusRequest,
};
use cairn_proto::migrate::ImportLease;

use crate::connect::{connect, timed, Conn, EndpointConfig, Side, MAX_DECODE};
use crate::error::{Error, Result};
use crate::kvread::{self, maintenance_client, Page};
use crate::watch::SourceWatch;

/// The oldest etcd the migrator reads (major, minor).
pub const MIN_VERSION: (u64, u64) = (3, 4);

/// Who the source is, from Maintenance.Status.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// The cluster ID from the response header.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// Its server version ("3.5.1").
    pub version: String,
    /// Its revision when it answered.
    pub revision: i64,
}

/// User and password for a source with auth enabled.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Parses "3.5.1" (or "3.6.0-rc.1") into (major, minor).
pub fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Refuses versions older than [`MIN_VERSION`] and ones that do not parse.
pub fn check_version(v: &str) -> Result<()> {
    match parse_version(v) {
        Some(mv) if mv >= MIN_VERSION => Ok(()),
        _ => Err(Error::SourceTooOld {
            version: v.to_string(),
        }),
    }
}

/// The source etcd cluster.
#[derive(Clone)]
pub struct Source {
    /// The connection (balanced over the given URLs).
    pub conn: Conn,
    creds: Option<Credentials>,
}

/// Attempts of a source call that failed for a passing reason.
const RETRIES: u32 = 8;

impl Source {
    /// Connects, authenticates if asked, and checks the source is etcd v3 (3.4 or newer).
    pub async fn connect(
        cfg: &EndpointConfig,
        creds: Option<Credentials>,
    ) -> Result<(Source, SourceInfo)> {
        let conn = connect(Side::Source, cfg).await?;
        let src = Source { conn, creds };
        src.authenticate().await?;
        let info = src.status().await?;
        check_version(&info.version)?;
        Ok((src, info))
    }

    /// The URLs as given.
    pub fn urls(&self) -> &str {
        &self.conn.urls
    }

    async fn authenticate(&self) -> Result<()> {
        match &self.creds {
            Some(c) => crate::connect::authenticate(&self.conn, &c.user, &c.password).await,
            None => Ok(()),
        }
    }

    /// Runs `call` again while it fails for a passing reason (unavailable,
    /// timed out, an expired auth token), a bounded number of times.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=RETRIES {
            match call().await {
                Ok(v) => return Ok(v),
                Err(Error::Call { ref message, .. })
                    if self.creds.is_some() && message.contains("invalid auth token") =>
                {
                    tracing::info!("the source's auth token expired; authenticating again");
                    self.authenticate().await?;
                }
                Err(e) if e.is_transient() && attempt < RETRIES => {
                    tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Timeout(format!(
            "{what} on the source at {} kept failing",
            self.conn.urls
        )))
    }

    /// Maintenance.Status of whichever member answers.
    pub async fn status(&self) -> Result<SourceInfo> {
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match timed(
                &self.conn,
                "Status",
                maintenance_client(&self.conn).status(StatusRequest {}),
            )
            .await
            {
                Ok(resp) => {
                    last = Some(Ok(resp));
                    break;
                }
                Err(e) if e.is_transient() => last = Some(Err(e)),
                Err(e) => {
                    last = Some(Err(e));
                    break;
                }
            }
        }
        let resp = last
            .unwrap_or_else(|| Err(Error::Timeout("Status".into())))
            .map_err(|e| match e {
                // A connection was made (connect checked that) but the
                // answer is no gRPC: another protocol, or no etcd service.
                Error::Call {
                    code:
                        code @ (tonic::Code::Unimplemented
                        | tonic::Code::Internal
                        | tonic::Code::Unknown
                        | tonic::Code::Unavailable),
                    message,
                    ..
                } => Error::NotEtcd {
                    urls: self.conn.urls.clone(),
                    detail: if message.is_empty() {
                        format!("Maintenance.Status answered {code:?} with no message")
                    } else {
                        format!("Maintenance.Status answered {code:?}: {message}")
                    },
                },
                other => other,
            })?;
        let header = resp.header.unwrap_or_default();
        if resp.version.is_empty() {
            return Err(Error::NotEtcd {
                urls: self.conn.urls.clone(),
                detail: "its Status names no version".into(),
            });
        }
        Ok(SourceInfo {
            cluster_id: header.cluster_id,
            member_id: header.member_id,
            version: resp.version,
            revision: header.revision,
        })
    }

    /// The source's current revision (a linearizable read).
    pub async fn current_revision(&self) -> Result<i64> {
        self.retry("reading the source's revision", || {
            kvread::current_revision(&self.conn)
        })
        .await
    }

    /// The number of keys at `revision`.
    pub async fn count(&self, revision: i64) -> Result<i64> {
        self.retry("counting the source's keys", || {
            kvread::count(&self.conn, revision)
        })
        .await
    }

    /// The next page of a windowed read at `revision` (see [`kvread::Cursor`]).
    pub async fn range_window(
        &self,
        cursor: &kvread::Cursor,
        revision: i64,
        limit: i64,
    ) -> Result<(Page, kvread::Cursor)> {
        self.retry("reading a page of the source", || {
            kvread::range_window(&self.conn, cursor, revision, limit)
        })
        .await
    }

    /// The source's compact revision, -1 if it never compacted. `known` is
    /// one the source is known to have reached (-1: none): a cheap Range at
    /// it tells whether the source compacted since; only then does a Watch
    /// from it learn the exact revision (etcd cancels a watch that starts
    /// below its compact revision, naming that revision).
    pub async fn compact_revision(&self, known: i64) -> Result<i64> {
        let probe = known.max(1);
        let readable = self
            .retry("checking the source's compaction", || {
                kvread::readable_at(&self.conn, probe)
            })
            .await?;
        if readable {
            return Ok(known);
        }
        let mut watch =
            match SourceWatch::open(self, b"\0".to_vec(), Vec::new(), probe, false).await {
                Ok(w) => w,
                Err(Error::Compacted {
                    compact_revision, ..
                }) => return Ok(compact_revision),
                Err(e) => return Err(e),
            };
        match tokio::time::timeout(Duration::from_secs(10), watch.wait_compacted()).await {
            Ok(Ok(Some(c))) => Ok(c),
            Ok(Ok(None)) => Err(Error::Inconsistent(format!(
                "the source refused a read at revision {probe} as compacted, but a watch from it was not canceled"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout(format!(
                "the source did not cancel a watch from compacted revision {probe} within 10s"
            ))),
        }
    }

    /// The IDs of the source's leases, and the source's revision when it listed them.
    pub async fn leases(&self) -> Result<(Vec<i64>, i64)> {
        self.retry("listing the source's leases", || async {
            let resp = timed(
                &self.conn,
                "LeaseLeases",
                self.lease_client().lease_leases(LeaseLeasesRequest {}),
            )
            .await?;
            let rev = resp.header.map(|h| h.revision).unwrap_or_default();
            Ok((resp.leases.into_iter().map(|l| l.id).collect(), rev))
        })
        .await
    }

    /// A lease as the source holds it now (None: it has expired or was revoked).
    pub async fn lease(&self, id: i64) -> Result<Option<ImportLease>> {
        let req = LeaseTimeToLiveRequest { id, keys: false };
        let res = self
            .retry("reading a lease of the source", || async move {
                timed(
                    &self.conn,
                    "LeaseTimeToLive",
                    self.lease_client().lease_time_to_live(req),
                )
                .await
            })
            .await;
        match res {
            Ok(r) if r.ttl >= 0 => Ok(Some(ImportLease {
                id,
                granted_ttl: r.granted_ttl,
                remaining_ttl: r.ttl,
            })),
            Ok(_) => Ok(None),
            Err(Error::Call { message, .. }) if message.contains("lease not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lease_client(&self) -> LeaseClient<crate::connect::Svc> {
        LeaseClient::new(self.conn.svc.clone()).max_decoding_message_size(MAX_DECODE)
    }

    async fn alarm(
        &self,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Result<Vec<AlarmMember>> {
        let req = AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        };
        self.retry("an alarm call on the source", || async {
            let resp = timed(
                &self.conn,
                "Alarm",
                maintenance_client(&self.conn).alarm(req),
            )
            .await?;
            Ok(resp.alarms)
        })
        .await
    }

    /// The source's active alarms.
    pub async fn alarms(&self) -> Result<Vec<AlarmMember>> {
        self.alarm(AlarmAction::Get, 0, AlarmType::None).await
    }

    /// Fences the source: raises NOSPACE on `member_id`, so that it refuses puts.
    pub async fn fence(&self, member_id: u64) -> Result<()> {
        self.alarm(AlarmAction::Activate, member_id, AlarmType::Nospace)
            .await
            .map(|_| ())
    }

    /// Lifts a NOSPACE alarm of `member_id`.
    pub async fn unfence(&self, member_id: u64) -> Result<()> {
        self.alarm(AlarmAction::Deactivate, member_id, AlarmType::Nospace)
            .await
            .map(|_| ())
    }

    /// Lifts every NOSPACE alarm; returns the members it lifted them on.
    pub async fn unfence_all(&self) -> Result<Vec<u64>> {
        let mut lifted = Vec::new();
        for a in self.alarms().await? {
            if a.alarm == AlarmType::Nospace as i32 {
                self.unfence(a.member_id).await?;
                lifted.push(a.member_id);
            }
        }
        Ok(lifted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("3.5.1"), Some((3, 5)));
        assert_eq!(parse_version("3.6.0-rc.1"), Some((3, 6)));
        assert_eq!(parse_version("v3.4.30"), Some((3, 4)));
        assert_eq!(parse_version("3.10.2"), Some((3, 10)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn old_versions_are_refused() {
        assert!(check_version("3.4.0").is_ok());
        assert!(check_version("3.5.1").is_ok());
        assert!(check_version("3.6.4").is_ok());
        assert!(check_version("4.0.0").is_ok());
        let e = check_version("3.3.27").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the source runs etcd 3.3.27; migration needs etcd 3.4 or newer"
        );
        assert!(check_version("").is_err());
    }
}
