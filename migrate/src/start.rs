//! `cairn migrate start`: copy, then follow, until the cutover completes;
//! resumable from wherever the target stands.

use std::time::Duration;

use cairn_proto::migrate::{BeginRequest, MigrationState, Phase};

use crate::copy::{copy, CopyEnd};
use crate::error::{Error, Result};
use crate::follow::{FollowEnd, Follower};
use crate::progress::Progress;
use crate::source::{Source, SourceInfo};
use crate::target::{phase_name, unix_ms, Target};

/// Restarts (the source compacted past what the import needed) before giving up.
const MAX_RESTARTS: u32 = 5;
/// Consecutive re-reads of the target's state without progress before giving up.
const MAX_RESYNCS: u32 = 100;

/// Checks, before anything is written, that the target can take this source.
pub fn check_target_for(
    state: &MigrationState,
    info: &SourceInfo,
    target_urls: &str,
) -> Result<()> {
    let phase = Phase::try_from(state.phase).unwrap_or(Phase::None);
    if phase != Phase::None && state.source_cluster_id != info.cluster_id {
        return Err(Error::BadInput(format!(
            "the target at {target_urls} is importing from etcd cluster {:x}, not from {:x} (the given source)",
            state.source_cluster_id, info.cluster_id
        )));
    }
    if phase == Phase::Aborted {
        return Err(Error::TargetAborted);
    }
    Ok(())
}

/// Where a fresh import starts: (start_revision, compact_revision).
pub async fn fresh_start(src: &Source, history_none: bool) -> Result<(i64, i64)> {
    if history_none {
        let r = src.current_revision().await?;
        return Ok((r, r));
    }
    let c = src.compact_revision(-1).await?;
    Ok((c.max(1), c))
}

async fn begin(
    src: &Source,
    tgt: &Target,
    info: &SourceInfo,
    history_none: bool,
    restart: bool,
) -> Result<MigrationState> {
    let (start_revision, compact_revision) = fresh_start(src, history_none).await?;
    tracing::info!(
        source_cluster_id = %format!("{:x}", info.cluster_id),
        source_version = %info.version,
        start_revision,
        compact_revision,
        history = if history_none { "none" } else { "full" },
        restart,
        "beginning the import"
    );
    tgt.begin(BeginRequest {
        source_cluster_id: info.cluster_id,
        source_version: info.version.clone(),
        start_revision,
        compact_revision,
        history_none,
        restart,
        unix_ms: unix_ms(),
    })
    .await
}

/// One kind of source, as the start loop drives it: etcd, or kine's database.
#[allow(async_fn_in_trait)]
pub trait Steps {
    /// Begins the import (or restarts it, the source having compacted past it).
    async fn begin(
        &self,
        tgt: &Target,
        history_none: bool,
        restart: bool,
    ) -> Result<MigrationState>;
    /// Copies the state at the start revision.
    async fn copy(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
        page_keys: i64,
    ) -> Result<CopyEnd>;
    /// Follows the source until the cutover (or something to re-read the target for).
    async fn follow(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
    ) -> Result<FollowEnd>;
}

/// An etcd source.
struct EtcdSteps<'a> {
    src: &'a Source,
    info: &'a SourceInfo,
}

impl Steps for EtcdSteps<'_> {
    async fn begin(
        &self,
        tgt: &Target,
        history_none: bool,
        restart: bool,
    ) -> Result<MigrationState> {
        begin(self.src, tgt, self.info, history_none, restart).await
    }

    async fn copy(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
        page_keys: i64,
    ) -> Result<CopyEnd> {
        copy(self.src, tgt, state, progress, page_keys).await
    }

    async fn follow(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
    ) -> Result<FollowEnd> {
        Follower::new(self.src, tgt, state)
            .await?
            .run(None, progress)
            .await
    }
}

/// Runs the migration from an etcd source until the target is cut over.
pub async fn run_start(
    src: &Source,
    info: &SourceInfo,
    tgt: &Target,
    history_none: bool,
    page_keys: i64,
) -> Result<MigrationState> {
    run_steps(&EtcdSteps { src, info }, tgt, history_none, page_keys).await
}

/// Runs the migration until the target is cut over: begins, copies,
/// follows, restarts when the source compacted past what the import needs,
/// and re-reads the target's state whenever it is not where a step thought.
pub async fn run_steps<S: Steps>(
    steps: &S,
    tgt: &Target,
    history_none: bool,
    page_keys: i64,
) -> Result<MigrationState> {
    let mut progress = Progress::new();
    let mut restarts = 0;
    let mut resyncs = 0;
    let mut last_position = (-1, -1, Vec::new());
    let mut history_none = history_none;
    loop {
        let state = tgt.state().await?;
        let position = (
            state.phase,
            state.target_revision,
            state.copy_resume_after.clone(),
        );
        if position != last_position {
            resyncs = 0;
            last_position = position;
        }
        if state.phase != Phase::None as i32 && state.history_none != history_none {
            tracing::warn!(
                history = if state.history_none { "none" } else { "full" },
                "the import in progress was begun with another --history; going on with it"
            );
            history_none = state.history_none;
        }
        let compacted = match Phase::try_from(state.phase) {
            Ok(Phase::None) => {
                steps.begin(tgt, history_none, false).await?;
                continue;
            }
            Ok(Phase::Copying) => match steps.copy(tgt, state, &mut progress, page_keys).await? {
                CopyEnd::Done(_) => continue,
                CopyEnd::Resync => None,
                CopyEnd::Compacted(c) => Some(c),
            },
            Ok(Phase::Following) => match steps.follow(tgt, state, &mut progress).await? {
                FollowEnd::CutOver(st) => {
                    progress.finish();
                    tracing::info!(
                        revision = st.target_revision,
                        "the target was cut over; the migration is complete"
                    );
                    return Ok(st);
                }
                FollowEnd::Reached(_) | FollowEnd::Resync => None,
                FollowEnd::Compacted(c) => Some(c),
            },
            Ok(Phase::CutOver) => {
                progress.finish();
                tracing::info!(
                    revision = state.target_revision,
                    "the target is cut over; the migration is complete"
                );
                return Ok(state);
            }
            Ok(Phase::Aborted) => return Err(Error::TargetAborted),
            Err(_) => {
                return Err(Error::Inconsistent(format!(
                    "the target is in an unknown migration phase {}",
                    state.phase
                )))
            }
        };
        match compacted {
            Some(c) => {
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return Err(Error::Compacted {
                        needed: tgt.state().await?.target_revision + 1,
                        compact_revision: c,
                    });
                }
                steps.begin(tgt, history_none, true).await?;
            }
            None => {
                resyncs += 1;
                if resyncs > MAX_RESYNCS {
                    return Err(Error::Inconsistent(format!(
                        "the target stays out of step (phase {}, revision {}) after {MAX_RESYNCS} re-reads of its state",
                        phase_name(last_position.0),
                        last_position.1
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(resyncs.min(20)))).await;
            }
        }
    }
}
