//! One log line per Raft event an operator needs: this member's elections
//! and leadership, and membership changes (snapshots are logged where they
//! are built, sent and installed).
//!
//! openraft logs its whole state at INFO on these (kilobytes per line); the
//! server filters that out at info and logs these lines instead, read from
//! openraft's metrics, with member names where the membership has them.

use std::collections::BTreeMap;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::{RaftMetrics, ServerState};

use super::options::member_list;
use super::types::TypeConfig;

/// What the last line said, so that each change is logged once.
#[derive(Default, PartialEq)]
struct Seen {
    state: Option<ServerState>,
    term: u64,
    leader: Option<u64>,
    membership: Option<(Vec<String>, Vec<String>)>,
}

/// Logs until the Raft core stops. Wakes on the server metrics, which
/// change with the state, vote and membership only, not with every write.
/// Their vote is the last one saved, which lags a new candidacy; the term is
/// the full metrics' (the vote in memory), read without waiting on them.
pub(crate) fn start(
    mut metrics: WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
    all: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    id: u64,
) {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            let now = metrics.borrow_watched().clone();
            let term = all.borrow_watched().current_term;
            log_changes(&mut seen, &now, term, id);
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

fn log_changes(seen: &mut Seen, m: &RaftServerMetrics<TypeConfig>, term: u64, id: u64) {
    let term = term.max(m.vote.leader_id.term);
    let members = member_list(m.membership_config.membership());
    let names: BTreeMap<u64, String> = members
        .iter()
        .map(|(id, info, _)| (*id, display_name(*id, &info.name)))
        .collect();
    let name = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("{id:x}"));

    // An uninitialized member reports term 0; its first real state comes
    // with the first election.
    if term > 0 && (seen.state != Some(m.state) || seen.term != term) {
        match m.state {
            ServerState::Leader => tracing::info!(
                member = %name(id), term = term, "became leader"
            ),
            ServerState::Candidate => tracing::info!(
                member = %name(id), term = term, "started an election"
            ),
            ServerState::Follower if seen.state == Some(ServerState::Leader) => tracing::info!(
                member = %name(id), term = term, "stepped down from leader"
            ),
            ServerState::Follower | ServerState::Learner | ServerState::Shutdown => {}
        }
        seen.state = Some(m.state);
        seen.term = term;
    }
    if matches!(m.state, ServerState::Follower | ServerState::Learner)
        && m.current_leader.is_some()
        && m.current_leader != seen.leader
    {
        if let Some(leader) = m.current_leader {
            tracing::info!(
                member = %name(id), leader = %name(leader), term = term,
                "following the leader"
            );
        }
    }
    seen.leader = m.current_leader;

    let mut voters: Vec<String> = members
        .iter()
        .filter(|(_, _, learner)| !learner)
        .map(|(id, _, _)| name(*id))
        .collect();
    let mut learners: Vec<String> = members
        .iter()
        .filter(|(_, _, learner)| *learner)
        .map(|(id, _, _)| name(*id))
        .collect();
    voters.sort();
    learners.sort();
    let membership = Some((voters, learners));
    if !members.is_empty() && seen.membership != membership {
        if let Some((voters, learners)) = &membership {
            let what = if seen.membership.is_none() {
                "membership"
            } else {
                "membership changed"
            };
            tracing::info!(voters = %voters.join(","), learners = %learners.join(","), "{what}");
        }
        seen.membership = membership;
    }
}

/// A member's name, or its ID while it has none (added, not yet started).
fn display_name(id: u64, name: &str) -> String {
    if name.is_empty() {
        format!("{id:x}")
    } else {
        name.to_string()
    }
}
