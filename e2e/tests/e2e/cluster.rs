//! Replicated Cairn: 3-member clusters of real processes, with kill -9,
//! partitions, membership changes, snapshot catch-up, and a linearizability
//! check of a recorded client history across a leader failure.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_e2e::cluster::{Cluster, ELECTION_MS};
use cairn_e2e::dump::dump;
use cairn_e2e::failpoints;
use cairn_e2e::grpc::{expect_grpc_error, grpc_error, GrpcError};
use cairn_e2e::linearizability::{check, CheckResult, Input, Output, Recorder};
use cairn_e2e::wait::{wait_until, Poll};
use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};

/// Every key, revision and version, as one member sees it (serializable),
/// with the HashKV of its whole history.
async fn state_of(c: &Cluster, i: usize) -> Result<String> {
    let mut client = c.client(i).await?;
    let d = dump(&mut client).await?;
    // The live keys, and etcd's checksum of the whole history behind them.
    let h = client.maintenance_client().hash_kv(0).await?;
    Ok(format!(
        "{:?} hashkv {} compact {}",
        d.kvs,
        h.hash(),
        h.compact_version()
    ))
}

/// Waits until every running member holds identical state.
async fn converged(c: &Cluster) -> Result<()> {
    let running = c.running();
    wait_until(
        "members converge",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut first: Option<String> = None;
            for &i in &running {
                let s = match state_of(c, i).await {
                    Ok(s) => s,
                    Err(e) => return Ok(Poll::NotYet(format!("m{i}: {e:#}"))),
                };
                match &first {
                    None => first = Some(s),
                    Some(f) if *f != s => return Ok(Poll::NotYet(format!("m{i} differs"))),
                    _ => {}
                }
            }
            Ok(Poll::Ready(()))
        },
    )
    .await
}

/// Every member's Raft term, as its Status reports it.
async fn terms(c: &Cluster, members: &[usize]) -> Result<Vec<u64>> {
    let mut terms = Vec::new();
    for &i in members {
        terms.push(c.client(i).await?.status().await?.raft_term());
    }
    Ok(terms)
}

