//! `cairn upgrade check|plan`, run as the real `cairn` binary against etcd
//! 3.5.1 clusters and a Cairn cluster in the states an operator meets:
//! healthy, a member down, a single member, a NOSPACE alarm, a member
//! paused (SIGSTOP). Exit codes: 0 safe, 1 unsafe, 2 could not tell.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_e2e::cluster::Cluster;
use cairn_e2e::member::start_cluster;
use cairn_e2e::migrator::{run_cairn, RunOutput};
use cairn_e2e::signal::Paused;
use cairn_e2e::wait::{wait_until, Poll};
use cairn_e2e::{Kind, Member};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};

/// `cairn upgrade <args...> --endpoints <endpoint>`, with a hard limit.
async fn upgrade(endpoint: &str, args: &[&str]) -> Result<RunOutput> {
    let mut all = vec!["upgrade"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoints", endpoint]);
    run_cairn(&all, Duration::from_secs(30)).await
}

/// `cairn upgrade check -w json ...`: its exit code and each check's (result, reason).
async fn check(
    endpoint: &str,
    args: &[&str],
) -> Result<(i32, HashMap<String, (String, String)>, RunOutput)> {
    let mut all = vec!["check", "-w", "json"];
    all.extend_from_slice(args);
    let out = upgrade(endpoint, &all).await?;
    let mut findings = HashMap::new();
    for line in out.stdout.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {}", out.all()))?;
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        findings.insert(field("check"), (field("result"), field("reason")));
    }
    ensure!(findings.len() == 7, "expected 7 checks, got: {}", out.all());
    Ok((out.code, findings, out))
}

/// Whether check `name` concluded `result`, its reason containing `words`.
fn expect(
    findings: &HashMap<String, (String, String)>,
    name: &str,
    result: &str,
    words: &str,
) -> Result<()> {
    let (r, why) = findings
        .get(name)
        .with_context(|| format!("no {name} check in {findings:?}"))?;
    ensure!(
        r == result && why.contains(words),
        "{name}: expected {result} with {words:?}, got {r}: {why}"
    );
    Ok(())
}

