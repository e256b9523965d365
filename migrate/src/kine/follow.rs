//! Following kine: rows with an id above the target's revision, polled in
//! id order as kine's own watch polls them (`sqllog.poll`), replayed one
//! revision per row (ImportRevisions).
//!
//! Kine's ids can have a hole for a moment: a transaction that took an id
//! (a PostgreSQL sequence) commits after a later one. The follower imports
//! only the unbroken run after the target's revision and waits at a hole
//! until the row appears or kine writes its fill record there. It moves
//! past a hole only once no row can ever appear there: every transaction
//! that was open when the hole was first seen has ended (PostgreSQL's
//! transaction horizon), and [`HOLE_PERMANENT`] has passed. Kine leaves
//! such holes for good when it restarts (its poller starts above them and
//! never fills them); its readers see no change at that revision, and the
//! target imports it as a revision that changes no key, as a fill record.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;

use cairn_proto::etcdserverpb::RangeRequest;
use cairn_proto::migrate::{
    ImportLease, ImportRevision, ImportRevisionsRequest, MigrationState, Phase,
};

use crate::connect::timed;
use crate::error::{Error, Result};
use crate::follow::{end_for, target_moved, FollowEnd, HOUSEKEEPING};
use crate::kine::db::KineDb;
use crate::kine::row::{event, lease_for, Change, Row, APISERVER_COMPACT_KEY};
use crate::kvread::kv_client;
use crate::progress::Progress;
use crate::target::{unix_ms, Target};
use crate::verify::show_key;

/// Rows one poll reads, and one ImportRevisions call carries, at most.
pub const BATCH_ROWS: i64 = 1000;
/// How long the follower waits before polling again when it is caught up.
pub const POLL: Duration = Duration::from_millis(50);
/// How long a hole may stay before the follower says it is waiting on it.
pub const HOLE_REPORT: Duration = Duration::from_secs(2);
/// How long a hole stays at least before the follower may take it for
/// permanent: kine fills one after a second while it runs, and a
/// transaction takes its id a moment before PostgreSQL sees it open.
pub const HOLE_PERMANENT: Duration = Duration::from_secs(5);
/// Versions remembered for keys the follower imported (a cache: a miss
/// reads the target).
const VERSIONS_KEPT: usize = 200_000;

/// The rows that continue `after` without a gap, in order.
pub fn unbroken_run(after: i64, rows: Vec<Row>) -> Vec<Row> {
    (after + 1..)
        .zip(rows)
        .take_while(|(next, r)| r.id == *next)
        .map(|(_, r)| r)
        .collect()
}

/// A missing id the follower waits at.
#[derive(Clone, Copy, Debug)]
struct Hole {
    id: i64,
    /// When it was first seen.
    since: Instant,
    /// When it was last reported.
    reported: Instant,
    /// The transactions open when it was first seen.
    open: Option<i64>,
}

/// A key the target holds: (key, mod_revision, version).
type HeldKey = (Vec<u8>, i64, i64);

/// The follower's state between polls.
pub struct KineFollower<'a> {
    db: &'a KineDb,
    tgt: &'a Target,
    state: MigrationState,
    /// Leases the target holds (each named by the revision of its put).
    known: HashSet<i64>,
    /// key → (mod_revision, version) of keys seen since the follower began.
    versions: HashMap<Vec<u8>, (i64, i64)>,
    mirrored_compact: i64,
    source_revision: i64,
    hole: Option<Hole>,
    behind_since: Option<Instant>,
}