/// Waits until `count` (bumped by client tasks) reaches `at_least`.
async fn wait_count(what: &str, count: &AtomicUsize, at_least: usize) -> Result<()> {
    wait_until(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let n = count.load(Ordering::Relaxed);
            Ok(if n >= at_least {
                Poll::Ready(())
            } else {
                Poll::NotYet(format!("{n} of {at_least}"))
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_member_are_seen_by_all() -> Result<()> {
    let c = Cluster::start(3, &[]).await?;
    // A watcher on every member, from the start.
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut client = c.client(i).await?;
        let (_w, stream) = client
            .watch(
                "k/",
                Some(WatchOptions::new().with_prefix().with_start_revision(1)),
            )
            .await?;
        watchers.push((client, _w, stream));
    }
    for n in 0..30 {
        let mut client = c.client(n % 3).await?;
        let resp = client.put(format!("k/{n}"), format!("v{n}"), None).await?;
        // Read-your-write on another member: linearizable reads use ReadIndex.
        let mut other = c.client((n + 1) % 3).await?;
        let got = other.get(format!("k/{n}"), None).await?;
        assert_eq!(got.kvs()[0].value(), format!("v{n}").as_bytes());
        let read_rev = got.header().context("read without header")?.revision();
        let write_rev = resp.header().context("put without header")?.revision();
        assert!(
            read_rev >= write_rev,
            "read at {read_rev} before write {write_rev}"
        );
    }
    converged(&c).await?;
    // Every member's watch stream carries the same revisions, in order.
    let mut streams = Vec::new();
    for (_, _, mut stream) in watchers {
        let mut revs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while revs.len() < 30 && Instant::now() < deadline {
            if let Ok(Some(resp)) =
                tokio::time::timeout(Duration::from_secs(5), stream.message()).await?
            {
                revs.extend(
                    resp.events()
                        .iter()
                        .filter_map(|e| e.kv().map(|kv| kv.mod_revision())),
                );
            }
        }
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "revisions go backwards: {revs:?}"
        );
        streams.push(revs);
    }
    assert_eq!(streams[0].len(), 30);
    assert!(streams.iter().all(|s| *s == streams[0]));
    // Replication and forwarded writes went over streams: no member fell
    // back to one call at a time.
    assert!(c.rpcs_started("grpc_method=\"StreamAppend\"").await? > 0);
    assert_eq!(c.rpcs_started("grpc_method=\"AppendEntries\"").await?, 0);
    assert!(c.rpcs_started("grpc_method=\"ProposeStream\"").await? > 0);
    assert_eq!(c.rpcs_started("grpc_method=\"ProposeMany\"").await?, 0);
    Ok(())
}

/// Members of an earlier version serve neither StreamAppend nor ProposeStream;
/// the leader falls back to one AppendEntries call at a time, followers to
/// ProposeMany calls, and the cluster works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_falls_back_to_append_entries_for_older_members() -> Result<()> {
    let c = Cluster::start_with_failpoints(3, &[failpoints::PEER_REFUSE_STREAMING]).await?;
    for n in 0..20 {
        let mut client = c.client(n % 3).await?;
        client.put(format!("k/{n}"), format!("v{n}"), None).await?;
    }
    converged(&c).await?;
    let fell_back = c.members.iter().any(|m| {
        std::fs::read_to_string(m.log_path())
            .is_ok_and(|log| log.contains("peer does not stream replication"))
    });
    assert!(fell_back, "no leader fell back:\n{}", c.log_tail(0));
    // The entries went over AppendEntries calls, forwarded writes over
    // ProposeMany calls (a third of the writes went through the leader).
    assert!(c.rpcs_started("grpc_method=\"AppendEntries\"").await? >= 20);
    assert!(c.rpcs_started("grpc_method=\"ProposeMany\"").await? >= 13);
    let forward_fell_back = c.members.iter().any(|m| {
        std::fs::read_to_string(m.log_path())
            .is_ok_and(|log| log.contains("leader does not stream forwarded writes"))
    });
    assert!(
        forward_fell_back,
        "no follower fell back:\n{}",
        c.log_tail(0)
    );
    for i in 0..3 {
        let got = c.client(i).await?.get("k/19", None).await?;
        assert_eq!(got.kvs()[0].value(), b"v19");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_under_load_loses_no_acknowledged_write() -> Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    // Watchers on both followers (they survive), from before the load.
    let mut watchers = Vec::new();
    for i in (0..3).filter(|i| *i != leader) {
        let mut client = c.client(i).await?;
        let (_w, mut stream) = client
            .watch("load/", Some(WatchOptions::new().with_prefix()))
            .await?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let _keep = (client, _w);
            while let Ok(Some(r)) = stream.message().await {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.extend(
                    r.events()
                        .iter()
                        .filter_map(|e| e.kv().map(|kv| kv.mod_revision())),
                );
            }
        });
        watchers.push((i, seen, task));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..3 {
        let ep = c.endpoint(w);
        let (stop, count) = (stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64)> = Vec::new();
            let Ok(mut client) = Client::connect([ep], None).await else {
                return acked;
            };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let key = format!("load/{w}/{n}");
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(3), client.put(key.clone(), "x", None))
                        .await
                {
                    acked.push((key, r.header().map(|h| h.revision()).unwrap_or(0)));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            acked
        }));
    }
    // Kill the leader once writes are flowing.
    wait_count("writes before the kill", &count, 30).await?;
    c.kill9(leader)?;
    let killed_at = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = c.leader(&rest, Duration::from_secs(10)).await?;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    // A new leader within a few election timeouts (randomised in [T, 2T), plus pre-vote).
    assert!(
        failover < Duration::from_millis(ELECTION_MS * 6),
        "failover took {failover:?}"
    );
    // Writes go on under the new leader.
    let before = count.load(Ordering::Relaxed);
    wait_count("writes after the failover", &count, before + 30).await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    assert!(
        acked.len() > 10,
        "too few writes acknowledged: {}",
        acked.len()
    );
    // No revision was handed out twice.
    let mut revs: Vec<i64> = acked.iter().map(|(_, r)| *r).collect();
    revs.sort_unstable();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "a revision was reused"
    );
    // Every acknowledged write is on the survivors.
    let mut client = c.client(new_leader).await?;
    for (key, rev) in &acked {
        let got = client.get(key.as_str(), None).await?;
        assert_eq!(got.kvs().len(), 1, "acknowledged write {key} lost");
        assert_eq!(got.kvs()[0].mod_revision(), *rev);
    }
    // Each watcher saw exactly the store's writes, in order: revisions
    // strictly increase, none missing, none twice (each key is written once,
    // so its mod_revision is its one event).
    let stored = client
        .get("load/", Some(GetOptions::new().with_prefix()))
        .await?;
    let mut want: Vec<i64> = stored.kvs().iter().map(|kv| kv.mod_revision()).collect();
    want.sort_unstable();
    for (i, seen, task) in &watchers {
        wait_until(
            "watcher catches up with the store",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                let n = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
                Ok(if n >= want.len() {
                    Poll::Ready(())
                } else {
                    Poll::NotYet(format!("m{i}: {n} of {} events", want.len()))
                })
            },
        )
        .await?;
        let got = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "m{i}: watch revisions not strictly increasing"
        );
        assert_eq!(got, want, "m{i}: watch events differ from the store");
        task.abort();
    }
    // The killed member comes back and catches up.
    c.restart(leader)?;
    c.wait_all_ready(Duration::from_secs(30)).await?;
    converged(&c).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_minority_refuses_and_converges_after_heal() -> Result<()> {
    let c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let minority = (leader + 1) % 3;
    let majority: Vec<usize> = (0..3).filter(|i| *i != minority).collect();
    c.isolate(minority);
    // The minority refuses linearizable reads and writes (no leader, or a
    // ReadIndex that cannot complete), within a bound.
    let mut cut = c.client(minority).await?;
    wait_until(
        "minority refuses reads",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let mut cut = cut.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(3), cut.get("p", None)).await {
                    Ok(Ok(_)) => Ok(Poll::NotYet("read served".into())),
                    _ => Ok(Poll::Ready(())),
                }
            }
        },
    )
    .await?;
    let w = tokio::time::timeout(Duration::from_secs(12), cut.put("p/minority", "x", None)).await;
    assert!(!matches!(w, Ok(Ok(_))), "the minority accepted a write");
    // The majority goes on.
    let mut maj = c.client(majority[0]).await?;
    for n in 0..20 {
        maj.put(format!("p/{n}"), "y", None).await?;
    }
    // Serializable reads on the minority still answer, from local state.
    let local = cut
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await?;
    assert!(local.kvs().len() < 20);
    c.heal(minority);
    c.wait_all_ready(Duration::from_secs(30)).await?;
    converged(&c).await?;
    let got = cut.get("p/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(got.kvs().len(), 20);
    Ok(())
}

