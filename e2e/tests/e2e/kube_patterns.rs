//! kube-apiserver's etcd usage patterns, tested explicitly.
//!
//! * `kube_watch_with_progress_requests` (Cairn, etcd 3.6 semantics): a List
//!   gives RV; watches on two resource prefixes open on one stream at RV+1
//!   with prev_kv and progress_notify (and `hasleader`), while writers keep
//!   creating, updating (mod_revision CAS txns, like GuaranteedUpdate) and
//!   deleting objects, and a WatchProgressRequest goes out every 100 ms.
//!   Checked: every progress response (watch_id -1, and periodic per-watcher
//!   ones, with --watch-progress-notify-interval 500ms) has a revision >=
//!   the last event revision received on the stream, and no event at or
//!   below a progress revision arrives after it (for -1: on any watcher; for
//!   a per-watcher one: on that watcher); each watcher's events are exactly
//!   the acknowledged writes on its prefix from RV+1 (no gap, no duplicate,
//!   every kv and prev_kv field); progress replies did come while writes
//!   flowed. Not compared with etcd 3.5.1, whose WatchProgressRequest reply
//!   can claim a revision ahead of events not yet sent (fixed in 3.5.8+/3.6).
//! * `kube_lease_with_hundreds_of_keys_matches_etcd`: one lease shared by 300
//!   keys (like kube's event TTL lease): revoke deletes them all in one
//!   revision, the watch gets 300 DELETE events with prev_kv; a second lease
//!   with 200 keys expires (TTL 2) the same way. Watch items equal etcd's.
//! * `kube_compaction_cas_matches_etcd`: the apiserver compactor's CAS on
//!   `compact_rev_key` (Txn comparing its version, put the revision / else
//!   get), followed by Compact of the previous round's revision, with a
//!   second apiserver losing the race; then a watch at a compacted
//!   resourceVersion (canceled with compact_revision) and a List at it.
//!   Every response equals etcd's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::events::*;
use cairn_e2e::model::Model;
use cairn_e2e::raw::*;
use cairn_e2e::watch::*;
use cairn_e2e::{Kind, Member, MemberOptions};
use cairn_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::util::*;

type Kv = pb::kv_client::KvClient<Channel>;

