//! A real kube-apiserver on the store under test, when the environment
//! gives one (`KUBE_APISERVER_BIN`; see `cairn_e2e::kube`): a short kubectl
//! workload whose resourceVersions must be the store's revisions, as
//! kube-apiserver reads them from etcd. Without the binary each test says
//! why it skipped and passes; CI has none.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_e2e::kube::{Binaries, ControlPlane};
use cairn_e2e::{Kind, Member};

const NS: &str = "cairn-e2e";

/// The store's (create_revision, mod_revision, version) of a key, if present.
async fn revisions(member: &Member, key: &str) -> Result<Option<(i64, i64, i64)>> {
    let mut client = member.client().await?;
    let resp = client.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| (kv.create_revision(), kv.mod_revision(), kv.version())))
}

/// Polls `kubectl args` until its output is non-empty.
fn wait_output(plane: &ControlPlane, args: &[&str], what: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = plane.kubectl(args).unwrap_or_default();
        if !out.is_empty() {
            return Ok(out);
        }
        ensure!(Instant::now() < deadline, "{what}: nothing within 90 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

async fn workload(kind: Kind) -> Result<()> {
    let bins = match Binaries::from_env() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let member = Member::start(kind).await?;
    let plane = tokio::task::block_in_place(|| ControlPlane::start(&bins, &[member.endpoint()]))?;
    let kubectl = |args: &[&str]| tokio::task::block_in_place(|| plane.kubectl(args));
    let rv =
        |s: String| -> Result<i64> { s.parse().with_context(|| format!("resourceVersion {s:?}")) };

    kubectl(&["create", "namespace", NS])?;
    let key = format!("/registry/configmaps/{NS}/c1");
    let created = rv(kubectl(&[
        "-n",
        NS,
        "create",
        "configmap",
        "c1",
        "--from-literal=k=v1",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])?)?;
    ensure!(
        revisions(&member, &key).await? == Some((created, created, 1)),
        "after create (rv {created}): {:?}",
        revisions(&member, &key).await?
    );
    let patched = rv(kubectl(&[
        "-n",
        NS,
        "patch",
        "configmap",
        "c1",
        "-p",
        r#"{"data":{"k":"v2"}}"#,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])?)?;
    ensure!(patched > created, "rv {patched} after {created}");
    ensure!(
        revisions(&member, &key).await? == Some((created, patched, 2)),
        "after patch (rv {patched}): {:?}",
        revisions(&member, &key).await?
    );
    let value = kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "c1",
        "-o",
        "jsonpath={.data.k}",
    ])?;
    ensure!(value == "v2", "read back {value:?}");

    // A paginated list, as clients list: continue tokens at one revision.
    for i in 2..=6 {
        kubectl(&[
            "-n",
            NS,
            "create",
            "configmap",
            &format!("c{i}"),
            "--from-literal=k=v",
        ])?;
    }
    let listed = kubectl(&[
        "-n",
        NS,
        "get",
        "configmaps",
        "--chunk-size=2",
        "-o",
        "name",
    ])?;
    let ours: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("configmap/c"))
        .collect();
    ensure!(ours.len() == 6, "listed {listed:?}");

    kubectl(&["-n", NS, "delete", "configmap", "c1"])?;
    ensure!(revisions(&member, &key).await?.is_none(), "c1 still stored");
    let etcd_check = kubectl(&["get", "--raw", "/readyz/etcd"])?;
    ensure!(etcd_check == "ok", "apiserver's etcd check: {etcd_check}");

    if bins.controller_manager.is_some() {
        kubectl(&["-n", NS, "create", "deployment", "web", "--image=pause"])?;
        tokio::task::block_in_place(|| {
            wait_output(
                &plane,
                &[
                    "-n",
                    NS,
                    "get",
                    "replicasets",
                    "-l",
                    "app=web",
                    "-o",
                    "name",
                ],
                "replicaset of web",
            )?;
            wait_output(
                &plane,
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "lease",
                    "kube-controller-manager",
                    "-o",
                    "name",
                ],
                "controller-manager lease",
            )
        })?;
    }
    if bins.scheduler.is_some() {
        tokio::task::block_in_place(|| {
            wait_output(
                &plane,
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "lease",
                    "kube-scheduler",
                    "-o",
                    "name",
                ],
                "scheduler lease",
            )
        })?;
    }
    eprintln!(
        "kube-apiserver on port {} served the workload",
        plane.port()
    );
    Ok(())
}

server_test!(
    /// kubectl create, patch, get, paginated list and delete through a real
    /// kube-apiserver; each resourceVersion is the store's mod_revision.
    kubectl_workload_through_a_real_apiserver,
    workload
);
