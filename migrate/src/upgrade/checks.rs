//! The checks of `cairn upgrade check`: each turns [`ClusterFacts`] into
//! one [`Finding`]. Pure: everything they know was gathered before by
//! [`crate::upgrade::probe`].

use crate::upgrade::facts::{ClusterFacts, MemberFacts, Sample};
use crate::upgrade::quorum::{margin, Seat};
use crate::upgrade::verdict::{Finding, Verdict};
use crate::upgrade::version::{cairn_target, etcd_target, member_skew, CairnRelease, Version};

/// Entries a member may trail the leader's applied index by and still count
/// as caught up (a member that reached, by the window's end, what the leader
/// had applied at its start counts as caught up at any lag).
pub const CAUGHT_UP_LAG: u64 = 100;

/// A DB this full of its quota is a warning (compact and defragment soon).
pub const QUOTA_WARN: f64 = 0.80;
/// And this full, a failure: an upgrade's restart may not get back under it.
pub const QUOTA_FAIL: f64 = 0.95;

/// What the operator asks about.
#[derive(Clone, Debug, Default)]
pub struct Question {
    /// The member to restart (an index into the facts' members).
    pub stopping: Option<usize>,
    /// The version it will run after.
    pub target: Option<Version>,
}

/// Every check, in the order they print.
pub fn run_all(facts: &ClusterFacts, q: &Question, this: &CairnRelease) -> Vec<Finding> {
    vec![
        reachability(facts, q),
        quorum(facts, q),
        leader(facts, q),
        caught_up(facts, q),
        alarms(facts),
        version(facts, q, this),
        storage(facts, q),
    ]
}

/// Every member answers Status (twice) and `/health`, and reports no error.
pub fn reachability(facts: &ClusterFacts, q: &Question) -> Finding {
    let mut others = Vec::new();
    let mut own = Vec::new();
    for (i, m) in facts.members.iter().enumerate() {
        let mut problems = Vec::new();
        if let Some(why) = m.unreachable() {
            problems.push(why);
        } else {
            match &m.health {
                Err(e) => problems.push(format!("did not answer /health: {e}")),
                Ok(h) if !h.ok => problems.push(format!("/health says unhealthy: {}", h.reason)),
                Ok(_) => {}
            }
            if let Some(s) = m.latest() {
                if !s.errors.is_empty() {
                    problems.push(format!("reports errors: {}", s.errors.join(", ")));
                }
            }
        }
        for p in problems {
            let line = format!("{} {p}", m.label());
            if Some(i) == q.stopping {
                own.push(line);
            } else {
                others.push(line);
            }
        }
    }
    let n = facts.members.len();
    if !others.is_empty() {
        return Finding::new("reachability", Verdict::Fail, others.join("; "));
    }
    if !own.is_empty() {
        return Finding::new(
            "reachability",
            Verdict::Warn,
            format!(
                "every other member is healthy; the member to restart is not: {}",
                own.join("; ")
            ),
        );
    }
    let who = match n {
        1 => "the only member answers".to_string(),
        n => format!("all {n} members answer"),
    };
    Finding::new(
        "reachability",
        Verdict::Pass,
        format!("{who} Status and /health without errors"),
    )
}

/// The leader index agreed on by every member that answered, from the
/// window's end, if there is one.
fn agreed_leader(facts: &ClusterFacts) -> Option<usize> {
    let mut leaders = facts
        .members
        .iter()
        .filter_map(|m| m.second.as_ref().ok())
        .map(|s| s.leader);
    let first = leaders.next()?;
    if first == 0 || leaders.any(|l| l != first) {
        return None;
    }
    facts.index_of(first)
}

/// How far `m` trails the leader, if it does by more than [`CAUGHT_UP_LAG`]
/// and did not reach, by the window's end, what the leader had applied at
/// its start.
fn lag(leader: &MemberFacts, m: &MemberFacts) -> Option<String> {
    let (Ok(l1), Ok(l2), Ok(m2)) = (&leader.first, &leader.second, &m.second) else {
        return None;
    };
    let behind = l2.applied.saturating_sub(m2.applied);
    if m2.applied >= l1.applied || behind <= CAUGHT_UP_LAG {
        return None;
    }
    Some(format!(
        "lags: applied {} while the leader applied {} ({behind} entries behind)",
        m2.applied, l2.applied
    ))
}

