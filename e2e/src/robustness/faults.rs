//! Injecting a schedule's faults into a live cluster, one after another,
//! each healed and the cluster back to serving (every member answers a
//! linearizable read) before the next. A cluster that does not come back
//! within [`RECOVERY`] is a finding: the campaign reports it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::MemberAddOptions;

use crate::cluster::Cluster;
use crate::failpoints;
use crate::robustness::schedule::{Fault, Kind, Target};
use crate::robustness::shared::Shared;
use crate::signal::{signal, Paused};
use crate::wait::{wait_until, Poll};

/// How long the cluster may take to serve again after a fault heals.
pub const RECOVERY: Duration = Duration::from_secs(30);

pub struct Injector {
    pub cluster: Cluster,
    /// Indices (in `cluster.members`) of the members in the cluster: member
    /// changes add and remove some.
    pub active: Vec<usize>,
    shared: Arc<Shared>,
    start: Instant,
    /// What was done, when (for the report).
    pub log: Vec<String>,
    pub injected: BTreeMap<Kind, usize>,
    /// Kinds the schedule holds (what healing must undo).
    pub kinds_used: Vec<Kind>,
}

impl Injector {
    pub fn new(cluster: Cluster, shared: Arc<Shared>) -> Injector {
        let active: Vec<usize> = (0..cluster.len()).collect();
        let inj = Injector {
            cluster,
            active,
            shared,
            start: Instant::now(),
            log: Vec::new(),
            injected: BTreeMap::new(),
            kinds_used: Vec::new(),
        };
        inj.publish();
        inj
    }

    pub fn publish(&self) {
        self.shared.set_endpoints(
            self.active
                .iter()
                .map(|i| self.cluster.endpoint(*i))
                .collect(),
        );
    }

    pub fn note(&mut self, what: String) {
        let line = format!("{:>7.2}s {what}", self.start.elapsed().as_secs_f64());
        eprintln!("robustness: {line}");
        self.log.push(line);
    }

    /// Runs the schedule's faults until `until`; stops at the first fault
    /// the cluster does not recover from.
    pub async fn run(&mut self, schedule: &[Fault], until: Instant) -> Result<()> {
        self.kinds_used = schedule.iter().map(|f| f.kind).collect();
        for f in schedule {
            // The schedule's quiet time: load runs without faults.
            tokio::time::sleep(f.after).await;
            if Instant::now() >= until {
                break;
            }
            self.apply(f).await.with_context(|| format!("fault {f}"))?;
            *self.injected.entry(f.kind).or_default() += 1;
            self.recovered(f).await?;
        }
        Ok(())
    }

    async fn recovered(&mut self, f: &Fault) -> Result<()> {
        let t = Instant::now();
        self.cluster
            .wait_all_ready(RECOVERY)
            .await
            .with_context(|| {
                format!("the cluster did not serve again within {RECOVERY:?} after: {f}")
            })?;
        self.note(format!("serving again after {:?}", t.elapsed()));
        Ok(())
    }

