//! A local Kubernetes control plane on a store under test: a real
//! kube-apiserver (and, when given, kube-controller-manager and
//! kube-scheduler) started against etcd endpoints, driven with kubectl.
//!
//! CI has no Kubernetes binaries; the harness runs when `KUBE_APISERVER_BIN`
//! names one (`KUBE_CONTROLLER_MANAGER_BIN`, `KUBE_SCHEDULER_BIN` and
//! `KUBECTL_BIN` optionally; kubectl is otherwise looked up on PATH), and
//! [`Binaries::from_env`] says why it cannot run otherwise.
//!
//! Authentication is a static token in group system:masters, over the
//! apiserver's self-signed serving certificate: enough for a test, and no
//! PKI to build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

const TOKEN: &str = "cairn-e2e-admin-token";

/// The Kubernetes binaries the environment names.
pub struct Binaries {
    pub apiserver: PathBuf,
    pub controller_manager: Option<PathBuf>,
    pub scheduler: Option<PathBuf>,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// The binaries, or why the harness cannot run here.
    pub fn from_env() -> std::result::Result<Binaries, String> {
        let apiserver = std::env::var_os("KUBE_APISERVER_BIN")
            .map(PathBuf::from)
            .ok_or("KUBE_APISERVER_BIN is not set (a kube-apiserver binary)")?;
        if !apiserver.is_file() {
            return Err(format!(
                "KUBE_APISERVER_BIN={} is not a file",
                apiserver.display()
            ));
        }
        let kubectl = match std::env::var_os("KUBECTL_BIN") {
            Some(p) => PathBuf::from(p),
            None => which("kubectl").ok_or("kubectl is not on PATH and KUBECTL_BIN is not set")?,
        };
        let optional = |var: &str| std::env::var_os(var).map(PathBuf::from);
        Ok(Binaries {
            apiserver,
            controller_manager: optional("KUBE_CONTROLLER_MANAGER_BIN"),
            scheduler: optional("KUBE_SCHEDULER_BIN"),
            kubectl,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A running control plane; its processes are killed on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    port: u16,
    kubectl: PathBuf,
    processes: Vec<(&'static str, Child)>,
}

impl ControlPlane {
    /// Starts kube-apiserver on `etcd_servers` and waits until it is ready
    /// (its `/readyz`, which includes its etcd check), then the optional
    /// components.
    pub fn start(bins: &Binaries, etcd_servers: &[String]) -> Result<ControlPlane> {
        let dir = tempfile::tempdir()?;
        let port = crate::ports::free_port()?;
        let base = dir.path().to_path_buf();
        let d = |name: &str| base.join(name).display().to_string();
        // The service-account signing key: ECDSA P-256, which kube-apiserver
        // accepts for ES256 tokens.
        let key = rcgen::KeyPair::generate()?;
        std::fs::write(dir.path().join("sa.key"), key.serialize_pem())?;
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{TOKEN},cairn-e2e-admin,1,\"system:masters\"\n"),
        )?;
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig(port))?;
        let mut plane = ControlPlane {
            port,
            kubectl: bins.kubectl.clone(),
            processes: Vec::new(),
            dir,
        };
        let apiserver = plane.spawn(
            "kube-apiserver",
            &bins.apiserver,
            &[
                format!("--etcd-servers={}", etcd_servers.join(",")),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", d("certs")),
                format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", d("sa.key")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
            ],
        )?;
        plane.processes.push(("kube-apiserver", apiserver));
        plane.wait_ready(Duration::from_secs(120))?;
        let kubeconfig = format!("--kubeconfig={}", d("kubeconfig"));
        if let Some(bin) = &bins.controller_manager {
            let child = plane.spawn(
                "kube-controller-manager",
                bin,
                &[
                    kubeconfig.clone(),
                    "--leader-elect=true".into(),
                    "--use-service-account-credentials=false".into(),
                    format!("--service-account-private-key-file={}", d("sa.key")),
                    "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle".into(),
                    "--bind-address=127.0.0.1".into(),
                    "--secure-port=0".into(),
                ],
            )?;
            plane.processes.push(("kube-controller-manager", child));
        }
        if let Some(bin) = &bins.scheduler {
            let child = plane.spawn(
                "kube-scheduler",
                bin,
                &[
                    kubeconfig,
                    "--leader-elect=true".into(),
                    "--bind-address=127.0.0.1".into(),
                    "--secure-port=0".into(),
                ],
            )?;
            plane.processes.push(("kube-scheduler", child));
        }
        Ok(plane)
    }

    fn spawn(&self, name: &str, bin: &Path, args: &[String]) -> Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name} ({})", bin.display()))
    }

    /// The last lines of a component's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    let name = *name;
                    bail!("{name} exited with {status}:\n{}", self.log_tail(name));
                }
            }
            let out = self.kubectl_output(&["get", "--raw", "/readyz"])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready within {timeout:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kubectl_output(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.kubectl)
            .arg(format!(
                "--kubeconfig={}",
                self.dir.path().join("kubeconfig").display()
            ))
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.kubectl.display()))
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.status.success() {
            return Err(anyhow!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A kubeconfig for the static token, trusting the self-signed certificate.
fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: local\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
         users:\n\
         - name: admin\n  user:\n    token: {TOKEN}\n\
         contexts:\n\
         - name: local\n  context:\n    cluster: local\n    user: admin\n\
         current-context: local\n"
    )
}
