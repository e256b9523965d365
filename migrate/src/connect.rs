//! Connecting to a side: comma-separated URLs balanced over one tonic
//! channel, TLS the way etcdctl takes it (CA, client cert and key), and an
//! auth token sent on every call as etcd's clients send it (`token`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::AuthenticateRequest;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{chain, Error, Result};

/// Largest gRPC message the migrator decodes: source pages and big revisions.
pub const MAX_DECODE: usize = 512 << 20;
/// Largest gRPC message the migrator encodes (the target bounds what it takes).
pub const MAX_ENCODE: usize = 64 << 20;
/// How long one unary call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which side of the migration an endpoint belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The etcd cluster migrated from.
    Source,
    /// The Cairn cluster migrated to.
    Target,
    /// The etcd or Cairn cluster `cairn upgrade` checks.
    Cluster,
}

impl Side {
    /// The command-line flag for `name` on this side: `--from-cert`,
    /// `--to-cert`, or plain `--cert` (etcdctl's) for `cairn upgrade`.
    pub fn flag(self, name: &str) -> String {
        match self {
            Side::Source => format!("--from-{name}"),
            Side::Target => format!("--to-{name}"),
            Side::Cluster => format!("--{name}"),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
            Side::Cluster => "cluster",
        })
    }
}

/// Where a side is and how to talk to it.
#[derive(Clone, Debug, Default)]
pub struct EndpointConfig {
    /// Comma-separated URLs (`http://` or `https://`).
    pub urls: String,
    /// PEM CA bundle to trust (else the system's roots for https).
    pub cacert: Option<PathBuf>,
    /// PEM client certificate.
    pub cert: Option<PathBuf>,
    /// PEM client key.
    pub key: Option<PathBuf>,
    /// How long connecting to one endpoint may take.
    pub dial_timeout: Duration,
}

/// The auth token every call carries, replaced when the source re-authenticates.
#[derive(Clone, Default)]
pub struct Token(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Token {
    /// Sets the token (None: calls carry none).
    pub fn set(&self, token: Option<MetadataValue<Ascii>>) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        *guard = token;
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = guard.as_ref() {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// The service every generated client of the migrator runs on.
pub type Svc = InterceptedService<Channel, Token>;

/// A connected side: its balanced channel and its token.
#[derive(Clone)]
pub struct Conn {
    /// Which side.
    pub side: Side,
    /// The URLs as given (for messages).
    pub urls: String,
    /// The balanced channel with the token interceptor.
    pub svc: Svc,
    /// The token the interceptor sends.
    pub token: Token,
}

impl Conn {
    /// Wraps a call's failure on this side.
    pub fn err(&self, call: &'static str, status: tonic::Status) -> Error {
        classify_status(self.side, &self.urls, call, status)
    }
}

/// Splits `urls` on commas, dropping blanks.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

fn read_pem(side: Side, what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::BadInput(format!(
            "cannot read the {side}'s {what} {}: {e}",
            path.display()
        ))
    })
}

fn tls_config(side: Side, cfg: &EndpointConfig) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new();
    match &cfg.cacert {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_pem(side, "CA", ca)?)),
        None => tls = tls.with_native_roots(),
    }
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem(side, "certificate", cert)?,
                read_pem(side, "key", key)?,
            ))
        }
        (None, None) => {}
        _ => {
            return Err(Error::BadInput(format!(
                "{} and {} go together: give both or neither",
                side.flag("cert"),
                side.flag("key")
            )));
        }
    }
    Ok(tls)
}

/// One URL's endpoint: its dial timeout, keep-alives and TLS (`cfg`'s files).
pub fn endpoint(side: Side, cfg: &EndpointConfig, url: &str) -> Result<Endpoint> {
    let bad = |why: String| Error::BadInput(format!("bad {side} URL {url:?}: {why}"));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("it must start with http:// or https://".into()));
    }
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(chain(&e)))?
        .connect_timeout(cfg.dial_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        ep = ep
            .tls_config(tls_config(side, cfg)?)
            .map_err(|e| Error::Tls {
                side,
                urls: url.to_string(),
                detail: chain(&e),
            })?;
    } else if cfg.cacert.is_some() || cfg.cert.is_some() {
        tracing::warn!(%side, url, "TLS files given for an http:// URL; they are not used (use https://)");
    }
    Ok(ep)
}

/// Whether an error's text says TLS failed.
pub fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
        "unknownissuer",
        "badsignature",
        "alert",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// Whether an error's text says no connection could be made (as opposed
/// to one that was made and broke, or spoke another protocol).
pub fn is_connect_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "tcp connect error",
        "connection refused",
        "dns error",
        "no route to host",
        "network is unreachable",
        "connect timed out",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// Turns a failed call into the clearest error: unreachable, TLS, or the call's own.
pub fn classify_status(side: Side, urls: &str, call: &'static str, status: tonic::Status) -> Error {
    let detail = chain(&status);
    let code = match status.code() {
        tonic::Code::Unknown if detail.contains("transport error") => tonic::Code::Unavailable,
        c => c,
    };
    match code {
        tonic::Code::Unavailable if looks_like_tls(&detail) => Error::Tls {
            side,
            urls: urls.to_string(),
            detail,
        },
        tonic::Code::Unavailable if is_connect_failure(&detail) => Error::Unreachable {
            side,
            urls: urls.to_string(),
            detail,
        },
        _ => Error::call(side, call, status),
    }
}

