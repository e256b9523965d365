//! The one adapter between openraft and the store wing: committed entries
//! become the writer's plain entries (`apply::writer`), whose results answer
//! openraft's responders and this member's waiters; snapshots are the
//! store's own (`mvcc::snapshot`), which this file and the network only
//! carry.
//!
//! The store is its own snapshot, as etcd's backend is: "building" one only
//! records the log id the store has reached (the log store syncs the store
//! before it purges entries behind it, see `PurgeBarrier`), so it costs
//! nothing however large the store is. Copying happens only when a member
//! needs a snapshot sent: a read transaction pins the store at its current
//! applied log id (newer than the recorded one, as etcd sends its current
//! backend), and the sender copies that view into a file with SQLite's
//! online backup while writes go on. The receiver installs the file by
//! replacing every table's rows in one transaction.
//!
//! A membership is stored as opaque bytes; they are encoded and decoded
//! here, with the peer protocol's codec.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use tokio::sync::watch;

use super::codec;
use super::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};
use super::waiters::Waiters;
use crate::apply::writer::{Answer, EntryResult, LogEntry, Payload, Writer};
use crate::error::{Result, StoreError};
use crate::mvcc::snapshot::{self, PinnedPoint, PinnedStore};
use crate::mvcc::ApplyState;

// The snapshot types openraft carries are the store's (see `mvcc::snapshot`).
pub use crate::mvcc::snapshot::{SnapshotData, SnapshotFile};

/// The Raft core over this state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Batches handed to the writer and not yet committed, beyond which
/// `apply` waits: bounds the work queued behind a slow disk.
const MAX_INFLIGHT_APPLIES: usize = 64;

type Inflight = VecDeque<tokio::sync::oneshot::Receiver<Result<()>>>;

#[derive(Clone)]
pub struct StateMachine {
    writer: Arc<Writer>,
    inflight: Arc<Mutex<Inflight>>,
    db_path: PathBuf,
    snap_dir: PathBuf,
    state: watch::Receiver<ApplyState>,
    /// The membership blob the store holds (see `encode_membership`).
    membership: watch::Receiver<Option<Vec<u8>>>,
    member_id: u64,
    waiters: Waiters,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// How a membership is stored: the log id that set it with the membership.
fn encode_membership(m: &StoredMembership) -> Vec<u8> {
    codec::stored_membership_to_pb(m).encode_to_vec()
}

/// The membership recorded in the store (the default before the first one).
pub(crate) fn decode_membership(blob: Option<&[u8]>) -> Result<StoredMembership> {
    match blob {
        None => Ok(StoredMembership::default()),
        Some(b) => {
            let pb = cairn_proto::peer::SnapshotMeta::decode(b)
                .map_err(|e| StoreError::Corrupt(format!("stored membership: {e}")))?;
            codec::stored_membership_from_pb(pb)
                .map_err(|e| StoreError::Corrupt(format!("stored membership: {e}")))
        }
    }
}

/// The members a stored membership names, as (id, info, is_learner): what
/// an etcd-format snapshot records as the cluster it was taken from.
pub(crate) fn member_list_of_blob(blob: Option<&[u8]>) -> Result<super::MemberList> {
    Ok(super::options::member_list(
        decode_membership(blob)?.membership(),
    ))
}

/// Refuses a stored membership that does not decode; the writer runs it on
/// an installed snapshot before publishing anything of it.
pub(crate) fn check_membership_blob(blob: Option<&[u8]>) -> Result<()> {
    decode_membership(blob).map(drop)
}

/// The last applied log id as the store recorded it.
fn last_applied(state: &ApplyState) -> Option<LogId> {
    (state.applied_index > 0).then(|| LogId::new(state.applied_term.into(), state.applied_index))
}

type Responder = Option<ApplyResponder<TypeConfig>>;

/// Turns openraft's entries into the writer's plain ones, and returns with
/// them what answers each entry once the writer is done: its responder (a
/// proposal made on this member while it led) and its waiter (a client of
/// this member whose write went through the leader).
fn to_plain(
    entries: Vec<(Entry, Responder)>,
    member_id: u64,
    waiters: Waiters,
) -> (Vec<LogEntry>, Answer) {
    let mut plain = Vec::with_capacity(entries.len());
    let mut tickets: Vec<(Responder, Option<u64>)> = Vec::with_capacity(entries.len());
    for (entry, responder) in entries {
        let (payload, waiter) = match entry.payload {
            EntryPayload::Blank => (Payload::Blank, None),
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m);
                (Payload::Membership(encode_membership(&stored)), None)
            }
            EntryPayload::Normal(lc) => {
                let waiter = (lc.origin == member_id).then_some(lc.request_id);
                (Payload::Command(lc.cmd), waiter)
            }
        };
        plain.push(LogEntry {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            payload,
        });
        tickets.push((responder, waiter));
    }
    let answer: Answer = Box::new(move |results| answer(tickets, results, &waiters));
    (plain, answer)
}

fn answer(
    tickets: Vec<(Responder, Option<u64>)>,
    results: Result<Vec<EntryResult>>,
    waiters: &Waiters,
) {
    let results = match results {
        Ok(results) => results,
        // Refused after a storage fault: only proposers hear of it.
        Err(e) => {
            for (responder, _) in tickets {
                if let Some(r) = responder {
                    r.send(Some(Err(e.clone())));
                }
            }
            return;
        }
    };
    for ((responder, waiter), result) in tickets.into_iter().zip(results) {
        // The entry has a responder too only if this member has since
        // become the leader the write was forwarded to.
        match (waiter, responder, result) {
            (Some(id), None, Some(r)) => waiters.resolve(id, r),
            (Some(id), Some(responder), result) => {
                if let Some(r) = &result {
                    waiters.resolve(id, r.clone());
                }
                responder.send(result);
            }
            (None, Some(responder), result) => responder.send(result),
            _ => {}
        }
    }
}

