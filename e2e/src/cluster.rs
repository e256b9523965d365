//! A Cairn cluster of real processes on 127.0.0.1, for fault tests.
//!
//! Every ordered pair of members talks through its own [`Proxy`] (member X
//! dials member Y's advertised peer URL through proxy X→Y, set with Cairn's
//! `peer_dial` fail point), so [`Cluster::isolate`] cuts one member off in
//! both directions while the rest keep talking. Members are started with
//! short Raft timings so that elections happen within a test's patience.
//!
//! That needs a `cairn` binary built with the `failpoints` feature (see
//! [`crate::failpoints`]); [`Cluster::start`] fails with a message saying so
//! when no peer traffic went through the proxies.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use etcd_client::Client;
use tempfile::TempDir;

use crate::binaries::cairn_bin;
use crate::client::{connect_with, ClientTimeouts};
use crate::failpoints;
use crate::ports::free_port;
use crate::proxy::Proxy;
use crate::tmpfs::Tmpfs;
use crate::wait::{wait_until, Poll};

/// Raft timings the fault tests run with (etcd's flags, in ms).
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;

pub struct ClusterMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// The data dir's own filesystem, when the cluster runs on tmpfs
    /// (declared before `dir`: unmounted before the dir is removed).
    fs: Option<Tmpfs>,
    dir: TempDir,
    child: Option<Child>,
    state: &'static str,
    extra: Vec<String>,
    /// The --initial-cluster it was first started with: restarts pass the
    /// same, as an operator's unit file does after later member changes.
    initial: Option<String>,
    /// The `cairn` binary it runs when not the one under test (another
    /// release, for rolling upgrades).
    binary: Option<PathBuf>,
}

