//! Cairn started as etcd is started: with kubeadm's static-pod command line,
//! etcd's `--config-file`, or `ETCD_*` variables; probed as kubeadm probes
//! it; its start log checked line by line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{TestCa, AUTHENTICATE, SERVE_AND_AUTHENTICATE};
use common::{etcdctl_run, free_port, wait_healthy, Cairn, TlsEtcdctl};

/// kubeadm's etcd certificates under `dir/pki/etcd`, named as kubeadm names
/// them: the server and peer certificates serve and authenticate (both
/// usages), the healthcheck client only authenticates.
fn kubeadm_pki(dir: &Path, node_ip: &str) -> PathBuf {
    let pki = dir.join("pki/etcd");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = TestCa::new("etcd-ca");
    std::fs::write(pki.join("ca.crt"), ca.pem()).unwrap();
    for (name, usages) in [
        ("server", SERVE_AND_AUTHENTICATE),
        ("peer", SERVE_AND_AUTHENTICATE),
        ("healthcheck-client", AUTHENTICATE),
    ] {
        ca.leaf(name, &["127.0.0.1", node_ip, "localhost"], usages, None)
            .write(&pki, &format!("{name}.crt"), &format!("{name}.key"));
    }
    pki
}

/// A GET on 127.0.0.1:`port`: (status code, body); code 0 while nothing
/// listens.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Every line of a start log is one of etcd's zap JSON objects; returns them.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}\n{log}"));
            for key in ["level", "ts", "caller", "msg"] {
                assert!(v.get(key).is_some(), "no {key:?} in log line {l}");
            }
            v
        })
        .collect()
}

/// The warnings a start logged, but the disk check's (this machine's disk
/// is not what the test is about) and the test's own probes' that came
/// before the member was ready (as etcd, Cairn logs each failed probe).
fn warnings(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["level"] == "warn")
        .map(|l| l["msg"].as_str().unwrap_or_default().to_string())
        .filter(|m| !m.starts_with("disk check") && m != "health check failed")
        .collect()
}

/// Starts the binary under the name `etcd` with kubeadm's command line for
/// this etcd generation (`new_style`: the v1.34+ flags for etcd 3.6), and
/// checks what kubeadm's probes and kube-apiserver's client see.
fn kubeadm_member(new_style: bool) {
    let dir = tempfile::tempdir().unwrap();
    // The node's address, as kubeadm puts it beside 127.0.0.1.
    let ip = "127.0.0.2";
    let pki = kubeadm_pki(dir.path(), ip);
    let f = |name: &str| pki.join(name).display().to_string();
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let etcd = dir.path().join("etcd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cairn"), &etcd).unwrap();
    let data = dir.path().join("var/lib/etcd").display().to_string();
    // As kubeadm's getEtcdCommand writes them, sorted as it sorts them.
    let mut args = vec![
        format!("--advertise-client-urls=https://{ip}:{client}"),
        format!("--cert-file={}", f("server.crt")),
        "--client-cert-auth=true".to_string(),
        format!("--data-dir={data}"),
    ];
    if new_style {
        args.push("--feature-gates=InitialCorruptCheck=true".into());
    } else {
        args.push("--experimental-initial-corrupt-check=true".into());
        args.push("--experimental-watch-progress-notify-interval=5s".into());
    }
    args.extend([
        format!("--initial-advertise-peer-urls=https://{ip}:{peer}"),
        format!("--initial-cluster=node-1=https://{ip}:{peer}"),
        format!("--key-file={}", f("server.key")),
        format!("--listen-client-urls=https://127.0.0.1:{client},https://{ip}:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls=https://{ip}:{peer}"),
        "--name=node-1".into(),
        format!("--peer-cert-file={}", f("peer.crt")),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={}", f("peer.key")),
        format!("--peer-trusted-ca-file={}", f("ca.crt")),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={}", f("ca.crt")),
    ]);
    if new_style {
        args.push("--watch-progress-notify-interval=5s".into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut member = Cairn::spawn_as(&etcd, dir.path(), &argv, &[]);

    // kubeadm's probes: plain HTTP on the metrics port, no certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = member.child.try_wait() {
            panic!("exited with {status}:\n{}", member.log_text());
        }
        if http_get(metrics, "/readyz").0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 within 30 s:\n{}",
            member.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(metrics, "/livez"), (200, "ok\n".into()));
    let (code, body) = http_get(metrics, "/health?exclude=NOSPACE&serializable=true");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["health"],
        "true"
    );
    let (code, body) = http_get(metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");

    // kube-apiserver's view: TLS with its client certificate, on the node
    // address.
    let endpoint = format!("https://{ip}:{client}");
    let etcdctl = TlsEtcdctl::new(
        &endpoint,
        &f("ca.crt"),
        &f("healthcheck-client.crt"),
        &f("healthcheck-client.key"),
    );
    wait_healthy(&mut member, &endpoint, &etcdctl.flags());
    let run = |cmd: &[&str]| etcdctl.run(cmd);
    assert!(run(&["put", "/registry/ns/default", "v"]).status.success());
    let got = run(&["get", "/registry/ns/default", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
    let members = run(&["member", "list"]);
    assert!(String::from_utf8_lossy(&members.stdout).contains("node-1"));

    // The start log: JSON lines (stderr is no terminal), at most ten at
    // INFO until ready, and one warning: the corruption check Cairn does
    // not run, by the name it was asked for with.
    let log = member.log_text();
    let lines = json_lines(&log);
    let ready = lines
        .iter()
        .position(|l| l["msg"] == "ready to serve client requests")
        .unwrap_or_else(|| panic!("no ready line:\n{log}"));
    let info = lines[..=ready]
        .iter()
        .filter(|l| l["level"] == "info")
        .count();
    assert!(info <= 10, "{info} INFO lines until ready:\n{log}");
    let warned = warnings(&lines);
    let asked = if new_style {
        "InitialCorruptCheck"
    } else {
        "--experimental-initial-corrupt-check"
    };
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(asked), "{warned:?}");
}

#[test]
fn kubeadm_etcd_3_6_manifest_starts_a_member_its_probes_accept() {
    kubeadm_member(true);
}

#[test]
fn kubeadm_etcd_3_5_manifest_starts_a_member_its_probes_accept() {
    kubeadm_member(false);
}

/// Runs the server with `args` and expects it to refuse to start: returns
/// what it printed.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{args:?} exited 0: {err}");
    err
}

