//! Helpers shared by several modules of the suite (harness code that is not
//! specific to one scenario lives in the `cairn_e2e` library).

use anyhow::{Context, Result};
use cairn_e2e::{Kind, Member, MemberOptions};
use cairn_proto::etcdserverpb as pb;

/// Starts etcd and Cairn with the same extra arguments for etcd (`etcd_args`)
/// and Cairn (`cairn_args`), concurrently.
pub async fn start_pair(
    etcd_args: &[&str],
    cairn_args: &[&str],
    max_request_bytes: Option<u64>,
) -> Result<(Member, Member)> {
    let opts = |args: &[&str]| MemberOptions {
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        max_request_bytes,
        ..Default::default()
    };
    let (e, c) = tokio::join!(
        Member::start_with(Kind::Etcd, opts(etcd_args)),
        Member::start_with(Kind::Cairn, opts(cairn_args))
    );
    Ok((e.context("starting etcd")?, c.context("starting cairn")?))
}

/// The etcd 3.5 flag and the Cairn flag for the progress-notify interval.
pub fn progress_interval_args(interval: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            "--experimental-watch-progress-notify-interval".to_string(),
            interval.to_string(),
        ],
        vec![
            "--watch-progress-notify-interval".to_string(),
            interval.to_string(),
        ],
    )
}

/// The revision of a response header (-1 when the header is missing).
pub fn rev_of(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(-1)
}

/// Keeps the members' dirs (data and log) when a test fails.
pub fn keep_on_err<T>(r: Result<T>, members: &mut [&mut Member]) -> Result<T> {
    if r.is_err() {
        for m in members.iter_mut() {
            m.keep_on_drop();
        }
    }
    r
}
