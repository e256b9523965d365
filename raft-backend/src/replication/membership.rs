//! Membership changes (etcd's MemberAdd, MemberRemove, MemberUpdate,
//! MemberPromote, a member publishing its attributes) and leader transfer.
//! [`plan`] holds the rules: what a request amounts to, or why it is refused.
//! The leader applies the change; a follower forwards it there.

use std::collections::{BTreeMap, BTreeSet};

use cairn_proto::peer as pb;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ChangeMembers;

use super::codec;
use super::error_map::{change_membership_error, fatal, from_status};
use super::membership_error::MembershipError;
use super::options::{member_list, MemberList};
use super::replica::Replica;
use super::types::{MemberInfo, Membership};
use crate::error::{Result, StoreError};

/// What a membership request amounts to.
#[derive(Debug)]
pub(super) enum Plan {
    /// Nothing changes: the member is already as asked.
    AlreadySo,
    Change(ChangeMembers<u64, MemberInfo>),
}

/// A learner's progress: the leader's last log index, and how far the
/// learner's log matches it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    pub leader_last: u64,
    pub learner_match: u64,
}

/// The rules of a membership change: what `kind` for member `id` (carrying
/// `info`) does to `current`, or why it is refused.
pub(super) fn plan(
    kind: pb::MemberChangeKind,
    id: u64,
    info: MemberInfo,
    current: &Membership,
    progress: Progress,
) -> std::result::Result<Plan, MembershipError> {
    let exists = current.nodes().any(|(n, _)| *n == id);
    let is_voter = current.voter_ids().any(|v| v == id);
    let change = match kind {
        pb::MemberChangeKind::MemberAdd => ChangeMembers::AddVoters(BTreeMap::from([(id, info)])),
        pb::MemberChangeKind::MemberAddLearner => {
            ChangeMembers::AddNodes(BTreeMap::from([(id, info)]))
        }
        pb::MemberChangeKind::MemberRemove => {
            if !exists {
                return Err(MembershipError::MemberNotFound);
            }
            if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            }
        }
        pb::MemberChangeKind::MemberUpdate | pb::MemberChangeKind::MemberPublish => {
            let old = current
                .nodes()
                .find(|(n, _)| **n == id)
                .map(|(_, n)| n.clone())
                .ok_or(MembershipError::MemberNotFound)?;
            let mut new = old.clone();
            if kind == pb::MemberChangeKind::MemberUpdate {
                new.peer_urls = info.peer_urls;
            } else {
                new.name = info.name;
                new.client_urls = info.client_urls;
            }
            if new == old {
                return Ok(Plan::AlreadySo);
            }
            ChangeMembers::SetNodes(BTreeMap::from([(id, new)]))
        }
        pb::MemberChangeKind::MemberPromote => {
            if !exists {
                return Err(MembershipError::MemberNotFound);
            }
            if is_voter {
                return Err(MembershipError::NotLearner);
            }
            // etcd's rule: a learner becomes a voter only once it holds 90%
            // of the leader's log, so that it cannot stall commits.
            if (progress.learner_match as f64) < progress.leader_last as f64 * 0.9 {
                return Err(MembershipError::LearnerNotReady);
            }
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
    };
    Ok(Plan::Change(change))
}

/// Leadership may go only to a voter.
pub(super) fn check_transferee(
    current: &Membership,
    target: u64,
) -> std::result::Result<(), MembershipError> {
    if current.voter_ids().any(|v| v == target) {
        Ok(())
    } else {
        Err(MembershipError::BadLeaderTransferee)
    }
}

impl Replica {
    /// The membership as of the latest log entry this member has seen.
    pub(super) fn membership(&self) -> Membership {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone()
    }

    pub(crate) fn membership_pb(&self) -> pb::Membership {
        codec::membership_to_pb(&self.membership())
    }

    /// Applies a membership change on the leader, or forwards it there;
    /// resolves with the membership after it.
    pub async fn change_member(
        &self,
        kind: pb::MemberChangeKind,
        member: pb::Member,
    ) -> Result<MemberList> {
        self.change_membership(kind, member)
            .await
            .map(|m| member_list(&m))
    }

    /// As `change_member`, with the membership in Raft's terms (the peer
    /// server sends it on).
    pub(crate) async fn change_membership(
        &self,
        kind: pb::MemberChangeKind,
        member: pb::Member,
    ) -> Result<Membership> {
        if !self.is_leader() {
            let peer = self.leader_peer()?;
            let resp = peer
                .client
                .clone()
                .change_member(peer.request(
                    pb::MemberChangeRequest {
                        kind: kind as i32,
                        member: Some(member),
                    },
                    Some(self.request_timeout),
                ))
                .await
                .map_err(from_status)?
                .into_inner();
            // As etcd answers a member change only once the accepting member
            // applied it: a MemberList here right after sees the change.
            self.read_barrier().await?;
            return codec::membership_from_pb(resp.membership.unwrap_or_default())
                .map_err(|e| StoreError::Storage(e.to_string()));
        }
        // Held until the change commits: that is what it serializes.
        let _one_at_a_time = self.membership_changes.lock().await;
        let (id, info) = codec::member_from_pb(member);
        let current = self.membership();
        let change = match plan(kind, id, info, &current, self.progress_of(id))? {
            Plan::AlreadySo => return Ok(current),
            Plan::Change(c) => c,
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(self.membership()),
            Err(e) => Err(change_membership_error(e)),
        }
    }