/// Why a member cannot be counted on for quorum: down, without a leader, or lagging.
fn trouble(facts: &ClusterFacts, leader: Option<usize>, m: &MemberFacts) -> Option<String> {
    if let Some(why) = m.unreachable() {
        return Some(if m.client_urls.is_empty() {
            why
        } else {
            "is down or not answering".into()
        });
    }
    if m.latest().is_some_and(|s| s.leader == 0) {
        return Some("knows no leader".into());
    }
    leader
        .and_then(|l| facts.members.get(l))
        .and_then(|l| lag(l, m))
}

/// With the member stopped, the remaining healthy voters are a quorum.
pub fn quorum(facts: &ClusterFacts, q: &Question) -> Finding {
    let leader = agreed_leader(facts);
    let seats: Vec<Seat> = facts
        .members
        .iter()
        .map(|m| Seat {
            name: m.label(),
            learner: m.is_learner,
            trouble: trouble(facts, leader, m),
        })
        .collect();
    let (v, why) = margin(&seats, q.stopping);
    Finding::new("quorum", v, why)
}

/// The caught-up voter with the highest applied index, other than `except`.
fn best_follower(facts: &ClusterFacts, leader: usize, except: usize) -> Option<&MemberFacts> {
    let l = facts.members.get(leader)?;
    facts
        .members
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            *i != except && !m.is_learner && m.unreachable().is_none() && lag(l, m).is_none()
        })
        .max_by_key(|(_, m)| m.latest().map_or(0, |s| s.applied))
        .map(|(_, m)| m)
}

/// There is one leader every member agrees on, unchanged over the window;
/// if it is the member to restart, leadership should move first.
pub fn leader(facts: &ClusterFacts, q: &Question) -> Finding {
    let answered: Vec<(&MemberFacts, &Sample, &Sample)> = facts
        .members
        .iter()
        .filter_map(|m| match (&m.first, &m.second) {
            (Ok(a), Ok(b)) => Some((m, a, b)),
            _ => None,
        })
        .collect();
    if answered.is_empty() {
        return Finding::new("leader", Verdict::Unknown, "no member answered Status");
    }
    if let Some((m, _, _)) = answered.iter().find(|(_, _, b)| b.leader == 0) {
        return Finding::new(
            "leader",
            Verdict::Fail,
            format!(
                "{} knows no leader: an election is under way or it is cut off",
                m.label()
            ),
        );
    }
    let secs = facts.window.as_secs_f64();
    if let Some((m, a, b)) = answered
        .iter()
        .find(|(_, a, b)| a.leader != b.leader || a.raft_term != b.raft_term)
    {
        return Finding::new(
            "leader",
            Verdict::Fail,
            format!(
                "leadership changed within {secs:.1}s (as {} saw it: leader {:x} term {} → leader {:x} term {}): wait until it settles",
                m.label(),
                a.leader,
                a.raft_term,
                b.leader,
                b.raft_term
            ),
        );
    }
    let Some(li) = agreed_leader(facts) else {
        let seen: Vec<String> = answered
            .iter()
            .map(|(m, _, b)| format!("{}: {:x}", m.label(), b.leader))
            .collect();
        return Finding::new(
            "leader",
            Verdict::Fail,
            format!(
                "members do not agree on a leader in the member list ({})",
                seen.join(", ")
            ),
        );
    };
    let lm = &facts.members[li];
    let term = answered.first().map_or(0, |(_, _, b)| b.raft_term);
    if q.stopping == Some(li) {
        return match best_follower(facts, li, li) {
            Some(f) => Finding::new(
                "leader",
                Verdict::Warn,
                format!(
                    "{} is the leader: move leadership first (etcdctl --endpoints {} move-leader {:x}, to {}, which is caught up), then check again",
                    lm.label(),
                    lm.client_urls.first().map_or("<leader URL>", |u| u.as_str()),
                    f.id,
                    f.label()
                ),
            ),
            None => Finding::new(
                "leader",
                Verdict::Fail,
                format!("{} is the leader and no caught-up voter could take over", lm.label()),
            ),
        };
    }
    Finding::new(
        "leader",
        Verdict::Pass,
        format!(
            "{} ({:x}) leads in term {term}, unchanged over {secs:.1}s",
            lm.label(),
            lm.id
        ),
    )
}