#[test]
fn flags_that_would_change_behaviour_refuse_the_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (args, named) in [
        (&["--unsafe-no-fsync"][..], "--unsafe-no-fsync"),
        (&["--wal-dir=/wal"], "--wal-dir"),
        (&["--force-new-cluster=true"], "--force-new-cluster"),
        (
            &["--feature-gates=CompactHashCheck=true"],
            "CompactHashCheck",
        ),
        (&["--feature-gates=NoSuchGate=true"], "NoSuchGate"),
        (&["--no-such-flag=1"], "--no-such-flag"),
        (&["--logger=capnslog"], "--logger"),
        (&["--log-level=loudest=x"], "--log-level"),
        (
            &["--listen-metrics-urls=https://127.0.0.1:1"],
            "listen metrics URL",
        ),
    ] {
        let mut all = vec!["--data-dir", "data"];
        all.extend_from_slice(args);
        let err = refused(dir.path(), &all, &[]);
        assert!(err.contains(named), "{args:?}: {err}");
    }
    // From the environment as from the command line.
    let err = refused(dir.path(), &[], &[("ETCD_UNSAFE_NO_FSYNC", "true")]);
    assert!(err.contains("--unsafe-no-fsync"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "a refused start created its data dir"
    );
}

#[test]
fn config_file_and_etcd_variables_configure_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let (client, metrics) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let yaml = format!(
        "# etcd's sample file, as far as a one-member store needs it\n\
         name: 'from-file'\n\
         data-dir: data\n\
         listen-client-urls: {url}\n\
         advertise-client-urls: {url}\n\
         listen-peer-urls: http://127.0.0.1:0\n\
         listen-metrics-urls: http://127.0.0.1:{metrics}\n\
         snapshot-count: 10000\n\
         experimental-initial-corrupt-check: false\n\
         client-transport-security:\n  client-cert-auth: false\n\
         log-outputs: [member.log]\n\
         log-level: info\n"
    );
    std::fs::write(dir.path().join("etcd.yaml"), yaml).unwrap();
    // ETCD_NAME is ignored beside a config file, as etcd ignores it.
    let mut member = Cairn::spawn_as(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        dir.path(),
        &["--config-file", "etcd.yaml"],
        &[("ETCD_NAME", "from-env")],
    );
    wait_healthy(&mut member, &url, &[]);
    let list = etcdctl_run(&["--endpoints", &url, "member", "list"], None);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("from-file"),
        "{list:?}"
    );
    assert_eq!(http_get(metrics, "/livez").0, 200);
    // The file's log output: JSON lines, the last warns of nothing but the
    // flag it was given (experimental-initial-corrupt-check: false changes
    // nothing and is not Cairn's, so it is named).
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(dir.path().join("member.log")).unwrap_or_default();
        if log.contains("ready to serve client requests") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == "ready to serve client requests"),
        "{log}"
    );
    drop(member);

    // Without a file, ETCD_* variables set what the command line does not.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut member = Cairn::spawn_as(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        dir.path(),
        &["--data-dir=data", "--listen-peer-urls=http://127.0.0.1:0"],
        &[
            ("ETCD_NAME", "from-env"),
            ("ETCD_LISTEN_CLIENT_URLS", &url),
            ("ETCD_ADVERTISE_CLIENT_URLS", &url),
            ("ETCD_DATA_DIR", "shadowed"),
        ],
    );
    wait_healthy(&mut member, &url, &[]);
    let list = etcdctl_run(&["--endpoints", &url, "member", "list"], None);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("from-env"),
        "{list:?}"
    );
    assert!(dir.path().join("data").exists() && !dir.path().join("shadowed").exists());
    assert!(
        member.log_text().contains("ETCD_DATA_DIR"),
        "{}",
        member.log_text()
    );
}