    /// How far member `id`'s log matches this leader's.
    fn progress_of(&self, id: u64) -> Progress {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let learner_match = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
            .unwrap_or(0);
        Progress {
            leader_last: m.last_log_index.unwrap_or(0),
            learner_match,
        }
    }

    /// Hands leadership to `target` (etcd's MoveLeader) and waits for it to take over.
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        check_transferee(&self.membership(), target)?;
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(fatal)?;
        let wait = self.wait_metrics(|m| (m.current_leader == Some(target)).then_some(()));
        match tokio::time::timeout(self.request_timeout, wait).await {
            Ok(Some(())) => Ok(()),
            _ => Err(StoreError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, peer: &str, client: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![client.into()],
        }
    }

    /// Voters 1 and 2, learner 3.
    fn current() -> Membership {
        let nodes = BTreeMap::from([
            (1, info("m1", "http://p1", "http://c1")),
            (2, info("m2", "http://p2", "http://c2")),
            (3, info("m3", "http://p3", "http://c3")),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap()
    }

    fn run(kind: pb::MemberChangeKind, id: u64, i: MemberInfo) -> Result<Plan, MembershipError> {
        plan(kind, id, i, &current(), Progress::default())
    }

    use pb::MemberChangeKind as K;

    #[test]
    fn adds_a_voter_or_a_learner() {
        let i = info("m4", "http://p4", "");
        assert!(matches!(
            run(K::MemberAdd, 4, i.clone()),
            Ok(Plan::Change(ChangeMembers::AddVoters(m))) if m == BTreeMap::from([(4, i.clone())])
        ));
        assert!(matches!(
            run(K::MemberAddLearner, 4, i.clone()),
            Ok(Plan::Change(ChangeMembers::AddNodes(m))) if m == BTreeMap::from([(4, i)])
        ));
    }

    #[test]
    fn removes_voters_and_learners_but_not_strangers() {
        let none = MemberInfo::default();
        assert!(matches!(
            run(K::MemberRemove, 2, none.clone()),
            Ok(Plan::Change(ChangeMembers::RemoveVoters(ids))) if ids == BTreeSet::from([2])
        ));
        assert!(matches!(
            run(K::MemberRemove, 3, none.clone()),
            Ok(Plan::Change(ChangeMembers::RemoveNodes(ids))) if ids == BTreeSet::from([3])
        ));
        assert_eq!(
            run(K::MemberRemove, 9, none).unwrap_err(),
            MembershipError::MemberNotFound
        );
    }

    #[test]
    fn an_update_changes_only_peer_urls_and_publish_only_the_rest() {
        let asked = info("other", "http://p2-new", "http://c2-new");
        let Ok(Plan::Change(ChangeMembers::SetNodes(m))) = run(K::MemberUpdate, 2, asked.clone())
        else {
            panic!("not a SetNodes change");
        };
        assert_eq!(m[&2], info("m2", "http://p2-new", "http://c2"));
        let Ok(Plan::Change(ChangeMembers::SetNodes(m))) = run(K::MemberPublish, 2, asked) else {
            panic!("not a SetNodes change");
        };
        assert_eq!(m[&2], info("other", "http://p2", "http://c2-new"));
    }

    #[test]
    fn an_update_to_what_is_already_there_changes_nothing() {
        let same = info("ignored", "http://p1", "ignored");
        assert!(matches!(run(K::MemberUpdate, 1, same), Ok(Plan::AlreadySo)));
        let same = info("m1", "ignored", "http://c1");
        assert!(matches!(
            run(K::MemberPublish, 1, same),
            Ok(Plan::AlreadySo)
        ));
        assert_eq!(
            run(K::MemberUpdate, 9, MemberInfo::default()).unwrap_err(),
            MembershipError::MemberNotFound
        );
    }

    #[test]
    fn promotes_only_a_learner_that_holds_nine_tenths_of_the_log() {
        let p = |learner_match| Progress {
            leader_last: 100,
            learner_match,
        };
        let promote = |id, progress| {
            plan(
                K::MemberPromote,
                id,
                MemberInfo::default(),
                &current(),
                progress,
            )
        };
        assert_eq!(
            promote(9, p(100)).unwrap_err(),
            MembershipError::MemberNotFound
        );
        assert_eq!(promote(2, p(100)).unwrap_err(), MembershipError::NotLearner);
        assert_eq!(
            promote(3, p(89)).unwrap_err(),
            MembershipError::LearnerNotReady
        );
        assert!(matches!(
            promote(3, p(90)),
            Ok(Plan::Change(ChangeMembers::AddVoterIds(ids))) if ids == BTreeSet::from([3])
        ));
    }

    #[test]
    fn leadership_goes_only_to_a_voter() {
        assert_eq!(check_transferee(&current(), 2), Ok(()));
        assert_eq!(
            check_transferee(&current(), 3),
            Err(MembershipError::BadLeaderTransferee)
        );
        assert_eq!(
            check_transferee(&current(), 9),
            Err(MembershipError::BadLeaderTransferee)
        );
    }

    #[test]
    fn lists_learners_as_learners() {
        let l = member_list(&current());
        let flags: Vec<(u64, bool)> = l.iter().map(|(id, _, learner)| (*id, *learner)).collect();
        assert_eq!(flags, vec![(1, false), (2, false), (3, true)]);
    }
}
