//! TLS and client-certificate authentication, driven by the real etcdctl.

mod common;

use common::pki::{TestCa, AUTHENTICATE, SERVE, SERVE_AND_AUTHENTICATE};
use common::{etcdctl_run, free_port, spawn_cluster, wait_healthy, Cairn, TlsEtcdctl};

#[test]
fn mtls_accepts_trusted_client_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cairn test CA");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    ca.leaf("cairn", &["127.0.0.1", "localhost"], SERVE, None)
        .write(dir.path(), "server.pem", "server-key.pem");
    ca.leaf("root", &[], AUTHENTICATE, None)
        .write(dir.path(), "client.pem", "client-key.pem");
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
    let ca = path("ca.pem");
    let etcdctl = TlsEtcdctl::new(&url, &ca, &path("client.pem"), &path("client-key.pem"));
    wait_healthy(&mut server, &url, &etcdctl.flags());
    let with_auth = |args: &[&str]| etcdctl.run(args);
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

/// Peer mTLS: three members whose peer URLs are https, each with a
/// certificate for both server and client use from one CA, and
/// --peer-client-cert-auth. The cluster forms (health needs a leader and a
/// quorum-confirmed read) and replicates; a peer without a certificate is
/// refused at the handshake, and one with a trusted certificate gets through
/// to the peer service.
#[test]
fn peer_mtls_cluster_forms_and_refuses_peers_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cairn test CA");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    let peer = ca.leaf(
        "cairn peer",
        &["127.0.0.1", "localhost"],
        SERVE_AND_AUTHENTICATE,
        None,
    );
    peer.write(dir.path(), "peer.pem", "peer-key.pem");

    let cluster = spawn_cluster(
        dir.path(),
        "https",
        &[
            format!("--peer-cert-file={}", path("peer.pem")),
            format!("--peer-key-file={}", path("peer-key.pem")),
            format!("--peer-trusted-ca-file={}", path("ca.pem")),
            "--peer-client-cert-auth".to_string(),
        ],
    );
    let endpoints = cluster.endpoints.clone();
    let put = etcdctl_run(
        &["--endpoints", &endpoints[0], "put", "over-tls", "yes"],
        None,
    );
    assert!(put.status.success(), "{put:?}");
    let got = etcdctl_run(
        &[
            "--endpoints",
            &endpoints[2],
            "get",
            "over-tls",
            "--print-value-only",
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "yes");

    // Straight at a peer port: with the trusted CA but no certificate the
    // handshake fails; with the peer certificate the peer service answers
    // (here, refusing a request that lacks the peer protocol metadata).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer_url = cluster.peers[0].clone();
    let call = |identity: Option<tonic::transport::Identity>| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
            .domain_name("127.0.0.1");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        let url = peer_url.clone();
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(5))
                .connect()
                .await;
            match channel {
                Err(e) => Err(format!("connect: {e:?}")),
                Ok(ch) => cairn_proto::peer::peer_client::PeerClient::new(ch)
                    .cluster_info(cairn_proto::peer::ClusterInfoRequest::default())
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            }
        })
    };
    let anonymous = call(None);
    assert!(
        // Refused below gRPC: the connection fails or is dropped (seen:
        // "Cancelled"), never an answer from the peer service.
        anonymous.as_ref().is_err_and(|e| {
            ["connect:", "Cancelled", "Unavailable", "Unknown"]
                .iter()
                .any(|p| e.starts_with(p))
        }),
        "a peer without a certificate got through the handshake: {anonymous:?}"
    );
    let trusted = call(Some(tonic::transport::Identity::from_pem(
        &peer.cert, &peer.key,
    )));
    assert!(
        trusted
            .as_ref()
            .is_err_and(|e| e.contains("FailedPrecondition") && e.contains("peer protocol version")),
        "a trusted peer did not reach the peer service: {trusted:?}"
    );
}