/// A unit written for etcd (`Type=notify`) waits for `READY=1` on
/// `NOTIFY_SOCKET`; Cairn sends it once it serves clients.
#[test]
fn systemd_hears_ready_once_the_member_serves() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let notify = socket_path.display().to_string();
    let mut member = Cairn::spawn_as(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        dir.path(),
        &[
            "--data-dir=data",
            "--listen-peer-urls=http://127.0.0.1:0",
            &format!("--listen-client-urls={url}"),
            &format!("--advertise-client-urls={url}"),
        ],
        &[("NOTIFY_SOCKET", &notify)],
    );
    let mut buf = [0u8; 64];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 within 30 s ({e}):\n{}", member.log_text()));
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: the first request after it succeeds.
    let put = etcdctl_run(&["--endpoints", &url, "put", "k", "v"], None);
    assert!(put.status.success(), "{put:?}");
    wait_healthy(&mut member, &url, &[]);
}

/// Raft's events reach the log as one short line each, with member names:
/// the election, the membership, and a leader change after the leader dies.
#[test]
fn raft_events_are_one_line_each_with_member_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::spawn_cluster(dir.path(), "http", &[]);
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("m{i}/cairn.log"))).unwrap_or_default()
    };
    // The leader of the highest term any member logged winning.
    let leader = (0..3)
        .flat_map(|i| {
            json_lines(&log(i))
                .into_iter()
                .filter(move |l| l["msg"] == "became leader" && l["member"] == format!("m{i}"))
                .map(move |l| (l["term"].as_u64().unwrap_or(0), i))
        })
        .max()
        .map(|(_, i)| i)
        .unwrap_or_else(|| panic!("no member logged its election:\n{}", log(0)));
    for i in 0..3 {
        let lines = json_lines(&log(i));
        assert!(
            lines
                .iter()
                .any(|l| l["msg"] == "membership" && l["voters"] == "m0,m1,m2"),
            "m{i}:\n{}",
            log(i)
        );
        if i != leader {
            assert!(
                lines
                    .iter()
                    .any(|l| l["msg"] == "following the leader"
                        && l["leader"] == format!("m{leader}")),
                "m{i}:\n{}",
                log(i)
            );
        }
        // No state dump: openraft's INFO lines are kilobytes long.
        let longest = log(i).lines().map(str::len).max().unwrap_or(0);
        assert!(
            longest < 600,
            "m{i} logged a {longest}-byte line:\n{}",
            log(i)
        );
    }
    let _ = cluster.members[leader].child.kill();
    let _ = cluster.members[leader].child.wait();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let elected = survivors.iter().any(|i| {
            json_lines(&log(*i))
                .iter()
                .any(|l| l["msg"] == "became leader" && l["member"] == format!("m{i}"))
        });
        let seen = survivors.iter().all(|i| {
            json_lines(&log(*i)).iter().any(|l| {
                l["msg"] == "leader changed" && l["from"] == format!("m{leader}")
                    || l["msg"]
                        == "lost the leader: no quorum reachable; requests fail with \"no leader\""
            })
        });
        if elected && seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader logged within 30 s:\n{}\n{}",
            log(survivors[0]),
            log(survivors[1])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