/// Every member's applied index is close to the leader's.
pub fn caught_up(facts: &ClusterFacts, q: &Question) -> Finding {
    let Some(li) = agreed_leader(facts) else {
        return Finding::new(
            "caught-up",
            Verdict::Unknown,
            "no agreed leader to compare with",
        );
    };
    let l = &facts.members[li];
    let mut lagging = Vec::new();
    let mut unmeasured = Vec::new();
    for (i, m) in facts.members.iter().enumerate() {
        if i == li {
            continue;
        }
        if m.second.is_err() || m.client_urls.is_empty() {
            unmeasured.push(m.label());
            continue;
        }
        if let Some(why) = lag(l, m) {
            let own = if Some(i) == q.stopping {
                " (the member to restart)"
            } else {
                ""
            };
            lagging.push(format!("{}{own} {why}", m.label()));
        }
    }
    let leader_applied = l.latest().map_or(0, |s| s.applied);
    if !lagging.is_empty() {
        return Finding::new("caught-up", Verdict::Fail, lagging.join("; "));
    }
    if !unmeasured.is_empty() {
        return Finding::new(
            "caught-up",
            Verdict::Warn,
            format!(
                "the members that answered are caught up (leader applied {leader_applied}); not measured: {}",
                unmeasured.join(", ")
            ),
        );
    }
    Finding::new(
        "caught-up",
        Verdict::Pass,
        format!("every member is within {CAUGHT_UP_LAG} entries of the leader's applied index {leader_applied}"),
    )
}

/// Bytes as KiB, MiB or GiB, whichever reads best.
fn mib(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.1} MiB", b / (1 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// No NOSPACE or CORRUPT alarm, and the DB has room under its quota.
pub fn alarms(facts: &ClusterFacts) -> Finding {
    let name_of = |id: u64| {
        facts
            .index_of(id)
            .map_or_else(|| format!("{id:x}"), |i| facts.members[i].label())
    };
    let raised: Vec<String> = match &facts.alarms {
        Ok(list) => list
            .iter()
            .map(|(id, alarm)| format!("{alarm} on {}", name_of(*id)))
            .collect(),
        Err(e) => {
            return Finding::new(
                "alarms",
                Verdict::Unknown,
                format!("could not list alarms: {e}"),
            )
        }
    };
    if !raised.is_empty() {
        return Finding::new(
            "alarms",
            Verdict::Fail,
            format!(
                "alarm raised: {} (NOSPACE: compact, defragment, then etcdctl alarm disarm; CORRUPT: find the member that diverged before anything else)",
                raised.join(", ")
            ),
        );
    }
    let sized: Vec<(&MemberFacts, &Sample)> = facts
        .members
        .iter()
        .filter_map(|m| Some((m, m.latest()?)))
        .collect();
    let largest = sized.iter().map(|(_, s)| s.db_size).max().unwrap_or(0);
    let fullest = sized
        .iter()
        .filter(|(_, s)| s.db_size_quota > 0)
        .map(|(m, s)| (m, s, s.db_size as f64 / s.db_size_quota as f64))
        .max_by(|a, b| a.2.total_cmp(&b.2));
    let Some((m, s, ratio)) = fullest else {
        return Finding::new(
            "alarms",
            Verdict::Pass,
            format!(
                "no alarm; the quota is not reported (etcd before 3.6), so headroom is not measurable (largest db {})",
                mib(largest)
            ),
        );
    };
    let what = format!(
        "{}'s db is {} of its {} quota ({:.0}%)",
        m.label(),
        mib(s.db_size),
        mib(s.db_size_quota),
        ratio * 100.0
    );
    if ratio >= QUOTA_FAIL {
        Finding::new(
            "alarms",
            Verdict::Fail,
            format!("{what}: compact and defragment first"),
        )
    } else if ratio >= QUOTA_WARN {
        Finding::new(
            "alarms",
            Verdict::Warn,
            format!("{what}: compact and defragment soon"),
        )
    } else {
        Finding::new("alarms", Verdict::Pass, format!("no alarm; {what}"))
    }
}

