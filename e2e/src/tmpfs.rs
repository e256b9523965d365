//! A small filesystem of its own under a member's data dir, to fill it:
//! a tmpfs mounted for the test (root only) and unmounted when dropped.
//!
//! Cairn's Raft log preallocates 64 MiB segments, so a data dir needs
//! about 80 MiB before it holds anything; [`MIN_BYTES`] leaves room for
//! the store and a second segment.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A size a member runs in for a while (two log segments and the store).
pub const MIN_BYTES: u64 = 192 << 20;

/// The file that fills the filesystem.
const FILLER: &str = "cairn-e2e-filler";

/// A mounted tmpfs; unmounted (lazily, so a process still in it does not
/// keep it) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created if missing; it must be
    /// empty). Fails, saying so, unless run as root.
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs on {} failed ({}): {}; filling a disk needs root",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem to the last byte (a file of zeros, written until
    /// ENOSPC); returns how many bytes that took.
    pub fn fill(&self) -> Result<u64> {
        let path = self.path.join(FILLER);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut written = 0u64;
        // Large writes first, then smaller ones into what is left.
        for chunk in [1usize << 20, 64 << 10, 4 << 10, 512] {
            let buf = vec![0u8; chunk];
            // Bounded: no tmpfs here holds more than 64 GiB.
            for _ in 0..(64u64 << 30) / chunk as u64 {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if is_full(&e) => break,
                    Err(e) => return Err(e).context("filling the tmpfs"),
                }
            }
        }
        match f.sync_all() {
            Err(e) if !is_full(&e) => return Err(e).context("syncing the filler"),
            _ => {}
        }
        Ok(written)
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(self.path.join(FILLER)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e).context("removing the filler"),
            _ => Ok(()),
        }
    }

    /// Whether it is filled now.
    pub fn is_filled(&self) -> bool {
        self.path.join(FILLER).exists()
    }
}

fn is_full(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a member still running (a test that failed) cannot keep it.
        let ok = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("tmpfs: umount -l {} failed", self.path.display());
        }
    }
}

/// Whether this process may mount filesystems (root): the disk-full test
/// and fault need it.
pub fn can_mount() -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    Tmpfs::mount(&dir.path().join("probe"), 1 << 20).is_ok()
}
