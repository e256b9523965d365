//! The source side over TLS (etcdctl's --from-cacert/--from-cert/--from-key)
//! and with auth enabled (--from-user, the `token` header, a token that
//! expires), against a real etcd 3.5 on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_e2e::{Kind, Member, MemberOptions};
use cairn_migrate::connect::EndpointConfig;
use cairn_migrate::source::{Credentials, Source};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes ca.pem, server.pem/server-key.pem (127.0.0.1) and client.pem/client-key.pem into `dir`.
fn make_pki(dir: &Path) -> Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "migrate test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |names: Vec<String>,
                usage: ExtendedKeyUsagePurpose,
                cn: &str|
     -> Result<(String, String)> {
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let server = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "etcd",
    )?;
    let client = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "root")?;
    for (name, text) in [
        ("ca.pem", &ca.pem()),
        ("server.pem", &server.0),
        ("server-key.pem", &server.1),
        ("client.pem", &client.0),
        ("client-key.pem", &client.1),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// An etcd serving TLS with client-certificate auth; killed when dropped.
struct TlsEtcd {
    child: Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_etcd(dir: &Path) -> Result<TlsEtcd> {
    let port = cairn_e2e::ports::free_port()?;
    let peer = cairn_e2e::ports::free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let p = |n: &str| dir.join(n).display().to_string();
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(cairn_e2e::binaries::etcd_bin()?)
        .args([
            "--data-dir",
            &p("data"),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server-key.pem"),
            "--trusted-ca-file",
            &p("ca.pem"),
            "--client-cert-auth",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("spawning etcd")?;
    Ok(TlsEtcd { child, url })
}

fn tls_cfg(url: &str, dir: &Path, ca: bool, client: bool) -> EndpointConfig {
    EndpointConfig {
        urls: url.to_string(),
        cacert: ca.then(|| dir.join("ca.pem")),
        cert: client.then(|| dir.join("client.pem")),
        key: client.then(|| dir.join("client-key.pem")),
        dial_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn tls_with_client_certificates() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        make_pki(dir.path())?;
        let etcd = start_tls_etcd(dir.path())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (src, info) = loop {
            match Source::connect(&tls_cfg(&etcd.url, dir.path(), true, true), None).await {
                Ok(x) => break x,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("etcd over TLS never answered: {e}"),
            }
        };
        assert!(info.version.starts_with("3.5"));
        assert_eq!(src.compact_revision(-1).await?, -1);

        // Not trusting its CA (the system's roots): a TLS error.
        let e = Source::connect(&tls_cfg(&etcd.url, dir.path(), false, true), None)
            .await
            .err()
            .context("connected without trusting the CA")?;
        println!("{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "TLS handshake with the source at {} failed: ",
                etcd.url
            )),
            "{e}"
        );
        // No client certificate where etcd requires one: refused, and said so.
        let e = Source::connect(&tls_cfg(&etcd.url, dir.path(), true, false), None)
            .await
            .err()
            .context("connected without a client certificate")?;
        println!("{e}");
        assert!(
            e.to_string().contains("TLS") || e.to_string().contains("certificate"),
            "{e}"
        );
        // A certificate without its key: bad input.
        let mut cfg = tls_cfg(&etcd.url, dir.path(), true, true);
        cfg.key = None;
        let e = Source::connect(&cfg, None)
            .await
            .err()
            .context("cert without key")?;
        assert_eq!(
            e.to_string(),
            "--from-cert and --from-key go together: give both or neither"
        );
        Ok(())
    })
    .await
    .context("test timed out")?
}

#[tokio::test]
async fn auth_token_is_sent_and_renewed() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start_with(
            Kind::Etcd,
            MemberOptions {
                // Simple tokens expire after a second of disuse.
                extra_args: vec!["--auth-token-ttl".into(), "1".into()],
                ..Default::default()
            },
        )
        .await?;
        let mut c = etcd.client().await?;
        c.put("k", "v", None).await?;
        c.user_add("root", "secret", None).await?;
        c.user_grant_role("root", "root").await?;
        c.auth_enable().await?;
        let cfg = EndpointConfig {
            urls: etcd.endpoint(),
            dial_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let creds = |pw: &str| {
            Some(Credentials {
                user: "root".into(),
                password: pw.into(),
            })
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (src, _) = Source::connect(&cfg, creds("secret")).await?;
        let (page, _) = src.range_window(&Default::default(), 0, 10).await?;
        assert_eq!(page.kvs.len(), 1);
        // The token expires; the next read authenticates again.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (page, _) = src.range_window(&Default::default(), 0, 10).await?;
        assert_eq!(page.kvs.len(), 1);
        assert_eq!(src.compact_revision(-1).await?, -1);
        let e = Source::connect(&cfg, creds("wrong"))
            .await
            .err()
            .context("wrong password accepted")?;
        println!("{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot authenticate to the source at {} as root: ",
                etcd.endpoint()
            )),
            "{e}"
        );
        // Without credentials, reads are refused by etcd.
        let (anon, _) = Source::connect(&cfg, None).await?;
        let e = anon
            .range_window(&Default::default(), 0, 10)
            .await
            .err()
            .context("anonymous read")?;
        println!("{e}");
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// What `cairn upgrade check` finds (no `--member`) with `cfg` and `creds`.
async fn upgrade_findings(
    cfg: EndpointConfig,
    creds: Option<(String, String)>,
) -> Result<Vec<cairn_migrate::upgrade::verdict::Finding>> {
    use cairn_migrate::upgrade::checks::{run_all, Question};
    use cairn_migrate::upgrade::probe::{gather, ProbeConfig};
    use cairn_migrate::upgrade::{CairnRelease, Version};
    let facts = gather(&ProbeConfig {
        endpoint: cfg,
        credentials: creds,
        window: Duration::from_millis(200),
        command_timeout: Duration::from_secs(2),
    })
    .await?;
    let this = CairnRelease {
        version: Version::parse("0.1.0").context("version")?,
        schema_min: 1,
        schema: 3,
        peer_min: 1,
        peer: 1,
    };
    Ok(run_all(&facts, &Question::default(), &this))
}

fn result_of<'a>(
    findings: &'a [cairn_migrate::upgrade::verdict::Finding],
    check: &str,
) -> Result<&'a cairn_migrate::upgrade::verdict::Finding> {
    findings
        .iter()
        .find(|f| f.check == check)
        .with_context(|| format!("no {check} in {findings:?}"))
}

