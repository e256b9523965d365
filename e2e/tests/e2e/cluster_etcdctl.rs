//! The real etcdctl 3.5 against a 3-member Cairn cluster: `member list`,
//! `member add --learner`, `member promote`, `member update`, `member remove`,
//! and `endpoint status|health --cluster`, which find the other members
//! through MemberList's client URLs.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::cluster::Cluster;
use cairn_e2e::etcdctl::{etcdctl, CtlOutput};
use cairn_e2e::wait::{wait_until, Poll};
use serde_json::Value;

async fn ctl(endpoint: &str, args: &[&str]) -> Result<CtlOutput> {
    let out = etcdctl(endpoint, args, None).await?;
    ensure!(
        out.code == 0,
        "etcdctl {} failed ({}): {}{}",
        args.join(" "),
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(out)
}

async fn ctl_json(endpoint: &str, args: &[&str]) -> Result<Value> {
    let mut full = args.to_vec();
    full.extend(["-w", "json"]);
    let out = ctl(endpoint, &full).await?;
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("etcdctl {}: not JSON: {}", args.join(" "), out.stdout))
}

/// (id, name, peer URLs, client URLs, learner) of every member.
type Row = (u64, String, Vec<String>, Vec<String>, bool);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn members(list: &Value) -> Vec<Row> {
    let mut rows: Vec<Row> = list["members"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap_or(0),
                m["name"].as_str().unwrap_or("").to_string(),
                strings(&m["peerURLs"]),
                strings(&m["clientURLs"]),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_member_and_cluster_endpoint_commands() -> Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let ep = c.endpoint(0);

    // member list: every member with its name, peer and client URLs (a
    // member serves clients only once it has published them, as in etcd).
    let list = ctl_json(&ep, &["member", "list"]).await?;
    let rows = members(&list);
    assert_eq!(rows.len(), 3, "{list}");
    for (i, (id, name, peers, clients, learner)) in rows.iter().enumerate() {
        assert!(*id != 0);
        assert_eq!(name, &format!("m{i}"));
        assert_eq!(peers, &vec![c.members[i].peer_url()]);
        assert_eq!(clients, &vec![c.endpoint(i)]);
        assert!(!learner);
    }
    let table = ctl(&ep, &["member", "list", "-w", "table"]).await?;
    assert!(table.stdout.contains("started"), "{}", table.stdout);

    // endpoint status --cluster: one row per member, all agreeing on one
    // leader that is one of them, and reporting a 3.6+ version.
    let status = ctl_json(&ep, &["endpoint", "status", "--cluster"]).await?;
    let rows = status.as_array().context("status is not a list")?;
    assert_eq!(rows.len(), 3, "{status}");
    let endpoints: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["Endpoint"].as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = (0..3).map(|i| c.endpoint(i)).collect();
    assert_eq!(endpoints, want);
    let leaders: BTreeSet<u64> = rows
        .iter()
        .filter_map(|r| r["Status"]["leader"].as_u64())
        .collect();
    assert_eq!(leaders.len(), 1, "members disagree on the leader: {status}");
    let ids: BTreeSet<u64> = members(&list).iter().map(|r| r.0).collect();
    assert!(leaders.iter().all(|l| ids.contains(l)), "{status}");
    let leading = rows
        .iter()
        .filter(|r| r["Status"]["leader"] == r["Status"]["header"]["member_id"])
        .count();
    assert_eq!(leading, 1, "{status}");
    for r in rows {
        let v = r["Status"]["version"].as_str().unwrap_or("");
        assert!(v.starts_with("3.6") || v.starts_with("3.7"), "{v}");
        assert!(r["Status"]["raftIndex"].as_u64().unwrap_or(0) > 0);
    }
    let health = ctl(&ep, &["endpoint", "health", "--cluster"]).await?;
    let healthy = format!("{}{}", health.stdout, health.stderr);
    assert_eq!(healthy.matches("is healthy").count(), 3, "{healthy}");

    // member add --learner, then start it, promote it once caught up.
    let (idx, url) = c.add_slot(&[])?;
    let name = c.members[idx].name.clone();
    let added = ctl(
        &ep,
        &[
            "member",
            "add",
            &name,
            &format!("--peer-urls={url}"),
            "--learner",
        ],
    )
    .await?;
    assert!(
        added.stdout.contains("added to cluster"),
        "{}",
        added.stdout
    );
    assert!(
        added.stdout.contains(&format!("ETCD_NAME=\"{name}\"")),
        "{}",
        added.stdout
    );
    assert!(
        added
            .stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        added.stdout
    );
    let list = ctl_json(&ep, &["member", "list"]).await?;
    let new = members(&list)
        .into_iter()
        .find(|r| r.2 == vec![url.clone()])
        .context("added member not listed")?;
    assert!(new.4, "added with --learner but not a learner: {list}");
    let new_hex = format!("{:x}", new.0);
    c.start_joined(idx)?;
    wait_until(
        "learner promoted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (ep, new_hex) = (ep.clone(), new_hex.clone());
            async move {
                let out = etcdctl(&ep, &["member", "promote", &new_hex], None).await?;
                if out.code == 0 {
                    return Ok(Poll::Ready(()));
                }
                // etcd's answer while the learner is behind; anything else is a failure.
                if out.stderr.contains("in sync with leader") {
                    return Ok(Poll::NotYet(out.stderr));
                }
                bail!("member promote failed: {}", out.stderr)
            }
        },
    )
    .await?;
    // Promotion only needs the learner's log in sync; the member publishes
    // its client URLs through Raft once running, a moment later, and
    // `endpoint health --cluster` can only reach members that have.
    let list = wait_until(
        "promoted member publishes its client URLs",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let ep = ep.clone();
            async move {
                let list = ctl_json(&ep, &["member", "list"]).await?;
                let rows = members(&list);
                if rows.len() == 4 && rows.iter().all(|r| !r.3.is_empty()) {
                    return Ok(Poll::Ready(list));
                }
                Ok(Poll::NotYet(list.to_string()))
            }
        },
    )
    .await?;
    let rows = members(&list);
    assert!(rows.iter().all(|r| !r.4), "{list}");
    assert_eq!(
        rows.iter().find(|r| r.0 == new.0).map(|r| r.3.clone()),
        Some(vec![c.endpoint(idx)]),
        "{list}"
    );
    let health = ctl(&ep, &["endpoint", "health", "--cluster"]).await?;
    let healthy = format!("{}{}", health.stdout, health.stderr);
    assert_eq!(healthy.matches("is healthy").count(), 4, "{healthy}");

    // member update keeps the member (same URL: the member stays reachable).
    let updated = ctl(
        &ep,
        &["member", "update", &new_hex, &format!("--peer-urls={url}")],
    )
    .await?;
    assert!(
        updated.stdout.contains("updated in cluster"),
        "{}",
        updated.stdout
    );

    // member remove, then it is gone from the list.
    let removed = ctl(&ep, &["member", "remove", &new_hex]).await?;
    assert!(
        removed.stdout.contains("removed from cluster"),
        "{}",
        removed.stdout
    );
    c.kill9(idx)?;
    let list = ctl_json(&ep, &["member", "list"]).await?;
    assert_eq!(members(&list).len(), 3, "{list}");

    // An unknown member is etcd's error.
    let out = etcdctl(&ep, &["member", "remove", "deadbeef"], None).await?;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("member not found"), "{}", out.stderr);
    Ok(())
}
