//! Gathering [`ClusterFacts`]: the member list from any given endpoint,
//! then, for every member at its own client URL and all at once, Status,
//! `/health` and `/version`, and Status again a window later. Read-only,
//! and bounded: each call has the command timeout, and a member that did
//! not answer the first Status is not asked again.

use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmType, Member, MemberListRequest, StatusRequest,
};
use futures::future::join_all;
use tonic::service::interceptor::InterceptedService;

use crate::connect::{
    authenticate, connect, endpoint, timed_for, Conn, EndpointConfig, Side, Token,
};
use crate::error::{Error, Result};
use crate::upgrade::facts::{ClusterFacts, Health, MemberFacts, Sample};
use crate::upgrade::http::HttpGetter;
use crate::upgrade::version::CairnMember;

/// How to reach the cluster and how long to look at it.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Endpoints and TLS files.
    pub endpoint: EndpointConfig,
    /// User and password, for a cluster with auth enabled.
    pub credentials: Option<(String, String)>,
    /// Time between the two Status samples (leader stability, progress).
    pub window: Duration,
    /// Longest any one call may take.
    pub command_timeout: Duration,
}

fn sample(s: cairn_proto::etcdserverpb::StatusResponse) -> Sample {
    Sample {
        version: s.version,
        db_size: s.db_size,
        db_size_in_use: s.db_size_in_use,
        leader: s.leader,
        raft_term: s.raft_term,
        raft_index: s.raft_index,
        applied: s.raft_applied_index,
        errors: s.errors,
        is_learner: s.is_learner,
        storage_version: s.storage_version,
        db_size_quota: s.db_size_quota,
        downgrade: s.downgrade_info.map(|d| (d.enabled, d.target_version)),
    }
}

/// One short line for a failed call: the OS's words for a connection that
/// was refused or timed out, else the call's code and message.
pub fn brief(e: &Error) -> String {
    let text = match e {
        Error::Unreachable { detail, .. } | Error::Tls { detail, .. } => detail
            .rsplit(": ")
            .next()
            .unwrap_or(detail)
            .trim_matches(|c: char| c == '"' || c.is_whitespace())
            .to_string(),
        Error::Call { code, message, .. } => {
            let tail = message
                .rsplit("transport error: ")
                .next()
                .unwrap_or(message);
            format!("{code:?}: {}", tail.trim())
        }
        other => other.to_string(),
    };
    let mut out: String = text.chars().take(160).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

async fn status(conn: &Conn, limit: Duration) -> std::result::Result<Sample, String> {
    timed_for(
        conn,
        "Status",
        limit,
        MaintenanceClient::new(conn.svc.clone()).status(StatusRequest {}),
    )
    .await
    .map(sample)
    .map_err(|e| brief(&e))
}

/// `/health`: healthy when 200 and `"health": "true"` (etcd writes a string).
fn health_of(r: &crate::upgrade::http::Response) -> Health {
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let healthy = matches!(v.get("health"), Some(serde_json::Value::String(s)) if s == "true")
        || v.get("health") == Some(&serde_json::Value::Bool(true));
    let reason = v
        .get("reason")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty())
        .map(String::from)
        .unwrap_or_else(|| format!("HTTP {} {}", r.status, r.body.trim()));
    Health {
        ok: r.status == 200 && healthy,
        reason,
    }
}

/// The `cairn` object of `/version`, which only a Cairn member has.
pub fn cairn_of(name: &str, body: &str) -> Option<CairnMember> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let c = v.get("cairn")?;
    let num = |k: &str| c.get(k).and_then(|x| x.as_u64());
    Some(CairnMember {
        name: name.to_string(),
        version: c.get("version")?.as_str()?.to_string(),
        schema: num("storeSchema")?,
        peer_min: num("peerProtocolMin").or(num("peerProtocol"))?,
        peer: num("peerProtocol")?,
    })
}

fn member_conn(
    cfg: &EndpointConfig,
    url: &str,
    token: &Token,
) -> std::result::Result<Conn, String> {
    let ep = endpoint(Side::Cluster, cfg, url).map_err(|e| brief(&e))?;
    Ok(Conn {
        side: Side::Cluster,
        urls: url.to_string(),
        svc: InterceptedService::new(ep.connect_lazy(), token.clone()),
        token: token.clone(),
    })
}

/// What one member answered, and the cluster's alarm list as it gave it
/// (asked of every member, so that one that hangs does not hide the list).
type Alarms = std::result::Result<Vec<(u64, String)>, String>;

async fn observe(
    cfg: &ProbeConfig,
    http: &HttpGetter,
    token: &Token,
    m: Member,
    second_at: Instant,
) -> (MemberFacts, Alarms) {
    let label = if m.name.is_empty() {
        format!("{:x}", m.id)
    } else {
        m.name.clone()
    };
    let mut facts = MemberFacts {
        id: m.id,
        name: m.name.clone(),
        client_urls: m.client_ur_ls.clone(),
        is_learner: m.is_learner,
        first: Err("not asked".into()),
        second: Err("not asked".into()),
        health: Err("not asked".into()),
        cairn: None,
    };
    let Some(url) = m.client_ur_ls.first() else {
        return (facts, Err("not started".into()));
    };
    let conn = match member_conn(&cfg.endpoint, url, token) {
        Ok(c) => c,
        Err(e) => {
            facts.first = Err(e.clone());
            facts.second = Err(e.clone());
            return (facts, Err(e));
        }
    };
    let limit = cfg.command_timeout;
    let (first, health, version, alarms) = tokio::join!(
        status(&conn, limit),
        http.get(url, "/health"),
        http.get(url, "/version"),
        alarms(&conn, limit)
    );
    facts.health = health.map(|r| health_of(&r));
    facts.cairn = version.ok().and_then(|r| cairn_of(&label, &r.body));
    facts.first = first;
    facts.second = match &facts.first {
        Ok(_) => {
            tokio::time::sleep_until(second_at.into()).await;
            status(&conn, limit).await
        }
        Err(e) => Err(e.clone()),
    };
    (facts, alarms)
}