/// A member cut off from the leader says so: it stops naming a leader, its
/// `/health` fails, and, as etcd does, it ends the watch and keep-alive
/// streams of clients that asked for a leader (`hasleader`, which
/// kube-apiserver sends) with "etcdserver: no leader" once three election
/// timeouts have passed, so they reconnect elsewhere. Streams that did not
/// ask stay open and resume after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_member_ends_streams_that_require_a_leader() -> Result<()> {
    let c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let cut = (leader + 1) % 3;
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_require_leader(true);
    let mut strict = Client::connect([c.endpoint(cut)], Some(opts)).await?;
    let mut plain = c.client(cut).await?;
    let mut writer = c.client(leader).await?;
    let prefix = WatchOptions::new().with_prefix();
    let (_w1, mut strict_watch) = strict.watch("hl/", Some(prefix.clone())).await?;
    let (_w2, mut plain_watch) = plain.watch("hl/", Some(prefix.clone())).await?;
    let lease = writer.lease_grant(60, None).await?.id();
    let (mut keeper, mut keep_alive) = strict.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    assert!(keep_alive.message().await?.is_some_and(|r| r.ttl() > 0));
    // Both watches deliver while the member is connected.
    let put = writer.put("hl/a", "1", None).await?;
    let rev = put.header().map(|h| h.revision()).unwrap_or(0);
    for w in [&mut strict_watch, &mut plain_watch] {
        let got = tokio::time::timeout(Duration::from_secs(10), w.message()).await??;
        let events = got.map(|r| r.events().to_vec()).unwrap_or_default();
        assert!(events
            .iter()
            .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() == rev)));
    }

    c.isolate(cut);
    // The strict watch ends with etcd's error (after three election timeouts
    // without a leader; not asserted as a time: under load a member may
    // already have been without one for a while when the cut begins).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match strict_watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    let err = expect_grpc_error("strict watch after the cut", ended)?;
    assert_eq!(err, GrpcError::new("Unavailable", "etcdserver: no leader"));
    let ka = tokio::time::timeout(Duration::from_secs(10), keep_alive.message()).await?;
    let err = expect_grpc_error("strict keep-alive after the cut", ka)?;
    assert_eq!(err, GrpcError::new("Unavailable", "etcdserver: no leader"));
    // New strict streams and requests are refused at once.
    let again = strict.watch("hl/", Some(prefix.clone())).await;
    let refused = match again {
        Err(e) => e,
        Ok((_, mut s)) => match tokio::time::timeout(Duration::from_secs(5), s.message()).await? {
            Err(e) => e,
            Ok(m) => anyhow::bail!("a strict watch was opened on a member without a leader: {m:?}"),
        },
    };
    assert_eq!(
        grpc_error(&refused),
        Some(GrpcError::new("Unavailable", "etcdserver: no leader"))
    );
    let get = strict.get("hl/a", None).await;
    assert_eq!(
        expect_grpc_error("strict get without a leader", get)?,
        GrpcError::new("Unavailable", "etcdserver: no leader")
    );
    // The member reports no leader to operators too: Status and /health.
    let status = plain.status().await?;
    assert_eq!(status.leader(), 0, "a cut-off member still names a leader");
    let health = cairn_e2e::http::get_text(c.members[cut].client_port, "/health").await;
    assert!(
        health.is_err(),
        "/health passed without a leader: {health:?}"
    );

    // The plain watch was left alone: after the heal it delivers again.
    c.heal(cut);
    c.wait_all_ready(Duration::from_secs(30)).await?;
    let put = writer.put("hl/b", "2", None).await?;
    let rev = put.header().map(|h| h.revision()).unwrap_or(0);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let Some(r) = plain_watch.message().await? else {
                anyhow::bail!("plain watch ended");
            };
            if r.events()
                .iter()
                .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() == rev))
            {
                return Ok(());
            }
        }
    })
    .await?;
    got
}