/// The members' versions may run together, and the target is a step etcd (or Cairn) supports.
pub fn version(facts: &ClusterFacts, q: &Question, this: &CairnRelease) -> Finding {
    if facts.is_cairn() {
        return cairn_version(facts, q, this);
    }
    let versions: Vec<(String, String)> = facts
        .members
        .iter()
        .filter_map(|m| Some((m.label(), m.latest()?.version.clone())))
        .collect();
    let (mut v, mut why) = member_skew(&versions);
    if let Some(t) = &q.target {
        let (tv, twhy) = etcd_target(&versions, t);
        if tv >= v {
            (v, why) = (tv, format!("{twhy}; {why}"));
        } else {
            why = format!("{why}; {twhy}");
        }
    }
    Finding::new("version", v, why)
}

fn cairn_version(facts: &ClusterFacts, q: &Question, this: &CairnRelease) -> Finding {
    let members: Vec<_> = facts
        .members
        .iter()
        .filter_map(|m| m.cairn.clone())
        .collect();
    let versions: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.name.clone(), m.version.clone()))
        .collect();
    let (v, why) = member_skew(&versions);
    let Some(t) = &q.target else {
        return Finding::new("version", v, format!("Cairn: {why}"));
    };
    if *t != this.version {
        return Finding::new(
            "version",
            Verdict::Unknown.max(v),
            format!(
                "this binary is Cairn {}; only Cairn {t}'s binary knows which store schema and peer protocol it reads: run its `cairn upgrade check`",
                this.version
            ),
        );
    }
    let (tv, twhy) = cairn_target(&members, this);
    Finding::new("version", tv.max(v), format!("{twhy}; Cairn: {why}"))
}

