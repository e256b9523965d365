//! Crash recovery: kill -9 Cairn in the middle of a concurrent write load,
//! restart it on the same data dir, and check durability and revision
//! integrity. Three kill cycles in one test, on one data dir.
//!
//! The load: 16 tasks put unique keys (each key written once, with a value
//! derived from the key), recording every acknowledged (key, value, revision).
//! The kill happens once a cycle-specific number of acks has been collected
//! (a condition, not a sleep); the stop flag is raised immediately before the
//! SIGKILL so up to 16 requests are in flight at that moment.
//!
//! After each restart:
//! * every acknowledged write is present with its value, and create/mod
//!   revision equal to the acknowledged header revision (version 1);
//! * every surviving key holds exactly the value that was written for it
//!   (unacknowledged writes may or may not survive, but not corrupted);
//! * the store is all ours, and its revisions are exactly 2..=current, each
//!   used by exactly one key: no gap and no reuse (every write is a plain put
//!   of a fresh key, so each has its own revision);
//! * header.revision >= the highest acknowledged revision;
//! * the next put gets exactly header.revision + 1.
//!
//! `crash_recovery::etcd` (ignored) runs the same against etcd as a harness
//! self-check.
//!
//! And a clean stop: SIGTERM while a client holds a watch and a lease
//! keep-alive stream open (as kube-apiserver always does) must stop the
//! member within its request timeout, as it stops etcd, and lose nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::dump::dump;
use cairn_e2e::wait::{wait_until, Poll};
use cairn_e2e::{connect_with, ClientTimeouts, Kind, Member};
use etcd_client::WatchOptions;

const TASKS: usize = 16;
/// Acks to collect before the kill, per cycle.
const KILL_AFTER_ACKS: [usize; 3] = [300, 700, 1200];
/// Upper bound of puts per task and cycle (the kill comes much earlier).
const MAX_PUTS_PER_TASK: usize = 20_000;

#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: Vec<u8>,
    revision: i64,
}

fn value_for(key: &str) -> Vec<u8> {
    // Deterministic, key-specific, a bit over 100 bytes.
    format!("{key}|{key}|{key}|{}", key.len()).into_bytes()
}

async fn load_and_kill(member: &mut Member, cycle: usize) -> Result<(Vec<Ack>, usize)> {
    let client = connect_with(
        &member.endpoint(),
        ClientTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
        },
    )
    .await?;
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let mut kv = client.kv_client();
        let (acks, count, stop) = (acks.clone(), count.clone(), stop.clone());
        tasks.spawn(async move {
            let mut errors = 0usize;
            for i in 0..MAX_PUTS_PER_TASK {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("crash/c{cycle}/t{t:02}/{i:06}");
                let value = value_for(&key);
                match kv.put(key.clone(), value.clone(), None).await {
                    Ok(resp) => {
                        let revision = resp.header().map(|h| h.revision()).unwrap_or(-1);
                        acks.lock().unwrap().push(Ack {
                            key,
                            value,
                            revision,
                        });
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        // Expected only once the member is killed.
                        errors += 1;
                        break;
                    }
                }
            }
            errors
        });
    }
    let target = KILL_AFTER_ACKS[cycle];
    let started = Instant::now();
    let waited = wait_until(
        &format!("{target} acknowledged puts in cycle {cycle}"),
        Duration::from_secs(90),
        Duration::from_millis(2),
        || {
            let n = count.load(Ordering::SeqCst);
            async move {
                Ok(if n >= target {
                    Poll::Ready(n)
                } else {
                    Poll::NotYet(format!("{n} acks"))
                })
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    member.kill9()?;
    let acks_at_kill = count.load(Ordering::SeqCst);
    if let Err(e) = waited {
        bail!("{e:#}\n{}", member.describe());
    }
    let mut errors_after_kill = 0;
    // Every task ends: it sees `stop` or its in-flight put fails (the server is
    // gone); the client's 10s request timeout bounds the rest.
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = tasks.join_next().await {
            errors_after_kill += r.context("load task panicked")?;
        }
        anyhow::Ok(())
    })
    .await;
    joined.context("load tasks did not finish within 30s of the kill")??;
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "cycle {cycle}: killed after {acks_at_kill} acks ({:.1?} of load); {} acks in total, \
         {errors_after_kill} puts failed by the kill",
        started.elapsed(),
        acks.len()
    );
    Ok((acks, errors_after_kill))
}

