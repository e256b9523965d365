//! TLS and client-certificate authentication, driven by the real etcdctl.

mod common;

use common::{etcdctl_run, free_port, wait_healthy, Cairn};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cairn test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "cairn",
        ),
        client: leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "root"),
    }
}

#[test]
fn mtls_accepts_trusted_client_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    for (name, text) in [
        ("ca.pem", &pki.ca),
        ("server.pem", &pki.server.0),
        ("server-key.pem", &pki.server.1),
        ("client.pem", &pki.client.0),
        ("client-key.pem", &pki.client.1),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let url = format!("https://127.0.0.1:{}", free_port());
    let mut server = Cairn::spawn(
        dir.path(),
        &[
            "--data-dir",
            "data",
            // Any free port: a single member never dials itself.
            "--listen-peer-urls",
            "http://127.0.0.1:0",
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--cert-file",
            &path("server.pem"),
            "--key-file",
            &path("server-key.pem"),
            "--trusted-ca-file",
            &path("ca.pem"),
            "--client-cert-auth",
        ],
    );
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client-key.pem"));
    let auth = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    wait_healthy(&mut server, &url, &auth);

    let with_auth = |args: &[&str]| {
        let mut all = vec!["--endpoints", url.as_str()];
        all.extend_from_slice(&auth);
        all.extend_from_slice(args);
        etcdctl_run(&all, None)
    };
    assert!(with_auth(&["put", "secure", "yes"]).status.success());
    let got = with_auth(&["get", "secure", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "yes");

    // Without a client certificate the handshake is refused.
    let anon = etcdctl_run(
        &[
            "--endpoints",
            &url,
            "--cacert",
            &ca,
            "--command-timeout",
            "3s",
            "get",
            "secure",
        ],
        None,
    );
    assert!(
        !anon.status.success(),
        "a client without a certificate was served"
    );
    // Plaintext to a TLS port fails too.
    let plain = etcdctl_run(
        &[
            "--endpoints",
            &url.replace("https", "http"),
            "--command-timeout",
            "3s",
            "get",
            "secure",
        ],
        None,
    );
    assert!(
        !plain.status.success(),
        "plaintext was served on a TLS port"
    );
}
