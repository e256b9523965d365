//! `cairn snapshot restore|status`: etcdutl's offline snapshot commands, on
//! etcd's own snapshot format (see `cairn_raft_backend::etcd_snapshot`).
//!
//! `restore` is the offline migration etcd → Cairn and Cairn's own restore:
//! it builds a data dir from an etcd snapshot (or a member's
//! `member/snap/db`, which has no hash) with every revision kept. The data
//! dir holds the store and this member's identity, computed from the same
//! flags `cairn` takes, and no Raft state: started with those flags, the
//! member bootstraps its cluster as a new member does (`server::bootstrap`),
//! so each member of a cluster restored from the same file starts from the
//! same state. Everything is built in a directory beside the data dir and
//! renamed into place at the end, so a refused or failed restore writes
//! nothing there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cairn_raft_backend::etcd_snapshot::{
    import, status, ImportOptions, SnapshotError, SnapshotFile, SnapshotStatus,
};
use cairn_raft_backend::DB_FILE;

use crate::cluster_config::{parse_initial_cluster, validate_bootstrap, ClusterState};
use crate::identity::Identity;

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotCommand {
    /// Build a Cairn data dir from an etcd snapshot (or an etcd member's db file).
    Restore(RestoreArgs),
    /// Report a snapshot file's hash, revision, total keys and size.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The snapshot (`etcdctl snapshot save`) or an etcd member's `member/snap/db`.
    file: PathBuf,
    /// Path to the data directory to create [default: ${name}.cairn].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// The restored cluster's members, as name=peer-url,...
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long)]
    initial_cluster: Option<String>,
    /// The restored cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Restore a file without a SHA-256 trailer (a member's db file), or
    /// whose trailer does not match.
    #[arg(long)]
    skip_hash_check: bool,
    /// Add this to the snapshot's revision, so that the restored store's
    /// revisions continue above any a client saw after the snapshot.
    #[arg(long, default_value_t = 0)]
    bump_revision: u64,
    /// Compact at the restored (bumped) revision, so that watchers of older
    /// revisions start again rather than miss changes; needed with --bump-revision.
    #[arg(long)]
    mark_compacted: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum WriteOut {
    Simple,
    Json,
    Table,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    write_out: WriteOut,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Restore(a) => restore(a),
        SnapshotCommand::Status(a) => {
            let st = file_status(&a.file)?;
            println!("{}", format_status(&st, a.write_out));
            Ok(())
        }
    }
}

fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", a.name)));
    if data_dir.exists() {
        bail!(
            "data dir {} already exists: restore creates a new one",
            data_dir.display()
        );
    }
    if a.mark_compacted != (a.bump_revision > 0) {
        bail!("--bump-revision and --mark-compacted go together: give both or neither");
    }
    let initial = a.initial_cluster.clone().unwrap_or_else(|| {
        a.initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{}={u}", a.name))
            .collect::<Vec<_>>()
            .join(",")
    });
    let boot = validate_bootstrap(
        &a.name,
        &a.initial_advertise_peer_urls,
        &parse_initial_cluster(&initial)?,
        ClusterState::New,
        &a.initial_cluster_token,
    )?;
    let snap = SnapshotFile::open(&a.file, a.skip_hash_check)?;

    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let file_name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = parent.join(format!(".{file_name}.restoring-{}", std::process::id()));
    let built = (|| -> anyhow::Result<_> {
        std::fs::create_dir(&staging).with_context(|| format!("create {}", staging.display()))?;
        let imported = import(
            &snap,
            &staging.join(DB_FILE),
            ImportOptions {
                bump_revision: a.bump_revision,
                mark_compacted: a.mark_compacted,
            },
        )?;
        Identity {
            name: a.name.clone(),
            member_id: boot.local_id,
            cluster_id: boot.cluster_id,
            cluster_token: a.initial_cluster_token.clone(),
        }
        .save(&staging)?;
        if data_dir.exists() {
            bail!(
                "data dir {} appeared during the restore",
                data_dir.display()
            );
        }
        std::fs::rename(&staging, &data_dir)
            .with_context(|| format!("rename {} to {}", staging.display(), data_dir.display()))?;
        std::fs::File::open(&parent).and_then(|d| d.sync_all())?;
        Ok(imported)
    })();
    let imported = match built {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if imported.auth_was_enabled {
        eprintln!(
            "warning: auth was enabled in {}; Cairn has no auth yet, so its users and roles were not restored",
            a.file.display()
        );
    }
    println!(
        "restored snapshot {} into {} (member {:x} of cluster {:x}): revision {}, compact revision {}, {} revisions, {} leases",
        a.file.display(),
        data_dir.display(),
        boot.local_id,
        boot.cluster_id,
        imported.revision,
        imported.compact_revision,
        imported.revisions,
        imported.leases
    );
    Ok(())
}

/// A file's status; a hash trailer, when there is one, must match.
fn file_status(path: &Path) -> Result<SnapshotStatus, SnapshotError> {
    let snap = match SnapshotFile::open(path, false) {
        Err(SnapshotError::MissingHash { .. }) => SnapshotFile::open(path, true)?,
        other => other?,
    };
    status(&snap)
}

fn format_status(st: &SnapshotStatus, w: WriteOut) -> String {
    match w {
        WriteOut::Simple => format!(
            "{:x}, {}, {}, {}",
            st.hash,
            st.revision,
            st.total_key,
            human_bytes(st.total_size)
        ),
        WriteOut::Json => serde_json::json!({
            "hash": st.hash,
            "revision": st.revision,
            "totalKey": st.total_key,
            "totalSize": st.total_size,
            "version": st.version,
        })
        .to_string(),
        WriteOut::Table => {
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION"];
            let row = [
                format!("{:x}", st.hash),
                st.revision.to_string(),
                st.total_key.to_string(),
                human_bytes(st.total_size),
                st.version.clone(),
            ];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()))
                .collect();
            let line = |cells: &[String]| {
                let inner: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!(" {c:^w$} "))
                    .collect();
                format!("|{}|", inner.join("|"))
            };
            let sep = format!(
                "+{}+",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("+")
            );
            let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
            format!("{sep}\n{}\n{sep}\n{}\n{sep}", line(&head), line(&row))
        }
    }
}

/// Sizes as etcdutl prints them (go-humanize: SI units, one significant
/// decimal below 10).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdutl_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(36864), "37 kB");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
    }
}
