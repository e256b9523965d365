//! Whether this member has a leader it can reach, as etcd counts it.
//!
//! openraft names the leader of the last committed vote, and with pre-vote a
//! member cut off from its leader keeps that vote for as long as the
//! partition lasts, so it would go on naming a leader it cannot reach. etcd
//! forgets the leader when a follower's election timer fires and, with
//! check-quorum, when a leader has not heard from a quorum for an election
//! timeout. This module gives the rest of Cairn that view: the leader is
//! known only while it has been heard from (a follower) or has heard from a
//! quorum (the leader) within one election timeout. Everything that says "no
//! leader" (requests, `/health`, `etcd_server_has_leader`, quorum-loss logs,
//! `hasleader` streams) reads it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::{Instant as _, RaftMetrics, ServerState};
use tokio::sync::watch;

use super::types::TypeConfig;

/// When this member last accepted a message from a leader.
#[derive(Default)]
pub(crate) struct LeaderContact {
    last: Mutex<Option<Instant>>,
}

impl LeaderContact {
    pub(crate) fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn since(&self) -> Option<Duration> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }
}

/// Starts tracking; the receiver holds the reachable leader, if any. The task
/// ends when the Raft core stops.
///
/// `metrics` changes with every write; the task wakes on it only while it
/// is a leader waiting for a quorum to answer, when any change may end the
/// wait. Otherwise the server metrics (state, leader, membership) and the
/// tick cover every way the answer can change, and a write wakes nothing.
pub(crate) fn start(
    mut metrics: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    mut server: WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
    id: u64,
    election: Duration,
    tick: Duration,
    contact: Arc<LeaderContact>,
) -> watch::Receiver<Option<u64>> {
    let first = reachable(&metrics.borrow_watched(), id, election, &contact);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let now = reachable(&metrics.borrow_watched(), id, election, &contact);
            tx.send_if_modified(|l| std::mem::replace(l, now) != now);
            let awaiting_quorum =
                now.is_none() && server.borrow_watched().state == ServerState::Leader;
            tokio::select! {
                changed = metrics.changed(), if awaiting_quorum => if changed.is_err() {
                    tx.send_replace(None);
                    return;
                },
                changed = server.changed() => if changed.is_err() {
                    tx.send_replace(None);
                    return;
                },
                // Staleness shows without any metric changing.
                () = tokio::time::sleep(tick) => {}
            }
        }
    });
    rx
}

fn reachable(
    m: &RaftMetrics<TypeConfig>,
    id: u64,
    election: Duration,
    contact: &LeaderContact,
) -> Option<u64> {
    let leader = m.current_leader?;
    if leader != id {
        return contact
            .since()
            .is_some_and(|d| d < election)
            .then_some(leader);
    }
    if m.state != ServerState::Leader {
        return None;
    }
    let membership = m.membership_config.membership();
    let alone = membership.voter_ids().all(|v| v == id);
    if alone {
        return Some(id);
    }
    let acked = m.last_quorum_acked.as_ref()?;
    (acked.elapsed() < election).then_some(id)
}
