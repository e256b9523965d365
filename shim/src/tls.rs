//! TLS for the three ends of a member: the client listener, the peer listener
//! and the peer client. All three read their PEM files through one reader
//! whose error names the flag that gave the file, so an operator sees which
//! of the TLS flags to fix.
//!
//! Which flags require which is checked earlier, in `ServeArgs::validate`;
//! here a listener has TLS when its cert and key are both given, and checks
//! client certificates only when asked to and given a trusted CA. The
//! listeners' rustls configs are built here (not by tonic) so that they carry
//! etcd's cipher suites, TLS versions and CRLs (`tls_policy`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ServeArgs;
use crate::tls_policy::{TlsPolicy, TlsPolicyError};

/// A PEM file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("read {flag} {}", path.display())]
pub struct PemReadError {
    flag: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// A listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Read(#[from] PemReadError),
    #[error(transparent)]
    Policy(#[from] TlsPolicyError),
    /// The file holds no usable PEM object of the kind the flag names.
    #[error("{flag} {}: {what}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        what: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A PEM file given on the command line, with the flag that gave it.
#[derive(Clone, Copy)]
struct Pem<'a> {
    flag: &'static str,
    path: &'a Path,
}

impl<'a> Pem<'a> {
    fn from(flag: &'static str, path: &'a Option<PathBuf>) -> Option<Self> {
        path.as_deref().map(|path| Pem { flag, path })
    }

    fn read(self) -> Result<Vec<u8>, PemReadError> {
        std::fs::read(self.path).map_err(|source| PemReadError {
            flag: self.flag,
            path: self.path.to_owned(),
            source,
        })
    }

    fn bad(self, what: impl std::fmt::Display) -> TlsSetupError {
        TlsSetupError::Pem {
            flag: self.flag,
            path: self.path.to_owned(),
            what: what.to_string(),
        }
    }

    /// Every object of type `T` in `bytes` (read from this file); at least one.
    fn parse_all<T: PemObject>(self, bytes: &[u8], kind: &str) -> Result<Vec<T>, TlsSetupError> {
        let all = T::pem_slice_iter(bytes)
            .collect::<Result<Vec<T>, _>>()
            .map_err(|e| self.bad(e))?;
        if all.is_empty() {
            return Err(self.bad(format_args!("no PEM {kind} in the file")));
        }
        Ok(all)
    }
}

/// One side's files: the client side (--cert-file, ...) or the peer side
/// (--peer-cert-file, ...).
struct Files<'a> {
    cert: Option<Pem<'a>>,
    key: Option<Pem<'a>>,
    trusted_ca: Option<Pem<'a>>,
    crl: Option<Pem<'a>>,
    client_cert_auth: bool,
}

impl<'a> Files<'a> {
    fn client(args: &'a ServeArgs) -> Self {
        Files {
            cert: Pem::from("--cert-file", &args.cert_file),
            key: Pem::from("--key-file", &args.key_file),
            trusted_ca: Pem::from("--trusted-ca-file", &args.trusted_ca_file),
            crl: Pem::from("--client-crl-file", &args.client_crl_file),
            client_cert_auth: args.client_cert_auth,
        }
    }

    fn peer(args: &'a ServeArgs) -> Self {
        Files {
            cert: Pem::from("--peer-cert-file", &args.peer_cert_file),
            key: Pem::from("--peer-key-file", &args.peer_key_file),
            trusted_ca: Pem::from("--peer-trusted-ca-file", &args.peer_trusted_ca_file),
            crl: Pem::from("--peer-crl-file", &args.peer_crl_file),
            client_cert_auth: args.peer_client_cert_auth,
        }
    }

    /// The listener's config; None (plain TCP) without both cert and key.
    fn server(
        &self,
        policy: &TlsPolicy,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
        let (Some(cert), Some(key)) = (self.cert, self.key) else {
            return Ok(None);
        };
        let (cert_pem, key_pem) = (cert.read()?, key.read()?);
        let chain: Vec<CertificateDer<'static>> = cert.parse_all(&cert_pem, "certificate")?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key.bad(e))?;
        let builder = rustls::ServerConfig::builder_with_provider(policy.provider.clone())
            .with_protocol_versions(&policy.versions)?;
        let builder = match (self.client_cert_auth, self.trusted_ca) {
            (true, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in ca.parse_all::<CertificateDer<'static>>(&ca.read()?, "certificate")? {
                    roots.add(c).map_err(|e| ca.bad(e))?;
                }
                let mut verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    policy.provider.clone(),
                );
                if let Some(crl) = self.crl {
                    // As etcd: a certificate is refused when its serial is
                    // listed; a chain with no CRL for its issuer passes.
                    let crls: Vec<CertificateRevocationListDer<'static>> =
                        crl.parse_all(&crl.read()?, "X509 CRL")?;
                    verifier = verifier
                        .with_crls(crls)
                        .only_check_end_entity_revocation()
                        .allow_unknown_revocation_status();
                }
                builder.with_client_cert_verifier(verifier.build()?)
            }
            _ => {
                if let Some(crl) = self.crl {
                    tracing::warn!(
                        "{} is ignored: client certificates are not checked on this listener",
                        crl.flag
                    );
                }
                builder.with_no_client_auth()
            }
        };
        let mut config = builder.with_single_cert(chain, key_der)?;
        // gRPC, and HTTP/1.1 for the health and metrics paths on the same port.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// The client listener's TLS (--cert-file, --key-file, --client-cert-auth,