/// The snapshot meta of a pinned store: the log id and membership it reached.
fn snapshot_meta(point: &PinnedPoint) -> Result<SnapshotMeta> {
    Ok(SnapshotMeta {
        last_log_id: last_applied(&point.state),
        last_membership: decode_membership(point.membership.as_deref())?,
    })
}

impl StateMachine {
    pub(crate) fn new(
        data_dir: &Path,
        db_path: PathBuf,
        writer: Arc<Writer>,
        state: watch::Receiver<ApplyState>,
        membership: watch::Receiver<Option<Vec<u8>>>,
        member_id: u64,
        waiters: Waiters,
    ) -> Result<Self> {
        // A membership that does not decode refuses the open, as before
        // anything else reads it.
        decode_membership(membership.borrow().as_deref())?;
        let snap_dir = snapshot::snapshot_dir(data_dir)
            .map_err(|e| StoreError::io("prepare the snapshot dir", e))?;
        Ok(StateMachine {
            writer,
            inflight: Arc::default(),
            db_path,
            snap_dir,
            state,
            membership,
            member_id,
            waiters,
        })
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the handed-over batches that are committed; the first failure
    /// among them is returned.
    fn settle(&self) -> io::Result<()> {
        let mut q = self.inflight();
        while let Some(rx) = q.front_mut() {
            match rx.try_recv() {
                Ok(r) => {
                    q.pop_front();
                    r.map_err(io_err)?;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(io_err("apply thread stopped"))
                }
            }
        }
        Ok(())
    }

    /// Where a snapshot arriving from the leader is written before install.
    pub fn receive_path(&self) -> PathBuf {
        snapshot::unique(&self.snap_dir, "recv")
    }

    /// Pins the store (see `PinnedStore::pin`) with the log id and
    /// membership it has reached. `None` before anything is applied.
    fn pin_blocking(db_path: &Path, snap_dir: &Path) -> io::Result<Option<Snapshot<SnapshotData>>> {
        let (pinned, point) = PinnedStore::pin(db_path, snap_dir).map_err(io_err)?;
        let meta = snapshot_meta(&point).map_err(io_err)?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::Pinned(pinned),
        }))
    }

    async fn pin(&self) -> io::Result<Option<Snapshot<SnapshotData>>> {
        let db = self.db_path.clone();
        let dir = self.snap_dir.clone();
        tokio::task::spawn_blocking(move || Self::pin_blocking(&db, &dir))
            .await
            .map_err(io_err)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Records where the store is; nothing is copied (see the module doc).
    async fn build_snapshot(&mut self) -> io::Result<Snapshot<SnapshotData>> {
        let snapshot = self
            .pin()
            .await?
            .ok_or_else(|| io_err("no entry applied yet: nothing to snapshot"))?;
        tracing::info!(
            index = snapshot.meta.last_log_id.map(|l| l.index).unwrap_or(0),
            "snapshot taken; the log before it can be purged"
        );
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = *self.state.borrow();
        let membership = decode_membership(self.membership.borrow().as_deref()).map_err(io_err)?;
        Ok((last_applied(&state), membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Handed over without waiting, so that batches queue behind a running
        // commit and the writer folds them into its next one. Clients are
        // answered by the writer after its commit, and reads wait for the
        // store's applied index, so nothing observes an entry before it is
        // in the store. openraft's own applied index runs ahead by the
        // queue, which is safe: snapshot points are read from the store, and
        // the log is purged only behind them. A failure is reported on a
        // later call, and openraft then stops this member.
        self.settle()?;
        while self.inflight().len() >= MAX_INFLIGHT_APPLIES {
            let oldest = self.inflight().pop_front();
            if let Some(rx) = oldest {
                rx.await
                    .map_err(|_| io_err("apply thread stopped"))?
                    .map_err(io_err)?;
            }
        }
        let (entries, answer) = to_plain(batch, self.member_id, self.waiters.clone());
        let rx = self.writer.apply(entries, answer).map_err(io_err)?;
        self.inflight().push_back(rx);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            "installing a snapshot from the leader"
        );
        let file = match snapshot {
            SnapshotData::Received(file) => file,
            // openraft installs only what arrived from a leader.
            SnapshotData::Pinned(_) => {
                return Err(io_err("cannot install this member's own store"))
            }
        };
        // A membership the snapshot carries that does not decode fails the
        // install (`check_membership_blob`), so that openraft stops this member.
        // Installed rows live in the store now, which serves later snapshots;
        // the file goes when `file` drops.
        self.writer.install(file.path.clone()).await.map_err(io_err)
    }

    /// The store as it is now, pinned: sent to a member that needs a snapshot.
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot<SnapshotData>>> {
        self.pin().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::types::{MemberInfo, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn a_membership_comes_back_from_the_store_as_it_went_in() {
        let nodes = BTreeMap::from([
            (
                1,
                MemberInfo {
                    name: "one".into(),
                    peer_urls: vec!["http://a:2380".into()],
                    client_urls: vec!["http://a:2379".into()],
                },
            ),
            (2, MemberInfo::default()),
        ]);
        let m = Membership::new(vec![BTreeSet::from([1])], nodes).unwrap();
        let stored = StoredMembership::new(Some(LogId::new(3u64.into(), 9)), m);
        let blob = encode_membership(&stored);
        assert_eq!(decode_membership(Some(&blob)).unwrap(), stored);
        assert_eq!(
            decode_membership(None).unwrap(),
            StoredMembership::default()
        );
        assert!(matches!(
            decode_membership(Some(b"\xff\xff")),
            Err(StoreError::Corrupt(_))
        ));
    }
}
