//! A rolling upgrade of a 3-member Cairn cluster from the previous release
//! (`e2e/previous-release`, built by `scripts/previous-release.sh`) to this
//! one, member by member, under the robustness campaign's load (Txn writes
//! on mod_revision, paginated lists, watches with prev_kv and progress
//! notifications, leases, compaction); then the same downgrade back, through
//! etcd's Downgrade API. Before each step `cairn upgrade check` (of the
//! release being moved to) must say it is safe; the leader goes last, after
//! a move-leader. Then every campaign check: no acknowledged write lost, a
//! linearizable history, watch streams with no gap or duplicate, leases,
//! members converged; and no stretch without a write longer than one
//! election would cause.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::binaries::{cairn_bin, previous_release_bin};
use cairn_e2e::cluster::{Cluster, ELECTION_MS};
use cairn_e2e::http::get_text;
use cairn_e2e::robustness::faults::Injector;
use cairn_e2e::robustness::shared::REQUEST_TIMEOUT;
use cairn_e2e::robustness::{run_with, Config};
use cairn_e2e::wait::{wait_until, Poll};
use cairn_proto::etcdserverpb as pb;
use pb::downgrade_request::DowngradeAction;

/// "0.2.0" → "0.2": the cluster version's granularity.
fn minor(version: &str) -> String {
    version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// Waits until every member applied cluster version `want` and the
/// downgrade state `downgrading` (from `/version`'s `cairn` object).
async fn wait_versions(c: &Cluster, want: &str, downgrading: bool) -> Result<()> {
    wait_until(
        &format!("cluster version {want}, downgrade enabled: {downgrading}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let mut seen = Vec::new();
            for i in c.running() {
                let body = get_text(c.members[i].client_port, "/version").await?;
                let v: serde_json::Value = serde_json::from_str(&body)?;
                let cv = v["cairn"]["cluster"].as_str().unwrap_or("?").to_string();
                let target = v["cairn"]["downgradeTarget"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                seen.push((cv, target));
            }
            let ok = seen
                .iter()
                .all(|(cv, target)| cv == want && target.is_empty() != downgrading);
            Ok(if ok {
                Poll::Ready(())
            } else {
                Poll::NotYet(format!("(cluster, downgrade target) per member: {seen:?}"))
            })
        },
    )
    .await
}

/// `checker upgrade check --member <name> --target-version <target>` until
/// it exits 0 (safe), as an operator waits for it after the previous step.
async fn wait_safe(
    c: &Cluster,
    checker: &Path,
    via: usize,
    member: usize,
    target: &str,
) -> Result<()> {
    let name = c.members[member].name.clone();
    let ep = c.endpoint(via);
    wait_until(
        &format!("`cairn upgrade check` to let {name} go to {target}"),
        Duration::from_secs(45),
        Duration::from_millis(500),
        || {
            let (ep, name) = (ep.clone(), name.clone());
            async move {
                let out = tokio::time::timeout(
                    Duration::from_secs(20),
                    tokio::process::Command::new(checker)
                        .args(["upgrade", "check", "--endpoints", &ep, "--member", &name])
                        .args(["--target-version", target])
                        .output(),
                )
                .await
                .context("upgrade check did not finish in 20 s")??;
                Ok(if out.status.code() == Some(0) {
                    Poll::Ready(())
                } else {
                    Poll::NotYet(format!(
                        "exit {:?}: {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stdout)
                    ))
                })
            }
        },
    )
    .await
}

/// Replaces every member's binary with `to` (`None`: the one under test),
/// followers first and the leader last after moving leadership away, each
/// after `checker`'s upgrade check passes.
async fn roll(inj: &mut Injector, to: Option<&Path>, checker: &Path, target: &str) -> Result<()> {
    let all: Vec<usize> = (0..inj.cluster.len()).collect();
    let leader = inj.cluster.leader(&all, Duration::from_secs(10)).await?;
    let mut order: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    order.push(leader);
    for &i in &order {
        let others: Vec<usize> = all.iter().copied().filter(|o| *o != i).collect();
        let now_leader = inj.cluster.leader(&all, Duration::from_secs(10)).await?;
        if now_leader == i {
            let ids = inj.cluster.member_ids().await?;
            let to_id = ids
                .iter()
                .find(|(_, idx)| **idx == others[0])
                .map(|(id, _)| *id)
                .context("no member id for the new leader")?;
            let mut c = inj.cluster.client(i).await?;
            c.move_leader(to_id).await.context("move-leader")?;
            inj.note(format!("moved leadership from m{i} to m{}", others[0]));
        }
        wait_safe(&inj.cluster, checker, others[0], i, target).await?;
        inj.note(format!("stopping m{i} (SIGTERM) to run Cairn {target}"));
        let clean = inj.cluster.stop(i, Duration::from_secs(10)).await?;
        ensure!(clean, "m{i} did not exit within 10 s of SIGTERM");
        inj.cluster.set_binary(i, to.map(Path::to_path_buf));
        inj.cluster.start_member(i)?;
        inj.cluster.wait_all_ready(Duration::from_secs(30)).await?;
        inj.note(format!("m{i} serves on Cairn {target}"));
    }
    Ok(())
}

async fn downgrade(
    c: &Cluster,
    i: usize,
    action: DowngradeAction,
    version: &str,
) -> Result<String> {
    let mut m = pb::maintenance_client::MaintenanceClient::connect(c.endpoint(i)).await?;
    let r = m
        .downgrade(pb::DowngradeRequest {
            action: action as i32,
            version: version.into(),
        })
        .await
        .with_context(|| format!("downgrade {action:?} {version}"))?;
    Ok(r.into_inner().version)
}

struct Releases {
    prev_version: String,
    prev_bin: PathBuf,
    this_version: String,
    this_bin: PathBuf,
}

async fn scenario(inj: &mut Injector, r: &Releases) -> Result<()> {
    let (prev, this) = (minor(&r.prev_version), minor(&r.this_version));
    wait_versions(&inj.cluster, &prev, false).await?;
    inj.note(format!(
        "cluster version {prev}: upgrading to {}",
        r.this_version
    ));
    roll(inj, None, &r.this_bin, &r.this_version).await?;
    wait_versions(&inj.cluster, &this, false).await?;
    inj.note(format!("cluster version {this}"));

    // Now an older member is refused: it says so and exits.
    let follower = {
        let all: Vec<usize> = (0..inj.cluster.len()).collect();
        let leader = inj.cluster.leader(&all, Duration::from_secs(10)).await?;
        (leader + 1) % inj.cluster.len()
    };
    ensure!(
        inj.cluster.stop(follower, Duration::from_secs(10)).await?,
        "m{follower} did not stop"
    );
    inj.cluster.set_binary(follower, Some(r.prev_bin.clone()));
    let exit = inj
        .cluster
        .start_expecting_exit(follower, Duration::from_secs(20))
        .await?;
    let log = inj.cluster.log_tail(follower);
    match exit {
        Some(status) if !status.success() => {}
        other => bail!(
            "Cairn {} started in a {this} cluster without a downgrade: {other:?}\n{log}",
            r.prev_version
        ),
    }
    ensure!(
        log.contains(&format!("invalid downgrade; server version {prev} is lower than determined cluster version {this}")),
        "m{follower} exited without saying why:\n{log}"
    );
    inj.note(format!(
        "Cairn {} refused to start in the {this} cluster, as it must",
        r.prev_version
    ));
    inj.cluster.set_binary(follower, None);
    inj.cluster.start_member(follower)?;
    inj.cluster.wait_all_ready(Duration::from_secs(30)).await?;

    // The downgrade back, through etcd's API.
    let answered = downgrade(&inj.cluster, 0, DowngradeAction::Validate, &prev).await?;
    ensure!(
        answered == this,
        "validate answered cluster version {answered:?}"
    );
    downgrade(&inj.cluster, 1, DowngradeAction::Enable, &prev).await?;
    inj.note(format!("downgrade to {prev} enabled"));
    wait_versions(&inj.cluster, &prev, true).await?;
    roll(inj, Some(&r.prev_bin), &r.prev_bin, &r.prev_version).await?;
    // Every member on the target: the leader ends the downgrade.
    wait_versions(&inj.cluster, &prev, false).await?;
    inj.note(format!("the cluster has been downgraded to {prev}"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_and_downgrade_under_load_lose_nothing() -> Result<()> {
    let (prev_version, prev_bin) = previous_release_bin()?;
    let releases = Releases {
        prev_version,
        prev_bin,
        this_version: env!("CARGO_PKG_VERSION").to_string(),
        this_bin: cairn_bin()?,
    };
    ensure!(
        minor(&releases.prev_version) != minor(&releases.this_version),
        "the previous release ({}) has this release's minor ({})",
        releases.prev_version,
        releases.this_version
    );
    let cluster =
        Cluster::start_with_binary(3, &releases.prev_bin, &["--snapshot-count=2000"]).await?;
    let mut cfg = Config::new(18, Duration::from_secs(5));
    cfg.workers = 4;
    cfg.watchers = 4;
    let report = run_with(&cfg, cluster, move |inj, _until| {
        Box::pin(async move { scenario(inj, &releases).await })
    })
    .await?;
    eprintln!("rolling upgrade: {}", report.summary());
    for l in &report.log {
        eprintln!("  {l}");
    }
    ensure!(report.ok(), "{}", report.failure());
    // Leadership moves before the leader stops, so no step needs an
    // election; what is seen is clients leaving a stopped member (0.4–1.5 s
    // in runs here). The bound: one election (the election timeout,
    // randomized up to twice it) plus the time a client takes to give up
    // on a member and go to another (the load's request timeout and a
    // second), so that a loaded CI machine does not fail it for nothing.
    let one_election =
        Duration::from_millis(2 * ELECTION_MS) + REQUEST_TIMEOUT + Duration::from_secs(1);
    ensure!(
        report.longest_write_gap <= one_election,
        "no write succeeded for {:?} (one election: {one_election:?})",
        report.longest_write_gap
    );
    Ok(())
}