/// A lease granted through one follower is known to the leader at once:
/// a keep-alive and a TTL query sent through the other follower right after
/// the grant (clientv3's sessions do that) see it alive, not expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_granted_on_a_follower_is_kept_alive_at_once() -> Result<()> {
    let c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut granter = c.client(f1).await?;
    let mut other = c.client(f2).await?;
    for _ in 0..5 {
        let id = granter.lease_grant(30, None).await?.id();
        let (mut keeper, mut responses) = other.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        let ka = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await??
            .context("keep-alive stream ended")?;
        assert_eq!(ka.ttl(), 30, "keep-alive right after the grant: {ka:?}");
        let ttl = other.lease_time_to_live(id, None).await?;
        assert!(ttl.ttl() > 0 && ttl.granted_ttl() == 30, "{ttl:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_added_promoted_and_member_removed() -> Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let mut client = c.client(0).await?;
    for n in 0..50 {
        client.put(format!("m/{n}"), "v", None).await?;
    }
    let (idx, url) = c.add_slot(&[])?;
    let added = client
        .member_add(
            [url.clone()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await?;
    let new_id = added.member().map(|m| m.id()).unwrap_or(0);
    c.start_joined(idx)?;
    // The learner catches up (serializable reads: a learner serves no linearizable ones in etcd).
    let ep = c.endpoint(idx);
    wait_until(
        "learner catches up",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let ep = ep.clone();
            async move {
                let Ok(mut l) = Client::connect([ep], None).await else {
                    return Ok(Poll::NotYet("connect".into()));
                };
                match l
                    .get(
                        "m/",
                        Some(GetOptions::new().with_prefix().with_serializable()),
                    )
                    .await
                {
                    Ok(r) if r.kvs().len() == 50 => Ok(Poll::Ready(())),
                    Ok(r) => Ok(Poll::NotYet(format!("{} keys", r.kvs().len()))),
                    Err(e) => Ok(Poll::NotYet(e.to_string())),
                }
            }
        },
    )
    .await?;
    let list = client.member_list().await?;
    assert!(list
        .members()
        .iter()
        .any(|m| m.id() == new_id && m.is_learner()));
    // The leader's view of the learner's log may trail the learner's reads
    // for a moment; until it holds 90% of the log, etcd's refusal.
    wait_until(
        "learner promoted",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let mut client = client.clone();
            async move {
                match client.member_promote(new_id).await {
                    Ok(_) => Ok(Poll::Ready(())),
                    Err(e) if e.to_string().contains("in sync with leader") => {
                        Ok(Poll::NotYet(e.to_string()))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await?;
    let list = client.member_list().await?;
    assert!(list
        .members()
        .iter()
        .any(|m| m.id() == new_id && !m.is_learner()));
    assert_eq!(list.members().len(), 4);
    // Remove a non-leader original member.
    let ids = c.member_ids().await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let victim = (0..3).find(|i| *i != leader && *i != 0).unwrap_or(1);
    let victim_id = ids
        .iter()
        .find(|(_, i)| **i == victim)
        .map(|(id, _)| *id)
        .unwrap_or(0);
    client.member_remove(victim_id).await?;
    let list = client.member_list().await?;
    assert_eq!(list.members().len(), 3);
    assert!(list.members().iter().all(|m| m.id() != victim_id));
    c.kill9(victim)?;
    client.put("after-remove", "ok", None).await?;
    // Removing an unknown member is etcd's NotFound.
    let err = client.member_remove(0xdead).await.unwrap_err();
    assert!(err.to_string().contains("member not found"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_member_is_sent_a_snapshot() -> Result<()> {
    let mut c = Cluster::start(3, &["--snapshot-count=50", "--snapshot-catchup-entries=5"]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let down = (leader + 1) % 3;
    c.kill9(down)?;
    let mut client = c.client(leader).await?;
    for n in 0..300 {
        client.put(format!("s/{n}"), format!("{n}"), None).await?;
    }
    client.compact(100, None).await?;
    // Writes go on while the snapshot is copied and sent: the copy is a
    // pinned view of the live store, so the leader must keep applying.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mut client, stop, written) = (c.client(leader).await?, stop.clone(), written.clone());
        tokio::spawn(async move {
            for n in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                client.put(format!("w/{n}"), format!("{n}"), None).await?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    wait_count("writes before the restart", &written, 20).await?;
    c.restart(down)?;
    c.wait_all_ready(Duration::from_secs(30)).await?;
    let at_install = written.load(Ordering::Relaxed);
    wait_count("writes after the install", &written, at_install + 50).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    converged(&c).await?;
    let log = std::fs::read_to_string(c.members[down].log_path())?;
    assert!(
        log.contains("installing a snapshot from the leader"),
        "no snapshot was installed:\n{}",
        c.log_tail(down)
    );
    // Copies made for sending and received files are gone once used (the
    // sender drops its copy when the receiver's answer arrives, so a transfer
    // that ended just now may need a moment).
    let dirs: Vec<_> = c
        .members
        .iter()
        .map(|m| m.data_dir().join("snap"))
        .collect();
    wait_until(
        "snapshot copies removed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let dirs = dirs.clone();
            async move {
                let mut left = Vec::new();
                for d in &dirs {
                    left.extend(std::fs::read_dir(d)?.flatten().map(|e| e.path()));
                }
                if left.is_empty() {
                    return Ok(Poll::Ready(()));
                }
                Ok(Poll::NotYet(format!("left behind: {left:?}")))
            }
        },
    )
    .await?;
    // Every member restarts from its store alone, with the log purged
    // behind snapshot points, and still holds every write.
    let before = state_of(&c, leader).await?;
    for i in 0..3 {
        c.kill9(i)?;
    }
    for i in 0..3 {
        c.restart(i)?;
    }
    c.wait_all_ready(Duration::from_secs(30)).await?;
    converged(&c).await?;
    assert_eq!(state_of(&c, 0).await?, before);
    Ok(())
}

/// A leader killed with its followers and restarted first stands for
/// election like any member: the term moves on. openraft's default
/// restores a restarted leader in its old term, and one whose log had lost
/// a tail its followers held (it replicates before its own write is done)
/// then wrote other entries under the same log ids: acknowledged writes
/// were lost (the robustness campaign, seed 102; docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_leader_stands_for_election() -> Result<()> {
    let all = [0, 1, 2];
    let mut c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&all, Duration::from_secs(10)).await?;
    c.client(leader).await?.put("before", "v", None).await?;
    let before = terms(&c, &[leader]).await?[0];
    for i in all {
        c.kill9(i)?;
    }
    // The old leader first: with leader restore it would be leader again
    // before any follower is back to start an election.
    c.restart(leader)?;
    for i in all.into_iter().filter(|i| *i != leader) {
        c.restart(i)?;
    }
    c.wait_all_ready(Duration::from_secs(30)).await?;
    let now = c.leader(&all, Duration::from_secs(10)).await?;
    let after = terms(&c, &[now]).await?[0];
    assert!(
        after > before,
        "the cluster came back in term {after}, the term before the restart ({before}): \
         m{now} leads without an election"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_over() -> Result<()> {
    let c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let target = (leader + 1) % 3;
    let ids = c.member_ids().await?;
    let target_id = ids
        .iter()
        .find(|(_, i)| **i == target)
        .map(|(id, _)| *id)
        .unwrap_or(0);
    let mut client = c.client(leader).await?;
    client.move_leader(target_id).await?;
    assert_eq!(c.leader(&[0, 1, 2], Duration::from_secs(10)).await?, target);
    // A follower refuses, as etcd does.
    let mut f = c.client(leader).await?;
    let err = f.move_leader(target_id).await.unwrap_err();
    assert!(err.to_string().contains("not leader"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_across_leader_failure_is_linearizable() -> Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await?;
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    // Operations that got an answer (not Unknown).
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client_id in 0..6 {
        let ep = c.endpoint(client_id % 3);
        let (rec, stop, done) = (rec.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect([ep], None).await else {
                return;
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let key = format!("lin/{}", n % 4);
                n += 1;
                if n.is_multiple_of(3) {
                    let value = format!("{client_id}-{n}");
                    let op = rec.invoke(
                        client_id,
                        Input::Put {
                            key: key.clone(),
                            value: value.clone(),
                        },
                    );
                    match tokio::time::timeout(Duration::from_secs(2), client.put(key, value, None))
                        .await
                    {
                        Ok(Ok(r)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            op.complete(Output::Written {
                                revision: r.header().map(|h| h.revision()).unwrap_or(0),
                            })
                        }
                        _ => op.complete(Output::Unknown),
                    }
                } else {
                    let op = rec.invoke(client_id, Input::Get { key: key.clone() });
                    match tokio::time::timeout(Duration::from_secs(2), client.get(key, None)).await
                    {
                        Ok(Ok(r)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            op.complete(Output::Read {
                                value: r
                                    .kvs()
                                    .first()
                                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                                revision: r.header().map(|h| h.revision()).unwrap_or(0),
                            })
                        }
                        _ => op.complete(Output::Unknown),
                    }
                }
            }
        }));
    }
    // History before, during and after a leader failure and the old
    // leader's return, each phase gated on answered operations.
    wait_count("operations before the kill", &done, 100).await?;
    c.kill9(leader)?;
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.leader(&rest, Duration::from_secs(10)).await?;
    let n = done.load(Ordering::Relaxed);
    wait_count("operations under the new leader", &done, n + 100).await?;
    c.restart(leader)?;
    c.wait_all_ready(Duration::from_secs(30)).await?;
    let n = done.load(Ordering::Relaxed);
    wait_count("operations after the restart", &done, n + 100).await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let history = rec.history();
    let done = history
        .iter()
        .filter(|o| !matches!(o.output, Output::Unknown))
        .count();
    assert!(done > 50, "too few completed operations: {done}");
    match check(&history, Duration::from_secs(60)) {
        CheckResult::Ok => Ok(()),
        CheckResult::Illegal { key, detail } => panic!("not linearizable on {key}: {detail}"),
        CheckResult::Unknown => panic!("checker timed out on {} operations", history.len()),
    }
}

/// Idle peer traffic of a 5-member cluster: printed (the figures in
/// docs/benchmarks.md come from `peer_traffic.rs` at production
/// timings), and checked for what must hold while idle: heartbeats flow and
/// the leader stays put (no election churn).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_five_member_peer_traffic() -> Result<()> {
    let all = [0, 1, 2, 3, 4];
    let c = Cluster::start(5, &[]).await?;
    let leader = c.leader(&all, Duration::from_secs(10)).await?;
    let terms0 = terms(&c, &all).await?;
    let (bytes0, rpcs0) = (c.peer_bytes(), c.peer_rpcs().await?);
    let t = Instant::now();
    // The measurement window itself, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = t.elapsed().as_secs_f64();
    let bytes = c.peer_bytes() - bytes0;
    let rpcs = c.peer_rpcs().await? - rpcs0;
    eprintln!(
        "idle 5-member cluster: {:.1} peer RPCs/s, {:.0} peer bytes/s (heartbeat {}ms)",
        rpcs as f64 / secs,
        bytes as f64 / secs,
        cairn_e2e::cluster::HEARTBEAT_MS
    );
    // The leader heartbeats each of 4 followers every HEARTBEAT_MS while
    // idle: at least half of that must have arrived.
    let expected = 4.0 * secs * 1000.0 / cairn_e2e::cluster::HEARTBEAT_MS as f64;
    assert!(
        bytes > 0 && rpcs as f64 >= expected / 2.0,
        "{rpcs} peer RPCs in {secs:.1}s, expected about {expected:.0}"
    );
    // No election meanwhile: the same leader, and no member's term moved.
    assert_eq!(c.leader(&all, Duration::from_secs(5)).await?, leader);
    assert_eq!(terms(&c, &all).await?, terms0, "terms moved while idle");
    Ok(())
}