    /// The member a fault hits: the leader, a follower or any member
    /// (`pick` chooses among several). With no agreed leader (an election
    /// under way), any member.
    async fn target(&self, target: Target, pick: usize) -> (usize, &'static str) {
        let leader = self
            .cluster
            .leader(&self.active, Duration::from_secs(5))
            .await
            .ok();
        let followers: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|i| Some(*i) != leader)
            .collect();
        match (target, leader) {
            (Target::Leader, Some(l)) => (l, "leader"),
            (Target::Follower, Some(_)) if !followers.is_empty() => {
                (followers[pick % followers.len()], "follower")
            }
            _ => {
                let i = self.active[pick % self.active.len()];
                (
                    i,
                    if Some(i) == leader {
                        "leader"
                    } else {
                        "member"
                    },
                )
            }
        }
    }

    async fn apply(&mut self, f: &Fault) -> Result<()> {
        match f.kind {
            Kind::Kill => {
                let (i, role) = self.target(f.target, f.pick).await;
                self.note(format!("kill -9 m{i} ({role}), down {:?}", f.hold));
                self.cluster.kill9(i)?;
                tokio::time::sleep(f.hold).await;
                self.cluster.restart(i)?;
                self.note(format!("restarted m{i}"));
            }
            Kind::RestartAll => {
                self.note(format!("kill -9 every member, down {:?}", f.hold));
                for &i in &self.active {
                    self.cluster.kill9(i)?;
                }
                tokio::time::sleep(f.hold).await;
                for &i in &self.active {
                    self.cluster.restart(i)?;
                }
                self.note("restarted every member".into());
            }
            Kind::Partition => {
                let (i, role) = self.target(f.target, f.pick).await;
                let what = if role == "leader" {
                    "a lone leader"
                } else {
                    "a minority"
                };
                self.note(format!("partition m{i} ({what}) for {:?}", f.hold));
                self.cluster.isolate(i);
                tokio::time::sleep(f.hold).await;
                self.cluster.heal(i);
                self.note(format!("healed m{i}"));
            }
            Kind::Pause => {
                let (i, role) = self.target(f.target, f.pick).await;
                let pid = self.cluster.members[i]
                    .pid()
                    .ok_or_else(|| anyhow!("m{i} is not running"))?;
                self.note(format!("SIGSTOP m{i} ({role}) for {:?}", f.hold));
                let paused = Paused::pause(pid)?;
                tokio::time::sleep(f.hold).await;
                drop(paused);
                self.note(format!("SIGCONT m{i}"));
            }
            Kind::MemberChange => self.member_change(f).await?,
            Kind::DiskFull => self.disk_full(f).await?,
            Kind::SlowDisk => {
                let (i, role) = self.target(f.target, f.pick).await;
                let port = self.cluster.members[i].client_port;
                let delay = Kind::fsync_delay(f.pick);
                failpoints::set(
                    port,
                    failpoints::SLOW_FSYNC,
                    &format!("sleep({})", delay.as_millis()),
                )
                .await
                .with_context(|| format!("slowing m{i}'s fsync"))?;
                self.note(format!(
                    "slowed m{i}'s ({role}) Raft log fsync by {delay:?} for {:?}",
                    f.hold
                ));
                tokio::time::sleep(f.hold).await;
                failpoints::clear(port, failpoints::SLOW_FSYNC)
                    .await
                    .with_context(|| format!("clearing m{i}'s slow fsync"))?;
                self.note(format!("m{i}'s fsync back to normal"));
            }
        }
        Ok(())
    }

    /// Fills one member's filesystem for the hold, then frees it; a member
    /// that stopped on the full disk (as it must once it needs space) is
    /// restarted, as an operator does after freeing space.
    async fn disk_full(&mut self, f: &Fault) -> Result<()> {
        let (i, role) = self.target(f.target, f.pick).await;
        let bytes = self
            .cluster
            .fill_disk(i)
            .with_context(|| format!("filling m{i}'s disk"))?;
        self.note(format!(
            "filled m{i}'s ({role}) disk ({} MiB) for {:?}",
            bytes >> 20,
            f.hold
        ));
        let deadline = Instant::now() + f.hold;
        let mut exited = None;
        // Bounded by the hold (at most 4 s).
        while Instant::now() < deadline {
            if exited.is_none() {
                exited = self.cluster.exited(i);
                if let Some(status) = exited {
                    let said = last_line(&self.cluster.log_tail(i));
                    self.note(format!("m{i} stopped ({status}): {said}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cluster.free_disk(i)?;
        if exited.is_some() || self.cluster.exited(i).is_some() {
            self.cluster.restart(i)?;
            self.note(format!("freed m{i}'s disk and restarted it"));
        } else {
            self.note(format!("freed m{i}'s disk; it kept running"));
        }
        Ok(())
    }

    /// Adds a learner, waits until it is promoted (it must catch up first),
    /// then removes another member (the leader too, by the target's draw)
    /// and stops it: the cluster keeps its size.
    async fn member_change(&mut self, f: &Fault) -> Result<()> {
        let (victim, role) = self.target(f.target, f.pick).await;
        let via = *self
            .active
            .iter()
            .find(|i| **i != victim)
            .context("a member besides the one to remove")?;
        let mut client = self.cluster.client(via).await?;
        let (new, url) = self.cluster.add_slot(&[])?;
        let added = client
            .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
            .await
            .context("member add (learner)")?;
        let new_id = added
            .member()
            .map(|m| m.id())
            .context("member add: no member")?;
        self.note(format!("added m{new} as a learner"));
        self.cluster.start_joined(new)?;
        wait_until(
            "the new learner promoted",
            RECOVERY,
            Duration::from_millis(100),
            || {
                let mut client = client.clone();
                async move {
                    match client.member_promote(new_id).await {
                        Ok(_) => Ok(Poll::Ready(())),
                        Err(e) => Ok(Poll::NotYet(e.to_string())),
                    }
                }
            },
        )
        .await?;
        self.note(format!("promoted m{new}"));
        let ids = self.cluster.member_ids().await?;
        let victim_id = ids
            .iter()
            .find(|(_, i)| **i == victim)
            .map(|(id, _)| *id)
            .context("the member to remove is not in the member list")?;
        wait_until(
            "the member removed",
            RECOVERY,
            Duration::from_millis(100),
            || {
                let mut client = client.clone();
                async move {
                    match client.member_remove(victim_id).await {
                        Ok(_) => Ok(Poll::Ready(())),
                        // An earlier attempt applied, though its answer was lost.
                        Err(e) if e.to_string().contains("member not found") => {
                            let gone = client
                                .member_list()
                                .await
                                .is_ok_and(|l| l.members().iter().all(|m| m.id() != victim_id));
                            if gone {
                                Ok(Poll::Ready(()))
                            } else {
                                Ok(Poll::NotYet(e.to_string()))
                            }
                        }
                        Err(e) => Ok(Poll::NotYet(e.to_string())),
                    }
                }
            },
        )
        .await?;
        self.note(format!("removed m{victim} ({role})"));
        self.active.retain(|i| *i != victim);
        self.active.push(new);
        self.publish();
        // A removed member is stopped, as an operator would.
        self.cluster.kill9(victim)?;
        Ok(())
    }

    /// Heals everything a failed fault may have left: every member in the
    /// cluster with room on its disk, running at normal speed, resumed and
    /// connected.
    pub async fn heal_all(&mut self) -> Result<()> {
        for i in self.active.clone() {
            self.cluster.heal(i);
            self.cluster.free_disk(i)?;
            if self.cluster.exited(i).is_some() {
                self.cluster.restart(i)?;
            }
            match self.cluster.members[i].pid() {
                Some(pid) => {
                    signal("-CONT", pid)?;
                    if self.kinds_used.contains(&Kind::SlowDisk) {
                        // Best effort: a member still starting has none set.
                        let port = self.cluster.members[i].client_port;
                        let _ = failpoints::clear(port, failpoints::SLOW_FSYNC).await;
                    }
                }
                None => self.cluster.restart(i)?,
            }
        }
        Ok(())
    }

    /// Members in the cluster and running (all of them once healed).
    pub fn serving(&self) -> Vec<usize> {
        let running = self.cluster.running();
        self.active
            .iter()
            .copied()
            .filter(|i| running.contains(i))
            .collect()
    }
}

/// What a member said as it exited: the binary's last `cairn: ` line in a
/// log tail (other threads may log after it), else the last line.
fn last_line(tail: &str) -> String {
    let mut lines = tail.lines().rev().filter(|l| !l.trim().is_empty());
    let line = lines
        .clone()
        .find(|l| l.starts_with("cairn: "))
        .or_else(|| lines.next())
        .unwrap_or_default();
    line.chars().take(300).collect()
}

/// Refuses a member count Cairn does not run (1, 3, 5 or 7 members are
/// usual; any count up to 7 starts).
pub fn check_members(n: usize) -> Result<()> {
    if !(1..=7).contains(&n) {
        bail!("--members must be 1..=7, got {n}");
    }
    Ok(())
}
