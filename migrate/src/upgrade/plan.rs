//! `cairn upgrade plan`: the safe order of a rolling upgrade. Learners
//! first (they hold no vote), then followers, the leader last, after
//! leadership moved to a member already upgraded: the cluster then sees one
//! leader change at most, and a newer member never has to send a snapshot
//! to an older leader that may not read it.

use serde::Serialize;

use crate::upgrade::facts::ClusterFacts;

/// One step of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// 1-based.
    pub step: usize,
    /// The member it restarts (name, or ID in hex).
    pub member: String,
    /// Its ID in hex.
    pub id: String,
    /// `learner`, `follower` or `leader`.
    pub role: &'static str,
    /// What to run before touching it (exit 0 means go).
    pub check: String,
    /// What to do once the check passes.
    pub action: String,
}

/// The steps for the cluster in `facts`; `check_prefix` is the
/// `cairn upgrade check ...` command line with its connection flags, to
/// which each step adds `--member`.
pub fn plan(facts: &ClusterFacts, check_prefix: &str) -> Vec<Step> {
    let leader = facts
        .members
        .iter()
        .filter_map(|m| m.latest())
        .map(|s| s.leader)
        .find(|l| *l != 0);
    let mut order: Vec<(usize, &'static str)> = Vec::new();
    for (i, m) in facts.members.iter().enumerate() {
        if m.is_learner {
            order.push((i, "learner"));
        }
    }
    for (i, m) in facts.members.iter().enumerate() {
        if !m.is_learner && Some(m.id) != leader {
            order.push((i, "follower"));
        }
    }
    if let Some(i) = leader.and_then(|l| facts.index_of(l)) {
        order.push((i, "leader"));
    }
    let first_follower = order
        .iter()
        .find(|(_, role)| *role == "follower")
        .map(|(i, _)| &facts.members[*i]);
    order
        .into_iter()
        .enumerate()
        .map(|(n, (i, role))| {
            let m = &facts.members[i];
            let label = m.label();
            let restart = format!(
                "stop {label}, install the new binary, start it with the same flags and data dir, and wait until it reports healthy"
            );
            let action = match (role, first_follower) {
                ("leader", Some(f)) => format!(
                    "move leadership to an upgraded member first (etcdctl --endpoints {} move-leader {:x}, to {}), run the check again, then {restart}",
                    m.client_urls.first().map_or("<its client URL>", |u| u.as_str()),
                    f.id,
                    f.label()
                ),
                _ => restart,
            };
            Step {
                step: n + 1,
                member: label.clone(),
                id: format!("{:x}", m.id),
                role,
                check: format!("{check_prefix} --member {label}"),
                action,
            }
        })
        .collect()
}

/// The plan as numbered paragraphs.
pub fn text(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        out.push_str(&format!(
            "{}. {} ({}, {})\n   check:  {}\n   then:   {}\n",
            s.step, s.member, s.role, s.id, s.check, s.action
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upgrade::facts::{MemberFacts, Sample};

    fn member(id: u64, learner: bool) -> MemberFacts {
        let s = Sample {
            leader: 2,
            ..Default::default()
        };
        MemberFacts {
            id,
            name: format!("m{id}"),
            client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
            is_learner: learner,
            first: Ok(s.clone()),
            second: Ok(s),
            health: Err("not asked".into()),
            cairn: None,
        }
    }

    #[test]
    fn learners_then_followers_then_the_leader_after_a_move() {
        let facts = ClusterFacts {
            members: vec![
                member(1, false),
                member(2, false),
                member(3, false),
                member(4, true),
            ],
            alarms: Ok(vec![]),
            window: Duration::from_secs(1),
        };
        let steps = plan(&facts, "cairn upgrade check --endpoints http://e:2379");
        let order: Vec<(&str, &str)> = steps.iter().map(|s| (s.member.as_str(), s.role)).collect();
        assert_eq!(
            order,
            [
                ("m4", "learner"),
                ("m1", "follower"),
                ("m3", "follower"),
                ("m2", "leader")
            ]
        );
        assert_eq!(
            steps[1].check,
            "cairn upgrade check --endpoints http://e:2379 --member m1"
        );
        assert!(
            steps[3].action.contains("move-leader 1, to m1"),
            "{}",
            steps[3].action
        );
    }
}