async fn alarms(conn: &Conn, limit: Duration) -> std::result::Result<Vec<(u64, String)>, String> {
    let req = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    let resp = timed_for(
        conn,
        "Alarm",
        limit,
        MaintenanceClient::new(conn.svc.clone()).alarm(req),
    )
    .await
    .map_err(|e| brief(&e))?;
    Ok(resp
        .alarms
        .into_iter()
        .map(|a| {
            let name = AlarmType::try_from(a.alarm).map_or_else(
                |_| format!("alarm {}", a.alarm),
                |t| t.as_str_name().to_string(),
            );
            (a.member_id, name)
        })
        .collect())
}

/// Looks at the cluster behind `cfg.endpoint`: every member of its member
/// list, twice, `cfg.window` apart. Fails only when no endpoint answers
/// the member list (then nothing can be told).
pub async fn gather(cfg: &ProbeConfig) -> Result<ClusterFacts> {
    let conn = connect(Side::Cluster, &cfg.endpoint).await?;
    if let Some((user, password)) = &cfg.credentials {
        authenticate(&conn, user, password).await?;
    }
    let list = timed_for(
        &conn,
        "MemberList",
        cfg.command_timeout,
        ClusterClient::new(conn.svc.clone()).member_list(MemberListRequest {
            linearizable: false,
        }),
    )
    .await
    .map_err(|e| match e {
        Error::Call {
            code: tonic::Code::Unimplemented,
            message,
            ..
        } => Error::NotEtcd {
            urls: conn.urls.clone(),
            detail: message,
        },
        other => other,
    })?;
    let http = HttpGetter::new(&cfg.endpoint, cfg.command_timeout)?;
    let start = Instant::now();
    let second_at = start + cfg.window;
    let observed = join_all(
        list.members
            .into_iter()
            .map(|m| observe(cfg, &http, &conn.token, m, second_at)),
    )
    .await;
    let alarms = observed
        .iter()
        .map(|(_, a)| a)
        .find(|a| a.is_ok())
        .or_else(|| observed.first().map(|(_, a)| a))
        .cloned()
        .unwrap_or_else(|| Err("the member list is empty".into()));
    Ok(ClusterFacts {
        members: observed.into_iter().map(|(m, _)| m).collect(),
        alarms,
        window: cfg.window,
    })
}

/// A member named by `--member`: its name, or its ID in hex (as etcdctl
/// prints it, with or without `0x`) or decimal.
pub fn find_member(facts: &ClusterFacts, wanted: &str) -> Result<usize> {
    let w = wanted.trim();
    let hex = u64::from_str_radix(w.trim_start_matches("0x"), 16).ok();
    let dec = w.parse::<u64>().ok();
    facts
        .members
        .iter()
        .position(|m| m.name == w)
        .or_else(|| {
            facts
                .members
                .iter()
                .position(|m| Some(m.id) == hex || Some(m.id) == dec)
        })
        .ok_or_else(|| {
            let known: Vec<String> = facts
                .members
                .iter()
                .map(|m| format!("{} ({:x})", m.label(), m.id))
                .collect();
            Error::BadInput(format!(
                "no member named or numbered {wanted:?} in the member list: {}",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_one_short_line() {
        let refused = crate::connect::classify_status(
            Side::Cluster,
            "http://127.0.0.1:1",
            "Status",
            tonic::Status::unavailable(
                "tcp connect error: transport error: Connection refused (os error 111)",
            ),
        );
        assert_eq!(brief(&refused), "Connection refused (os error 111)");
        let late = Error::Call {
            side: Side::Cluster,
            call: "Status",
            code: tonic::Code::DeadlineExceeded,
            message: "no answer within 2s".into(),
        };
        assert_eq!(brief(&late), "DeadlineExceeded: no answer within 2s");
    }

    #[test]
    fn health_bodies_of_etcd_and_cairn() {
        let r = |status, body: &str| crate::upgrade::http::Response {
            status,
            body: body.into(),
        };
        assert!(health_of(&r(200, "{\"health\":\"true\",\"reason\":\"\"}")).ok);
        let sick = health_of(&r(
            503,
            "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}",
        ));
        assert!(!sick.ok);
        assert_eq!(sick.reason, "ALARM NOSPACE");
        assert!(!health_of(&r(200, "{\"health\":\"false\"}")).ok);
    }

    #[test]
    fn only_cairn_has_a_cairn_version() {
        assert!(cairn_of("m0", "{\"etcdserver\":\"3.5.1\",\"etcdcluster\":\"3.5.0\"}").is_none());
        let c = cairn_of(
            "m0",
            "{\"etcdserver\":\"3.6.0\",\"cairn\":{\"version\":\"0.1.0\",\"storeSchema\":3,\"peerProtocol\":1,\"peerProtocolMin\":1}}",
        )
        .unwrap();
        assert_eq!((c.version.as_str(), c.schema, c.peer), ("0.1.0", 3, 1));
    }
}
