//! `cairn migrate cutover` from kine. Kine has no fence the migrator can
//! raise (no alarms): the documented fence is stopping k3s on every server
//! (kine runs inside it), which stops the API server and kine's own
//! writers (its TTL loop, fill records). The cutover checks that the table
//! stays still, brings the target to kine's last revision, verifies key by
//! key, and switches; afterwards it reports any row written after that
//! revision, which the target does not have.

use std::time::{Duration, Instant};

use cairn_proto::migrate::MigrationState;

use crate::cutover::{bring_to_with, ready_for_cutover, VerifyMode};
use crate::error::{Error, Result};
use crate::kine::db::KineDb;
use crate::kine::follow::KineFollower;
use crate::kine::row::{Change, Row};
use crate::kine::verify::verify;
use crate::progress::Progress;
use crate::target::Target;
use crate::verify::{show_key, VerifyReport};

/// What a completed cutover did.
#[derive(Debug)]
pub struct KineCutoverDone {
    /// The revision the target took over at: kine's last.
    pub revision: i64,
    /// From the still check's end to the switch.
    pub took: Duration,
    /// The verification at `revision`.
    pub verified: VerifyReport,
}

/// The line a row written after the cutover is reported with.
pub fn late_row_line(row: &Row) -> String {
    let what = match row.change() {
        Change::Put => "PUT",
        Change::Delete => "DELETE",
        Change::Nothing => "no key change (kine's bookkeeping)",
    };
    format!(
        "kine took a write after the cutover: {what} {} at revision {} (the target does not have it)",
        show_key(&row.name),
        row.id
    )
}

/// Runs the cutover: `still` is how long kine's table must stay unchanged
/// before it (k3s stopped).
pub async fn run_cutover(
    db: &KineDb,
    tgt: &Target,
    timeout: Duration,
    mode: VerifyMode,
    still: Duration,
) -> Result<KineCutoverDone> {
    ready_for_cutover(tgt, "kine").await?;
    let before = db.heads().await?;
    tokio::time::sleep(still).await;
    let r = db.heads().await?.current;
    if r != before.current {
        return Err(Error::BadInput(format!(
            "kine is still being written: its revision moved from {} to {r} within {:.1}s. Stop k3s on every server first \
             (`systemctl stop k3s`; kine runs inside it), then run the cutover again",
            before.current,
            still.as_secs_f64()
        )));
    }
    let started = Instant::now();
    let deadline = started + timeout;
    tracing::info!(
        revision = r,
        "kine stayed still; bringing the target to its last revision"
    );
    let caught_up = bring_to_with(tgt, r, deadline, |st, until| async move {
        let mut progress = Progress::hidden();
        KineFollower::new(db, tgt, st)
            .await?
            .run(Some(until), &mut progress)
            .await
    })
    .await;
    let st: MigrationState = match caught_up {
        Err(Error::Timeout(what)) => return Err(hole_or(db, tgt, what).await),
        other => other?,
    };
    if st.target_revision != r {
        return Err(Error::Inconsistent(format!(
            "the target is at revision {}, past kine's last revision {r}",
            st.target_revision
        )));
    }
    tracing::info!(
        revision = r,
        took_ms = started.elapsed().as_millis() as u64,
        "the target holds kine's last revision; verifying"
    );
    let verify_started = Instant::now();
    let verified = match mode {
        VerifyMode::None => VerifyReport {
            revision: r,
            hash_line: format!("hashkv at revision {r}: not compared (--verify none)"),
            ..Default::default()
        },
        VerifyMode::Hash | VerifyMode::Full => verify(db, tgt, r).await?,
    };
    if !verified.ok() {
        for l in verified.lines() {
            eprintln!("{l}");
        }
        return Err(Error::Inconsistent(format!(
            "verification failed at revision {r}: {} differences; the target was not switched",
            verified.differences
        )));
    }
    tracing::info!(
        revision = r,
        took_ms = verify_started.elapsed().as_millis() as u64,
        keys = verified.source_keys,
        "verified"
    );
    let now = db.heads().await?.current;
    if now != r {
        return Err(Error::BadInput(format!(
            "kine took writes during the cutover (revision {r} → {now}); the target was not switched. Stop k3s on every server, then run the cutover again"
        )));
    }
    tgt.cutover(r).await?;
    Ok(KineCutoverDone {
        revision: r,
        took: started.elapsed(),
        verified,
    })
}

/// Why the target did not reach kine's last revision: a hole in kine's ids
/// that a transaction still open may fill (the follower moves past a hole
/// only once none can), or the plain timeout.
async fn hole_or(db: &KineDb, tgt: &Target, timeout: String) -> Error {
    let at = match tgt.state().await {
        Ok(st) => st.target_revision,
        Err(e) => return e,
    };
    match db.rows_after(at, 1).await {
        Ok(page) if page.rows.first().is_some_and(|r| r.id > at + 1) => Error::BadInput(format!(
            "kine's ids have a hole at revision {}: no row yet, and a transaction that may still write it is open \
             on {}. Is k3s stopped on every server? Run the cutover again once it is",
            at + 1,
            db.name()
        )),
        Ok(_) => Error::Timeout(timeout),
        Err(e) => e,
    }
}

/// Polls kine after `revision` for `window`; one line per row found.
pub async fn rows_after_cutover(
    db: &KineDb,
    revision: i64,
    window: Duration,
) -> Result<Vec<String>> {
    let end = Instant::now() + window;
    let mut after = revision;
    let mut lines = Vec::new();
    for _ in 0..u64::MAX {
        let page = db.rows_after(after, 1000).await?;
        for row in &page.rows {
            after = after.max(row.id);
            lines.push(late_row_line(row));
        }
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    Ok(lines)
}
