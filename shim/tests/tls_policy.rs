//! etcd's TLS policy flags against real handshakes from a rustls client:
//! `--client-crl-file` / `--peer-crl-file` refuse a revoked certificate,
//! `--tls-min-version` / `--tls-max-version` bound the protocol, and
//! `--cipher-suites` bounds TLS 1.2's suites.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{TestCa, SERVE_AND_AUTHENTICATE};
use common::{etcdctl_run, free_port, Cairn};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ProtocolVersion, SupportedProtocolVersion};

const GOOD_SERIAL: u64 = 1001;
const REVOKED_SERIAL: u64 = 1002;

/// A CA, a server certificate (also for peer use), two client certificates
/// of which one is revoked, and the CA's CRL, written to `dir`.
fn write_pki(dir: &std::path::Path) {
    let ca = TestCa::new("cairn test CA");
    let both = SERVE_AND_AUTHENTICATE;
    ca.leaf("server", &["127.0.0.1"], both, Some(1))
        .write(dir, "server.pem", "server-key.pem");
    ca.leaf("good", &[], both, Some(GOOD_SERIAL))
        .write(dir, "good.pem", "good-key.pem");
    ca.leaf("revoked", &[], both, Some(REVOKED_SERIAL)).write(
        dir,
        "revoked.pem",
        "revoked-key.pem",
    );
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.crl"), ca.crl(&[REVOKED_SERIAL])).unwrap();
}

/// What a client offers.
struct Offer<'a> {
    versions: &'a [&'static SupportedProtocolVersion],
    /// None: every suite rustls has.
    suites: Option<&'a [CipherSuite]>,
    /// A client certificate from `write_pki` ("good", "revoked").
    cert: Option<&'a str>,
}

const ANY: Offer<'static> = Offer {
    versions: rustls::ALL_VERSIONS,
    suites: None,
    cert: None,
};

/// Connects over TLS, sends HTTP/2's preface and waits for the server's
/// SETTINGS: a refused client certificate (checked by the server after a
/// TLS 1.3 client thinks the handshake done) shows up there as an alert.
/// The version and suite negotiated, or the client's error.
fn connect(
    dir: &std::path::Path,
    addr: &str,
    offer: &Offer,
) -> Result<(ProtocolVersion, CipherSuite), String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(only) = offer.suites {
        provider.cipher_suites.retain(|s| only.contains(&s.suite()));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(offer.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match offer.cert {
        Some(name) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).unwrap()],
                PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    tls.write_all(preface).map_err(|e| e.to_string())?;
    let mut header = [0u8; 9];
    tls.read_exact(&mut header).map_err(|e| e.to_string())?;
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let version = tls.conn.protocol_version().unwrap();
    let suite = tls.conn.negotiated_cipher_suite().unwrap().suite();
    Ok((version, suite))
}