fn cmp_mod(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

fn op_put(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn op_get(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn op_del(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// A kube-style CAS txn; returns (succeeded, header revision).
async fn cas(
    kv: &mut Kv,
    cmp: pb::Compare,
    then: pb::RequestOp,
    key: &[u8],
) -> Result<(bool, i64)> {
    let r = kv
        .txn(pb::TxnRequest {
            compare: vec![cmp],
            success: vec![then],
            failure: vec![op_get(key)],
        })
        .await?
        .into_inner();
    Ok((r.succeeded, rev_of(&r.header)))
}

// ---------------------------------------------------------------------------

const WRITERS: usize = 3;
const OPS_PER_WRITER: usize = 200;
const RESOURCES: [&str; 3] = ["pods", "services", "configmaps"];

/// One writer: creates, updates and deletes its own objects (so the model's
/// per-key order is the writer's order), recording every acknowledged write.
async fn kube_writer(
    mut kv: Kv,
    t: usize,
    model: Arc<Mutex<Model>>,
    acked: Arc<AtomicUsize>,
) -> Result<()> {
    let mut live: BTreeMap<Vec<u8>, i64> = BTreeMap::new(); // key -> mod revision
    for i in 0..OPS_PER_WRITER {
        let res = RESOURCES[i % RESOURCES.len()];
        let key = format!("/registry/{res}/ns-{t}/obj-{}", (i / 3) % 12).into_bytes();
        let value = format!(
            "{{\"kind\":\"{res}\",\"writer\":{t},\"op\":{i},\"pad\":\"{}\"}}",
            "x".repeat(i % 50)
        )
        .into_bytes();
        match live.get(&key).copied() {
            None => {
                let (ok, rev) =
                    cas(&mut kv, cmp_mod(&key, 0), op_put(&key, &value, 0), &key).await?;
                ensure!(ok, "writer {t}: create of {key:?} failed its CAS");
                model.lock().await.put(&key, &value, rev, 0);
                live.insert(key, rev);
            }
            Some(m) if i % 7 == 0 => {
                let (ok, rev) = cas(&mut kv, cmp_mod(&key, m), op_del(&key), &key).await?;
                ensure!(ok, "writer {t}: delete of {key:?} failed its CAS");
                model.lock().await.delete(&key, rev);
                live.remove(&key);
            }
            Some(m) => {
                let (ok, rev) =
                    cas(&mut kv, cmp_mod(&key, m), op_put(&key, &value, 0), &key).await?;
                ensure!(ok, "writer {t}: update of {key:?} failed its CAS");
                model.lock().await.put(&key, &value, rev, 0);
                live.insert(key, rev);
            }
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watch_with_progress_requests() -> Result<()> {
    let (_, cairn_args) = progress_interval_args("500ms");
    let mut m = Member::start_with(
        Kind::Cairn,
        MemberOptions {
            extra_args: cairn_args,
            ..Default::default()
        },
    )
    .await?;
    let r = kube_watch_on(&m).await;
    keep_on_err(r, &mut [&mut m])
}

async fn kube_watch_on(m: &Member) -> Result<()> {
    let ch = channel(m).await?;
    let model = Arc::new(Mutex::new(Model::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for t in 0..WRITERS {
        writers.spawn(kube_writer(kv_client(&ch), t, model.clone(), acked.clone()));
    }
    // The List, while writes flow.
    let t0 = Instant::now();
    while acked.load(Ordering::SeqCst) < 60 {
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "writers made no progress"
        );
        if let Some(r) = writers.try_join_next() {
            r??;
        }
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter with a deadline
    }
    let list = kv_client(&ch)
        .range(pb::RangeRequest {
            key: b"/registry/pods/".to_vec(),
            range_end: prefix_end(b"/registry/pods/"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let rv = rev_of(&list.header);
    let pods = Create::prefix("/registry/pods/")
        .prev_kv()
        .progress_notify()
        .rev(rv + 1);
    let services = Create::prefix("/registry/services/")
        .prev_kv()
        .progress_notify()
        .rev(rv + 1);
    let mut w = RawWatch::open_require_leader(&ch, "cairn kube watch", pods.clone()).await?;
    w.create(services.clone()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let progress_task = {
        let (tx, stop) = (w.sender(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for _ in 0..2000 {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) || tx.send(progress_request()).await.is_err() {
                    return;
                }
            }
        })
    };

    let mut flat = Flat::default();
    let mut violations: Vec<String> = Vec::new();
    let mut last_event_on_stream = 0i64;
    let mut progress_all_max = 0i64; // highest -1 progress revision so far
    let mut progress_watcher_max: BTreeMap<i64, i64> = BTreeMap::new();
    let mut replies_all = 0usize;
    let mut replies_watcher = 0usize;
    let mut targets: Option<(i64, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    for _ in 0..10_000_000u64 {
        if targets.is_none() && writers.is_empty() {
            // Writers are done: one last write per watched prefix.
            let mut kv = kv_client(&ch);
            let mut ends = Vec::new();
            for res in ["pods", "services"] {
                let key = format!("/registry/{res}/zz-end").into_bytes();
                let (ok, rev) =
                    cas(&mut kv, cmp_mod(&key, 0), op_put(&key, b"end", 0), &key).await?;
                ensure!(ok, "final create of {key:?} failed");
                model.lock().await.put(&key, b"end", rev, 0);
                ends.push(rev);
            }
            targets = Some((ends[0], ends[1]));
        }
        if let Some((tp, ts)) = targets {
            if flat.last_event_rev.get(&0).is_some_and(|r| *r >= tp)
                && flat.last_event_rev.get(&1).is_some_and(|r| *r >= ts)
            {
                break;
            }
        }
        if let Some(r) = writers.try_join_next() {
            r??;
        }
        ensure!(
            Instant::now() < deadline,
            "timed out: {} writes acked, last event revisions {:?}, targets {targets:?}",
            acked.load(Ordering::SeqCst),
            flat.last_event_rev
        );
        let Some(r) = w.try_next(Duration::from_millis(50)).await? else {
            continue;
        };
        let n = NResp::from(&r);
        if n.is_progress() {
            if n.revision < last_event_on_stream {
                violations.push(format!(
                    "progress {n:?} claims revision {} below the last event revision {last_event_on_stream} already received on the stream",
                    n.revision
                ));
            }
            if n.watch_id == -1 {
                replies_all += 1;
                progress_all_max = progress_all_max.max(n.revision);
            } else {
                replies_watcher += 1;
                let e = progress_watcher_max.entry(n.watch_id).or_insert(0);
                *e = (*e).max(n.revision);
            }
        }
        for e in &n.events {
            let floor =
                progress_all_max.max(progress_watcher_max.get(&n.watch_id).copied().unwrap_or(0));
            if e.rev() <= floor {
                violations.push(format!(
                    "event {e:?} of watcher {} arrived after a progress response at revision {floor}",
                    n.watch_id
                ));
            }
            last_event_on_stream = last_event_on_stream.max(e.rev());
        }
        flat.feed(&r);
    }
    stop.store(true, Ordering::SeqCst);
    progress_task.await?;
    violations.extend(flat.violations.iter().cloned());
    let model = model.lock().await;
    for (id, spec) in [(0, &pods), (1, &services)] {
        let want = model.expected(spec, rv + 1);
        if let Some(d) = first_difference(&want, &flat.events(id)) {
            violations.push(format!(
                "watcher {id} ({}) from RV+1={} (left: the acknowledged writes, right: received): {d}",
                String::from_utf8_lossy(&spec.0.key),
                rv + 1
            ));
        }
    }
    eprintln!(
        "kube watch: RV {rv}, {} writes, {} + {} events, {replies_all} progress replies (-1), {replies_watcher} periodic notifications",
        model.events.len(),
        flat.events(0).len(),
        flat.events(1).len()
    );
    ensure!(
        replies_all >= 3,
        "only {replies_all} WatchProgressRequest replies while writes flowed (requests every 100 ms)"
    );
    ensure!(
        violations.is_empty(),
        "{} violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------

const BIG_LEASE: i64 = 0x1001;
const TTL_LEASE: i64 = 0x1002;

async fn put_many_with_lease(kv: &mut Kv, prefix: &str, n: usize, lease: i64) -> Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|i| {
                op_put(
                    format!("{prefix}{i:04}").as_bytes(),
                    format!("event {i}").as_bytes(),
                    lease,
                )
            })
            .collect();
        kv.txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .context("txn of leased puts")?;
    }
    Ok(())
}

async fn lease_script(m: &Member) -> Result<(Vec<Item>, usize)> {
    let ch = channel(m).await?;
    let (mut l, mut kv) = (lease_client(&ch), kv_client(&ch));
    let mut w = RawWatch::open(
        &ch,
        &format!("{} events watch", m.kind()),
        Create::prefix("/registry/events/").prev_kv(),
    )
    .await?;
    let mut flat = Flat::default();
    pump_until(&mut w, &mut flat, STEP_TIMEOUT, "Created", |f| {
        f.created_order.len() == 1
    })
    .await?;
    l.lease_grant(pb::LeaseGrantRequest {
        ttl: 3600,
        id: BIG_LEASE,
    })
    .await?;
    put_many_with_lease(&mut kv, "/registry/events/ns/a-", 300, BIG_LEASE).await?;
    let keys = l
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: BIG_LEASE,
            keys: true,
        })
        .await?
        .into_inner()
        .keys
        .len();
    let r = l
        .lease_revoke(pb::LeaseRevokeRequest { id: BIG_LEASE })
        .await?
        .into_inner();
    let revoke_rev = rev_of(&r.header);
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(20),
        "the revoke's 300 deletes",
        |f| f.events(0).iter().filter(|e| !e.put).count() >= 300,
    )
    .await?;
    let dels: Vec<Ev> = flat.events(0).into_iter().filter(|e| !e.put).collect();
    ensure!(
        dels.iter().all(|e| e.rev() == revoke_rev && e.prev.as_ref().is_some_and(|p| p.lease == BIG_LEASE)),
        "{}: the revoke's deletes must all be at {revoke_rev} with prev_kv",
        m.kind()
    );
    // The TTL lease: 200 keys, expires on its own.
    l.lease_grant(pb::LeaseGrantRequest {
        ttl: 2,
        id: TTL_LEASE,
    })
    .await?;
    put_many_with_lease(&mut kv, "/registry/events/ns/b-", 200, TTL_LEASE).await?;
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(20),
        "the expiry's 200 deletes",
        |f| f.events(0).iter().filter(|e| !e.put).count() >= 500,
    )
    .await?;
    let exp: Vec<Ev> = flat
        .events(0)
        .into_iter()
        .filter(|e| !e.put)
        .skip(300)
        .collect();
    ensure!(
        exp.iter()
            .all(|e| e.rev() == exp[0].rev()
                && e.prev.as_ref().is_some_and(|p| p.lease == TTL_LEASE)),
        "{}: the expiry's deletes must all be in one revision with prev_kv",
        m.kind()
    );
    // Nothing more. (Waiting out the window is the check.)
    while let Some(r) = w.try_next(Duration::from_millis(300)).await? {
        flat.feed(&r);
    }
    ensure!(
        flat.violations.is_empty(),
        "{}: {:?}",
        m.kind(),
        flat.violations
    );
    Ok((flat.items(0).to_vec(), keys))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_lease_with_hundreds_of_keys_matches_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let (e, c) = tokio::join!(lease_script(&etcd), lease_script(&cairn));
    let r = (|| {
        let ((e, ek), (c, ck)) = (e.context("etcd")?, c.context("cairn")?);
        ensure!(
            ek == 300 && ck == 300,
            "TimeToLive keys: etcd {ek}, cairn {ck}, want 300"
        );
        if let Some(d) = first_difference(&e, &c) {
            bail!("watch items differ from etcd: {d}");
        }
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

// ---------------------------------------------------------------------------

const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";

/// A TxnResponse without cluster_id, member_id and raft_term anywhere.
fn norm_txn(mut r: pb::TxnResponse) -> String {
    fn strip(h: &mut Option<pb::ResponseHeader>) {
        if let Some(h) = h {
            h.cluster_id = 0;
            h.member_id = 0;
            h.raft_term = 0;
        }
    }
    strip(&mut r.header);
    for op in &mut r.responses {
        use pb::response_op::Response;
        match &mut op.response {
            Some(Response::ResponseRange(x)) => strip(&mut x.header),
            Some(Response::ResponsePut(x)) => strip(&mut x.header),
            Some(Response::ResponseDeleteRange(x)) => strip(&mut x.header),
            Some(Response::ResponseTxn(x)) => strip(&mut x.header),
            None => {}
        }
    }
    format!("{r:?}")
}

/// One round of kube-apiserver's compactor: returns (new t, new rev, what
/// the server answered).
async fn compact_round(kv: &mut Kv, t: i64, rev: i64) -> Result<(i64, i64, Vec<String>)> {
    let mut seen = Vec::new();
    let r = kv
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: COMPACT_REV_KEY.to_vec(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::Version(t)),
            }],
            success: vec![op_put(COMPACT_REV_KEY, rev.to_string().as_bytes(), 0)],
            failure: vec![op_get(COMPACT_REV_KEY)],
        })
        .await?
        .into_inner();
    let cur_rev = rev_of(&r.header);
    let succeeded = r.succeeded;
    let get_version = r.responses.first().and_then(|op| match &op.response {
        Some(pb::response_op::Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| kv.version),
        _ => None,
    });
    seen.push(format!("txn(version == {t}): {}", norm_txn(r)));
    if !succeeded {
        let cur_t = get_version.context("failed CAS without the key's version")?;
        return Ok((cur_t, cur_rev, seen));
    }
    if rev != 0 {
        let c = kv
            .compact(pb::CompactionRequest {
                revision: rev,
                physical: false,
            })
            .await;
        seen.push(format!(
            "compact {rev}: {}",
            match c {
                Ok(r) => format!("ok rev {}", rev_of(&r.into_inner().header)),
                Err(s) => format!("{:?}", status_pair(&s)),
            }
        ));
    }
    Ok((t + 1, cur_rev, seen))
}

async fn compaction_script(m: &Member) -> Result<Vec<String>> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let mut out = Vec::new();
    let write = |i: usize| format!("/registry/pods/ns/p{}", i % 5);
    // History for the compactions to remove: 30 txns rewriting the same 100
    // objects (as a busy cluster's status updates do).
    for round in 0..30 {
        let ops = (0..100)
            .map(|i| {
                op_put(
                    format!("/registry/configmaps/ns/cm-{i:03}").as_bytes(),
                    format!("status {round}").as_bytes(),
                    0,
                )
            })
            .collect();
        kv.txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .with_context(|| format!("preload txn {round}"))?;
    }
    let (mut t, mut rev) = (0, 0);
    let mut old_rvs = Vec::new();
    for round in 0..4 {
        for i in 0..10 {
            let key = write(round * 10 + i);
            let r = kv
                .put(pb::PutRequest {
                    key: key.into_bytes(),
                    value: format!("round {round} write {i}").into_bytes(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("round {round}: put {i}"))?
                .into_inner();
            old_rvs.push(rev_of(&r.header));
        }
        let (nt, nrev, seen) = compact_round(&mut kv, t, rev)
            .await
            .with_context(|| format!("round {round}: compactor txn"))?;
        out.push(format!("round {round}: {}", seen.join(" | ")));
        // A second apiserver with a stale view loses the CAS and adopts the
        // winner's t.
        if round == 2 {
            let (st, srev, seen) = compact_round(&mut kv, t, 5)
                .await
                .context("stale apiserver's compactor txn")?;
            out.push(format!(
                "stale apiserver: {} -> t {st} rev {srev}",
                seen.join(" | ")
            ));
        }
        t = nt;
        rev = nrev;
    }
    // The compacted revision is the one recorded two rounds ago; an RV
    // below it is compacted.
    let compacted_rv = old_rvs[3];
    let w_spec = Create::prefix("/registry/pods/")
        .prev_kv()
        .rev(compacted_rv + 1);
    let mut w =
        RawWatch::open_require_leader(&ch, &format!("{} compacted RV", m.kind()), w_spec).await?;
    let mut flat = Flat::default();
    pump_until(
        &mut w,
        &mut flat,
        STEP_TIMEOUT,
        "the compaction cancel",
        |f| f.canceled(0),
    )
    .await?;
    // Items: Created (header revision) and Canceled (compact_revision); the
    // cancel's header revision is compared in watch_semantics.
    out.push(format!("watch at a compacted RV: {:?}", flat.items(0)));
    let list = kv
        .range(pb::RangeRequest {
            key: b"/registry/pods/".to_vec(),
            range_end: prefix_end(b"/registry/pods/"),
            revision: compacted_rv,
            ..Default::default()
        })
        .await;
    out.push(format!(
        "list at the compacted RV: {}",
        match list {
            Ok(r) => format!("ok {} kvs", r.into_inner().kvs.len()),
            Err(s) => format!("{:?}", status_pair(&s)),
        }
    ));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_compaction_cas_matches_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let (e, c) = tokio::join!(compaction_script(&etcd), compaction_script(&cairn));
    let r = (|| {
        let (e, c) = (e.context("etcd")?, c.context("cairn")?);
        let diffs: Vec<String> = e
            .iter()
            .zip(c.iter())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  etcd:  {a}\n  cairn: {b}"))
            .collect();
        ensure!(e.len() == c.len(), "script lengths differ: {e:?} vs {c:?}");
        ensure!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}