/// Connects to `cfg.urls`: checks that at least one endpoint accepts a
/// connection (so an unreachable side or a failed TLS handshake is one clear
/// error), then balances calls over those that answered.
pub async fn connect(side: Side, cfg: &EndpointConfig) -> Result<Conn> {
    let urls = split_urls(&cfg.urls);
    if urls.is_empty() {
        let flag = match side {
            Side::Source => "--from",
            Side::Target => "--to",
            Side::Cluster => "--endpoints",
        };
        return Err(Error::BadInput(format!(
            "no {side} endpoints: give {flag} URL[,URL...]"
        )));
    }
    let mut endpoints = Vec::with_capacity(urls.len());
    for u in &urls {
        endpoints.push(endpoint(side, cfg, u)?);
    }
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut live = Vec::with_capacity(endpoints.len());
    for (ep, url) in endpoints.into_iter().zip(&urls) {
        if let Err(e) = ep.connect().await {
            let detail = chain(&e);
            let detail = detail
                .strip_prefix("transport error: ")
                .unwrap_or(&detail)
                .to_string();
            errors.push((url.clone(), detail));
        } else {
            live.push(ep);
        }
    }
    if errors.len() < urls.len() {
        for (url, detail) in &errors {
            tracing::warn!(%side, %url, error = %detail, "endpoint not reachable; using the others");
        }
    } else {
        let (url, detail) = errors.into_iter().next().unwrap_or_default();
        let detail = if urls.len() > 1 {
            format!("{url}: {detail}")
        } else {
            detail
        };
        return Err(if looks_like_tls(&detail) {
            Error::Tls {
                side,
                urls: cfg.urls.clone(),
                detail,
            }
        } else {
            Error::Unreachable {
                side,
                urls: cfg.urls.clone(),
                detail,
            }
        });
    }
    // Only the endpoints that answered: tonic's balancer keeps sending calls
    // to one that refuses connections (each fails Unavailable). One that
    // goes down later is ridden out by the calls' retries.
    let channel = Channel::balance_list(live.into_iter());
    let token = Token::default();
    Ok(Conn {
        side,
        urls: cfg.urls.clone(),
        svc: InterceptedService::new(channel, token.clone()),
        token,
    })
}

/// User and password from etcdctl-style flags: `user_flag` takes USER or
/// USER:PASSWORD, `password_flag` the password (given once, one way or the
/// other). `flags` names them for the messages: (`--user`, `--password`).
pub fn credentials(
    user: Option<&str>,
    password: Option<&str>,
    flags: (&str, &str),
) -> Result<Option<(String, String)>> {
    let (user_flag, password_flag) = flags;
    let Some(u) = user else {
        return match password {
            Some(_) => Err(Error::BadInput(format!(
                "{password_flag} needs {user_flag}"
            ))),
            None => Ok(None),
        };
    };
    let (name, inline) = match u.split_once(':') {
        Some((name, pw)) => (name, Some(pw)),
        None => (u, None),
    };
    match (name.is_empty(), inline, password) {
        (true, _, _) => Err(Error::BadInput(format!("{user_flag} names no user"))),
        (false, Some(p), None) | (false, None, Some(p)) => {
            Ok(Some((name.to_string(), p.to_string())))
        }
        (false, Some(_), Some(_)) => Err(Error::BadInput(format!(
            "give the password once: in {user_flag} USER:PASSWORD or in {password_flag}"
        ))),
        (false, None, None) => Err(Error::BadInput(format!(
            "{user_flag} needs a password: {user_flag} USER:PASSWORD or {password_flag}"
        ))),
    }
}

/// Authenticates as `user` (etcd's Auth.Authenticate) and makes every
/// later call on `conn` carry the token.
pub async fn authenticate(conn: &Conn, user: &str, password: &str) -> Result<()> {
    conn.token.set(None);
    let req = AuthenticateRequest {
        name: user.to_string(),
        password: password.to_string(),
    };
    let auth_error = |detail: String| Error::Auth {
        side: conn.side,
        urls: conn.urls.clone(),
        user: user.to_string(),
        detail,
    };
    let resp = timed(
        conn,
        "Authenticate",
        AuthClient::new(conn.svc.clone()).authenticate(req),
    )
    .await
    .map_err(|e| match e {
        Error::Call { message, .. } => auth_error(message),
        other => other,
    })?;
    let token = MetadataValue::try_from(resp.token.as_str())
        .map_err(|e| auth_error(format!("the token is not valid metadata: {e}")))?;
    conn.token.set(Some(token));
    Ok(())
}

/// Runs one unary call with [`CALL_TIMEOUT`].
pub async fn timed<T, F>(conn: &Conn, call: &'static str, fut: F) -> Result<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    timed_for(conn, call, CALL_TIMEOUT, fut).await
}

/// Runs one unary call that may take up to `limit`.
pub async fn timed_for<T, F>(conn: &Conn, call: &'static str, limit: Duration, fut: F) -> Result<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(conn.err(call, status)),
        Err(_) => Err(Error::Call {
            side: conn.side,
            call,
            code: tonic::Code::DeadlineExceeded,
            message: format!("no answer within {limit:?}"),
        }),
    }
}