/// `cairn upgrade check` reads Status, the member list and alarms over
/// gRPC and `/health` over HTTPS, both with the client certificate.
#[tokio::test]
async fn upgrade_check_over_tls_with_client_certificates() -> Result<()> {
    use cairn_migrate::upgrade::verdict::Verdict;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        make_pki(dir.path())?;
        let etcd = start_tls_etcd(dir.path())?;
        let cfg = tls_cfg(&etcd.url, dir.path(), true, true);
        let deadline = Instant::now() + Duration::from_secs(20);
        let findings = loop {
            match upgrade_findings(cfg.clone(), None).await {
                Ok(f) if result_of(&f, "reachability")?.result == Verdict::Pass => break f,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(f) => bail!("etcd over TLS never passed: {f:?}"),
                Err(e) => bail!("etcd over TLS never answered: {e}"),
            }
        };
        // One member: losing it loses the cluster.
        assert_eq!(result_of(&findings, "quorum")?.result, Verdict::Fail);
        assert_eq!(result_of(&findings, "alarms")?.result, Verdict::Pass);
        // Without the client certificate, /health and the calls are refused.
        let refused = upgrade_findings(tls_cfg(&etcd.url, dir.path(), true, false), None).await;
        assert!(
            refused.is_err() || result_of(&refused?, "reachability")?.result == Verdict::Fail,
            "no client certificate, yet the check passed"
        );
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// With auth enabled, `cairn upgrade check --user` authenticates once and
/// every member's calls carry the token.
#[tokio::test]
async fn upgrade_check_with_auth() -> Result<()> {
    use cairn_migrate::upgrade::verdict::Verdict;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        c.user_add("root", "secret", None).await?;
        c.user_grant_role("root", "root").await?;
        c.auth_enable().await?;
        let cfg = EndpointConfig {
            urls: etcd.endpoint(),
            dial_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let findings =
            upgrade_findings(cfg.clone(), Some(("root".into(), "secret".into()))).await?;
        for check in ["reachability", "leader", "alarms", "version"] {
            assert_eq!(
                result_of(&findings, check)?.result,
                Verdict::Pass,
                "{findings:?}"
            );
        }
        let e = upgrade_findings(cfg, Some(("root".into(), "wrong".into())))
            .await
            .err()
            .context("wrong password accepted")?;
        assert!(
            e.to_string()
                .starts_with("cannot authenticate to the cluster at"),
            "{e}"
        );
        Ok(())
    })
    .await
    .context("test timed out")?
}
