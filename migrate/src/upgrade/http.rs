//! GETs of a member's `/health` and `/version`, over plain TCP or TLS with
//! the same CA, certificate and key as the gRPC calls.
//!
//! One HTTP/1.0 request per connection: the server then sends the body
//! whole (no chunked encoding) and closes, so a few lines read it; an HTTP
//! client crate would bring a connection pool and a second TLS stack for
//! two small JSON bodies.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::connect::{EndpointConfig, Side};
use crate::error::{Error, Result};

/// The largest body read (`/health` and `/version` are a few dozen bytes).
const MAX_BODY: u64 = 1 << 20;

/// GETs over http:// or https:// with one TLS configuration.
#[derive(Clone)]
pub struct HttpGetter {
    tls: Option<TlsConnector>,
    timeout: Duration,
}

/// A response: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn bad_file(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("cannot read the {what} {}: {e}", path.display()))
}

fn tls_config(cfg: &EndpointConfig) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match &cfg.cacert {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad_file("CA", ca, e))? {
                let cert = cert.map_err(|e| bad_file("CA", ca, e))?;
                roots.add(cert).map_err(|e| bad_file("CA", ca, e))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as tonic's native roots do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::BadInput(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad_file("certificate", cert, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad_file("certificate", cert, e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad_file("key", key, e))?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                Error::BadInput(format!("the certificate and key do not go together: {e}"))
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(Error::BadInput(format!(
            "{} and {} go together: give both or neither",
            Side::Cluster.flag("cert"),
            Side::Cluster.flag("key")
        ))),
    }
}

/// Splits `http[s]://host:port[/...]` into (tls, host, host:port).
fn split_url(url: &str) -> std::result::Result<(bool, String, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let port_at = if authority.ends_with(']') {
        None
    } else {
        authority.rsplit_once(':')
    };
    let (host, addr) = match port_at {
        Some((h, _)) => (
            h.trim_matches(['[', ']']).to_string(),
            authority.to_string(),
        ),
        None => {
            let port = if tls { 443 } else { 80 };
            (
                authority.trim_matches(['[', ']']).to_string(),
                format!("{authority}:{port}"),
            )
        }
    };
    Ok((tls, host, addr))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> std::io::Result<Vec<u8>> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify ends the read with an
    // error after the whole body arrived: keep what came.
    match s.take(MAX_BODY).read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        Err(_) if !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

fn parse(raw: &[u8]) -> std::result::Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the answer is not HTTP".to_string())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

impl HttpGetter {
    /// A getter with `cfg`'s TLS files (used for https:// URLs only).
    pub fn new(cfg: &EndpointConfig, timeout: Duration) -> Result<HttpGetter> {
        let wants_tls = crate::connect::split_urls(&cfg.urls)
            .iter()
            .any(|u| u.starts_with("https://"));
        let tls = if wants_tls || cfg.cacert.is_some() {
            Some(TlsConnector::from(Arc::new(tls_config(cfg)?)))
        } else {
            None
        };
        Ok(HttpGetter { tls, timeout })
    }

    /// `GET <base URL><path>`; an error (as text) if no answer came within the timeout.
    pub async fn get(&self, base: &str, path: &str) -> std::result::Result<Response, String> {
        let (tls, host, addr) = split_url(base)?;
        let fetch = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let raw = if tls {
                let connector = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| "no TLS configuration for an https:// URL".to_string())?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                exchange(stream, &host, path).await
            } else {
                exchange(tcp, &host, path).await
            };
            parse(&raw.map_err(|e| format!("GET {path}: {e}"))?)
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| format!("GET {path}: no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_address() {
        assert_eq!(
            split_url("http://127.0.0.1:2379").unwrap(),
            (false, "127.0.0.1".into(), "127.0.0.1:2379".into())
        );
        assert_eq!(
            split_url("https://etcd-1.example:2379/").unwrap(),
            (true, "etcd-1.example".into(), "etcd-1.example:2379".into())
        );
        assert_eq!(
            split_url("https://[::1]:2379").unwrap(),
            (true, "::1".into(), "[::1]:2379".into())
        );
        assert_eq!(split_url("http://etcd").unwrap().2, "etcd:80");
        assert_eq!(split_url("https://[::1]").unwrap().2, "[::1]:443");
        assert!(split_url("etcd:2379").is_err());
    }

    #[test]
    fn responses_parse() {
        let r = parse(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"health\":\"false\"}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"health\":\"false\"}");
        assert!(parse(b"garbage").is_err());
    }
}
