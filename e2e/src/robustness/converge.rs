//! After the faults heal, every member converges: each one reaches the
//! final revision and holds, at it, the same key-values and the same HashKV
//! as the others, and the key-values the reference history implies.

use std::time::Duration;

use anyhow::Result;

use crate::cluster::Cluster;
use crate::compare::{hash_at, kvs_at};
use crate::dump::Kv;
use crate::robustness::history::State;
use crate::wait::{wait_until, Poll};

/// How long a member may take to apply up to the final revision.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The anomalies: members that did not reach `rev`, or differ at it from
/// each other or from `expected`.
pub async fn check_converged(
    cluster: &Cluster,
    members: &[usize],
    rev: i64,
    expected: &State,
) -> Result<Vec<String>> {
    let want: Vec<Kv> = expected
        .values()
        .map(|k| Kv {
            key: k.key.clone(),
            value: k.value.clone(),
            create_revision: k.create,
            mod_revision: k.modr,
            version: k.version,
            lease: k.lease,
        })
        .collect();
    let mut bad = Vec::new();
    let mut first: Option<(usize, (u32, i64))> = None;
    for &i in members {
        let mut c = cluster.client(i).await?;
        let caught_up = wait_until(
            &format!("m{i} applies up to revision {rev}"),
            CATCH_UP,
            Duration::from_millis(50),
            || {
                let mut c = c.clone();
                async move {
                    let opts = etcd_client::GetOptions::new().with_serializable();
                    match c.get("health", Some(opts)).await {
                        Ok(r) if r.header().map_or(0, |h| h.revision()) >= rev => {
                            Ok(Poll::Ready(()))
                        }
                        Ok(r) => Ok(Poll::NotYet(format!("at {:?}", r.header()))),
                        Err(e) => Ok(Poll::NotYet(e.to_string())),
                    }
                }
            },
        )
        .await;
        if let Err(e) = caught_up {
            bad.push(format!("{e:#}"));
            continue;
        }
        let got = match kvs_at(&mut c, rev).await {
            Ok(got) => got,
            Err(e) => {
                let compacted = hash_at(&mut c, 0).await.map(|h| h.1);
                bad.push(format!(
                    "m{i} cannot read revision {rev} (its compact revision: {compacted:?}): {e:#}"
                ));
                continue;
            }
        };
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            bad.push(format!(
                "m{i} at revision {rev}: {} keys, the reference history has {}; first difference at #{at}: {:?} vs {:?}",
                got.len(),
                want.len(),
                got.get(at),
                want.get(at)
            ));
        }
        let hash = match hash_at(&mut c, rev).await {
            Ok(h) => h,
            Err(e) => {
                bad.push(format!("m{i}: {e:#}"));
                continue;
            }
        };
        match first {
            None => first = Some((i, hash)),
            Some((j, h)) if h != hash => bad.push(format!(
                "HashKV at revision {rev} (hash, compact revision): m{j} {h:?}, m{i} {hash:?}"
            )),
            Some(_) => {}
        }
    }
    Ok(bad)
}
