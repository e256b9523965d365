//! Issue 17's benchmark: snapshot save and restore, Cairn against etcd on
//! the same data.
//!
//! 1. starts etcd 3.5 and Cairn (one member each) and fills both with
//!    `--keys` keys of `--value-size` bytes (Txns of 100 puts);
//! 2. times `etcdctl snapshot save` against each, sampling the server's
//!    resident set every 10 ms during the save (its peak, and its level
//!    before);
//! 3. times `etcdutl snapshot restore` and `cairn snapshot restore` of the
//!    same etcd snapshot, and `etcdutl snapshot restore` of Cairn's.
//!
//! Run: `cargo build --release -p cairn-shim && CAIRN_BIN=target/release/cairn
//! cargo run -p cairn-e2e --bin snapshot_bench -- --keys 1000000` (`--keep DIR`
//! keeps both snapshot files there).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_e2e::binaries::{cairn_bin, etcdctl_bin};
use cairn_e2e::source_load::fill_keys;
use cairn_e2e::{Kind, Member, MemberOptions};

/// (RssAnon, RssFile) in KiB: memory the process allocated, and pages of
/// files it maps (bbolt's and SQLite's mmap of their database), which the
/// kernel can drop.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("RssAnon:")?, field("RssFile:")?))
}

/// What a save cost: seconds, and the server's (anonymous, file-mapped)
/// resident memory before and at its peak during the save, in MiB.
struct Saved {
    secs: f64,
    before: (u64, u64),
    peak: (u64, u64),
}

/// Times `etcdctl snapshot save` against `m` into `to`.
async fn save(m: &Member, to: &Path) -> Result<Saved> {
    let pid = m.pid().context("member not running")?;
    let before = rss_kib(pid).unwrap_or_default();
    let mut child = tokio::process::Command::new(etcdctl_bin()?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.endpoint()))
        .args(["--command-timeout=600s", "snapshot", "save"])
        .arg(to)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let mut peak = before;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        let now = rss_kib(pid).unwrap_or_default();
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "save took too long"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ensure!(
        status.success(),
        "snapshot save against {} failed",
        m.kind()
    );
    let mib = |(a, f): (u64, u64)| (a / 1024, f / 1024);
    Ok(Saved {
        secs: started.elapsed().as_secs_f64(),
        before: mib(before),
        peak: mib(peak),
    })
}

/// Times a restore with `tool`; (seconds, the tool's peak RSS in MiB, as
/// GNU time reports it).
fn restore(tool: &Path, snap: &Path, data_dir: &Path) -> Result<(f64, u64)> {
    let started = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(tool)
        .args(["snapshot", "restore"])
        .arg(snap)
        .arg("--data-dir")
        .arg(data_dir)
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} restore failed: {stderr}",
        tool.display()
    );
    let rss = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("maxrss_kib="))
        .next_back()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok((secs, rss / 1024))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut keys = 1_000_000usize;
    let mut value_size = 1024usize;
    let mut keep: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().context("a flag without its value")?;
        match flag.as_str() {
            "--keys" => keys = v.parse()?,
            "--value-size" => value_size = v.parse()?,
            // Keep both snapshot files here (for restore experiments).
            "--keep" => keep = Some(v.into()),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let opts = MemberOptions {
        quota_backend_bytes: Some(16 << 30),
        ready_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let (etcd, cairn) = tokio::join!(
        Member::start_with(Kind::Etcd, opts.clone()),
        Member::start_with(Kind::Cairn, opts)
    );
    let (etcd, cairn) = (etcd?, cairn?);
    let (ce, cc) = (etcd.client().await?, cairn.client().await?);
    let t = Instant::now();
    let (re, rc) = tokio::join!(
        fill_keys(&ce, keys, value_size),
        fill_keys(&cc, keys, value_size)
    );
    let (re, rc) = (re?, rc?);
    println!(
        "filled {keys} keys of {value_size} B in {:.1}s (revisions: etcd {re}, cairn {rc})",
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let etcd_snap = dir.path().join("etcd.snap");
    let cairn_snap = dir.path().join("cairn.snap");
    for (name, m, snap) in [("etcd", &etcd, &etcd_snap), ("cairn", &cairn, &cairn_snap)] {
        let s = save(m, snap).await?;
        println!(
            "snapshot save: {name} {:.2}s ({} MiB file); server RSS anon {} → peak {} MiB, file-mapped {} → peak {} MiB",
            s.secs,
            std::fs::metadata(snap).map(|m| m.len() >> 20).unwrap_or(0),
            s.before.0,
            s.peak.0,
            s.before.1,
            s.peak.1
        );
    }
    drop((etcd, cairn));

    let etcdutl = etcdctl_bin()?.with_file_name("etcdutl");
    let r1 = restore(&etcdutl, &etcd_snap, &dir.path().join("r-etcdutl"))?;
    std::fs::remove_dir_all(dir.path().join("r-etcdutl"))?;
    let r2 = restore(&cairn_bin()?, &etcd_snap, &dir.path().join("r-cairn"))?;
    std::fs::remove_dir_all(dir.path().join("r-cairn"))?;
    let r3 = restore(&etcdutl, &cairn_snap, &dir.path().join("r-etcdutl-cairn"))?;
    if let Some(keep) = keep {
        std::fs::create_dir_all(&keep)?;
        std::fs::rename(&etcd_snap, keep.join("etcd.snap"))?;
        std::fs::rename(&cairn_snap, keep.join("cairn.snap"))?;
    }
    println!(
        "restore of etcd's snapshot: etcdutl {:.2}s (peak RSS {} MiB), cairn {:.2}s (peak RSS {} MiB); etcdutl of cairn's snapshot {:.2}s",
        r1.0, r1.1, r2.0, r2.1, r3.0
    );
    Ok(())
}
