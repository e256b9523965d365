//! Following: the source's revisions after the copy, replayed whole into
//! the target (ImportRevisions), one call in flight, each naming the
//! revision it continues from; leases granted and dropped as the source
//! grants and drops them; the source's compaction mirrored.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use cairn_proto::migrate::{
    ImportLease, ImportRevision, ImportRevisionsRequest, MigrationState, Phase,
};
use cairn_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use crate::copy::{fetch_leases, AbortOnDrop};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::Source;
use crate::target::{phase_name, unix_ms, Target};
use crate::watch::{Revision, SourceWatch, WatchItem};

/// Revisions one ImportRevisions call carries at most.
pub const BATCH_REVISIONS: usize = 1000;
/// Encoded bytes one ImportRevisions call aims at most (a single larger revision goes alone).
pub const BATCH_BYTES: usize = 1 << 20;
/// How often leases are synced, the source's compaction read, and the target's state checked.
pub const HOUSEKEEPING: Duration = Duration::from_secs(3);
/// Watch responses buffered ahead of the importer.
const WATCH_BUFFER: usize = 64;

/// How following ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// The target was cut over.
    CutOver(MigrationState),
    /// The target reached the revision asked for (`until`).
    Reached(MigrationState),
    /// The target is not where this follower thought: read its state and go on.
    Resync,
    /// The source compacted past the revision the target needs next.
    Compacted(i64),
}

/// Takes the next batch from the front of `pending`: at least one revision,
/// at most `max_revs`, and no more than `max_bytes` unless one revision alone is larger.
pub fn take_batch(
    pending: &mut VecDeque<Revision>,
    max_revs: usize,
    max_bytes: usize,
) -> Vec<Revision> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(next) = pending.front() {
        let b = next.encoded_len();
        if out.len() >= max_revs || (!out.is_empty() && bytes + b > max_bytes) {
            break;
        }
        bytes += b;
        if let Some(r) = pending.pop_front() {
            out.push(r);
        }
    }
    out
}

/// Leases put on keys in `revs` that are not in `known`, in first-seen order.
pub fn new_leases(revs: &[Revision], known: &HashSet<i64>) -> Vec<i64> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in revs {
        for ev in &r.events {
            if ev.r#type != EventType::Put as i32 {
                continue;
            }
            if let Some(kv) = &ev.kv {
                if kv.lease != 0 && !known.contains(&kv.lease) && seen.insert(kv.lease) {
                    out.push(kv.lease);
                }
            }
        }
    }
    out
}

type Item = Result<(WatchItem, i64)>;