impl<'a> KineFollower<'a> {
    /// A follower for a target in phase FOLLOWING at `state`.
    pub async fn new(
        db: &'a KineDb,
        tgt: &'a Target,
        state: MigrationState,
    ) -> Result<KineFollower<'a>> {
        let known = tgt.leases().await?.into_iter().collect();
        Ok(KineFollower {
            db,
            tgt,
            mirrored_compact: state.compact_revision,
            source_revision: state.source_revision.max(state.target_revision),
            state,
            known,
            versions: HashMap::new(),
            hole: None,
            behind_since: None,
        })
    }

    /// Follows until the target is cut over, or reaches `until` (if given).
    pub async fn run(&mut self, until: Option<i64>, progress: &mut Progress) -> Result<FollowEnd> {
        tracing::info!(
            from_revision = self.state.target_revision + 1,
            "following kine"
        );
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        for _ in 0..u64::MAX {
            if let Some(r) = until {
                if self.state.target_revision >= r {
                    return Ok(FollowEnd::Reached(self.state.clone()));
                }
            }
            let after = self.state.target_revision;
            let page = self.db.rows_after(after, BATCH_ROWS).await?;
            self.source_revision = self.source_revision.max(page.heads.current);
            if page.heads.compact > after {
                tracing::error!(
                    target_revision = after,
                    compact_revision = page.heads.compact,
                    "kine compacted to revision {}, past revision {} that the target needs next: \
                     the import restarts from kine's new compact revision",
                    page.heads.compact,
                    after + 1
                );
                return Ok(FollowEnd::Compacted(page.heads.compact));
            }
            if page.heads.current < after {
                return Err(Error::Inconsistent(format!(
                    "kine's newest revision is {}, below the target's {after}: {} is not the database this import began from",
                    page.heads.current,
                    self.db.name()
                )));
            }
            let seen = page.rows.len();
            let mut rows = unbroken_run(after, page.rows);
            if let Some(fill) = self.settle_hole(after, seen, rows.len()).await? {
                rows.push(fill);
            }
            let compact_to = if page.heads.compact > 0 && page.heads.compact > self.mirrored_compact
            {
                page.heads.compact
            } else {
                0
            };
            let full = rows.len() as i64 >= BATCH_ROWS;
            if !rows.is_empty() || compact_to > 0 {
                if self.behind_since.is_none() {
                    self.behind_since = Some(Instant::now());
                }
                if let Some(end) = self.import(rows, compact_to).await? {
                    return Ok(end);
                }
            }
            if self.source_revision <= self.state.target_revision {
                self.behind_since = None;
            }
            let lag = self.behind_since.map(|t| t.elapsed()).unwrap_or_default();
            progress.following(self.state.target_revision, self.source_revision, lag);
            if Instant::now() >= next_housekeeping {
                if let Some(end) = target_moved(self.tgt, self.state.target_revision).await? {
                    return Ok(end);
                }
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            if !full {
                tokio::time::sleep(POLL).await;
            }
        }
        Err(Error::Inconsistent("following never ended".into()))
    }

    /// Notes a hole at `after + 1` (rows beyond it, none at it), says so
    /// every [`HOLE_REPORT`], and returns its fill once it is permanent.
    async fn settle_hole(&mut self, after: i64, seen: usize, taken: usize) -> Result<Option<Row>> {
        if taken > 0 || seen == 0 {
            self.hole = None;
            return Ok(None);
        }
        let missing = after + 1;
        let hole = match self.hole {
            Some(h) if h.id == missing => h,
            _ => {
                let now = Instant::now();
                let h = Hole {
                    id: missing,
                    since: now,
                    reported: now,
                    open: self.db.open_transactions().await?,
                };
                self.hole = Some(h);
                return Ok(None);
            }
        };
        if hole.since.elapsed() >= HOLE_PERMANENT && self.db.ended(hole.open).await? {
            // Read again: the row may have committed just before its transaction ended.
            let again = self.db.rows_after(after, 1).await?;
            if again.rows.first().is_some_and(|r| r.id > missing) {
                tracing::warn!(
                    revision = missing,
                    "kine's revision {missing} has no row, and no transaction that could write one is open: \
                     imported as a revision that changes no key, as kine's readers see it"
                );
                self.hole = None;
                return Ok(Some(Row::absent(missing)));
            }
            return Ok(None);
        }
        if hole.reported.elapsed() >= HOLE_REPORT {
            tracing::warn!(
                revision = missing,
                waited_ms = hole.since.elapsed().as_millis() as u64,
                "waiting for kine's row {missing}: later rows are written, this one is not yet \
                 (a transaction still open, or a fill record kine has not written yet)"
            );
            self.hole = Some(Hole {
                reported: Instant::now(),
                ..hole
            });
        }
        Ok(None)
    }

    /// Reads from the target, a few at a time, the keys that rows of this
    /// batch update and that the follower has not seen change: the target
    /// holds each as of its previous row.
    async fn prefetch_versions(&mut self, rows: &[Row]) -> Result<()> {
        let mut in_batch = HashSet::new();
        let mut wanted = Vec::new();
        for row in rows {
            if row.change() != Change::Put || row.name == APISERVER_COMPACT_KEY {
                continue;
            }
            let known = in_batch.contains(&row.name)
                || self
                    .versions
                    .get(&row.name)
                    .is_some_and(|(m, _)| *m == row.prev_revision);
            if !row.created && !known {
                wanted.push(row.name.clone());
            }
            in_batch.insert(row.name.clone());
        }
        let conn = &self.tgt.conn;
        let found: Vec<Result<Option<HeldKey>>> = futures::stream::iter(wanted)
            .map(|key| async move {
                let req = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let resp = timed(conn, "Range", kv_client(conn).range(req)).await?;
                Ok(resp
                    .kvs
                    .first()
                    .map(|kv| (key, kv.mod_revision, kv.version)))
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for f in found {
            if let Some((key, m, v)) = f? {
                self.versions.insert(key, (m, v));
            }
        }
        Ok(())
    }

    /// The version a put row leaves its key at (after [`Self::prefetch_versions`]).
    fn version_of(&self, row: &Row) -> Result<i64> {
        if row.created || row.name == APISERVER_COMPACT_KEY {
            // kube-apiserver's compaction key carries its version (put_kv).
            return Ok(1);
        }
        match self.versions.get(&row.name) {
            Some((m, v)) if *m == row.prev_revision => Ok(v + 1),
            other => Err(Error::Inconsistent(format!(
                "kine's row {} updates {} from revision {}, but the target holds it {}",
                row.id,
                show_key(&row.name),
                row.prev_revision,
                match other {
                    Some((m, _)) => format!("at revision {m}"),
                    None => "not at all".to_string(),
                }
            ))),
        }
    }

    /// Imports `rows` (an unbroken run after the target's revision).
    async fn import(&mut self, rows: Vec<Row>, compact_to: i64) -> Result<Option<FollowEnd>> {
        let after = self.state.target_revision;
        let mut revisions = Vec::with_capacity(rows.len());
        let mut grants: Vec<ImportLease> = Vec::new();
        let mut drops: Vec<i64> = Vec::new();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        self.prefetch_versions(&rows).await?;
        for row in &rows {
            let change = row.change();
            if change != Change::Nothing
                && row.prev_revision > 0
                && self.known.contains(&row.prev_revision)
            {
                // The key's previous put held the lease: the key moves on from it.
                drops.push(row.prev_revision);
            }
            let version = match change {
                Change::Put => {
                    let v = self.version_of(row)?;
                    self.versions.insert(row.name.clone(), (row.id, v));
                    seen.push(row.name.clone());
                    if let Some(l) = lease_for(row.id, row.lease) {
                        grants.push(l);
                    }
                    v
                }
                Change::Delete => {
                    self.versions.remove(&row.name);
                    0
                }
                Change::Nothing => 0,
            };
            revisions.push(ImportRevision {
                revision: row.id,
                events: event(row, version).into_iter().collect(),
            });
        }
        let reaches = rows.last().map(|r| r.id).unwrap_or(after);
        let req = ImportRevisionsRequest {
            after_revision: after,
            revisions,
            lease_grants: grants.clone(),
            lease_drops: drops.clone(),
            source_revision: self.source_revision.max(reaches),
            unix_ms: unix_ms(),
            compact_to: compact_to.min(reaches),
        };
        let sent_compact = req.compact_to;
        match self.tgt.import_revisions(req).await {
            Ok(st) => {
                for g in &grants {
                    self.known.insert(g.id);
                }
                for d in &drops {
                    self.known.remove(d);
                }
                if sent_compact > 0 {
                    self.mirrored_compact = sent_compact;
                }
                if self.versions.len() > VERSIONS_KEPT {
                    self.versions.clear();
                }
                self.state = st;
                match Phase::try_from(self.state.phase) {
                    Ok(Phase::Following) => Ok(None),
                    _ => end_for(self.state.clone()).map(Some),
                }
            }
            Err(e) => {
                // What this call meant to record did not happen.
                for k in seen {
                    self.versions.remove(&k);
                }
                match e {
                    Error::OutOfStep { message, .. } => {
                        tracing::warn!(%message, "the target is out of step with this follower; reading its state");
                        Ok(Some(FollowEnd::Resync))
                    }
                    Error::Refused { message, .. } => {
                        tracing::warn!(%message, "the target refused an import; reading its state");
                        let st = self.tgt.state().await?;
                        end_for(st).map(Some)
                    }
                    e => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: i64) -> Row {
        Row {
            id,
            name: format!("k{id}").into_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn a_hole_stops_the_run_and_is_never_skipped() {
        let ids = |rows: Vec<Row>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(unbroken_run(10, vec![r(11), r(12), r(13)])),
            vec![11, 12, 13]
        );
        assert_eq!(ids(unbroken_run(10, vec![r(11), r(13), r(14)])), vec![11]);
        assert!(unbroken_run(10, vec![r(12), r(13)]).is_empty());
        assert!(unbroken_run(10, Vec::new()).is_empty());
    }
}