/// (leader name, member id → name) as the cluster reports them.
async fn roles(c: &mut Client) -> Result<(String, HashMap<u64, String>)> {
    let names: HashMap<u64, String> = c
        .member_list()
        .await?
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string()))
        .collect();
    let leader = c.status().await?.leader();
    let name = names
        .get(&leader)
        .cloned()
        .with_context(|| format!("leader {leader:x} not in {names:?}"))?;
    Ok((name, names))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_etcd_cluster_may_restart_a_follower_but_not_jump_to_3_6() -> Result<()> {
    let members = start_cluster(Kind::Etcd, 3).await?;
    let ep = members[0].endpoint();
    let (leader, names) = roles(&mut members[0].client().await?).await?;
    let follower = names
        .values()
        .find(|n| **n != leader)
        .cloned()
        .context("no follower")?;

    let started = Instant::now();
    let out = upgrade(&ep, &["check", "--member", &follower]).await?;
    let took = started.elapsed();
    ensure!(out.code == 0, "exit {}: {}", out.code, out.all());
    ensure!(
        out.stdout
            .contains(&format!("restarting {follower} is safe now")),
        "{}",
        out.stdout
    );
    for name in ["reachability", "quorum", "leader", "caught-up", "version"] {
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" PASS ")),
            "{name} did not pass: {}",
            out.stdout
        );
    }
    // One window (1 s) and the calls around it: a few seconds at most.
    ensure!(took < Duration::from_secs(5), "the check took {took:?}");

    let (code, f, _) = check(&ep, &["--member", &follower, "--target-version", "3.6.0"]).await?;
    ensure!(code == 1, "a 3.6 target on 3.5.1 must be unsafe: {f:?}");
    expect(
        &f,
        "version",
        "FAIL",
        "needs every member on 3.5.26 or later",
    )?;
    expect(&f, "quorum", "PASS", "2 of 3 voters remain")?;

    let (code, f, _) = check(&ep, &["--member", &leader]).await?;
    ensure!(
        code == 0,
        "restarting the leader warns but is not unsafe: {f:?}"
    );
    expect(&f, "leader", "WARN", "move-leader")?;

    let plan = upgrade(&ep, &["plan", "--target-version", "3.5.26"]).await?;
    ensure!(plan.code == 0, "{}", plan.all());
    let leader_step = plan
        .stdout
        .find(&format!("{leader} (leader"))
        .context("no leader step")?;
    let follower_step = plan
        .stdout
        .find(&format!("{follower} (follower"))
        .context("no follower step")?;
    ensure!(
        follower_step < leader_step,
        "leader not last: {}",
        plan.stdout
    );
    ensure!(
        plan.stdout
            .contains(&format!("--target-version 3.5.26 --member {follower}")),
        "{}",
        plan.stdout
    );
    eprintln!("healthy 3-member etcd: check took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_etcd_member_killed_restarting_another_is_unsafe() -> Result<()> {
    let mut members = start_cluster(Kind::Etcd, 3).await?;
    members[2].kill9()?;
    let (code, f, _) = check(&members[0].endpoint(), &["--member", "m1"]).await?;
    ensure!(code == 1, "{f:?}");
    expect(&f, "reachability", "FAIL", "m2 did not answer Status")?;
    expect(&f, "quorum", "FAIL", "1 of 3 voters would remain healthy")?;
    // Restarting the member that is down already takes nothing more away.
    let (code, f, _) = check(&members[0].endpoint(), &["--member", "m2"]).await?;
    ensure!(code == 0, "{f:?}");
    expect(&f, "quorum", "PASS", "2 of 3")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_only_member_of_an_etcd_cluster_may_not_restart() -> Result<()> {
    let etcd = Member::start(Kind::Etcd).await?;
    let (code, f, _) = check(&etcd.endpoint(), &["--member", etcd.name()]).await?;
    ensure!(code == 1, "{f:?}");
    expect(&f, "quorum", "FAIL", "is the only voter")?;
    expect(&f, "reachability", "PASS", "")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_nospace_alarm_fails_the_check() -> Result<()> {
    let etcd = Member::start(Kind::Etcd).await?;
    let mut c = etcd.client().await?;
    let id = c.status().await?.header().context("no header")?.member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(id);
    c.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(opts))
        .await
        .context("raising NOSPACE")?;
    let (code, f, _) = check(&etcd.endpoint(), &[]).await?;
    ensure!(code == 1, "{f:?}");
    expect(&f, "alarms", "FAIL", "NOSPACE on e2e")?;
    // etcd's /health and Status say so too.
    expect(&f, "reachability", "FAIL", "NOSPACE")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_cairn_member_makes_restarting_another_unsafe() -> Result<()> {
    let cluster = Cluster::start(3, &[]).await?;
    let leader = cluster.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (paused, restart) = (followers[0], followers[1]);
    let restart_name = cluster.members[restart].name.clone();
    let ep = cluster.endpoint(leader);

    let (code, f, _) = check(&ep, &["--member", &restart_name]).await?;
    ensure!(code == 0, "healthy Cairn cluster: {f:?}");
    expect(&f, "version", "PASS", "Cairn: every member runs")?;

    let pid = cluster.members[paused].pid().context("not running")?;
    let pause = Paused::pause(pid)?;
    let started = Instant::now();
    let (code, f, _) = check(&ep, &["--member", &restart_name, "--command-timeout", "1s"]).await?;
    let took = started.elapsed();
    let paused_name = &cluster.members[paused].name;
    ensure!(code == 1, "{f:?}");
    expect(
        &f,
        "reachability",
        "FAIL",
        &format!("{paused_name} did not answer Status"),
    )?;
    expect(&f, "quorum", "FAIL", paused_name)?;
    ensure!(took < Duration::from_secs(6), "the check took {took:?}");
    drop(pause);

    // Resumed, it catches up and the check passes again.
    wait_until(
        "the check to pass after SIGCONT",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let (code, f, _) = check(&ep, &["--member", &restart_name]).await?;
            Ok(if code == 0 {
                Poll::Ready(())
            } else {
                Poll::NotYet(format!("{f:?}"))
            })
        },
    )
    .await?;
    eprintln!("paused Cairn member: check took {took:?}");
    Ok(())
}