fn spawn_watch(mut watch: SourceWatch) -> (mpsc::Receiver<Item>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let task = tokio::spawn(async move {
        let mut ask = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                item = watch.next() => {
                    let failed = item.is_err();
                    let rev = watch.source_revision;
                    if tx.send(item.map(|i| (i, rev))).await.is_err() || failed {
                        return;
                    }
                }
                _ = ask.tick() => watch.request_progress(),
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// How following ends once the target is not where the follower left it:
/// cut over, aborted, or moved by someone else.
pub fn end_for(st: MigrationState) -> Result<FollowEnd> {
    match Phase::try_from(st.phase) {
        Ok(Phase::CutOver) => Ok(FollowEnd::CutOver(st)),
        Ok(Phase::Aborted) => Err(Error::TargetAborted),
        _ => {
            tracing::info!(
                phase = phase_name(st.phase),
                target_revision = st.target_revision,
                "the target moved without this migrator; going on from where it is"
            );
            Ok(FollowEnd::Resync)
        }
    }
}

/// Reads the target's state: an end for a follower at revision `at` if
/// the target left phase FOLLOWING or moved past `at`. State is one
/// member's applied view, which may trail: only a target ahead of the
/// follower means someone else imported.
pub async fn target_moved(tgt: &Target, at: i64) -> Result<Option<FollowEnd>> {
    let st = tgt.state().await?;
    if st.phase != Phase::Following as i32 || st.target_revision > at {
        return end_for(st).map(Some);
    }
    Ok(None)
}

/// The follower's state between calls.
pub struct Follower<'a> {
    src: &'a Source,
    tgt: &'a Target,
    state: MigrationState,
    known: HashSet<i64>,
    grants: Vec<ImportLease>,
    drops: Vec<(i64, i64)>,
    mirrored_compact: i64,
    source_compact: i64,
    source_revision: i64,
    pending: VecDeque<Revision>,
    next_expected: i64,
    behind_since: Option<Instant>,
}

impl<'a> Follower<'a> {
    /// A follower for a target in phase FOLLOWING at `state`; the leases it
    /// knows of are the target's.
    pub async fn new(
        src: &'a Source,
        tgt: &'a Target,
        state: MigrationState,
    ) -> Result<Follower<'a>> {
        let known = tgt.leases().await?.into_iter().collect();
        Ok(Follower {
            src,
            tgt,
            mirrored_compact: state.compact_revision,
            source_compact: state.compact_revision,
            source_revision: state.source_revision.max(state.target_revision),
            next_expected: state.target_revision + 1,
            state,
            known,
            grants: Vec::new(),
            drops: Vec::new(),
            pending: VecDeque::new(),
            behind_since: None,
        })
    }

    /// Follows until the target is cut over, or reaches `until` (if given).
    pub async fn run(&mut self, until: Option<i64>, progress: &mut Progress) -> Result<FollowEnd> {
        let from = self.state.target_revision + 1;
        let watch = match SourceWatch::open(self.src, vec![0], vec![0], from, true).await {
            Ok(w) => w,
            Err(Error::Compacted {
                compact_revision, ..
            }) => return Ok(self.compacted(compact_revision)),
            Err(e) => return Err(e),
        };
        tracing::info!(from_revision = from, "following the source");
        let (mut items, _task) = spawn_watch(watch);
        let mut next_housekeeping = Instant::now();
        loop {
            if let Some(r) = until {
                if self.state.target_revision >= r {
                    return Ok(FollowEnd::Reached(self.state.clone()));
                }
            }
            // Wait for the watch, unless revisions are waiting already.
            if self.pending.is_empty() {
                let deadline = tokio::time::Instant::from_std(next_housekeeping);
                tokio::select! {
                    item = items.recv() => {
                        if let Some(end) = self.take_item(item)? {
                            return Ok(end);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            // Then whatever else is ready, up to a batch's worth.
            while self.pending.len() < BATCH_REVISIONS {
                match items.try_recv() {
                    Ok(item) => {
                        if let Some(end) = self.take_item(Some(item))? {
                            return Ok(end);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if let Some(end) = self.take_item(None)? {
                            return Ok(end);
                        }
                        break;
                    }
                }
            }
            if Instant::now() >= next_housekeeping {
                if let Some(end) = self.housekeeping().await? {
                    return Ok(end);
                }
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            if let Some(end) = self.flush().await? {
                return Ok(end);
            }
            let lag = self.behind_since.map(|t| t.elapsed()).unwrap_or_default();
            progress.following(self.state.target_revision, self.source_revision, lag);
        }
    }

    fn compacted(&self, compact_revision: i64) -> FollowEnd {
        tracing::error!(
            target_revision = self.state.target_revision,
            compact_revision,
            "the source compacted to revision {compact_revision}, past revision {} that the target needs next: \
             the import restarts from the source's new compact revision",
            self.state.target_revision + 1
        );
        FollowEnd::Compacted(compact_revision)
    }

    fn take_item(&mut self, item: Option<Item>) -> Result<Option<FollowEnd>> {
        let (item, rev) = match item {
            Some(Ok(x)) => x,
            Some(Err(e)) if e.is_transient() => {
                tracing::warn!(error = %e, "the source's watch failed; watching again from the target's revision");
                return Ok(Some(FollowEnd::Resync));
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(Some(FollowEnd::Resync)),
        };
        self.source_revision = self.source_revision.max(rev);
        match item {
            WatchItem::Compacted(c) => Ok(Some(self.compacted(c))),
            WatchItem::Progress => Ok(None),
            WatchItem::Revisions(revs) => {
                for r in revs {
                    if r.revision != self.next_expected {
                        return Err(Error::Inconsistent(format!(
                            "the source's watch sent revision {} where revision {} was next",
                            r.revision, self.next_expected
                        )));
                    }
                    self.next_expected += 1;
                    self.source_revision = self.source_revision.max(r.revision);
                    self.pending.push_back(r);
                }
                if self.behind_since.is_none() {
                    self.behind_since = Some(Instant::now());
                }
                Ok(None)
            }
        }
    }

    /// Syncs leases with the source, reads its compaction, and checks the target's phase.
    async fn housekeeping(&mut self) -> Result<Option<FollowEnd>> {
        let (ids, listed_at) = self.src.leases().await?;
        let ids: HashSet<i64> = ids.into_iter().collect();
        let granted: Vec<i64> = ids.difference(&self.known).copied().collect();
        if !granted.is_empty() {
            let fetched = fetch_leases(self.src, granted).await?;
            for l in &fetched {
                self.known.insert(l.id);
            }
            self.grants.extend(fetched);
        }
        let gone: Vec<i64> = self.known.difference(&ids).copied().collect();
        for id in gone {
            self.known.remove(&id);
            self.grants.retain(|g| g.id != id);
            self.drops.push((id, listed_at));
        }
        let c = self.src.compact_revision(self.source_compact).await?;
        if c > self.source_compact {
            tracing::info!(compact_revision = c, "the source compacted");
            self.source_compact = c;
        }
        // A compaction past what the watch still has to deliver cancels the
        // watch (WatchItem::Compacted); nothing to decide here.
        target_moved(self.tgt, self.state.target_revision).await
    }

    /// Sends one ImportRevisions call if there is anything to send.
    async fn flush(&mut self) -> Result<Option<FollowEnd>> {
        let batch = take_batch(&mut self.pending, BATCH_REVISIONS, BATCH_BYTES);
        let after = self.state.target_revision;
        let reaches = batch.last().map(|r| r.revision).unwrap_or(after);
        let wanted = new_leases(&batch, &self.known);
        if !wanted.is_empty() {
            let fetched = fetch_leases(self.src, wanted).await?;
            for l in &fetched {
                self.known.insert(l.id);
            }
            self.grants.extend(fetched);
        }
        let drops: Vec<i64> = self
            .drops
            .iter()
            .filter(|(_, at)| *at <= reaches)
            .map(|(id, _)| *id)
            .collect();
        let compact_to =
            if self.source_compact > self.mirrored_compact && self.source_compact <= reaches {
                self.source_compact
            } else {
                0
            };
        if batch.is_empty() && self.grants.is_empty() && drops.is_empty() && compact_to == 0 {
            if self.source_revision <= after {
                self.behind_since = None;
            }
            return Ok(None);
        }
        let req = ImportRevisionsRequest {
            after_revision: after,
            revisions: batch
                .into_iter()
                .map(|r| ImportRevision {
                    revision: r.revision,
                    events: r.events,
                })
                .collect(),
            lease_grants: self.grants.clone(),
            lease_drops: drops.clone(),
            source_revision: self.source_revision.max(reaches),
            unix_ms: unix_ms(),
            compact_to,
        };
        match self.tgt.import_revisions(req).await {
            Ok(st) => {
                self.grants.clear();
                self.drops.retain(|(id, _)| !drops.contains(id));
                if compact_to > 0 {
                    self.mirrored_compact = compact_to;
                }
                self.state = st;
                if self.pending.is_empty() {
                    self.behind_since =
                        (self.source_revision > self.state.target_revision).then(Instant::now);
                } else {
                    self.behind_since = Some(Instant::now());
                }
                match Phase::try_from(self.state.phase) {
                    Ok(Phase::Following) => Ok(None),
                    _ => end_for(self.state.clone()).map(Some),
                }
            }
            Err(Error::OutOfStep { message, .. }) => {
                tracing::warn!(%message, "the target is out of step with this follower; reading its state");
                Ok(Some(FollowEnd::Resync))
            }
            Err(Error::Refused { message, .. }) => {
                tracing::warn!(%message, "the target refused an import; reading its state");
                let st = self.tgt.state().await?;
                end_for(st).map(Some)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::{Event, KeyValue};

    fn rev(r: i64, value_len: usize, lease: i64) -> Revision {
        Revision {
            revision: r,
            events: vec![Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: format!("k{r}").into_bytes(),
                    value: vec![1; value_len],
                    mod_revision: r,
                    lease,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
        }
    }

    #[test]
    fn batches_are_bounded_by_count() {
        let mut pending: VecDeque<_> = (1..=2500).map(|r| rev(r, 10, 0)).collect();
        let a = take_batch(&mut pending, BATCH_REVISIONS, BATCH_BYTES);
        assert_eq!(a.len(), 1000);
        assert_eq!(a[0].revision, 1);
        assert_eq!(a[999].revision, 1000);
        let b = take_batch(&mut pending, BATCH_REVISIONS, BATCH_BYTES);
        assert_eq!(b[0].revision, 1001);
        let c = take_batch(&mut pending, BATCH_REVISIONS, BATCH_BYTES);
        assert_eq!(c.len(), 500);
        assert!(take_batch(&mut pending, BATCH_REVISIONS, BATCH_BYTES).is_empty());
    }

    #[test]
    fn batches_are_bounded_by_bytes_but_never_empty() {
        let mut pending: VecDeque<_> = vec![
            rev(1, 600_000, 0),
            rev(2, 600_000, 0),
            rev(3, 3 << 20, 0),
            rev(4, 10, 0),
        ]
        .into();
        assert_eq!(take_batch(&mut pending, 1000, BATCH_BYTES).len(), 1);
        assert_eq!(take_batch(&mut pending, 1000, BATCH_BYTES).len(), 1);
        let big = take_batch(&mut pending, 1000, BATCH_BYTES);
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].revision, 3);
        assert_eq!(take_batch(&mut pending, 1000, BATCH_BYTES)[0].revision, 4);
    }

    #[test]
    fn new_leases_are_first_seen_puts_only() {
        let mut revs = vec![
            rev(1, 1, 5),
            rev(2, 1, 6),
            rev(3, 1, 5),
            rev(4, 1, 0),
            rev(5, 1, 8),
        ];
        revs[1].events[0].r#type = EventType::Delete as i32;
        let known: HashSet<i64> = [8].into_iter().collect();
        assert_eq!(new_leases(&revs, &known), vec![5]);
    }
}
