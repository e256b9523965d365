//! A member that is the whole cluster writes its log on openraft's own
//! thread (`InlineAppends`): with no follower to replicate to, nothing else
//! waits on that thread during the fdatasync, and a write then skips the
//! two thread wake-ups of a hand-off to the log's thread and back, each a
//! halted CPU's wake-up on a quiet machine (docs/benchmarks.md).

use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::ServerState;

use super::log_store::InlineAppends;
use super::types::{Membership, TypeConfig};

/// Keeps `inline` on while this member leads a membership of itself alone,
/// and off otherwise; ends, switching it off, when the Raft core stops.
pub(crate) fn start(
    mut metrics: WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
    id: u64,
    inline: InlineAppends,
) {
    tokio::spawn(async move {
        loop {
            let alone = {
                let m = metrics.borrow_watched();
                alone(m.state, m.membership_config.membership(), id)
            };
            inline.set(alone);
            if metrics.changed().await.is_err() {
                inline.set(false);
                return;
            }
        }
    });
}

/// A learner being added counts: the leader must send it entries too.
fn alone(state: ServerState, membership: &Membership, id: u64) -> bool {
    state == ServerState::Leader && membership.nodes().all(|(node, _)| *node == id)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::replication::types::MemberInfo;

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        let nodes: BTreeMap<u64, MemberInfo> = voters
            .iter()
            .chain(learners)
            .map(|id| {
                let info = MemberInfo {
                    name: format!("m{id}"),
                    peer_urls: vec![],
                    client_urls: vec![],
                };
                (*id, info)
            })
            .collect();
        let config = vec![voters.iter().copied().collect::<BTreeSet<u64>>()];
        Membership::new(config, nodes).unwrap()
    }

    #[test]
    fn only_a_leader_of_itself_alone_writes_inline() {
        use ServerState::*;
        assert!(alone(Leader, &membership(&[1], &[]), 1));
        assert!(!alone(Leader, &membership(&[1], &[2]), 1));
        assert!(!alone(Leader, &membership(&[1, 2, 3], &[]), 1));
        assert!(!alone(Candidate, &membership(&[1], &[]), 1));
        assert!(!alone(Follower, &membership(&[1, 2], &[]), 1));
    }
}
