//! `cairn migrate start --from sqlite://…|postgres://…`: copy, then follow,
//! until the cutover completes; resumable from wherever the target stands,
//! as for an etcd source.

use std::time::Duration;

use cairn_proto::migrate::{BeginRequest, MigrationState, Phase};

use crate::copy::CopyEnd;
use crate::error::{Error, Result};
use crate::follow::FollowEnd;
use crate::kine::copy::copy;
use crate::kine::db::KineDb;
use crate::kine::follow::KineFollower;
use crate::progress::Progress;
use crate::start::{run_steps, Steps};
use crate::target::{unix_ms, Target};

/// Checks, before anything is written, that the target can take this database.
pub fn check_target_for(state: &MigrationState, db: &KineDb, target_urls: &str) -> Result<()> {
    let phase = Phase::try_from(state.phase).unwrap_or(Phase::None);
    if phase != Phase::None && state.source_cluster_id != db.source_id() {
        return Err(Error::BadInput(format!(
            "the target at {target_urls} is importing from another source ({} {:x}), not from {}",
            state.source_version,
            state.source_cluster_id,
            db.name()
        )));
    }
    if phase == Phase::Aborted {
        return Err(Error::TargetAborted);
    }
    Ok(())
}

/// Where a fresh import starts: (start_revision, compact_revision). kine's
/// compact revision becomes the target's; a kine that never compacted
/// keeps every revision from the first.
pub async fn fresh_start(db: &KineDb, history_none: bool) -> Result<(i64, i64)> {
    let heads = db.heads().await?;
    if history_none {
        let r = heads.current.max(1);
        return Ok((r, r));
    }
    if heads.compact > 0 {
        Ok((heads.compact, heads.compact))
    } else {
        Ok((1, -1))
    }
}

async fn begin(
    db: &KineDb,
    tgt: &Target,
    history_none: bool,
    restart: bool,
) -> Result<MigrationState> {
    let (start_revision, compact_revision) = fresh_start(db, history_none).await?;
    // A row below the start revision may still be uncommitted (PostgreSQL
    // hands out ids before commit): the copy waits until it committed or
    // never will.
    db.settle(Duration::from_secs(60)).await?;
    tracing::info!(
        source = %db.name(),
        source_version = %db.version(),
        start_revision,
        compact_revision,
        history = if history_none { "none" } else { "full" },
        restart,
        "beginning the import from kine"
    );
    tgt.begin(BeginRequest {
        source_cluster_id: db.source_id(),
        source_version: db.version().to_string(),
        start_revision,
        compact_revision,
        history_none,
        restart,
        unix_ms: unix_ms(),
    })
    .await
}

/// A kine database as the start loop's source.
struct KineSteps<'a> {
    db: &'a KineDb,
}

impl Steps for KineSteps<'_> {
    async fn begin(
        &self,
        tgt: &Target,
        history_none: bool,
        restart: bool,
    ) -> Result<MigrationState> {
        begin(self.db, tgt, history_none, restart).await
    }

    async fn copy(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
        page_keys: i64,
    ) -> Result<CopyEnd> {
        copy(self.db, tgt, state, progress, page_keys).await
    }

    async fn follow(
        &self,
        tgt: &Target,
        state: MigrationState,
        progress: &mut Progress,
    ) -> Result<FollowEnd> {
        KineFollower::new(self.db, tgt, state)
            .await?
            .run(None, progress)
            .await
    }
}

/// Runs the migration from kine until the target is cut over.
pub async fn run_start(
    db: &KineDb,
    tgt: &Target,
    history_none: bool,
    page_keys: i64,
) -> Result<MigrationState> {
    run_steps(&KineSteps { db }, tgt, history_none, page_keys).await
}
