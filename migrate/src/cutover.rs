//! `cairn migrate cutover`: fence the source, bring the target to the
//! source's last revision, verify, switch; report the write-unavailability
//! window and any write the source still accepted after the fence.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cairn_proto::migrate::{ImportRevisionsRequest, MigrationState, Phase};
use cairn_proto::mvccpb::event::EventType;

use crate::connect::split_urls;
use crate::copy::fetch_leases;
use crate::error::{Error, Result};
use crate::follow::{FollowEnd, Follower};
use crate::progress::Progress;
use crate::source::Source;
use crate::target::{phase_name, unix_ms, Target};
use crate::verify::{verify_with, VerifyReport};
use crate::watch::{SourceWatch, WatchItem};

/// Rounds of "the source moved after R: import, verify again" before giving up.
const MAX_ROUNDS: u32 = 5;
/// How long the target may make no progress before cutover imports itself.
const STALL: Duration = Duration::from_secs(1);

/// How much the cutover verifies at R, inside the write-unavailability window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// HashKV and the key-by-key diff (as `cairn migrate verify`).
    Full,
    /// HashKV; key by key where HashKV cannot be compared (a shorter
    /// window on a big store).
    Hash,
    /// Nothing (the window is only fence, catch-up and switch).
    None,
}

/// What a completed cutover did.
#[derive(Debug)]
pub struct CutoverDone {
    /// The revision the target took over at.
    pub revision: i64,
    /// From the fence to the switch.
    pub unavailable: Duration,
    /// The member the NOSPACE alarm was raised on.
    pub fenced_member: u64,
    /// The verification at `revision`.
    pub verified: VerifyReport,
}

/// The line kube-apiserver's flags change by.
pub fn etcd_servers_line(target_urls: &str) -> String {
    format!("--etcd-servers={}", split_urls(target_urls).join(","))
}

/// Waits for a running `cairn migrate start` to bring the target to `r`;
/// imports itself if the target makes no progress for [`STALL`].
async fn bring_to(src: &Source, tgt: &Target, r: i64, deadline: Instant) -> Result<MigrationState> {
    bring_to_with(tgt, r, deadline, |st, until| async move {
        let mut progress = Progress::hidden();
        Follower::new(src, tgt, st)
            .await?
            .run(Some(until), &mut progress)
            .await
    })
    .await
}

/// [`bring_to`] for any source: `follow(state, r)` imports from the
/// target's `state` until revision `r`.
pub async fn bring_to_with<F, Fut>(
    tgt: &Target,
    r: i64,
    deadline: Instant,
    mut follow: F,
) -> Result<MigrationState>
where
    F: FnMut(MigrationState, i64) -> Fut,
    Fut: std::future::Future<Output = Result<FollowEnd>>,
{
    let mut last = -1;
    let mut since = Instant::now();
    loop {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the target did not reach the source's revision {r}"
            )));
        }
        let st = tgt.state().await?;
        match Phase::try_from(st.phase) {
            Ok(Phase::Following) => {}
            _ => {
                return Err(Error::Inconsistent(format!(
                    "the target left phase following (now {}) during the cutover",
                    phase_name(st.phase)
                )))
            }
        }
        if st.target_revision >= r {
            return Ok(st);
        }
        if st.target_revision != last {
            last = st.target_revision;
            since = Instant::now();
        }
        if since.elapsed() < STALL {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tracing::info!(
            target_revision = st.target_revision,
            until = r,
            "the target is not moving; cutover imports itself"
        );
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, follow(st, r)).await {
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "importing up to the source's revision {r}"
                )))
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(FollowEnd::Reached(st))) => return Ok(st),
            Ok(Ok(FollowEnd::Resync)) => {
                since = Instant::now();
            }
            Ok(Ok(FollowEnd::Compacted(c))) => {
                return Err(Error::Compacted {
                    needed: last + 1,
                    compact_revision: c,
                })
            }
            Ok(Ok(FollowEnd::CutOver(_))) => {
                return Err(Error::Inconsistent(
                    "the target was cut over by someone else".into(),
                ))
            }
        }
    }
}

/// Sends the source's lease set and compaction to a target at `st`.
async fn final_sync(src: &Source, tgt: &Target, st: MigrationState) -> Result<MigrationState> {
    let (ids, _) = src.leases().await?;
    let ids: HashSet<i64> = ids.into_iter().collect();
    let held: HashSet<i64> = tgt.leases().await?.into_iter().collect();
    let grants = fetch_leases(src, ids.difference(&held).copied().collect()).await?;
    let mut drops: Vec<i64> = held.difference(&ids).copied().collect();
    drops.sort_unstable();
    let c = src.compact_revision(st.compact_revision).await?;
    let compact_to = if c > st.compact_revision && c <= st.target_revision {
        c
    } else {
        0
    };
    if grants.is_empty() && drops.is_empty() && compact_to == 0 {
        return Ok(st);
    }
    tracing::info!(
        grants = grants.len(),
        drops = drops.len(),
        compact_to,
        "final lease and compaction sync"
    );
    tgt.import_revisions(ImportRevisionsRequest {
        after_revision: st.target_revision,
        revisions: Vec::new(),
        lease_grants: grants,
        lease_drops: drops,
        source_revision: st.target_revision,
        unix_ms: unix_ms(),
        compact_to,
    })
    .await
}

