//! One server process under test: a real etcd 3.5 (the oracle) or Cairn.
//!
//! A [`Member`] owns a fresh temporary directory holding its data dir and its
//! log file (stdout and stderr of every start, appended). It listens on free
//! ports of 127.0.0.1 only. [`Member::start`] returns once the member answers
//! a Maintenance.Status and a linearizable Range, or fails with the process's
//! log. Dropping a member kills it (SIGKILL) and removes its directory.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::Client;
use tempfile::TempDir;

use crate::binaries::{cairn_bin, etcd_bin};
use crate::client::{connect_with, ClientTimeouts};
use crate::failpoints;
use crate::ports::free_port;
use crate::wait::{wait_until, Poll};

/// Which server implementation a member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The real etcd 3.5 binary (reference implementation).
    Etcd,
    /// The Cairn binary under test.
    Cairn,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Etcd => "etcd",
            Kind::Cairn => "cairn",
        })
    }
}

/// Start options. The flag names are etcd's; Cairn accepts the same ones.
#[derive(Clone, Debug)]
pub struct MemberOptions {
    /// `--name` (default "e2e").
    pub name: String,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<u64>,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: Option<u64>,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
    /// Fail points to set (see [`crate::failpoints`]; ignored by etcd and
    /// by a Cairn binary built without the `failpoints` feature).
    pub failpoints: Vec<String>,
    /// How long to wait for readiness after each (re)start.
    pub ready_timeout: Duration,
    /// A fixed peer port (default: a free one), so that the members of a
    /// cluster can be named in each other's flags before they start.
    pub peer_port: Option<u16>,
    /// `--initial-cluster` (default: this member alone).
    pub initial_cluster: Option<String>,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions {
            name: "e2e".to_string(),
            max_request_bytes: None,
            quota_backend_bytes: None,
            extra_args: Vec::new(),
            failpoints: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            peer_port: None,
            initial_cluster: None,
        }
    }
}

/// How many times a fresh start picks new ports after losing a port race, and
/// how many times a restart re-spawns after finding its ports still taken.
const BIND_ATTEMPTS: usize = 3;

/// A running (or killed) etcd or Cairn process with its own temp dir.
pub struct Member {
    kind: Kind,
    opts: MemberOptions,
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    starts: u32,
    keep: bool,
}

impl Member {
    /// Starts a member of `kind` with default options and waits until ready.
    pub async fn start(kind: Kind) -> Result<Member> {
        Member::start_with(kind, MemberOptions::default()).await
    }

    /// Starts a member with `opts` on fresh free ports and a fresh temp dir, and
    /// waits until it is ready (or fails with its log).
    pub async fn start_with(kind: Kind, opts: MemberOptions) -> Result<Member> {
        Member::start_prepared(kind, opts, |_, _| Ok(())).await
    }