/// Storage version and downgrade state (etcd 3.6+).
pub fn storage(facts: &ClusterFacts, q: &Question) -> Finding {
    let samples: Vec<(String, &Sample)> = facts
        .members
        .iter()
        .filter_map(|m| Some((m.label(), m.latest()?)))
        .collect();
    if let Some((name, (_, to))) = samples
        .iter()
        .find_map(|(n, s)| Some((n, s.downgrade.as_ref().filter(|d| d.0)?)))
    {
        let clash = q
            .target
            .as_ref()
            .is_some_and(|t| Version::parse(to).is_none_or(|d| d.minor_line() != t.minor_line()));
        return if clash {
            Finding::new(
                "storage",
                Verdict::Fail,
                format!("a downgrade to {to} is enabled ({name} reports it): cancel it (etcdctl downgrade cancel) before upgrading"),
            )
        } else {
            Finding::new(
                "storage",
                Verdict::Warn,
                format!("a downgrade to {to} is in progress ({name} reports it)"),
            )
        };
    }
    let reported: Vec<(&String, Version)> = samples
        .iter()
        .filter_map(|(n, s)| Some((n, Version::parse(&s.storage_version)?)))
        .collect();
    if reported.is_empty() {
        return Finding::new(
            "storage",
            Verdict::Pass,
            "no storage version reported (etcd before 3.6): nothing to compare, and no downgrade can be under way",
        );
    }
    if let (Some(t), false) = (&q.target, facts.is_cairn()) {
        if let Some((n, sv)) = reported
            .iter()
            .find(|(_, sv)| sv.major == t.major && sv.minor > t.minor)
        {
            return Finding::new(
                "storage",
                Verdict::Fail,
                format!("{n}'s storage is at {sv}, which {t} cannot open: only etcd's downgrade procedure (etcdctl downgrade enable) rewrites it"),
            );
        }
    }
    let mut distinct: Vec<String> = reported.iter().map(|(_, v)| v.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    Finding::new(
        "storage",
        Verdict::Pass,
        format!(
            "storage version {}; no downgrade in progress",
            distinct.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upgrade::facts::Health;

    fn sample(leader: u64, term: u64, applied: u64) -> Sample {
        Sample {
            version: "3.5.1".into(),
            db_size: 1 << 20,
            leader,
            raft_term: term,
            raft_index: applied,
            applied,
            ..Default::default()
        }
    }

    fn member(id: u64, s: Sample) -> MemberFacts {
        MemberFacts {
            id,
            name: format!("m{id}"),
            client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
            is_learner: false,
            first: Ok(s.clone()),
            second: Ok(s),
            health: Ok(Health {
                ok: true,
                reason: String::new(),
            }),
            cairn: None,
        }
    }

    fn healthy(n: u64) -> ClusterFacts {
        ClusterFacts {
            members: (1..=n).map(|id| member(id, sample(1, 2, 500))).collect(),
            alarms: Ok(vec![]),
            window: Duration::from_secs(1),
        }
    }

    fn this() -> CairnRelease {
        CairnRelease {
            version: Version::parse("0.1.0").unwrap(),
            schema_min: 1,
            schema: 3,
            peer_min: 1,
            peer: 1,
        }
    }

    fn verdicts(f: &ClusterFacts, q: &Question) -> Vec<(&'static str, Verdict)> {
        run_all(f, q, &this())
            .into_iter()
            .map(|x| (x.check, x.result))
            .collect()
    }

    #[test]
    fn a_healthy_cluster_may_restart_a_follower() {
        let f = healthy(3);
        let q = Question {
            stopping: Some(1),
            target: None,
        };
        assert!(
            verdicts(&f, &q).iter().all(|(_, v)| *v == Verdict::Pass),
            "{:?}",
            verdicts(&f, &q)
        );
    }

    #[test]
    fn restarting_the_leader_names_a_caught_up_follower() {
        let mut f = healthy(3);
        // m2 trails; m3 is caught up and should be named.
        f.members[1].second = Ok(sample(1, 2, 10));
        f.members[1].first = Ok(sample(1, 2, 10));
        let got = leader(
            &f,
            &Question {
                stopping: Some(0),
                target: None,
            },
        );
        assert_eq!(got.result, Verdict::Warn);
        assert!(got.reason.contains("move-leader 3"), "{}", got.reason);
        assert_eq!(caught_up(&f, &Question::default()).result, Verdict::Fail);
    }

    #[test]
    fn a_down_member_fails_restarting_another() {
        let mut f = healthy(3);
        f.members[2].first = Err("connection refused".into());
        f.members[2].second = Err("connection refused".into());
        f.members[2].health = Err("connection refused".into());
        let q = Question {
            stopping: Some(0),
            target: None,
        };
        let v = verdicts(&f, &q);
        assert!(v.contains(&("reachability", Verdict::Fail)), "{v:?}");
        assert!(v.contains(&("quorum", Verdict::Fail)), "{v:?}");
        // Restarting the one that is down is fine for quorum.
        let q = Question {
            stopping: Some(2),
            target: None,
        };
        assert_eq!(quorum(&f, &q).result, Verdict::Pass);
        assert_eq!(reachability(&f, &q).result, Verdict::Warn);
    }

    #[test]
    fn a_changing_leader_is_not_stable() {
        let mut f = healthy(3);
        f.members[0].second = Ok(sample(2, 3, 60));
        let got = leader(&f, &Question::default());
        assert_eq!(got.result, Verdict::Fail);
        assert!(got.reason.contains("changed"), "{}", got.reason);
    }

    #[test]
    fn alarms_and_quota() {
        let mut f = healthy(1);
        f.alarms = Ok(vec![(1, "NOSPACE".into())]);
        let got = alarms(&f);
        assert_eq!(got.result, Verdict::Fail);
        assert!(got.reason.contains("NOSPACE on m1"), "{}", got.reason);
        f.alarms = Ok(vec![]);
        assert!(alarms(&f).reason.contains("not measurable"));
        let mut s = sample(1, 2, 50);
        s.db_size_quota = 1 << 21;
        s.db_size = (1 << 21) * 9 / 10;
        f.members[0].second = Ok(s);
        assert_eq!(alarms(&f).result, Verdict::Warn);
    }

    #[test]
    fn version_and_storage_rules_reach_the_report() {
        let f = healthy(3);
        let q = Question {
            stopping: Some(1),
            target: Version::parse("3.6.0"),
        };
        let got = version(&f, &q, &this());
        assert_eq!(got.result, Verdict::Fail);
        assert!(got.reason.contains("3.5.26"), "{}", got.reason);
        let mut f = healthy(1);
        let mut s = sample(1, 2, 50);
        s.version = "3.6.0".into();
        s.storage_version = "3.6.0".into();
        f.members[0].second = Ok(s.clone());
        let down = Question {
            stopping: None,
            target: Version::parse("3.5.26"),
        };
        assert_eq!(storage(&f, &down).result, Verdict::Fail);
        s.downgrade = Some((true, "3.5.0".into()));
        f.members[0].second = Ok(s);
        assert_eq!(storage(&f, &Question::default()).result, Verdict::Warn);
        let up = Question {
            stopping: None,
            target: Version::parse("3.6.1"),
        };
        assert_eq!(storage(&f, &up).result, Verdict::Fail);
    }
}
