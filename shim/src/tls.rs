//! TLS for the three ends of a member: the client listener, the peer listener
//! and the peer client. All three read their PEM files through one reader
//! whose error names the flag that gave the file, so an operator sees which
//! of the eight TLS flags to fix.
//!
//! Which flags require which is checked earlier, in `ServeArgs::validate`;
//! here a listener has TLS when its cert and key are both given, and checks
//! client certificates only when asked to and given a trusted CA.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::ServeArgs;

/// A PEM file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("read {flag} {}", path.display())]
pub struct PemReadError {
    flag: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
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
}

/// One side's files: the client side (--cert-file, ...) or the peer side
/// (--peer-cert-file, ...).
struct Files<'a> {
    cert: Option<Pem<'a>>,
    key: Option<Pem<'a>>,
    trusted_ca: Option<Pem<'a>>,
    client_cert_auth: bool,
}

impl<'a> Files<'a> {
    fn client(args: &'a ServeArgs) -> Self {
        Files {
            cert: Pem::from("--cert-file", &args.cert_file),
            key: Pem::from("--key-file", &args.key_file),
            trusted_ca: Pem::from("--trusted-ca-file", &args.trusted_ca_file),
            client_cert_auth: args.client_cert_auth,
        }
    }

    fn peer(args: &'a ServeArgs) -> Self {
        Files {
            cert: Pem::from("--peer-cert-file", &args.peer_cert_file),
            key: Pem::from("--peer-key-file", &args.peer_key_file),
            trusted_ca: Pem::from("--peer-trusted-ca-file", &args.peer_trusted_ca_file),
            client_cert_auth: args.peer_client_cert_auth,
        }
    }

    /// The listener's config; None (plain TCP) without both cert and key.
    fn server(&self) -> Result<Option<ServerTlsConfig>, PemReadError> {
        let (Some(cert), Some(key)) = (self.cert, self.key) else {
            return Ok(None);
        };
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(cert.read()?, key.read()?));
        if self.client_cert_auth {
            if let Some(ca) = self.trusted_ca {
                tls = tls.client_ca_root(Certificate::from_pem(ca.read()?));
            }
        }
        Ok(Some(tls))
    }
}

/// The client listener's TLS (--cert-file, --key-file, --client-cert-auth,
/// --trusted-ca-file).
pub fn client_listener(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, PemReadError> {
    Files::client(args).server()
}

/// The peer listener's TLS (--peer-cert-file, --peer-key-file,
/// --peer-client-cert-auth, --peer-trusted-ca-file).
pub fn peer_listener(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, PemReadError> {
    Files::peer(args).server()
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

    /// A file with some bytes in it; the builders do not parse PEM (tonic
    /// does, when the listener or channel is built).
    fn file(dir: &tempfile::TempDir, name: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, b"pem").unwrap();
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
        let message = |e: PemReadError| e.to_string();

        let a = args(&["--cert-file", &cert, "--key-file", &missing]);
        let e = message(client_listener(&a).unwrap_err());
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
        let e = message(client_listener(&a).unwrap_err());
        assert_eq!(e, format!("read --trusted-ca-file {missing}"));

        let a = args(&["--peer-cert-file", &missing, "--peer-key-file", &key]);
        assert_eq!(
            message(peer_listener(&a).unwrap_err()),
            format!("read --peer-cert-file {missing}")
        );
        assert_eq!(
            message(peer_client(&a).unwrap_err()),
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
            message(peer_client(&a).unwrap_err()),
            format!("read --peer-trusted-ca-file {missing}")
        );
    }
}