async fn verify(member: &Member, all_acks: &[Ack], cycle: usize) -> Result<()> {
    let mut client = member.client().await?;
    let d = dump(&mut client).await?;
    let by_key: HashMap<&[u8], &cairn_e2e::dump::Kv> =
        d.kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();

    // 1. Every acknowledged write survived, exactly.
    let mut lost = Vec::new();
    for a in all_acks {
        match by_key.get(a.key.as_bytes()) {
            None => lost.push(format!(
                "{} (acked at revision {}) is missing",
                a.key, a.revision
            )),
            Some(kv) => {
                if kv.value != a.value
                    || kv.mod_revision != a.revision
                    || kv.create_revision != a.revision
                    || kv.version != 1
                {
                    lost.push(format!(
                        "{} acked at revision {} came back as {kv:?}",
                        a.key, a.revision
                    ));
                }
            }
        }
    }
    ensure!(
        lost.is_empty(),
        "cycle {cycle}: {} of {} acknowledged writes lost or changed after kill -9 + restart, e.g.:\n{}",
        lost.len(),
        all_acks.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );

    // 2. Every surviving key is one of ours with the value written for it.
    for kv in &d.kvs {
        let key = std::str::from_utf8(&kv.key)
            .with_context(|| format!("cycle {cycle}: unexpected non-UTF-8 key {kv:?}"))?;
        ensure!(
            key.starts_with("crash/"),
            "cycle {cycle}: unexpected key {kv:?}"
        );
        ensure!(
            kv.value == value_for(key) && kv.version == 1 && kv.create_revision == kv.mod_revision,
            "cycle {cycle}: corrupted key after restart: {kv:?}"
        );
    }

    // 3. Revisions 2..=current, each used by exactly one key.
    let mut revs: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    for kv in &d.kvs {
        if let Some(other) = revs.insert(kv.mod_revision, kv.key.clone()) {
            bail!(
                "cycle {cycle}: revision {} reused by {:?} and {:?}",
                kv.mod_revision,
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(&kv.key)
            );
        }
    }
    let max_acked = all_acks.iter().map(|a| a.revision).max().unwrap_or(1);
    ensure!(
        d.revision >= max_acked,
        "cycle {cycle}: header.revision {} after restart is below the highest acknowledged revision {max_acked}",
        d.revision
    );
    let gaps: Vec<i64> = (2..=d.revision)
        .filter(|r| !revs.contains_key(r))
        .take(20)
        .collect();
    ensure!(
        gaps.is_empty(),
        "cycle {cycle}: header.revision is {} but no key has revision(s) {gaps:?} \
         (revisions must be contiguous: every write here is a put of a fresh key)",
        d.revision
    );
    if let Some((&top, _)) = revs.iter().next_back() {
        ensure!(
            top <= d.revision,
            "cycle {cycle}: a key has mod_revision {top} above header.revision {}",
            d.revision
        );
    }

    // 4. The next write gets exactly current + 1.
    let probe = format!("crash/probe/{cycle}");
    let resp = client.put(probe.clone(), value_for(&probe), None).await?;
    let got = resp.header().context("put without header")?.revision();
    ensure!(
        got == d.revision + 1,
        "cycle {cycle}: first put after restart got revision {got}, expected {}",
        d.revision + 1
    );
    eprintln!(
        "cycle {cycle}: verified {} acked writes, {} keys, revisions 2..={} contiguous",
        all_acks.len(),
        d.kvs.len(),
        d.revision
    );
    Ok(())
}