    /// Like [`Member::start_with`], but first lets `prepare` fill the data
    /// dir (which does not exist yet) from this member's peer URL: a restore
    /// from a snapshot. Called again, on a fresh data dir, if a start loses
    /// a port race.
    pub async fn start_prepared(
        kind: Kind,
        opts: MemberOptions,
        mut prepare: impl FnMut(&Path, &str) -> Result<()>,
    ) -> Result<Member> {
        let binary = match kind {
            Kind::Etcd => etcd_bin()?,
            Kind::Cairn => cairn_bin()?,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-e2e-{kind}-"))
            .tempdir()
            .context("creating member temp dir")?;
        let mut member = Member {
            kind,
            opts,
            binary,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
            starts: 0,
            keep: false,
        };
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            member.client_port = free_port()?;
            member.peer_port = match member.opts.peer_port {
                Some(p) => p,
                None => free_port()?,
            };
            let data_dir = member.data_dir();
            if data_dir.exists() {
                std::fs::remove_dir_all(&data_dir)
                    .with_context(|| format!("removing {}", data_dir.display()))?;
            }
            prepare(&data_dir, &member.peer_url()).context("preparing the data dir")?;
            member.spawn()?;
            match member.wait_ready().await {
                Ok(()) => {
                    member.check_failpoints_took()?;
                    return Ok(member);
                }
                Err(e) if member.lost_port_race() => {
                    member.kill9()?;
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no start attempt made")))
    }

    /// Which implementation this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The member name (`--name`).
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>` (the form etcdctl prints back).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer URL this member advertises.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A Cairn built without the `failpoints` feature ignores `FAILPOINTS`:
    /// a test that set some would then test nothing, so it fails here.
    fn check_failpoints_took(&self) -> Result<()> {
        if !matches!(self.kind, Kind::Cairn) || self.opts.failpoints.is_empty() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        if log.contains(failpoints::SET_MESSAGE) {
            return Ok(());
        }
        Err(anyhow!(
            "{} did not take its fail points ({}): build it with \
             `cargo build --workspace --bins --features cairn-shim/failpoints`",
            self.binary.display(),
            failpoints::env_value(&self.opts.failpoints)
        ))
    }

    /// The log file (stdout+stderr of every start of this member).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }

    /// Keep the temp dir (data and log) when this member is dropped, e.g.
    /// because a test is about to fail with an error that names its log.
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// The exit status if the process has exited on its own (None while it
    /// runs, or after `kill9`).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A new client connected to this member (default timeouts).
    pub async fn client(&self) -> Result<Client> {
        connect_with(&self.endpoint(), ClientTimeouts::default()).await
    }

    /// SIGKILLs the process (no clean shutdown) and reaps it. No-op if not running.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the process was already reaped, which cannot
            // happen while we hold the Child; an already-exited process is fine.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping killed {} (pid {})", self.kind, child.id()))?;
        }
        Ok(())
    }

    /// Sends SIGTERM (a clean stop, as `systemctl stop` asks for) and waits
    /// up to `within` for the process to exit; its exit status, or an error
    /// if it is still running then (it is SIGKILLed, so nothing leaks).
    pub async fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.kind);
        };
        let pid = child.id();
        crate::signal::signal("-TERM", pid)?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the process")? {
                self.child = None;
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                self.kill9()?;
                bail!(
                    "{} (pid {pid}) still running {within:?} after SIGTERM",
                    self.kind
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process if running, then starts it again on the same data dir
    /// and ports, and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        let mut last_err = None;
        for attempt in 0..BIND_ATTEMPTS {
            if attempt > 0 {
                // The old process's listening socket can take a moment to be
                // released by the kernel after SIGKILL; back off, bounded.
                tokio::time::sleep(Duration::from_millis(250 * attempt as u64)).await;
            }
            self.spawn()?;
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(e) if self.lost_port_race() => {
                    self.kill9()?;
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no restart attempt made")))
    }

    /// The last `max_bytes` of the log file (lossy UTF-8), for error messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        read_tail(&self.log_path(), max_bytes)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path().display()))
    }

    /// A short description with the log tail, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} member {:?} at {} (log {}):\n----- log tail -----\n{}\n--------------------",
            self.kind,
            self.opts.name,
            self.endpoint(),
            self.log_path().display(),
            self.log_tail(6000)
        )
    }

    fn args(&self) -> Vec<String> {
        let url = self.endpoint();
        let data_dir = self.data_dir().display().to_string();
        let mut args = vec![
            "--name".to_string(),
            self.opts.name.clone(),
            "--data-dir".to_string(),
            data_dir,
            "--listen-client-urls".to_string(),
            url.clone(),
            "--advertise-client-urls".to_string(),
            url,
        ];
        // Cairn takes etcd's cluster flags too, and listens for peers.
        let peer = self.peer_url();
        args.extend([
            "--listen-peer-urls".to_string(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer.clone(),
            "--initial-cluster".to_string(),
            self.opts
                .initial_cluster
                .clone()
                .unwrap_or_else(|| format!("{}={peer}", self.opts.name)),
        ]);
        if let Some(b) = self.opts.max_request_bytes {
            args.extend(["--max-request-bytes".to_string(), b.to_string()]);
        }
        if let Some(b) = self.opts.quota_backend_bytes {
            args.extend(["--quota-backend-bytes".to_string(), b.to_string()]);
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "spawn while a child is running");
        self.starts += 1;
        let args = self.args();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        writeln!(
            log,
            "===== cairn-e2e: start #{} of {}: {} {}",
            self.starts,
            self.kind,
            self.binary.display(),
            args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let mut command = Command::new(&self.binary);
        if !self.opts.failpoints.is_empty() {
            command.env(
                failpoints::ENV,
                failpoints::env_value(&self.opts.failpoints),
            );
        }
        let child = command
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {} {}", self.binary.display(), args.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the log of the latest start shows a bind failure.
    fn lost_port_race(&self) -> bool {
        let tail = self.log_tail(20_000).to_ascii_lowercase();
        let latest = tail
            .rsplit("===== cairn-e2e: start #")
            .next()
            .unwrap_or(&tail);
        latest.contains("address already in use") || latest.contains("addrinuse")
    }

    /// Polls every 20ms until the member answers Status and a linearizable
    /// Range, the process exits (error at once), or the ready timeout passes.
    async fn wait_ready(&mut self) -> Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        let endpoint = self.endpoint();
        let kind = self.kind;
        let timeout = self.opts.ready_timeout;
        let this = &mut *self;
        let result = wait_until(
            &format!("{kind} at {endpoint} to become ready"),
            timeout,
            Duration::from_millis(20),
            || {
                let exited = this.child.as_mut().map(|c| c.try_wait());
                let endpoint = endpoint.clone();
                async move {
                    match exited {
                        None => bail!("{kind} is not running"),
                        Some(Err(e)) => bail!("checking {kind} process: {e}"),
                        Some(Ok(Some(status))) => {
                            bail!("{kind} exited with {status} before becoming ready")
                        }
                        Some(Ok(None)) => {}
                    }
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                        return Ok(Poll::NotYet(format!("{addr} does not accept connections")));
                    }
                    let probe = ClientTimeouts {
                        connect: Duration::from_millis(500),
                        request: Duration::from_secs(2),
                    };
                    let mut client = match connect_with(&endpoint, probe).await {
                        Ok(c) => c,
                        Err(e) => return Ok(Poll::NotYet(format!("connect: {e:#}"))),
                    };
                    if let Err(e) = client.status().await {
                        return Ok(Poll::NotYet(format!("Maintenance.Status: {e}")));
                    }
                    if let Err(e) = client.get("cairn-e2e/ready-probe", None).await {
                        return Ok(Poll::NotYet(format!("KV.Range: {e}")));
                    }
                    Ok(Poll::Ready(()))
                }
            },
        )
        .await;
        result.map_err(|e| anyhow!("{e:#}\n{}", self.describe()))
    }
}

impl Drop for Member {
    /// Kills the process. The temp dir (data and log) is removed, except when
    /// `keep_on_drop` was called, the thread is panicking (a failing test) or
    /// `CAIRN_E2E_KEEP` is set: then it is kept and its path printed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep || std::thread::panicking() || std::env::var_os("CAIRN_E2E_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "cairn-e2e: kept {} member dir {} (log: {})",
                self.kind,
                self.dir.path().display(),
                self.log_path().display()
            );
        }
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint())
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .finish()
    }
}

fn read_tail(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `--initial-cluster` for members `m0`.. with peers on `ports` of 127.0.0.1.
pub fn initial_cluster(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `n` members of `kind` as one new cluster (names `m0`..), all at
/// once (none is ready before a quorum is up), and waits until each is ready.
pub async fn start_cluster(kind: Kind, n: usize) -> Result<Vec<Member>> {
    let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
    let initial = initial_cluster(&ports);
    let mut starts = tokio::task::JoinSet::new();
    for (i, p) in ports.into_iter().enumerate() {
        let opts = MemberOptions {
            name: format!("m{i}"),
            peer_port: Some(p),
            initial_cluster: Some(initial.clone()),
            ready_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        starts.spawn(async move { (i, Member::start_with(kind, opts).await) });
    }
    let mut members: Vec<Option<Member>> = (0..n).map(|_| None).collect();
    while let Some(joined) = starts.join_next().await {
        let (i, member) = joined.context("a member's start task failed")?;
        members[i] = Some(member.with_context(|| format!("starting m{i} of {n}"))?);
    }
    members
        .into_iter()
        .map(|m| m.context("a member did not start"))
        .collect()
}
