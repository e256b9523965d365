//! Maintenance.Downgrade (validate, enable, cancel) and Status's downgrade
//! info, on a Cairn cluster of one release, through the generated etcd v3
//! client (the wire `etcdctl downgrade` uses; etcdctl 3.5 has no such
//! command). The cluster version is decided by the leader from every
//! member's release; a downgrade to a release this build does not know, or
//! to anything but the minor before the cluster version, is refused with
//! etcd's code and message. A real downgrade is in `rolling_upgrade`.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_e2e::cluster::Cluster;
use cairn_e2e::http::get_text;
use cairn_e2e::wait::{wait_until, Poll};
use cairn_proto::etcdserverpb as pb;
use pb::downgrade_request::DowngradeAction;
use pb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

async fn maintenance(endpoint: &str) -> Result<MaintenanceClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(MaintenanceClient::new(ch))
}

async fn downgrade(
    c: &mut MaintenanceClient<Channel>,
    action: i32,
    version: &str,
) -> std::result::Result<pb::DowngradeResponse, (tonic::Code, String)> {
    c.downgrade(pb::DowngradeRequest {
        action,
        version: version.into(),
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|s| (s.code(), s.message().to_string()))
}

/// `/version`'s `cairn.cluster` of member `i`.
async fn cluster_version(cluster: &Cluster, i: usize) -> Result<String> {
    let body = get_text(cluster.members[i].client_port, "/version").await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("/version")?;
    Ok(v["cairn"]["cluster"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downgrade_requests_are_answered_as_etcd_answers_them() -> Result<()> {
    let cluster = Cluster::start(3, &[]).await?;
    let release = this_release_minor();
    wait_until(
        "every member to apply the cluster version",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let mut seen = Vec::new();
            for i in 0..3 {
                seen.push(cluster_version(&cluster, i).await?);
            }
            Ok(if seen.iter().all(|v| *v == release) {
                Poll::Ready(())
            } else {
                Poll::NotYet(format!("{seen:?}"))
            })
        },
    )
    .await?;

    let mut c = maintenance(&cluster.endpoint(1)).await?;
    let st = c.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(
        st.downgrade_info
            == Some(pb::DowngradeInfo {
                enabled: false,
                target_version: String::new(),
            }),
        "Status.downgrade_info: {:?}",
        st.downgrade_info
    );

    let invalid = (
        tonic::Code::InvalidArgument,
        "etcdserver: invalid downgrade target version".to_string(),
    );
    // Not the minor before the cluster version (etcd's target for 3.6).
    for target in ["3.5", "3.5.0", &release] {
        let got = downgrade(&mut c, DowngradeAction::Validate as i32, target).await;
        ensure!(
            got.as_ref().err() == Some(&invalid),
            "validate {target}: {got:?}"
        );
        let got = downgrade(&mut c, DowngradeAction::Enable as i32, target).await;
        ensure!(
            got.as_ref().err() == Some(&invalid),
            "enable {target}: {got:?}"
        );
    }
    let got = downgrade(&mut c, DowngradeAction::Validate as i32, "three").await;
    ensure!(
        got.as_ref().err()
            == Some(&(
                tonic::Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format".to_string()
            )),
        "{got:?}"
    );
    let got = downgrade(&mut c, 7, "0.1").await;
    ensure!(
        got.as_ref().err() == Some(&(tonic::Code::Unknown, "etcdserver: unknown method".into())),
        "{got:?}"
    );
    // etcd 3.6 answers a cancel with nothing to cancel with success.
    let got = downgrade(&mut c, DowngradeAction::Cancel as i32, "")
        .await
        .map_err(|e| anyhow::anyhow!("cancel: {e:?}"))?;
    ensure!(got.version == release, "cancel answered {got:?}");
    ensure!(got.header.is_some_and(|h| h.cluster_id != 0), "no header");
    let st = c.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(
        st.downgrade_info.as_ref().is_some_and(|d| !d.enabled),
        "{:?}",
        st.downgrade_info
    );
    Ok(())
}

/// Every member's `/version` `cairn.cluster`, once they all show `want`.
async fn wait_cluster_version(cluster: &Cluster, want: &str) -> Result<()> {
    wait_until(
        &format!("every member to apply cluster version {want}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut seen = Vec::new();
            for i in 0..cluster.members.len() {
                seen.push(cluster_version(cluster, i).await?);
            }
            Ok(if seen.iter().all(|v| v == want) {
                Poll::Ready(())
            } else {
                Poll::NotYet(format!("{seen:?}"))
            })
        },
    )
    .await
}

/// A downgrade enabled and then cancelled on a cluster of this release: the
/// leader lowers the cluster version to the target, Status reports the
/// downgrade, and after the cancel the version rises back, every member
/// still running this release (etcd's cancel path, which nothing else runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enabled_downgrade_lowers_the_cluster_version_and_a_cancel_restores_it() -> Result<()> {
    let release = this_release_minor();
    let (major, minor) = release.split_once('.').context("release")?;
    let Some(before) = minor.parse::<u32>()?.checked_sub(1) else {
        eprintln!("release {release} has no earlier minor to downgrade to");
        return Ok(());
    };
    let target = format!("{major}.{before}");
    let cluster = Cluster::start(3, &[]).await?;
    wait_cluster_version(&cluster, &release).await?;
    let mut c = maintenance(&cluster.endpoint(0)).await?;

    let got = downgrade(&mut c, DowngradeAction::Validate as i32, &target)
        .await
        .map_err(|e| anyhow::anyhow!("validate: {e:?}"))?;
    ensure!(got.version == release, "validate answered {got:?}");
    let got = downgrade(&mut c, DowngradeAction::Enable as i32, &target)
        .await
        .map_err(|e| anyhow::anyhow!("enable: {e:?}"))?;
    ensure!(got.version == release, "enable answered {got:?}");
    wait_cluster_version(&cluster, &target).await?;
    let st = c.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(
        st.downgrade_info
            == Some(pb::DowngradeInfo {
                enabled: true,
                target_version: format!("{target}.0"),
            }),
        "Status.downgrade_info while enabled: {:?}",
        st.downgrade_info
    );
    // A second enable once the version is lowered: etcd checks the target
    // against the (now lowered) cluster version first.
    let got = downgrade(&mut c, DowngradeAction::Enable as i32, &target).await;
    ensure!(
        got.as_ref().err()
            == Some(&(
                tonic::Code::InvalidArgument,
                "etcdserver: invalid downgrade target version".to_string()
            )),
        "second enable: {got:?}"
    );

    downgrade(&mut c, DowngradeAction::Cancel as i32, "")
        .await
        .map_err(|e| anyhow::anyhow!("cancel: {e:?}"))?;
    wait_cluster_version(&cluster, &release).await?;
    let st = c.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(
        st.downgrade_info.as_ref().is_some_and(|d| !d.enabled),
        "Status.downgrade_info after the cancel: {:?}",
        st.downgrade_info
    );
    Ok(())
}

/// This build's release as the cluster version shows it (major.minor).
fn this_release_minor() -> String {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.');
    format!(
        "{}.{}",
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("0")
    )
}
