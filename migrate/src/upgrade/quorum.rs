//! Quorum math: whether the voters left once a member stops still form a
//! majority of the membership. Learners do not vote, so they neither count
//! toward the majority nor take from it.

use crate::upgrade::verdict::Verdict;

/// One member as the quorum check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    /// Member name (or id in hex when it has none yet).
    pub name: String,
    /// A learner (no vote).
    pub learner: bool,
    /// Why it cannot be counted on now (down, lagging, unhealthy), if so.
    pub trouble: Option<String>,
}

/// The votes a Raft group of `voters` needs to commit anything.
pub fn quorum_of(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether the cluster keeps a quorum with `stopping` (an index into
/// `seats`) stopped; with `None`, whether it could lose any one voter.
pub fn margin(seats: &[Seat], stopping: Option<usize>) -> (Verdict, String) {
    let voters: Vec<(usize, &Seat)> = seats
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.learner)
        .collect();
    let n = voters.len();
    if n == 0 {
        return (Verdict::Unknown, "the member list has no voter".into());
    }
    let q = quorum_of(n);
    let troubled: Vec<String> = voters
        .iter()
        .filter(|(i, s)| Some(*i) != stopping && s.trouble.is_some())
        .map(|(_, s)| format!("{} {}", s.name, s.trouble.as_deref().unwrap_or("")))
        .collect();
    let Some(stop) = stopping else {
        // Any one voter may stop: the worst case is a healthy one.
        let healthy = n - troubled.len();
        if n == 1 {
            return (
                Verdict::Fail,
                "the cluster has one voter: stopping it stops the cluster until it is back (add members first, or accept the downtime)".into(),
            );
        }
        return if healthy > q {
            (
                Verdict::Pass,
                format!(
                    "{healthy} of {n} voters healthy; any one may stop and {} remain (quorum {q})",
                    healthy - 1
                ),
            )
        } else {
            (
                Verdict::Fail,
                format!(
                    "{healthy} of {n} voters healthy; one more stopped leaves {} < quorum {q}{}",
                    healthy.saturating_sub(1),
                    listed(&troubled)
                ),
            )
        };
    };
    let Some(target) = seats.get(stop) else {
        return (
            Verdict::Unknown,
            "the member to stop is not in the member list".into(),
        );
    };
    if target.learner {
        return (
            Verdict::Pass,
            format!(
                "{} is a learner: it has no vote, the {n} voters keep their quorum of {q}",
                target.name
            ),
        );
    }
    if n == 1 {
        return (
            Verdict::Fail,
            format!(
                "{} is the only voter: with it stopped there is no quorum and the cluster serves nothing until it is back (add members first, or accept the downtime)",
                target.name
            ),
        );
    }
    let remaining = n - 1 - troubled.len();
    if remaining < q {
        return (
            Verdict::Fail,
            format!(
                "with {} stopped, {remaining} of {n} voters would remain healthy, fewer than the quorum of {q}: the cluster would stop{}",
                target.name,
                listed(&troubled)
            ),
        );
    }
    if !troubled.is_empty() {
        return (
            Verdict::Warn,
            format!(
                "with {} stopped, {remaining} of {n} voters remain healthy (quorum {q}), with no margin for more trouble{}",
                target.name,
                listed(&troubled)
            ),
        );
    }
    (
        Verdict::Pass,
        format!(
            "with {} stopped, {remaining} of {n} voters remain healthy; quorum is {q}",
            target.name
        ),
    )
}

fn listed(troubled: &[String]) -> String {
    if troubled.is_empty() {
        String::new()
    } else {
        format!(" ({})", troubled.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(name: &str, learner: bool, trouble: Option<&str>) -> Seat {
        Seat {
            name: name.into(),
            learner,
            trouble: trouble.map(String::from),
        }
    }

    #[test]
    fn majorities() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum_of), [1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn three_voters_tolerate_one_stop_but_not_two() {
        let ok = [
            seat("a", false, None),
            seat("b", false, None),
            seat("c", false, None),
        ];
        assert_eq!(margin(&ok, Some(1)).0, Verdict::Pass);
        assert_eq!(margin(&ok, None).0, Verdict::Pass);
        let one_down = [
            seat("a", false, Some("is down")),
            seat("b", false, None),
            seat("c", false, None),
        ];
        let (v, why) = margin(&one_down, Some(1));
        assert_eq!(v, Verdict::Fail);
        assert!(why.contains("1 of 3") && why.contains("a is down"), "{why}");
        // Restarting the member that is already down takes nothing more away.
        assert_eq!(margin(&one_down, Some(0)).0, Verdict::Pass);
        assert_eq!(margin(&one_down, None).0, Verdict::Fail);
    }

    #[test]
    fn five_voters_with_one_down_keep_quorum_without_margin() {
        let mut s: Vec<Seat> = (0..5)
            .map(|i| seat(&format!("m{i}"), false, None))
            .collect();
        s[4].trouble = Some("lags".into());
        assert_eq!(margin(&s, Some(0)).0, Verdict::Warn);
        s[3].trouble = Some("is down".into());
        assert_eq!(margin(&s, Some(0)).0, Verdict::Fail);
    }

    #[test]
    fn learners_do_not_count() {
        let s = [seat("a", false, None), seat("l", true, None)];
        // One voter: stopping it is never safe, the learner does not help.
        let (v, why) = margin(&s, Some(0));
        assert_eq!(v, Verdict::Fail);
        assert!(why.contains("only voter"), "{why}");
        assert_eq!(margin(&s, Some(1)).0, Verdict::Pass);
        assert_eq!(margin(&s, None).0, Verdict::Fail);
    }
}
