//! Watch semantics, one behaviour per test: stream multiplexing and ids,
//! history replay switching to live, watches from "now" under load, cancel
//! under load, future, compacted and negative start revisions, fragmenting,
//! progress (requested and periodic), slow watchers.
//!
//! Tests defined with `server_test!` check Cairn (`<name>::cairn`) against
//! the acknowledged writes themselves; `<name>::etcd` runs the same check on
//! etcd as a self-check of the test (ignored for most: `--ignored`).
//!
//! Where etcd 3.5.1 and 3.6 behave the same, the test runs the same script
//! against a real etcd and Cairn and compares whole responses (minus
//! cluster_id, member_id and raft_term). Where they differ (WatchProgressRequest
//! and negative start revisions, see each test), the test asserts Cairn's
//! 3.6 behaviour directly and names the difference.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::events::*;
use cairn_e2e::model::Model;
use cairn_e2e::raw::*;
use cairn_e2e::watch::*;
use cairn_e2e::{Kind, Member, MemberOptions};
use cairn_proto::etcdserverpb as pb;
use pb::request_op::Request;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::util::*;

async fn put(kv: &mut pb::kv_client::KvClient<Channel>, k: &str, v: &[u8]) -> Result<i64> {
    let r = kv
        .put(pb::PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.to_vec(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {k}"))?;
    Ok(rev_of(&r.into_inner().header))
}

async fn del(kv: &mut pb::kv_client::KvClient<Channel>, k: &str, end: &str) -> Result<i64> {
    let r = kv
        .delete_range(pb::DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("delete {k}"))?;
    Ok(rev_of(&r.into_inner().header))
}

async fn compact(kv: &mut pb::kv_client::KvClient<Channel>, rev: i64) -> Result<()> {
    kv.compact(pb::CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .with_context(|| format!("compact {rev}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// A scripted stream, run against both servers
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    /// Create a watcher; `n` responses follow.
    Watch(Create, usize),
    Cancel(i64, usize),
    Put(&'static str, &'static str, usize),
    Del(&'static str, usize),
}

/// Runs `steps` on one stream of `m`; for every step, the `n` responses it
/// must cause, sorted by watch id (responses of different watchers to one
/// write come in any order), then checks that nothing else arrives.
async fn run_script(m: &Member, first: Create, steps: &[Step]) -> Result<Vec<Vec<NResp>>> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let mut w = RawWatch::open(&ch, &format!("{} script", m.kind()), first).await?;
    let mut out = vec![vec![NResp::from(&w.next().await?)]];
    for (i, step) in steps.iter().enumerate() {
        let n = match step {
            Step::Watch(c, n) => {
                w.create(c.clone()).await?;
                *n
            }
            Step::Cancel(id, n) => {
                w.cancel(*id).await?;
                *n
            }
            Step::Put(k, v, n) => {
                put(&mut kv, k, v.as_bytes()).await?;
                *n
            }
            Step::Del(k, n) => {
                del(&mut kv, k, "").await?;
                *n
            }
        };
        let mut got = Vec::new();
        for j in 0..n {
            got.push(get(&mut w, &format!("step {i}: response {} of {n}", j + 1)).await?);
        }
        got.sort_by_key(|r| r.watch_id);
        out.push(got);
    }
    // Steps expecting no response are followed by steps whose responses
    // would be out of place if a stray one had come; this window catches a
    // stray response after the last step. (Waiting it out is the check.)
    if let Some(r) = w.try_next(Duration::from_millis(500)).await? {
        out.push(vec![NResp::from(&r)]);
    }
    Ok(out)
}

fn compare_scripts(steps: &[Step], e: &[Vec<NResp>], c: &[Vec<NResp>]) -> Vec<String> {
    let mut diffs = Vec::new();
    for i in 0..e.len().max(c.len()) {
        let (a, b) = (e.get(i), c.get(i));
        if a != b {
            let what = if i == 0 {
                "open".to_string()
            } else {
                steps
                    .get(i - 1)
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "after the last step".into())
            };
            diffs.push(format!(
                "step {i} ({what}):\n    etcd:  {a:?}\n    cairn: {b:?}"
            ));
        }
    }
    diffs
}

/// One stream, many watchers: automatic and client-chosen ids, refused
/// duplicates and empty ranges, events per watcher with prev_kv, cancel
/// (and cancel of an unknown id: no response), id reuse after cancel, the
/// empty key, all keys, NOPUT+NODELETE, and a watcher from the past on a
/// shared stream. Whole responses must equal etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_many_watchers_matches_etcd() -> Result<()> {
    use Step::*;
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let steps = vec![
        Watch(Create::key("k1"), 1),
        Watch(Create::key("k2").id(5).prev_kv(), 1),
        Watch(Create::key("k3").id(5), 1),
        Watch(Create::range("b", "a"), 1),
        Watch(Create::range("b", "b"), 1),
        Watch(Create::key("k3"), 1),
        Watch(Create::key("k4").id(3), 1),
        Watch(Create::key("k5"), 1),
        Put("k0", "v0", 1),
        Put("k2", "v1", 1),
        Put("k2", "v2", 1),
        Del("k2", 1),
        Del("k2", 0),
        Cancel(1, 1),
        Put("k1", "gone", 0),
        Cancel(99, 0),
        Watch(Create::key("k1").id(1), 1),
        Put("k1", "again", 1),
        Watch(Create::key(""), 1),
        Put("\0", "nul", 1),
        Watch(Create::range("", [0u8]).prev_kv().no_put(), 1),
        Del("k0", 2),
        Watch(Create::key("k0").rev(2).prev_kv(), 2),
        Watch(Create::key("k0").no_put().no_delete(), 1),
        Put("k0", "back", 2),
        Watch(Create::prefix("k").rev(1000), 1),
        // Seen by nobody: the all-keys watcher ignores puts, the prefix one
        // starts at 1000. The delete's response proves nothing came before.
        Put("k9", "future-is-far", 0),
        Del("k9", 1),
    ];
    let first = Create::key("k0");
    let (e, c) = tokio::join!(
        run_script(&etcd, first.clone(), &steps),
        run_script(&cairn, first, &steps)
    );
    let r = (|| {
        let (e, c) = (e?, c?);
        let diffs = compare_scripts(&steps, &e, &c);
        ensure!(
            diffs.is_empty(),
            "{} step(s) differ from etcd:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

// ---------------------------------------------------------------------------
// History replay, then live
// ---------------------------------------------------------------------------

/// A watch from a past revision replays history, then switches to live
/// events while a writer keeps writing: the events are exactly those of
/// every acknowledged write from the start revision on (no gap, no
/// duplicate), with prev_kv, in order. Run on both (etcd validates the test).
async fn replay_then_live(kind: Kind) -> Result<()> {
    let mut m = Member::start(kind).await?;
    let r = replay_then_live_on(&m).await;
    keep_on_err(r, &mut [&mut m])
}

async fn replay_then_live_on(m: &Member) -> Result<()> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let mut model = Model::default();
    for i in 0..80 {
        let k = format!("h/{}", i % 7);
        let v = format!("pre-{i}");
        let rev = put(&mut kv, &k, v.as_bytes()).await?;
        model.put(k.as_bytes(), v.as_bytes(), rev, 0);
        if i % 10 == 9 {
            let k = format!("h/{}", i % 7);
            let rev = del(&mut kv, &k, "").await?;
            model.delete(k.as_bytes(), rev);
        }
    }
    let start = 20;
    let w_spec = Create::prefix("h/").prev_kv().rev(start);
    // The writer starts first, so the watcher is created while writes flow.
    let model = Arc::new(Mutex::new(model));
    let writer = {
        let model = model.clone();
        let mut kv = kv.clone();
        tokio::spawn(async move {
            for i in 0..250 {
                let k = format!("h/{}", i % 9);
                let v = format!("live-{i}");
                let rev = put(&mut kv, &k, v.as_bytes()).await?;
                model.lock().await.put(k.as_bytes(), v.as_bytes(), rev, 0);
                if i % 17 == 0 {
                    let rev = del(&mut kv, &k, "").await?;
                    model.lock().await.delete(k.as_bytes(), rev);
                }
            }
            anyhow::Ok(())
        })
    };
    let mut w = RawWatch::open(&ch, &format!("{} replay", m.kind()), w_spec.clone()).await?;
    let mut flat = Flat::default();
    writer.await??;
    let last = put(&mut kv, "h/end", b"end").await?;
    model.lock().await.put(b"h/end", b"end", last, 0);
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(30),
        "the last write",
        |f| f.last_event_rev.get(&0).is_some_and(|r| *r >= last),
    )
    .await?;
    ensure!(
        flat.violations.is_empty(),
        "invariants: {:?}",
        flat.violations
    );
    let want = model.lock().await.expected(&w_spec, start);
    let got = flat.events(0);
    if let Some(d) = first_difference(&want, &got) {
        bail!(
            "{}: events of a watch from revision {start} differ from the writes (left: expected from the acknowledged writes, right: received): {d}",
            m.kind()
        );
    }
    Ok(())
}

server_test!(
    replay_then_live_no_gap_no_duplicate,
    replay_then_live,
    ignore_etcd
);

// ---------------------------------------------------------------------------
// Future and compacted start revisions
// ---------------------------------------------------------------------------

/// Watches whose start revision is ahead of the store: Created carries the
/// current revision, and only events from the start revision on are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_start_revision_matches_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let (e, c) = tokio::join!(future_script(&etcd), future_script(&cairn));
    let r = (|| {
        let (e, c) = (e?, c?);
        let diffs: Vec<String> = e
            .iter()
            .zip(c.iter())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("watcher {i}:\n  etcd:  {a:?}\n  cairn: {b:?}"))
            .collect();
        ensure!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

async fn future_script(m: &Member) -> Result<Vec<Vec<Item>>> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    for i in 0..4 {
        put(&mut kv, "f/a", format!("{i}").as_bytes()).await?; // revisions 2..=5
    }
    let specs = [
        Create::prefix("f/").rev(6).prev_kv(),
        Create::prefix("f/").rev(8).prev_kv(),
        Create::key("f/a").rev(9).no_delete(),
        Create::prefix("f/").rev(1_000_000),
    ];
    let mut w = RawWatch::open(&ch, &format!("{} future", m.kind()), specs[0].clone()).await?;
    let mut flat = Flat::default();
    for s in &specs[1..] {
        w.create(s.clone()).await?;
    }
    pump_until(&mut w, &mut flat, STEP_TIMEOUT, "4 Created", |f| {
        f.created_order.len() == 4
    })
    .await?;
    let mut last = 0;
    for i in 0..6 {
        last = put(&mut kv, "f/a", format!("next-{i}").as_bytes()).await?; // 6..=11
        if i == 2 {
            last = del(&mut kv, "f/a", "").await?;
        }
    }
    // Watchers 0..=2 see the last put.
    pump_until(&mut w, &mut flat, STEP_TIMEOUT, "the last write", |f| {
        (0..3).all(|id| f.last_event_rev.get(&id).is_some_and(|r| *r >= last))
    })
    .await?;
    // The far-future watcher sees nothing. (Waiting out the window is the check.)
    while let Some(r) = w.try_next(Duration::from_millis(300)).await? {
        flat.feed(&r);
    }
    ensure!(
        flat.violations.is_empty(),
        "{}: {:?}",
        m.kind(),
        flat.violations
    );
    Ok((0..4).map(|id| flat.items(id).to_vec()).collect())
}

/// Watches at compacted start revisions: Created, then a cancel carrying
/// compact_revision (every field, including the header revision, compared
/// with etcd); a watch at exactly the compact revision (a delete there:
/// compaction drops the tombstone); canceling the compacted watcher's id and
/// reusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_revision_matches_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let (e, c) = tokio::join!(compacted_script(&etcd), compacted_script(&cairn));
    let r = (|| {
        let (e, c) = (e?, c?);
        let mut diffs = Vec::new();
        for ((label, a), (_, b)) in e.iter().zip(c.iter()) {
            if a != b {
                diffs.push(format!("{label}:\n    etcd:  {a:?}\n    cairn: {b:?}"));
            }
        }
        ensure!(
            diffs.is_empty(),
            "{} step(s) differ from etcd:\n{}",
            diffs.len(),
            diffs.join("\n")
        );
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

/// The watch id of a placeholder for a response that did not come.
const MISSING: i64 = i64::MIN;
/// How long a scripted step waits for a response before recording it as
/// missing (and going on, so that every difference is reported).
const MISSING_AFTER: Duration = Duration::from_secs(5);

fn missing(what: &str) -> NResp {
    NResp {
        revision: 0,
        watch_id: MISSING,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: format!("<no response within {MISSING_AFTER:?}: {what}>"),
        fragment: false,
        events: vec![],
    }
}

async fn get(w: &mut RawWatch, what: &str) -> Result<NResp> {
    Ok(match w.try_next(MISSING_AFTER).await? {
        Some(r) => NResp::from(&r),
        None => missing(what),
    })
}

/// Every response of the script, per labelled step; where several
/// responses arrive together, they are sorted by watch id.
async fn compacted_script(m: &Member) -> Result<Vec<(&'static str, Vec<NResp>)>> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    put(&mut kv, "c/a", b"1").await?; // 2
    put(&mut kv, "c/b", b"1").await?; // 3
    put(&mut kv, "c/a", b"2").await?; // 4
    del(&mut kv, "c/b", "").await?; // 5
    put(&mut kv, "c/c", b"1").await?; // 6
    del(&mut kv, "c/c", "").await?; // 7
    put(&mut kv, "c/a", b"3").await?; // 8
    compact(&mut kv, 7).await?;
    let mut out = Vec::new();
    let mut w = RawWatch::open(
        &ch,
        &format!("{} compacted", m.kind()),
        Create::key("c/a").rev(4).id(7),
    )
    .await?;
    out.push((
        "watch id 7 from 4 (compacted at 7): Created, then the compaction cancel",
        vec![get(&mut w, "Created").await?, get(&mut w, "cancel").await?],
    ));
    // At exactly the compact revision: the events from 7 on (the delete at 7
    // is a tombstone, which compaction removes).
    w.create(Create::from_key([0u8]).rev(7).prev_kv().id(8))
        .await?;
    let created = get(&mut w, "Created").await?;
    let last = put(&mut kv, "c/d", b"1").await?; // 9
    let mut flat = Flat::default();
    for _ in 0..20 {
        let Some(r) = w.try_next(MISSING_AFTER).await? else {
            break;
        };
        flat.feed(&r);
        if flat.last_event_rev.get(&8).is_some_and(|r| *r >= last) {
            break;
        }
    }
    // How the catch-up and the live event are grouped is timing: the
    // flattened events of watcher 8 are compared as one pseudo-response.
    out.push((
        "watch id 8, all keys, from 7 = the compact revision: Created, then its events (flattened) up to a put at 9",
        vec![
            created,
            NResp {
                revision: 0,
                watch_id: 8,
                created: false,
                canceled: false,
                compact_revision: 0,
                cancel_reason: String::new(),
                fragment: false,
                events: flat.events(8),
            },
        ],
    ));
    w.cancel(7).await?;
    w.create(Create::key("c/a").id(7)).await?;
    let mut resp = Vec::new();
    for _ in 0..3 {
        let r = get(&mut w, "a response").await?;
        let stop = r.created || r.watch_id == MISSING;
        resp.push(r);
        if stop {
            break;
        }
    }
    out.push((
        "cancel the compacted watcher 7, then create a watcher with id 7 again (responses up to the Created one)",
        resp,
    ));
    w.create(Create::key("c/a").rev(1)).await?;
    out.push((
        "automatic id from 1 (compacted): Created, then the compaction cancel",
        vec![get(&mut w, "Created").await?, get(&mut w, "cancel").await?],
    ));
    put(&mut kv, "c/a", b"4").await?;
    let mut two = Vec::new();
    for _ in 0..2 {
        two.push(get(&mut w, "an event response").await?);
    }
    two.sort_by_key(|r| r.watch_id);
    out.push((
        "a put on c/a: seen by the new watcher 7 and by watcher 8",
        two,
    ));
    out.push((
        "nothing more (300 ms window)",
        w.try_next(Duration::from_millis(300))
            .await?
            .iter()
            .map(NResp::from)
            .collect(),
    ));
    Ok(out)
}

/// A negative start revision. etcd 3.6.6+ refuses it at creation: Created
/// and canceled, watch id -1, reason "etcdserver: mvcc: required revision
/// has been compacted", header at the current revision. (etcd 3.5.1 and 3.6.0
/// to 3.6.5 accept it and later send a compaction-like response; not
/// compared with the 3.5.1 reference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_start_revision_is_refused_3_6() -> Result<()> {
    let mut m = Member::start(Kind::Cairn).await?;
    let r = async {
        let ch = channel(&m).await?;
        let mut kv = kv_client(&ch);
        let cur = put(&mut kv, "n/a", b"1").await?;
        let mut w = RawWatch::open(&ch, "cairn negative", Create::key("n/a").rev(-5)).await?;
        let r = NResp::from(&w.next().await?);
        let want = NResp {
            revision: cur,
            watch_id: -1,
            created: true,
            canceled: true,
            compact_revision: 0,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            fragment: false,
            events: vec![],
        };
        ensure!(
            r == want,
            "negative start revision:\n  want {want:?}\n  got  {r:?}"
        );
        // The stream stays usable.
        w.create(Create::key("n/a")).await?;
        let r = w.expect_created().await?;
        ensure!(
            r.watch_id == 0 && !r.canceled,
            "then a normal watch: {:?}",
            NResp::from(&r)
        );
        Ok(())
    }
    .await;
    keep_on_err(r, &mut [&mut m])
}

// ---------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------

const FRAG_MAX_REQUEST: u64 = 64 * 1024;
const FRAG_KEYS: usize = 100;
const FRAG_VALUE: usize = 32 * 1024;

/// Large responses split with `fragment`: a DeleteRange of 100 keys of
/// 32 KiB seen by prev_kv watchers is one revision of ~3.2 MiB. With
/// --max-request-bytes 64 KiB both servers split it for the watcher that
/// asked for fragments (etcd's limit is max-request-bytes plus its 512 KiB
/// gRPC overhead allowance), and send it whole to the one that did not.
/// Every response (fragment flags, events per fragment, header) must equal
/// etcd's. A watcher catching up over the 100 puts is compared as well (one
/// sync pass on a quiet store in both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_match_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], Some(FRAG_MAX_REQUEST)).await?;
    let (e, c) = tokio::join!(fragment_script(&etcd), fragment_script(&cairn));
    let r = (|| {
        let (e, c) = (e?, c?);
        let mut diffs = Vec::new();
        for (name, a, b) in [("live", &e.0, &c.0), ("catch-up", &e.1, &c.1)] {
            for id in a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                let (x, y) = (a.get(id), b.get(id));
                if x != y {
                    let shape = |v: Option<&Vec<NResp>>| -> String {
                        let v = v.map(|v| v.as_slice()).unwrap_or_default();
                        let counts: Vec<usize> = v.iter().map(|r| r.events.len()).collect();
                        let flags: Vec<bool> = v.iter().map(|r| r.fragment).collect();
                        let hdrs: std::collections::BTreeSet<i64> =
                            v.iter().map(|r| r.revision).collect();
                        format!(
                            "{} responses, events per response {:?}{}, fragment flags {:?}{}, header revisions {hdrs:?}",
                            v.len(),
                            &counts[..counts.len().min(12)],
                            if counts.len() > 12 { " ..." } else { "" },
                            &flags[..flags.len().min(12)],
                            if flags.len() > 12 { " ..." } else { "" },
                        )
                    };
                    diffs.push(format!(
                        "{name} watcher {id}: responses differ\n    etcd:  {}\n    cairn: {}",
                        shape(x),
                        shape(y)
                    ));
                }
            }
        }
        ensure!(
            diffs.is_empty(),
            "fragmenting differs from etcd:\n{}",
            diffs.join("\n")
        );
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

/// (live responses per watch id, catch-up responses per watch id).
async fn fragment_script(
    m: &Member,
) -> Result<(BTreeMap<i64, Vec<NResp>>, BTreeMap<i64, Vec<NResp>>)> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let mut live = RawWatch::open(
        &ch,
        &format!("{} fragments", m.kind()),
        Create::prefix("big/").prev_kv().fragment().id(1),
    )
    .await?;
    live.create(Create::prefix("big/").prev_kv().id(2)).await?;
    let mut created = 0;
    for _ in 0..2 {
        created += live.expect_created().await?.created as usize;
    }
    ensure!(created == 2);
    let mut last_put = 0;
    for i in 0..FRAG_KEYS {
        let v = vec![b'a' + (i % 26) as u8; FRAG_VALUE];
        last_put = put(&mut kv, &format!("big/{i:03}"), &v).await?;
    }
    // Drain the 2 x 100 single-event put responses.
    let mut flat = Flat::default();
    pump_until(
        &mut live,
        &mut flat,
        Duration::from_secs(30),
        "the puts",
        |f| {
            [1, 2]
                .iter()
                .all(|id| f.last_event_rev.get(id).is_some_and(|r| *r >= last_put))
        },
    )
    .await?;
    // A watcher catching up over the puts, on its own stream (quiet store).
    let mut catch = RawWatch::open(
        &ch,
        &format!("{} fragments catch-up", m.kind()),
        Create::prefix("big/").rev(2).fragment().id(3),
    )
    .await?;
    catch.expect_created().await?;
    let mut catch_resps: BTreeMap<i64, Vec<NResp>> = BTreeMap::new();
    let mut cflat = Flat::default();
    for _ in 0..1000 {
        let r = catch.next().await?;
        cflat.feed(&r);
        catch_resps
            .entry(r.watch_id)
            .or_default()
            .push(NResp::from(&r));
        if cflat.last_event_rev.get(&3).is_some_and(|r| *r >= last_put) && !r.fragment {
            break;
        }
    }
    ensure!(
        cflat.violations.is_empty(),
        "{}: {:?}",
        m.kind(),
        cflat.violations
    );
    ensure!(
        cflat.events(3).len() == FRAG_KEYS,
        "{}: catch-up watcher got {} events, want {FRAG_KEYS}",
        m.kind(),
        cflat.events(3).len()
    );
    // One revision deleting every key.
    let drev = del(&mut kv, "big/", "big0").await?;
    let mut live_resps: BTreeMap<i64, Vec<NResp>> = BTreeMap::new();
    let mut dflat = Flat::default();
    for _ in 0..1000 {
        let r = live.next().await?;
        dflat.feed(&r);
        live_resps
            .entry(r.watch_id)
            .or_default()
            .push(NResp::from(&r));
        let done = [1, 2].iter().all(|id| dflat.events(*id).len() == FRAG_KEYS);
        if done {
            break;
        }
    }
    ensure!(
        dflat.violations.is_empty(),
        "{}: {:?}",
        m.kind(),
        dflat.violations
    );
    for id in [1, 2] {
        let evs = dflat.events(id);
        ensure!(
            evs.iter().all(|e| !e.put && e.rev() == drev && e.prev.is_some()),
            "{}: watcher {id}: the delete revision's events are not all DELETEs at {drev} with prev_kv",
            m.kind()
        );
    }
    ensure!(
        dflat.events(1) == dflat.events(2),
        "{}: the joined fragments differ from the unfragmented response",
        m.kind()
    );
    Ok((live_resps, catch_resps))
}

const MANY_MAX_REQUEST: u64 = 1024;
const MANY_KEYS: usize = 1100;
const MANY_VALUE: usize = 600;

/// A revision that splits into many fragments: with --max-request-bytes
/// 1 KiB, a DeleteRange of 1,100 keys of 600 bytes seen with prev_kv (about
/// 700 KB). etcd's limit (max-request-bytes + 512 KiB) splits it in two;
/// whatever the split, the fragment watcher must get all 1,100 events, in
/// responses equal to etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_of_a_large_revision_match_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], Some(MANY_MAX_REQUEST)).await?;
    let (e, c) = tokio::join!(many_fragments_script(&etcd), many_fragments_script(&cairn));
    let r = (|| {
        let (e, c) = (e.context("etcd")?, c.context("cairn")?);
        let shape = |v: &[NResp]| -> String {
            let counts: Vec<usize> = v.iter().map(|r| r.events.len()).collect();
            format!(
                "{} responses, {} events, events per response {:?}{}",
                v.len(),
                counts.iter().sum::<usize>(),
                &counts[..counts.len().min(12)],
                if counts.len() > 12 { " ..." } else { "" }
            )
        };
        ensure!(
            e == c,
            "the delete revision's responses differ:\n    etcd:  {}\n    cairn: {}",
            shape(&e),
            shape(&c)
        );
        Ok(())
    })();
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}

/// The fragment watcher's responses for the delete revision (complete, or
/// as far as they came within 15 s).
async fn many_fragments_script(m: &Member) -> Result<Vec<NResp>> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let mut w = RawWatch::open(
        &ch,
        &format!("{} many fragments", m.kind()),
        Create::prefix("m/").prev_kv().fragment(),
    )
    .await?;
    w.expect_created().await?;
    let mut last = 0;
    for i in 0..MANY_KEYS {
        let v = vec![b'a' + (i % 26) as u8; MANY_VALUE];
        last = put(&mut kv, &format!("m/{i:04}"), &v).await?;
    }
    let mut flat = Flat::default();
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(30),
        "the puts",
        |f| f.last_event_rev.get(&0).is_some_and(|r| *r >= last),
    )
    .await?;
    let drev = del(&mut kv, "m/", "m0").await?;
    let mut out = Vec::new();
    let mut n = 0;
    let t0 = Instant::now();
    while n < MANY_KEYS && t0.elapsed() < Duration::from_secs(15) {
        let Some(r) = w.try_next(Duration::from_secs(1)).await? else {
            continue;
        };
        let r = NResp::from(&r);
        n += r.events.iter().filter(|e| e.rev() == drev).count();
        out.push(r);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

/// WatchProgressRequest, etcd 3.6 semantics (3.5.1 answers at once with the
/// store revision even while a watcher on the stream is still catching up, so
/// its reply can claim a revision ahead of events not yet sent; fixed in
/// 3.5.8+/3.6; not compared with the 3.5.1 reference):
///
/// * on a quiet stream whose watchers are synced, the reply has watch_id -1,
///   no events, and the current revision;
/// * while a watcher on the stream catches up from history (12,000 events:
///   more than one catch-up pass), progress requests sent every 10 ms get no
///   reply claiming a revision whose events have not all been sent yet; a
///   reply does come once the stream is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_3_6_semantics() -> Result<()> {
    let mut m = Member::start(Kind::Cairn).await?;
    let r = progress_request_on(&m).await;
    keep_on_err(r, &mut [&mut m])
}

async fn progress_request_on(m: &Member) -> Result<()> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    // Quiet, synced.
    let cur = put(&mut kv, "pr/x", b"1").await?;
    let mut w = RawWatch::open(&ch, "cairn progress (synced)", Create::prefix("pr/")).await?;
    w.expect_created().await?;
    w.create(Create::key("other")).await?;
    w.expect_created().await?;
    w.progress().await?;
    let r = NResp::from(&w.next().await?);
    let want = NResp {
        revision: cur,
        watch_id: -1,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        fragment: false,
        events: vec![],
    };
    ensure!(
        r == want,
        "progress on a synced stream:\n  want {want:?}\n  got  {r:?}"
    );
    // A stream whose watchers are all canceled: no reply (etcd 3.6 replies
    // on behalf of the stream's watchers; with none, nothing is sent).
    w.cancel(0).await?;
    w.cancel(1).await?;
    for id in [0, 1] {
        let r = NResp::from(&w.next().await?);
        ensure!(r.watch_id == id && r.canceled, "cancel of {id}: {r:?}");
    }
    w.progress().await?;
    w.expect_silence(
        Duration::from_millis(500),
        "a progress request on a stream without watchers",
    )
    .await?;

    // History of 12,000 events: 120 txns of 100 puts.
    let mut last = cur;
    for t in 0..120 {
        let ops = (0..100)
            .map(|i| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: format!("pr/h/{i:03}").into_bytes(),
                    value: format!("t{t}").into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        let r = kv
            .txn(pb::TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await?
            .into_inner();
        last = rev_of(&r.header);
    }
    let total = 12_000 + 1; // + pr/x at `cur`
                            // A synced watcher and a catching-up one on one stream; progress
                            // requests pipelined right behind the creates.
    let mut s = RawWatch::open(&ch, "cairn progress (catching up)", Create::key("pr/none")).await?;
    s.create(Create::prefix("pr/").rev(2).id(5)).await?;
    let mut flat = Flat::default();
    let mut replies: Vec<(usize, i64)> = Vec::new(); // (events of watcher 5 before it, revision)
    let start = Instant::now();
    let mut next_req = Instant::now();
    for _ in 0..100_000 {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "no progress reply after catching up within 30 s ({} events of {total} received, replies {replies:?})",
                flat.events(5).len()
            );
        }
        if Instant::now() >= next_req && replies.is_empty() {
            s.progress().await?;
            next_req = Instant::now() + Duration::from_millis(10);
        }
        if let Some(r) = s.try_next(Duration::from_millis(10)).await? {
            let n = NResp::from(&r);
            if n.watch_id == -1 && n.is_progress() {
                replies.push((flat.events(5).len(), n.revision));
            }
            flat.feed(&r);
        }
        if !replies.is_empty() && flat.events(5).len() >= total {
            break;
        }
    }
    ensure!(
        flat.violations.is_empty(),
        "invariants: {:?}",
        flat.violations
    );
    for (seen, rev) in &replies {
        // Every event at or below the reply's revision must precede it.
        let owed = flat.events(5).iter().filter(|e| e.rev() <= *rev).count();
        ensure!(
            *seen >= owed,
            "a progress reply claimed revision {rev} when only {seen} of the {owed} events at or below it had been sent (the stream had an unsynced watcher)"
        );
    }
    let (_, rev) = replies[0];
    ensure!(
        rev == last,
        "the first progress reply after catching up has revision {rev}, want the current {last}"
    );
    Ok(())
}

/// Periodic progress notifications (--watch-progress-notify-interval 500ms;
/// etcd 3.5's --experimental-watch-progress-notify-interval): a watcher that
/// asked for them and sees no events gets responses with its own watch id,
/// no events, and the current revision; a watcher on the same stream that
/// did not ask gets none. After an event, notifications carry the new
/// revision. Run against both.
async fn progress_notify(kind: Kind) -> Result<()> {
    let (etcd_args, cairn_args) = progress_interval_args("500ms");
    let opts = MemberOptions {
        extra_args: if kind == Kind::Etcd {
            etcd_args
        } else {
            cairn_args
        },
        ..Default::default()
    };
    let mut m = Member::start_with(kind, opts).await?;
    let r = progress_notify_on(&m).await;
    keep_on_err(r, &mut [&mut m])
}

async fn progress_notify_on(m: &Member) -> Result<()> {
    let ch = channel(m).await?;
    let mut kv = kv_client(&ch);
    let rev = put(&mut kv, "pn/a", b"1").await?;
    let mut w = RawWatch::open(
        &ch,
        &format!("{} progress_notify", m.kind()),
        Create::prefix("pn/").progress_notify().id(1),
    )
    .await?;
    w.create(Create::prefix("q/").id(2)).await?;
    let mut flat = Flat::default();
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(10),
        "2 notifications",
        |f| f.created_order.len() == 2 && f.progress.len() >= 2,
    )
    .await?;
    ensure!(
        flat.progress.iter().all(|p| *p == (1, rev)),
        "{}: notifications (watch id, revision) {:?}, want all (1, {rev})",
        m.kind(),
        flat.progress
    );
    let rev2 = put(&mut kv, "pn/b", b"2").await?;
    let before = flat.progress.len();
    pump_until(
        &mut w,
        &mut flat,
        Duration::from_secs(10),
        "a notification after the event",
        |f| f.progress.len() > before && f.last_event_rev.get(&1) == Some(&rev2),
    )
    .await?;
    ensure!(
        flat.progress[before..].iter().all(|p| *p == (1, rev2)),
        "{}: notifications after the event at {rev2}: {:?}",
        m.kind(),
        &flat.progress[before..]
    );
    ensure!(flat.violations.is_empty(), "{:?}", flat.violations);
    ensure!(
        flat.items(2).len() == 1,
        "watcher 2 got {:?}",
        flat.items(2)
    );
    Ok(())
}

server_test!(progress_notify_periodic, progress_notify);

/// Canceling a watcher while events for it keep coming: after its Canceled
/// response, no event for that watch id arrives; the other watcher on the
/// stream keeps getting every event. Run on both.
async fn cancel_under_load(kind: Kind) -> Result<()> {
    let mut m = Member::start(kind).await?;
    let r = async {
        let ch = channel(&m).await?;
        let mut w =
            RawWatch::open(&ch, &format!("{kind} cancel"), Create::prefix("cl/").id(1)).await?;
        w.create(Create::prefix("cl/").id(2)).await?;
        let mut flat = Flat::default();
        pump_until(&mut w, &mut flat, STEP_TIMEOUT, "Created", |f| {
            f.created_order.len() == 2
        })
        .await?;
        let mut kv = kv_client(&ch);
        let writer = tokio::spawn(async move {
            let mut last = 0;
            for i in 0..300 {
                last = put(
                    &mut kv,
                    &format!("cl/{}", i % 10),
                    format!("{i}").as_bytes(),
                )
                .await?;
            }
            anyhow::Ok(last)
        });
        pump_until(&mut w, &mut flat, STEP_TIMEOUT, "some events", |f| {
            f.events(1).len() >= 50
        })
        .await?;
        w.cancel(1).await?;
        let mut canceled_at = None;
        let mut after = Vec::new();
        let last = writer.await??;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if canceled_at.is_some() && flat.last_event_rev.get(&2).is_some_and(|r| *r >= last) {
                break;
            }
            let Some(r) = w.try_next(Duration::from_millis(200)).await? else {
                continue;
            };
            if r.watch_id == 1 && r.canceled {
                canceled_at = Some(flat.responses);
            } else if r.watch_id == 1 && canceled_at.is_some() {
                after.push(NResp::from(&r));
            }
            flat.feed(&r);
        }
        ensure!(
            canceled_at.is_some(),
            "{kind}: no Canceled response for watcher 1"
        );
        ensure!(
            after.is_empty(),
            "{kind}: responses for watcher 1 after its Canceled one: {after:?}"
        );
        ensure!(
            flat.last_event_rev.get(&2).is_some_and(|r| *r >= last),
            "{kind}: watcher 2 did not get every event"
        );
        ensure!(flat.violations.is_empty(), "{:?}", flat.violations);
        Ok(())
    }
    .await;
    keep_on_err(r, &mut [&mut m])
}

server_test!(cancel_under_load, cancel_under_load, ignore_etcd);

/// Watchers created "now" (start revision 0) while writers keep writing:
/// each one gets exactly the writes on its prefix after the revision of its
/// Created header, with no gap and no duplicate at the switch. Run on both.
async fn watch_from_now_under_load(kind: Kind) -> Result<()> {
    let mut m = Member::start(kind).await?;
    let r = async {
        let ch = channel(&m).await?;
        let model = Arc::new(Mutex::new(Model::default()));
        let mut writers = tokio::task::JoinSet::new();
        for t in 0..4 {
            let (mut kv, model) = (kv_client(&ch), model.clone());
            writers.spawn(async move {
                for i in 0..150 {
                    let k = format!("now/{}/{t}-{}", i % 2, i % 6);
                    let v = format!("{t}-{i}");
                    let rev = put(&mut kv, &k, v.as_bytes()).await?;
                    model.lock().await.put(k.as_bytes(), v.as_bytes(), rev, 0);
                }
                anyhow::Ok(())
            });
        }
        let specs: Vec<Create> = (0..16)
            .map(|i| Create::prefix(format!("now/{}/", i % 2)).prev_kv())
            .collect();
        let mut w = RawWatch::open(&ch, &format!("{kind} from now"), specs[0].clone()).await?;
        let mut flat = Flat::default();
        let mut created: Vec<(i64, i64)> = Vec::new(); // (watch id, Created header revision)
        for (i, spec) in specs.iter().enumerate() {
            if i > 0 {
                w.create(spec.clone()).await?;
            }
            let before = flat.created_order.len();
            pump_until(&mut w, &mut flat, STEP_TIMEOUT, "Created", |f| f.created_order.len() > before).await?;
            let id = flat.created_order[before];
            let Some(Item::Created { revision, .. }) = flat.items(id).first().cloned() else {
                bail!("no Created item for watcher {id}");
            };
            created.push((id, revision));
            // Spread the creations over the writes (polling a condition).
            let target = flat.responses + 20;
            let _ = pump_until(&mut w, &mut flat, Duration::from_millis(300), "more responses", |f| {
                f.responses >= target
            })
            .await;
        }
        while let Some(r) = writers.join_next().await {
            r??;
        }
        let mut kv = kv_client(&ch);
        let mut ends = Vec::new();
        for p in ["now/0/", "now/1/"] {
            let k = format!("{p}zz-end");
            let rev = put(&mut kv, &k, b"end").await?;
            model.lock().await.put(k.as_bytes(), b"end", rev, 0);
            ends.push(rev);
        }
        let ends2 = ends.clone();
        let ids: Vec<(i64, usize)> = created.iter().enumerate().map(|(i, (id, _))| (*id, i % 2)).collect();
        pump_until(&mut w, &mut flat, Duration::from_secs(30), "every watcher's last event", |f| {
            ids.iter().all(|(id, p)| f.last_event_rev.get(id).is_some_and(|r| *r >= ends2[*p]))
        })
        .await?;
        ensure!(flat.violations.is_empty(), "{:?}", flat.violations);
        let model = model.lock().await;
        let during = created.iter().filter(|(_, hdr)| *hdr < ends[0] - 1).count();
        eprintln!("{kind}: {during} of {} watchers created while writes flowed (Created revisions {:?}, last write {})", created.len(), created.iter().map(|c| c.1).collect::<Vec<_>>(), ends[1]);
        for (i, (id, hdr)) in created.iter().enumerate() {
            let want = model.expected(&specs[i], hdr + 1);
            if let Some(d) = first_difference(&want, &flat.events(*id)) {
                bail!(
                    "{kind}: watcher {id} created at header revision {hdr} (left: the writes after it, right: received): {d}"
                );
            }
        }
        Ok(())
    }
    .await;
    keep_on_err(r, &mut [&mut m])
}

/// Under concurrent writes an applied batch holds several revisions, and
/// Cairn answers a synced watcher with one response for all of them (etcd
/// groups revisions only when a watcher catches up). Every watcher must still
/// get exactly the acknowledged writes it covers, in order, shaped as it
/// asked (prev_kv, filters), with headers at or above its events. Rounds of
/// concurrent writes repeat, up to a bound, until some response has covered
/// several revisions, so the grouping is known to have been exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_revisions_keep_every_event_cairn() -> Result<()> {
    let mut m = Member::start(Kind::Cairn).await?;
    let r = async {
        let ch = channel(&m).await?;
        let specs = [
            Create::prefix("batch/").prev_kv(),
            Create::prefix("batch/"),
            Create::prefix("batch/").no_delete(),
            Create::prefix("batch/3/").prev_kv().no_put(),
            Create::range("batch/0/", "batch/4/").prev_kv(),
        ];
        let mut w = RawWatch::open(&ch, "cairn grouped", specs[0].clone()).await?;
        let mut flat = Flat::default();
        for s in &specs[1..] {
            w.create(s.clone()).await?;
        }
        pump_until(&mut w, &mut flat, STEP_TIMEOUT, "5 Created", |f| {
            f.created_order.len() == specs.len()
        })
        .await?;
        let mut created = Vec::new();
        for &id in &flat.created_order {
            let Some(Item::Created { revision, .. }) = flat.items(id).first().cloned() else {
                bail!("no Created item for watcher {id}");
            };
            created.push((id, revision));
        }
        let model = Arc::new(Mutex::new(Model::default()));
        let mut last = 0;
        for round in 0..5 {
            let mut writers = tokio::task::JoinSet::new();
            for t in 0..8 {
                let (mut kv, model) = (kv_client(&ch), model.clone());
                writers.spawn(async move {
                    let mut last = 0;
                    for i in 0..60 {
                        // Each writer owns its keys, so its own order is
                        // each key's order.
                        let k = format!("batch/{t}/{round}-{}", i % 3);
                        let rev = if i % 5 == 4 {
                            let rev = del(&mut kv, &k, "").await?;
                            model.lock().await.delete(k.as_bytes(), rev);
                            rev
                        } else {
                            let v = format!("{t}-{round}-{i}");
                            let rev = put(&mut kv, &k, v.as_bytes()).await?;
                            model.lock().await.put(k.as_bytes(), v.as_bytes(), rev, 0);
                            rev
                        };
                        last = last.max(rev);
                    }
                    anyhow::Ok(last)
                });
            }
            while let Some(r) = writers.join_next().await {
                last = r??.max(last);
            }
            // Watcher 0 sees every write.
            let id0 = created[0].0;
            pump_until(
                &mut w,
                &mut flat,
                Duration::from_secs(30),
                "the round's last write",
                |f| f.last_event_rev.get(&id0).is_some_and(|r| *r >= last),
            )
            .await?;
            if flat.multi_revision > 0 {
                break;
            }
        }
        ensure!(
            flat.multi_revision > 0,
            "no response covered several revisions in 5 rounds of 8 concurrent writers"
        );
        // The other watchers' last events are at or below `last`; a sentinel
        // write every watcher sees (a put for most, a delete for no_put) ends them.
        let mut kv = kv_client(&ch);
        let k = "batch/3/zz-end";
        let rev = put(&mut kv, k, b"end").await?;
        model.lock().await.put(k.as_bytes(), b"end", rev, 0);
        let end = del(&mut kv, k, "").await?;
        model.lock().await.delete(k.as_bytes(), end);
        let ids: Vec<i64> = created
            .iter()
            .map(|c| c.0)
            .filter(|id| *id != created[2].0)
            .collect();
        pump_until(
            &mut w,
            &mut flat,
            Duration::from_secs(30),
            "the final delete",
            |f| {
                ids.iter()
                    .all(|id| f.last_event_rev.get(id).is_some_and(|r| *r >= end))
            },
        )
        .await?;
        pump_until(
            &mut w,
            &mut flat,
            Duration::from_secs(30),
            "the final put",
            |f| {
                f.last_event_rev
                    .get(&created[2].0)
                    .is_some_and(|r| *r >= rev)
            },
        )
        .await?;
        ensure!(flat.violations.is_empty(), "{:?}", flat.violations);
        let model = model.lock().await;
        for (spec, (id, hdr)) in specs.iter().zip(&created) {
            let want = model.expected(spec, hdr + 1);
            if let Some(d) = first_difference(&want, &flat.events(*id)) {
                bail!("watcher {id} (left: the acknowledged writes, right: received): {d}");
            }
        }
        eprintln!(
            "{} responses, {} of them covering several revisions",
            flat.responses, flat.multi_revision
        );
        Ok(())
    }
    .await;
    keep_on_err(r, &mut [&mut m])
}

