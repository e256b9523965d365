//! Leases at the end of a run: every key under a short lease (nobody keeps
//! those alive) is gone once its lease has had time to expire, whatever the
//! faults did to the lessor; every acknowledged key under the long lease is
//! still there, attached to it.

use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, GetOptions};

use crate::robustness::history::State;
use crate::robustness::load::LEASES;
use crate::wait::{wait_until, Poll};

/// How long the short leases may take to expire after the faults heal: a
/// new leader extends every lease by its TTL, and revokes go through the log.
pub const EXPIRY: Duration = Duration::from_secs(30);

/// Waits until no key under a short lease is left; the anomaly if some stay.
pub async fn wait_short_leases_expired(client: &mut Client) -> Result<Option<String>> {
    let waited = wait_until(
        "every key under a short lease expired",
        EXPIRY,
        Duration::from_millis(100),
        || {
            let mut client = client.clone();
            async move {
                let opts = GetOptions::new().with_prefix().with_keys_only();
                match client.get(LEASES, Some(opts)).await {
                    Ok(r) if r.kvs().is_empty() => Ok(Poll::Ready(())),
                    Ok(r) => Ok(Poll::NotYet(format!(
                        "{} left, e.g. {:?} (lease {})",
                        r.kvs().len(),
                        String::from_utf8_lossy(r.kvs()[0].key()),
                        r.kvs()[0].lease()
                    ))),
                    Err(e) => Ok(Poll::NotYet(e.to_string())),
                }
            }
        },
    )
    .await;
    Ok(waited.err().map(|e| format!("{e:#}")))
}

/// The anomalies: acknowledged long-lease keys missing from the final
/// state, or attached to another lease.
pub fn check_live_keys(end: &State, live: &[(Vec<u8>, i64)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (key, lease) in live {
        match end.get(key) {
            Some(kv) if kv.lease == *lease => {}
            other => bad.push(format!(
                "{:?}, written under the live lease {lease:x}, is {other:?} at the end",
                String::from_utf8_lossy(key)
            )),
        }
    }
    bad
}