async fn crash_cycles(kind: Kind) -> Result<()> {
    let mut member = Member::start(kind).await?;
    let mut all_acks: Vec<Ack> = Vec::new();
    for cycle in 0..KILL_AFTER_ACKS.len() {
        let (acks, _) = load_and_kill(&mut member, cycle).await?;
        all_acks.extend(acks);
        let t = Instant::now();
        member
            .restart()
            .await
            .with_context(|| format!("restarting {kind} after kill -9 (cycle {cycle})"))?;
        eprintln!(
            "cycle {cycle}: {kind} ready again {:.1?} after restart",
            t.elapsed()
        );
        verify(&member, &all_acks, cycle)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", member.describe()))?;
        // The probe put of this cycle is part of the store from now on.
        let probe = format!("crash/probe/{cycle}");
        let mut c = member.client().await?;
        let r = c.get(probe.clone(), None).await?;
        let kv = r.kvs().first().context("probe key vanished")?;
        all_acks.push(Ack {
            key: probe.clone(),
            value: value_for(&probe),
            revision: kv.mod_revision(),
        });
    }
    Ok(())
}

server_test!(
    /// The etcd run is the harness self-check: etcd must pass the same test.
    crash_recovery,
    crash_cycles,
    ignore_etcd
);

/// SIGTERM with a watch and a keep-alive stream open: the member exits
/// cleanly well before a supervisor would SIGKILL it, and every
/// acknowledged write is there after a restart.
async fn clean_stop(kind: Kind) -> Result<()> {
    let mut member = Member::start(kind).await?;
    let mut client = member.client().await?;
    let (_watcher, mut events) = client
        .watch("stop/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let lease = client.lease_grant(60, None).await?;
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease.id()).await?;
    let put = client.put("stop/k", "v", None).await?;
    let rev = put.header().context("put without header")?.revision();
    // Both streams are live on the server: each has answered.
    let seen = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .context("no watch event within 10 s")??
        .context("watch stream ended")?;
    ensure!(
        !seen.events().is_empty() || seen.created(),
        "unexpected {seen:?}"
    );
    keeper.keep_alive().await?;
    tokio::time::timeout(Duration::from_secs(10), renewals.message())
        .await
        .context("no keep-alive answer within 10 s")??
        .context("keep-alive stream ended")?;
    let t = Instant::now();
    let status = member.terminate(Duration::from_secs(20)).await?;
    let took = t.elapsed();
    eprintln!("{kind} stopped {took:.1?} after SIGTERM: {status}");
    // Requests under way may take up to the request timeout (7 s); open
    // streams must not hold the stop up for that long.
    ensure!(
        took < Duration::from_secs(5),
        "the stop waited on open streams ({took:?})"
    );
    use std::os::unix::process::ExitStatusExt;
    // etcd re-raises the signal after its own clean-up; Cairn returns 0.
    let clean = status.success() || (kind == Kind::Etcd && status.signal() == Some(15));
    ensure!(
        clean,
        "{kind} exited with {status}:\n{}",
        member.log_tail(4000)
    );
    if kind == Kind::Cairn {
        // The watch was ended by the server, with etcd's error, before the
        // process went away: clients move to another member on it.
        let ended = events.message().await;
        let why = ended.as_ref().err().and_then(cairn_e2e::grpc_error);
        ensure!(
            why.as_ref().is_some_and(
                |g| g.code == "Unavailable" && g.message == "etcdserver: server stopped"
            ),
            "the watch ended with {ended:?}"
        );
    }
    drop((keeper, renewals, events, client));
    member.restart().await?;
    let got = member.client().await?.get("stop/k", None).await?;
    let kv = got.kvs().first().context("acknowledged put lost")?;
    ensure!(kv.value() == b"v" && kv.mod_revision() == rev, "got {kv:?}");
    Ok(())
}

server_test!(
    /// The etcd run is the harness self-check: etcd must pass the same test.
    clean_stop_with_open_streams,
    clean_stop,
    ignore_etcd
);