/// --trusted-ca-file, --client-crl-file and the TLS policy flags).
pub fn client_listener(
    args: &ServeArgs,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    Files::client(args).server(&TlsPolicy::from_args(args)?)
}

/// The peer listener's TLS (--peer-cert-file, --peer-key-file,
/// --peer-client-cert-auth, --peer-trusted-ca-file, --peer-crl-file and the
/// TLS policy flags).
pub fn peer_listener(args: &ServeArgs) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    Files::peer(args).server(&TlsPolicy::from_args(args)?)
}

/// The TLS this member dials its peers with, when peer TLS is on: it trusts
/// --peer-trusted-ca-file and presents the peer certificate, as etcd does.
pub fn peer_client(args: &ServeArgs) -> Result<Option<ClientTlsConfig>, PemReadError> {
    if !args.peer_tls_enabled() {
        return Ok(None);
    }
    let files = Files::peer(args);
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = files.trusted_ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca.read()?));
    }
    if let (Some(cert), Some(key)) = (files.cert, files.key) {
        tls = tls.identity(Identity::from_pem(cert.read()?, key.read()?));
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        let argv = std::iter::once("cairn").chain(flags.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.serve,
            Err(e) => panic!("parse {flags:?}: {e}"),
        }
    }

    /// A PEM file: "k" a private key, any other name a self-signed
    /// certificate (also usable as a CA).
    fn file(dir: &tempfile::TempDir, name: &str) -> String {
        use std::sync::OnceLock;
        static PAIR: OnceLock<(String, String)> = OnceLock::new();
        let (cert, key) = PAIR.get_or_init(|| {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            (c.cert.pem(), c.signing_key.serialize_pem())
        });
        let path = dir.path().join(name);
        std::fs::write(&path, if name == "k" { key } else { cert }).unwrap();
        path.display().to_string()
    }

    #[test]
    fn no_files_means_no_tls() {
        let a = args(&[]);
        assert!(client_listener(&a).unwrap().is_none());
        assert!(peer_listener(&a).unwrap().is_none());
        assert!(peer_client(&a).unwrap().is_none());
    }

    #[test]
    fn given_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = (file(&dir, "c"), file(&dir, "k"), file(&dir, "ca"));
        let a = args(&[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ]);
        assert!(client_listener(&a).unwrap().is_some());
        assert!(peer_listener(&a).unwrap().is_some());
        assert!(peer_client(&a).unwrap().is_some());
    }

    /// Each end reports the flag and the path of the file it cannot read.
    #[test]
    fn unreadable_file_is_named_with_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (file(&dir, "c"), file(&dir, "k"));
        let missing = dir.path().join("missing.pem").display().to_string();
        let message = |e: &dyn std::error::Error| e.to_string();

        let a = args(&["--cert-file", &cert, "--key-file", &missing]);
        let e = message(&client_listener(&a).unwrap_err());
        assert_eq!(e, format!("read --key-file {missing}"));

        let a = args(&[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--client-cert-auth",
            "--trusted-ca-file",
            &missing,
        ]);
        let e = message(&client_listener(&a).unwrap_err());
        assert_eq!(e, format!("read --trusted-ca-file {missing}"));

        let a = args(&["--peer-cert-file", &missing, "--peer-key-file", &key]);
        assert_eq!(
            message(&peer_listener(&a).unwrap_err()),
            format!("read --peer-cert-file {missing}")
        );
        assert_eq!(
            message(&peer_client(&a).unwrap_err()),
            format!("read --peer-cert-file {missing}")
        );

        let a = args(&[
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &missing,
        ]);
        // The listener reads the CA only to check client certificates.
        assert!(peer_listener(&a).unwrap().is_some());
        assert_eq!(
            message(&peer_client(&a).unwrap_err()),
            format!("read --peer-trusted-ca-file {missing}")
        );
    }
}
