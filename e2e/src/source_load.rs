//! A writer that keeps changing a store the way kube-apiserver does, for as
//! long as a test lets it: creates and updates as Txns on `mod_revision`,
//! deletes guarded the same way, plain puts, multi-op Txns, and keys on
//! short leases that the server expires. It stops on request and is bounded
//! in operations and time whatever happens. Refused writes (a fenced source)
//! are counted, not fatal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

/// What the writer did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Writes the server acknowledged (a Txn counts once, whichever branch).
    pub acknowledged: u64,
    /// Writes the server refused or that failed in transport.
    pub failed: u64,
    /// The first few failures, for messages.
    pub failures: Vec<String>,
    /// The highest revision an acknowledged write reported.
    pub last_revision: i64,
}

/// A running writer.
pub struct SourceLoad {
    stop: Arc<AtomicBool>,
    task: JoinHandle<LoadReport>,
}

/// Limits and pace of a writer.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Keys live under this prefix.
    pub prefix: String,
    /// Distinct object names.
    pub objects: usize,
    /// Pause between writes (the writer is one client, one write at a time).
    pub pause: Duration,
    /// Stop after this many writes...
    pub max_ops: u64,
    /// ...or after this long.
    pub max_time: Duration,
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            prefix: "/registry/load/".to_string(),
            objects: 200,
            pause: Duration::from_millis(2),
            max_ops: 200_000,
            max_time: Duration::from_secs(120),
            seed: 1,
        }
    }
}

impl SourceLoad {
    /// Starts writing through `client`.
    pub fn start(client: Client, opts: LoadOptions) -> SourceLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(client, opts, stop.clone()));
        SourceLoad { stop, task }
    }

    /// Stops the writer and returns what it did.
    pub async fn stop(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

async fn run(mut client: Client, opts: LoadOptions, stop: Arc<AtomicBool>) -> LoadReport {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut report = LoadReport::default();
    let started = Instant::now();
    let mut lease: Option<(i64, Instant)> = None;
    for op in 0..opts.max_ops {
        if stop.load(Ordering::SeqCst) || started.elapsed() >= opts.max_time {
            break;
        }
        let name = format!("{}{:04}", opts.prefix, rng.random_range(0..opts.objects));
        let value = format!("v{op}-{}", "x".repeat(rng.random_range(0..200)));
        let choice = rng.random_range(0..100);
        let result: Result<i64, etcd_client::Error> = async {
            match choice {
                // create: only if absent (kube-apiserver's Create)
                0..=24 => {
                    let t = Txn::new()
                        .when([Compare::create_revision(name.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(name.as_str(), value.as_str(), None)])
                        .or_else([TxnOp::get(name.as_str(), None)]);
                    Ok(client.txn(t).await?.header().map_or(0, |h| h.revision()))
                }
                // update on the mod_revision just read (GuaranteedUpdate)
                25..=54 => {
                    let got = client.get(name.as_str(), None).await?;
                    let m = got.kvs().first().map_or(0, |kv| kv.mod_revision());
                    let t = Txn::new()
                        .when([Compare::mod_revision(name.as_str(), CompareOp::Equal, m)])
                        .and_then([TxnOp::put(name.as_str(), value.as_str(), None)])
                        .or_else([TxnOp::get(name.as_str(), None)]);
                    Ok(client.txn(t).await?.header().map_or(0, |h| h.revision()))
                }
                // delete on the mod_revision just read
                55..=69 => {
                    let got = client.get(name.as_str(), None).await?;
                    let m = got.kvs().first().map_or(0, |kv| kv.mod_revision());
                    let t = Txn::new()
                        .when([Compare::mod_revision(name.as_str(), CompareOp::Equal, m)])
                        .and_then([TxnOp::delete(name.as_str(), None)])
                        .or_else([TxnOp::get(name.as_str(), None)]);
                    Ok(client.txn(t).await?.header().map_or(0, |h| h.revision()))
                }
                // a multi-op Txn: two puts and a delete in one revision
                70..=79 => {
                    let other = format!("{}{:04}", opts.prefix, rng.random_range(0..opts.objects));
                    let third = format!("{}{:04}", opts.prefix, rng.random_range(0..opts.objects));
                    let t = Txn::new().and_then([
                        TxnOp::put(name.as_str(), value.as_str(), None),
                        TxnOp::put(format!("{other}/status"), value.as_str(), None),
                        TxnOp::delete(third.as_str(), None),
                    ]);
                    Ok(client.txn(t).await?.header().map_or(0, |h| h.revision()))
                }
                // a key on a short lease (events, kube's leases), which the
                // server expires on its own
                80..=89 => {
                    let id = match lease {
                        Some((id, at)) if at.elapsed() < Duration::from_millis(500) => id,
                        _ => {
                            let id = client.lease_grant(2, None).await?.id();
                            lease = Some((id, Instant::now()));
                            id
                        }
                    };
                    let key = format!("{}events/{op}", opts.prefix);
                    let r = client
                        .put(key, value.as_str(), Some(PutOptions::new().with_lease(id)))
                        .await?;
                    Ok(r.header().map_or(0, |h| h.revision()))
                }
                // a plain put
                _ => Ok(client
                    .put(name.as_str(), value.as_str(), None)
                    .await?
                    .header()
                    .map_or(0, |h| h.revision())),
            }
        }
        .await;
        match result {
            Ok(rev) => {
                report.acknowledged += 1;
                report.last_revision = report.last_revision.max(rev);
            }
            Err(e) => {
                report.failed += 1;
                if report.failures.len() < 5 {
                    report.failures.push(e.to_string());
                }
                // A fenced or unreachable server: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
    }
    report
}

/// Fills a store with `keys` keys of `value_size` bytes under
/// `/registry/bench/` (Txns of 100 puts from 16 clients), for benchmarks;
/// returns the revision after the last.
pub async fn fill_keys(client: &Client, keys: usize, value_size: usize) -> Result<i64> {
    const PER_TXN: usize = 100;
    const WORKERS: usize = 16;
    let value = vec![b'v'; value_size];
    let txns = keys.div_ceil(PER_TXN);
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut c = client.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for t in (w..txns).step_by(WORKERS) {
                let ops: Vec<TxnOp> = (t * PER_TXN..((t + 1) * PER_TXN).min(keys))
                    .map(|i| TxnOp::put(format!("/registry/bench/{i:08}"), value.clone(), None))
                    .collect();
                c.txn(Txn::new().and_then(ops)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut c = client.clone();
    let resp = c.get("x", None).await?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}
