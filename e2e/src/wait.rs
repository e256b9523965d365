//! Waiting on conditions with deadlines (never sleep-and-hope).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What one poll of a condition found.
pub enum Poll<T> {
    /// The condition holds; stop waiting.
    Ready(T),
    /// Not yet; the string says why (reported if the deadline passes).
    NotYet(String),
}

/// Polls `probe` every `interval` until it returns `Poll::Ready(v)` (-> `Ok(v)`),
/// returns `Err` (-> that error, at once), or `timeout` elapses (-> an error
/// naming `what` and the last "not yet" reason).
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let start = Instant::now();
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let last = match probe().await? {
            Poll::Ready(v) => return Ok(v),
            Poll::NotYet(why) => why,
        };
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:?} ({attempts} attempts) waiting for {what}; last state: {last}",
                start.elapsed()
            );
        }
        tokio::time::sleep(interval).await;
    }
}