impl ClusterMember {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id while running (to pause it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct Cluster {
    pub members: Vec<ClusterMember>,
    /// (from, to) → the proxy `from` dials to reach `to`.
    proxies: HashMap<(usize, usize), Proxy>,
    extra: Vec<String>,
    /// Fail points every member starts with, besides `peer_dial`.
    failpoints: Vec<String>,
    /// --heartbeat-interval and --election-timeout, in ms.
    timing: (u64, u64),
    /// Each member's data dir on a tmpfs of this size (to fill it).
    tmpfs_bytes: Option<u64>,
    keep: bool,
}

impl Cluster {
    /// Starts `n` members as a new cluster and waits until it has a leader
    /// and every member serves a linearizable read.
    pub async fn start(n: usize, extra: &[&str]) -> Result<Cluster> {
        Self::start_timed(n, (HEARTBEAT_MS, ELECTION_MS), extra).await
    }

    /// As [`Cluster::start`], with the given heartbeat interval and election
    /// timeout (ms) instead of the short test timings.
    pub async fn start_timed(n: usize, timing: (u64, u64), extra: &[&str]) -> Result<Cluster> {
        Self::launch(n, timing, extra, &[]).await
    }

    /// As [`Cluster::start`], every member with the fail points `points`
    /// (see [`crate::failpoints`]) besides `peer_dial`.
    pub async fn start_with_failpoints(n: usize, points: &[&str]) -> Result<Cluster> {
        Self::launch(n, (HEARTBEAT_MS, ELECTION_MS), &[], points).await
    }

    /// As [`Cluster::start`], every member running `binary` (another
    /// release, built with the fail points) until [`Cluster::set_binary`].
    pub async fn start_with_binary(
        n: usize,
        binary: &std::path::Path,
        extra: &[&str],
    ) -> Result<Cluster> {
        Self::launch_with(
            n,
            (HEARTBEAT_MS, ELECTION_MS),
            extra,
            &[],
            Some(binary),
            None,
        )
        .await
    }

    /// As [`Cluster::start`], each member's data dir on a tmpfs of its own
    /// of `bytes` (see [`crate::tmpfs`]; root only), so that a test can fill
    /// it ([`Cluster::fill_disk`]).
    pub async fn start_on_tmpfs(n: usize, extra: &[&str], bytes: u64) -> Result<Cluster> {
        Self::launch_with(
            n,
            (HEARTBEAT_MS, ELECTION_MS),
            extra,
            &[],
            None,
            Some(bytes),
        )
        .await
    }

    async fn launch(
        n: usize,
        timing: (u64, u64),
        extra: &[&str],
        points: &[&str],
    ) -> Result<Cluster> {
        Self::launch_with(n, timing, extra, points, None, None).await
    }

    async fn launch_with(
        n: usize,
        timing: (u64, u64),
        extra: &[&str],
        points: &[&str],
        binary: Option<&std::path::Path>,
        tmpfs_bytes: Option<u64>,
    ) -> Result<Cluster> {
        let mut c = Cluster {
            members: Vec::new(),
            proxies: HashMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            failpoints: points.iter().map(|s| s.to_string()).collect(),
            timing,
            tmpfs_bytes,
            keep: std::env::var_os("CAIRN_E2E_KEEP").is_some(),
        };
        for i in 0..n {
            c.members.push(ClusterMember {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                fs: None,
                dir: tempfile::Builder::new()
                    .prefix("cairn-cluster-")
                    .tempdir()?,
                child: None,
                binary: binary.map(|b| b.to_path_buf()),
                state: "new",
                extra: Vec::new(),
                initial: None,
            });
        }
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    c.add_proxy(from, to)?;
                }
            }
        }
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_all_ready(Duration::from_secs(30)).await?;
        c.check_peer_traffic_is_proxied()?;
        Ok(c)
    }

    /// Once a cluster of several members has a leader, peer traffic has
    /// flowed, and with the `peer_dial` fail point all of it through the
    /// proxies. None there means the binary ignored `FAILPOINTS`: every
    /// partition would silently cut nothing.
    fn check_peer_traffic_is_proxied(&self) -> Result<()> {
        if self.members.len() < 2 || self.peer_bytes() > 0 {
            return Ok(());
        }
        Err(anyhow!(
            "no peer traffic went through the test proxies: the cairn binary ({}) \
             ignores the `peer_dial` fail point. Build it with the fail points: \
             cargo build --workspace --bins --features cairn-shim/failpoints \
             (scripts/test.sh does)",
            cairn_bin().map_or_else(|e| format!("{e:#}"), |p| p.display().to_string())
        ))
    }

    fn add_proxy(&mut self, from: usize, to: usize) -> Result<()> {
        let target: SocketAddr = format!("127.0.0.1:{}", self.members[to].peer_port).parse()?;
        self.proxies.insert((from, to), Proxy::start(target)?);
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.state == "new" || m.child.is_some() || m.state == "existing")
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let dial: Vec<(String, String)> = self
            .proxies
            .iter()
            .filter(|((from, _), _)| *from == i)
            .map(|((_, to), p)| (self.members[*to].peer_url(), format!("http://{}", p.addr())))
            .collect();
        let mut points = vec![failpoints::peer_dial(&dial)];
        points.extend(self.failpoints.iter().cloned());
        let initial = match &self.members[i].initial {
            Some(first) => first.clone(),
            None => self.initial_cluster(),
        };
        let (heartbeat, election) = self.timing;
        let m = &mut self.members[i];
        if let (Some(bytes), None) = (self.tmpfs_bytes, &m.fs) {
            m.fs = Some(Tmpfs::mount(&m.dir.path().join("data"), bytes)?);
        }
        m.initial = Some(initial.clone());
        let mut args = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", m.dir.path().join("data").display()),
            format!("--listen-client-urls={}", m.endpoint()),
            format!("--advertise-client-urls={}", m.endpoint()),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={initial}"),
            format!("--initial-cluster-state={}", m.state),
            format!("--heartbeat-interval={heartbeat}"),
            format!("--election-timeout={election}"),
            "--log-level=info".to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        args.extend(m.extra.iter().cloned());
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log_path())?;
        writeln!(log, "===== cluster start: cairn {}", args.join(" "))?;
        let bin = match &m.binary {
            Some(b) => b.clone(),
            None => cairn_bin()?,
        };
        let child = Command::new(bin)
            .args(&args)
            .env(failpoints::ENV, failpoints::env_value(&points))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawn cairn")?;
        m.child = Some(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    pub async fn client(&self, i: usize) -> Result<Client> {
        connect_with(
            &self.endpoint(i),
            ClientTimeouts {
                connect: Duration::from_secs(2),
                request: Duration::from_secs(10),
            },
        )
        .await
    }

    /// Every running member, by index.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].is_running())
            .collect()
    }

    /// Waits until every running member has a leader and answers a linearizable read.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<()> {
        for i in self.running() {
            let ep = self.endpoint(i);
            wait_until(
                &format!("{ep} ready"),
                timeout,
                Duration::from_millis(50),
                || {
                    let ep = ep.clone();
                    async move {
                        let t = ClientTimeouts {
                            connect: Duration::from_millis(500),
                            request: Duration::from_secs(2),
                        };
                        let mut c = match connect_with(&ep, t).await {
                            Ok(c) => c,
                            Err(e) => return Ok(Poll::NotYet(format!("{e:#}"))),
                        };
                        match c.get("ready-probe", None).await {
                            Ok(_) => Ok(Poll::Ready(())),
                            Err(e) => Ok(Poll::NotYet(e.to_string())),
                        }
                    }
                },
            )
            .await
            .map_err(|e| anyhow!("{e:#}\n{}", self.log_tail(i)))?;
        }
        Ok(())
    }

    /// The leader's index, once every running member in `among` agrees on it.
    pub async fn leader(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        let ids = self.member_ids().await?;
        wait_until(
            "an agreed leader",
            timeout,
            Duration::from_millis(25),
            || async {
                let mut seen = None;
                for &i in among {
                    let mut c = match self.client(i).await {
                        Ok(c) => c,
                        Err(e) => return Ok(Poll::NotYet(format!("m{i}: {e:#}"))),
                    };
                    let leader = match c.status().await {
                        Ok(s) => s.leader(),
                        Err(e) => return Ok(Poll::NotYet(format!("m{i}: {e}"))),
                    };
                    if leader == 0 {
                        return Ok(Poll::NotYet(format!("m{i} knows no leader")));
                    }
                    if seen.is_some_and(|s| s != leader) {
                        return Ok(Poll::NotYet("members disagree on the leader".into()));
                    }
                    seen = Some(leader);
                }
                match seen.and_then(|l| ids.get(&l).copied()) {
                    Some(i) if among.contains(&i) => Ok(Poll::Ready(i)),
                    _ => Ok(Poll::NotYet(format!(
                        "leader {seen:?} is not among {among:?}"
                    ))),
                }
            },
        )
        .await
    }

    /// Member ID → index, from any running member's member list.
    pub async fn member_ids(&self) -> Result<HashMap<u64, usize>> {
        for i in self.running() {
            if let Ok(mut c) = self.client(i).await {
                if let Ok(list) = c.member_list().await {
                    return Ok(list
                        .members()
                        .iter()
                        .filter_map(|m| {
                            let url = m.peer_urls().first()?.clone();
                            let idx = self.members.iter().position(|x| x.peer_url() == url)?;
                            Some((m.id(), idx))
                        })
                        .collect());
                }
            }
        }
        Err(anyhow!("no running member answered MemberList"))
    }

    pub fn kill9(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            // A member that exited on its own (a storage fault) is only reaped.
            if child.try_wait()?.is_none() {
                child.kill().context("kill -9")?;
            }
            child.wait()?;
        }
        Ok(())
    }

    /// The binary member `i` runs from its next start on (`None`: the one
    /// under test).
    pub fn set_binary(&mut self, i: usize, binary: Option<PathBuf>) {
        self.members[i].binary = binary;
    }

    /// Stops member `i` as an operator does (SIGTERM), waiting up to
    /// `timeout` for it to exit; kill -9 after that. Whether it exited on
    /// its own.
    pub async fn stop(&mut self, i: usize, timeout: Duration) -> Result<bool> {
        let Some(mut child) = self.members[i].child.take() else {
            return Ok(true);
        };
        crate::signal::signal("-TERM", child.id())?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().context("kill -9 after SIGTERM")?;
        child.wait()?;
        Ok(false)
    }

    /// Starts a stopped member on its data dir and ports and waits for the
    /// process to exit within `timeout`: for a start that must be refused.
    /// Its exit status, or `None` if it was still running (then stopped).
    pub async fn start_expecting_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Result<Option<std::process::ExitStatus>> {
        self.spawn(i)?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let exited = match self.members[i].child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.members[i].child = None;
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9(i)?;
        Ok(None)
    }

    /// Starts a stopped member again (no-op while it runs).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)
    }

    /// How member `i` exited, if it stopped on its own (None while it runs
    /// or after `kill9`).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.members[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Fills member `i`'s filesystem (a cluster started on tmpfs); the bytes
    /// it took.
    pub fn fill_disk(&self, i: usize) -> Result<u64> {
        match &self.members[i].fs {
            Some(fs) => fs.fill(),
            None => Err(anyhow!(
                "m{i} has no filesystem of its own: start the cluster on tmpfs"
            )),
        }
    }

    /// Frees what `fill_disk` took (nothing if it was not filled).
    pub fn free_disk(&self, i: usize) -> Result<()> {
        match &self.members[i].fs {
            Some(fs) => fs.free(),
            None => Ok(()),
        }
    }

    /// Restarts a killed member on its data dir and ports.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill9(i)?;
        self.spawn(i)
    }

    /// Cuts member `i` off from every other member, both directions.
    pub fn isolate(&self, i: usize) {
        for ((from, to), p) in &self.proxies {
            if *from == i || *to == i {
                p.partition();
            }
        }
    }

    pub fn heal(&self, i: usize) {
        for ((from, to), p) in &self.proxies {
            if *from == i || *to == i {
                p.heal();
            }
        }
    }

    /// Total bytes all peer proxies have carried (idle-traffic measurement).
    pub fn peer_bytes(&self) -> u64 {
        self.proxies.values().map(|p| p.stats().total_bytes()).sum()
    }

    /// Peer RPCs (Raft messages and forwarded requests) every running member
    /// has received so far, from their `/metrics`.
    pub async fn peer_rpcs(&self) -> Result<u64> {
        self.rpcs_started("grpc_service=\"cairnpb.peer.v1.Peer\"")
            .await
    }

    /// RPCs whose `grpc_server_started_total` sample carries `label` (e.g.
    /// `grpc_method="StreamAppend"`), summed over every running member.
    pub async fn rpcs_started(&self, label: &str) -> Result<u64> {
        let mut total = 0;
        for i in self.running() {
            let text = crate::http::get_text(self.members[i].client_port, "/metrics").await?;
            total += crate::http::counter_sum(&text, "grpc_server_started_total", label);
        }
        Ok(total)
    }

    /// Adds a member slot (not started); returns its index and peer URL.
    pub fn add_slot(&mut self, extra: &[&str]) -> Result<(usize, String)> {
        let i = self.members.len();
        self.members.push(ClusterMember {
            name: format!("m{i}"),
            client_port: free_port()?,
            peer_port: free_port()?,
            fs: None,
            dir: tempfile::Builder::new()
                .prefix("cairn-cluster-")
                .tempdir()?,
            child: None,
            binary: None,
            state: "existing",
            extra: extra.iter().map(|s| s.to_string()).collect(),
            initial: None,
        });
        for other in 0..i {
            self.add_proxy(other, i)?;
            self.add_proxy(i, other)?;
        }
        // Running members learn the new member's proxy only through their
        // dial map, which they read at start; they reach it directly.
        Ok((i, self.members[i].peer_url()))
    }

    /// Starts a member added with `member add` (joins with state `existing`).
    pub fn start_joined(&mut self, i: usize) -> Result<()> {
        self.spawn(i)
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.members[i].log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|s| text.is_char_boundary(*s))
            .unwrap_or(0);
        format!("--- m{i} log tail ---\n{}", &text[start..])
    }

    /// Keeps every member's directory (data and log) after the test.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill9(i);
        }
        if self.keep || std::thread::panicking() {
            for m in &mut self.members {
                if let Some(fs) = m.fs.take() {
                    // Kept mounted for the investigation.
                    eprintln!(
                        "keeping the tmpfs at {} mounted: umount it when done",
                        fs.path().display()
                    );
                    std::mem::forget(fs);
                }
                let dir = std::mem::replace(
                    &mut m.dir,
                    match tempfile::tempdir() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                );
                eprintln!("keeping {} for {}", dir.keep().display(), m.name);
            }
        }
    }
}
