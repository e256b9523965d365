//! TLS to kine's PostgreSQL, as the URL asks with libpq's `sslmode` and
//! `sslrootcert` (tokio-postgres knows only disable/prefer/require, and no
//! root file): `disable`; `prefer` (libpq's default) and `require`, which
//! encrypt without checking the server's certificate unless a root file is
//! given; `verify-ca`, which checks the chain; `verify-full`, the chain and
//! the host name. rustls, as tonic uses.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

use crate::error::{Error, Result};

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The URL's TLS wishes, and the URL without them (for tokio-postgres).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsWish {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
    pub url: String,
}

/// Takes `sslmode` and `sslrootcert` out of a postgres URL's query.
pub fn split_tls(url: &str) -> Result<TlsWish> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = Mode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(Error::BadInput(format!(
                            "sslmode={other} in the PostgreSQL URL: expected disable, prefer, require, verify-ca or verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
            _ => kept.push(pair),
        }
    }
    // libpq: a root file given with `require` or `prefer` (or no mode)
    // verifies the chain, as verify-ca.
    if root_cert.is_some() && matches!(mode, Mode::Require | Mode::Prefer) {
        mode = Mode::VerifyCa;
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsWish {
        mode,
        root_cert,
        url,
    })
}

/// A URL query value with its %XX escapes decoded (a path in a URL, as
/// libpq reads it); a malformed escape stays as written.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TlsWish {
    /// tokio-postgres's mode.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The rustls connector for this mode.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::BadInput(format!("TLS setup for PostgreSQL: {e}")))?;
        let config = match self.mode {
            Mode::Disable | Mode::Prefer | Mode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            Mode::VerifyCa | Mode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::BadInput(format!("TLS setup for PostgreSQL: {e}")))?;
                let verifier: Arc<dyn ServerCertVerifier> = if self.mode == Mode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::BadInput(format!("sslrootcert {}: {e}", path.display())))?;
                let mut reader = std::io::BufReader::new(pem.as_slice());
                for cert in rustls_pemfile_certs(&mut reader, path)? {
                    roots.add(cert).map_err(|e| {
                        Error::BadInput(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot parse is skipped, as tonic does.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(Error::BadInput(
                "no root certificate to verify PostgreSQL's with: give sslrootcert=FILE in the URL"
                    .into(),
            ));
        }
        Ok(roots)
    }
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| Error::BadInput(format!("sslrootcert {}: {e}", path.display())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::BadInput(format!("sslrootcert {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::BadInput(format!(
            "sslrootcert {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// libpq's `require`: encrypted, the certificate not checked (the
/// signatures of the handshake still are).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_root_file_are_taken_out() {
        let w = split_tls(
            "postgres://u:p@h:5432/kine?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(w.mode, Mode::VerifyFull);
        assert_eq!(w.root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(w.url, "postgres://u:p@h:5432/kine?connect_timeout=5");
        let w = split_tls("postgres://h/kine").unwrap();
        assert_eq!(
            (w.mode, w.url.as_str()),
            (Mode::Prefer, "postgres://h/kine")
        );
        let w = split_tls("postgres://h/kine?sslmode=disable").unwrap();
        assert_eq!(
            (w.mode, w.url.as_str()),
            (Mode::Disable, "postgres://h/kine")
        );
        assert!(split_tls("postgres://h/kine?sslmode=sometimes").is_err());
    }

    #[test]
    fn a_root_file_with_require_verifies_the_chain_as_libpq_does() {
        let w = split_tls("postgres://h/kine?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(w.mode, Mode::VerifyCa);
        let w = split_tls("postgres://h/kine?sslrootcert=/ca.pem").unwrap();
        assert_eq!(w.mode, Mode::VerifyCa);
        let w = split_tls("postgres://h/kine?sslmode=prefer&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(
            (w.mode, w.root_cert),
            (Mode::VerifyCa, Some(PathBuf::from("/etc/ca.pem")))
        );
    }
}