async fn fenced_part(
    src: &Source,
    tgt: &Target,
    deadline: Instant,
    mode: VerifyMode,
) -> Result<(i64, VerifyReport)> {
    for round in 1..=MAX_ROUNDS {
        let r = src.current_revision().await?;
        tracing::info!(
            revision = r,
            round,
            "the source's last revision after the fence"
        );
        let st = bring_to(src, tgt, r, deadline).await?;
        let st = match final_sync(src, tgt, st).await {
            Ok(st) => st,
            Err(Error::OutOfStep { message, .. }) => {
                tracing::warn!(%message, "the target moved during the final sync; again");
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = src.current_revision().await?;
        if now != r || st.target_revision != r {
            tracing::warn!(
                revision = r,
                source_now = now,
                target = st.target_revision,
                "the source moved after the fence (a delete or a lease expiry); importing it"
            );
            continue;
        }
        let report = match mode {
            VerifyMode::None => VerifyReport {
                revision: r,
                hash_line: format!("hashkv at revision {r}: not compared (--verify none)"),
                ..Default::default()
            },
            _ => {
                verify_with(
                    src,
                    tgt,
                    r,
                    st.history_none,
                    st.shared_revision_keys,
                    mode == VerifyMode::Full,
                )
                .await?
            }
        };
        if !report.ok() {
            for l in report.lines() {
                eprintln!("{l}");
            }
            return Err(Error::Inconsistent(format!(
                "verification failed at revision {r}: {} differences{}",
                report.differences,
                if report.hash_differs {
                    ", hashkv differs"
                } else {
                    ""
                }
            )));
        }
        match tgt.cutover(r).await {
            Ok(_) => return Ok((r, report)),
            Err(Error::OutOfStep { message, .. }) => {
                tracing::warn!(%message, "the target moved past revision {r}; again");
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Timeout(format!(
        "the source kept moving after the fence through {MAX_ROUNDS} rounds"
    )))
}

/// Refuses a cutover unless the target follows `source` (the copy complete).
pub async fn ready_for_cutover(tgt: &Target, source: &str) -> Result<()> {
    let st = tgt.state().await?;
    match Phase::try_from(st.phase) {
        Ok(Phase::Following) => Ok(()),
        Ok(Phase::CutOver) => Err(Error::BadInput(format!(
            "the target at {} is already cut over (at revision {})",
            tgt.urls(),
            st.target_revision
        ))),
        _ => Err(Error::BadInput(format!(
            "the target at {} is not following {source} (phase {}): cutover needs the copy complete (cairn migrate start)",
            tgt.urls(),
            phase_name(st.phase)
        ))),
    }
}

/// Runs the cutover. On any failure before the switch the fence is lifted.
pub async fn run_cutover(
    src: &Source,
    tgt: &Target,
    timeout: Duration,
    mode: VerifyMode,
) -> Result<CutoverDone> {
    ready_for_cutover(tgt, "the source").await?;
    let member = src.status().await?.member_id;
    let fenced_at = Instant::now();
    src.fence(member).await?;
    tracing::info!(member = %format!("{member:x}"), "fenced the source: NOSPACE alarm raised; it refuses puts");
    let deadline = fenced_at + timeout;
    let result = match tokio::time::timeout(timeout, fenced_part(src, tgt, deadline, mode)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(format!(
            "the cutover took longer than {timeout:?}"
        ))),
    };
    match result {
        Ok((revision, verified)) => Ok(CutoverDone {
            revision,
            unavailable: fenced_at.elapsed(),
            fenced_member: member,
            verified,
        }),
        Err(e) => {
            match src.unfence(member).await {
                Ok(()) => eprintln!("cutover failed; lifted the fence (NOSPACE alarm) on source member {member:x}"),
                Err(u) => eprintln!(
                    "cutover failed, and lifting the fence on source member {member:x} failed too: {u}; lift it with `cairn migrate abort --from ...` or `etcdctl alarm disarm`"
                ),
            }
            Err(e)
        }
    }
}

/// Watches the source after `revision` for `window` and returns one line per
/// write it accepted despite the fence.
pub async fn writes_after_fence(
    src: &Source,
    revision: i64,
    window: Duration,
) -> Result<Vec<String>> {
    let mut watch = SourceWatch::open(src, vec![0], vec![0], revision + 1, false).await?;
    let mut lines = Vec::new();
    let end = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(end, watch.next()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(WatchItem::Revisions(revs))) => {
                for r in revs {
                    for ev in r.events {
                        let kind = if ev.r#type == EventType::Delete as i32 {
                            "DELETE"
                        } else {
                            "PUT"
                        };
                        let key = ev.kv.map(|kv| kv.key).unwrap_or_default();
                        lines.push(format!(
                            "source accepted a write after the fence: {kind} {} at revision {}",
                            crate::verify::show_key(&key),
                            r.revision
                        ));
                    }
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kube_apiserver_line() {
        assert_eq!(
            etcd_servers_line("http://a:2379, http://b:2379,,"),
            "--etcd-servers=http://a:2379,http://b:2379"
        );
    }
}