server_test!(
    watch_from_now_under_load,
    watch_from_now_under_load,
    ignore_etcd
);

// ---------------------------------------------------------------------------
// Slow watchers
// ---------------------------------------------------------------------------

const SLOW_WRITERS: usize = 8;
const SLOW_PUTS_PER_WRITER: usize = 300;
const SLOW_VALUE: usize = 1024;

/// A watcher whose client does not read (HTTP/2 windows of 64 KiB, so the
/// server's sends stall almost at once) never blocks writers: 2,400 puts of
/// 1 KiB (~5 MiB of events with prev_kv, well beyond the window and the
/// server's per-stream buffer) all complete while it is not read, and a
/// watcher on another connection gets every event meanwhile. When the slow
/// client finally reads, it gets every event exactly once, in order, with
/// the right prev_kv: it fell behind and caught up from history.
async fn slow_watcher(kind: Kind) -> Result<()> {
    let mut m = Member::start(kind).await?;
    let r = slow_watcher_on(&m).await;
    keep_on_err(r, &mut [&mut m])
}

async fn slow_watcher_on(m: &Member) -> Result<()> {
    let spec = Create::prefix("s/").prev_kv();
    let slow_ch = channel_small_window(m, 65_535).await?;
    let mut slow =
        RawWatch::open_undrained(&slow_ch, &format!("{} slow", m.kind()), spec.clone()).await?;
    let ch = channel(m).await?;
    let mut fast = RawWatch::open(&ch, &format!("{} fast", m.kind()), spec.clone()).await?;
    let mut fflat = Flat::default();
    pump_until(&mut fast, &mut fflat, STEP_TIMEOUT, "Created", |f| {
        f.created_order.len() == 1
    })
    .await?;
    let start = put(&mut kv_client(&ch), "s/start", b"0").await?;
    let model = Arc::new(Mutex::new(Model::default()));
    model.lock().await.put(b"s/start", b"0", start, 0);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..SLOW_WRITERS {
        let (mut kv, model) = (kv_client(&ch), model.clone());
        tasks.spawn(async move {
            for i in 0..SLOW_PUTS_PER_WRITER {
                let k = format!("s/{t}/{}", i % 25);
                let mut v = format!("{t}-{i}-").into_bytes();
                v.resize(SLOW_VALUE, b'x');
                let rev = put(&mut kv, &k, &v).await?;
                model.lock().await.put(k.as_bytes(), &v, rev, 0);
            }
            anyhow::Ok(())
        });
    }
    let deadline = Duration::from_secs(90);
    for _ in 0..SLOW_WRITERS {
        match tokio::time::timeout(deadline.saturating_sub(t0.elapsed()), tasks.join_next()).await {
            Ok(Some(r)) => r??,
            Ok(None) => break,
            Err(_) => bail!(
                "{}: writers did not finish within {deadline:?} while a watcher was not read",
                m.kind()
            ),
        }
    }
    let write_time = t0.elapsed();
    let last = *model.lock().await.events.keys().last().unwrap();
    pump_until(
        &mut fast,
        &mut fflat,
        Duration::from_secs(30),
        "every event (fast watcher)",
        |f| f.last_event_rev.get(&0).is_some_and(|r| *r >= last),
    )
    .await?;
    let want = model.lock().await.expected(&spec, start);
    ensure!(fflat.violations.is_empty(), "fast: {:?}", fflat.violations);
    if let Some(d) = first_difference(&want, &fflat.events(0)) {
        bail!(
            "{}: fast watcher (left: expected, right: received): {d}",
            m.kind()
        );
    }
    // Now read the slow one.
    let mut sflat = Flat::default();
    pump_until(
        &mut slow,
        &mut sflat,
        Duration::from_secs(60),
        "every event (slow watcher)",
        |f| f.last_event_rev.get(&0).is_some_and(|r| *r >= last),
    )
    .await?;
    ensure!(sflat.violations.is_empty(), "slow: {:?}", sflat.violations);
    if let Some(d) = first_difference(&want, &sflat.events(0)) {
        bail!(
            "{}: slow watcher (left: expected, right: received): {d}",
            m.kind()
        );
    }
    // Bounded buffers: the server cannot have queued one response per event
    // for the unread stream; what did not fit was read back from history,
    // many revisions per response (etcd and Cairn both do so). One response
    // per event would mean every event was buffered for the slow client.
    ensure!(
        sflat.responses < want.len(),
        "{}: the slow watcher got {} responses for {} events: every event was queued for a client that did not read (unbounded buffering?)",
        m.kind(),
        sflat.responses,
        want.len()
    );
    eprintln!(
        "{}: {} puts in {write_time:?} with an unread watcher; slow watcher got {} events in {} responses",
        m.kind(),
        want.len(),
        sflat.events(0).len(),
        sflat.responses
    );
    Ok(())
}

server_test!(slow_watcher_never_blocks_writers, slow_watcher, ignore_etcd);

/// A client that closes its sending side keeps receiving its watchers' events:
/// etcd ignores the half-close, and only the end of the call ends the watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_stream_keeps_delivering_matches_etcd() -> Result<()> {
    let (mut etcd, mut cairn) = start_pair(&[], &[], None).await?;
    let r = async {
        for m in [&etcd, &cairn] {
            let ch = channel(m).await?;
            let mut kv = kv_client(&ch);
            let mut w = RawWatch::open(
                &ch,
                &format!("{} half-close", m.kind()),
                Create::prefix("hc/"),
            )
            .await?;
            w.expect_created().await?;
            w.close_send();
            let rev = put(&mut kv, "hc/a", b"1").await?;
            let resp = w.next().await?;
            let got: Vec<_> = resp
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| (kv.key.clone(), kv.mod_revision))
                .collect();
            ensure!(
                got == vec![(b"hc/a".to_vec(), rev)],
                "{}: after half-close got {got:?}",
                m.kind()
            );
        }
        Ok(())
    }
    .await;
    keep_on_err(r, &mut [&mut etcd, &mut cairn])
}