fn path(dir: &std::path::Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// One member with client and peer TLS, client certificates required on
/// both, and the CA's CRL on both; plus `extra` flags. Serving TLS to the
/// good client certificate. (the process, client host:port, peer host:port)
fn spawn_tls_member(dir: &std::path::Path, extra: &[&str]) -> (Cairn, String, String) {
    let (client, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (client_url, peer_url) = (format!("https://{client}"), format!("https://{peer}"));
    let cluster = format!("default={peer_url}");
    let (ca, crl, cert, key) = (
        path(dir, "ca.pem"),
        path(dir, "ca.crl"),
        path(dir, "server.pem"),
        path(dir, "server-key.pem"),
    );
    let mut args = vec![
        "--data-dir",
        "data",
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &cluster,
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
        "--client-crl-file",
        &crl,
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-client-cert-auth",
        "--peer-crl-file",
        &crl,
    ];
    args.extend_from_slice(extra);
    let mut server = Cairn::spawn(dir, &args);
    // Not etcdctl's health check: etcdctl 3.5.1 caps TLS at 1.2.
    let deadline = Instant::now() + Duration::from_secs(30);
    let good = Offer {
        cert: Some("good"),
        ..ANY
    };
    while connect(dir, &client, &good).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("cairn exited with {status}:\n{}", server.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "cairn not serving TLS within 30s:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, client, peer)
}

/// A revoked client certificate is refused on the client and the peer
/// port, by the server, at the handshake; the good one from the same CA
/// gets through, and etcdctl 3.5.1 (TLS 1.2) with each sees the same.
#[test]
fn crl_refuses_a_revoked_certificate_on_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    let (server, client, peer) = spawn_tls_member(dir.path(), &[]);
    for addr in [&client, &peer] {
        let good = connect(
            dir.path(),
            addr,
            &Offer {
                cert: Some("good"),
                ..ANY
            },
        );
        assert!(good.is_ok(), "{addr}: good certificate refused: {good:?}");
        let revoked = connect(
            dir.path(),
            addr,
            &Offer {
                cert: Some("revoked"),
                ..ANY
            },
        );
        let err = revoked.expect_err("revoked certificate served");
        assert!(err.contains("CertificateRevoked"), "{addr}: {err}");
    }
    let etcdctl = |name: &str| {
        let (ca, cert, key) = (
            path(dir.path(), "ca.pem"),
            path(dir.path(), &format!("{name}.pem")),
            path(dir.path(), &format!("{name}-key.pem")),
        );
        let url = format!("https://{client}");
        etcdctl_run(
            &[
                "--endpoints",
                &url,
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "--command-timeout",
                "3s",
                "put",
                "k",
                "v",
            ],
            None,
        )
    };
    assert!(etcdctl("good").status.success());
    assert!(
        !etcdctl("revoked").status.success(),
        "etcdctl with a revoked certificate wrote"
    );
    // The member says why, as etcd warns "rejected connection".
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"warn\"")
            && l.contains("rejected TLS connection")
            && l.contains("Revoked")),
        "no warning for the revoked certificate:\n{log}"
    );
}

/// `--tls-min-version TLS1.3`: a TLS 1.2-only client fails the handshake,
/// on both listeners; a TLS 1.3 one is served.
#[test]
fn min_version_tls13_refuses_a_tls12_client() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    let (_server, client, peer) = spawn_tls_member(dir.path(), &["--tls-min-version", "TLS1.3"]);
    for addr in [&client, &peer] {
        let tls12 = Offer {
            versions: &[&rustls::version::TLS12],
            cert: Some("good"),
            ..ANY
        };
        let err = connect(dir.path(), addr, &tls12).expect_err("TLS 1.2 client served");
        assert!(err.contains("ProtocolVersion"), "{addr}: {err}");
        let got = connect(
            dir.path(),
            addr,
            &Offer {
                cert: Some("good"),
                ..ANY
            },
        );
        assert_eq!(got.map(|(v, _)| v), Ok(ProtocolVersion::TLSv1_3), "{addr}");
    }
}

/// `--cipher-suites` with `--tls-max-version TLS1.2`: a client offering
/// only other suites fails; one offering the listed suite among others gets
/// it; a TLS 1.3-only client fails.
#[test]
fn cipher_suites_bound_tls12() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    let listed = CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    let (_server, client, peer) = spawn_tls_member(
        dir.path(),
        &[
            "--cipher-suites",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "--tls-max-version",
            "TLS1.2",
        ],
    );
    for addr in [&client, &peer] {
        let other = Offer {
            suites: Some(&[
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ]),
            cert: Some("good"),
            ..ANY
        };
        let err = connect(dir.path(), addr, &other).expect_err("unlisted suite served");
        assert!(err.contains("HandshakeFailure"), "{addr}: {err}");
        let got = connect(
            dir.path(),
            addr,
            &Offer {
                cert: Some("good"),
                ..ANY
            },
        );
        assert_eq!(got, Ok((ProtocolVersion::TLSv1_2, listed)), "{addr}");
        let tls13 = Offer {
            versions: &[&rustls::version::TLS13],
            cert: Some("good"),
            ..ANY
        };
        let err = connect(dir.path(), addr, &tls13).expect_err("TLS 1.3 client served");
        assert!(err.contains("ProtocolVersion"), "{addr}: {err}");
    }
}
