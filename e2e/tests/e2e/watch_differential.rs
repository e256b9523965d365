//! Differential Watch test: a real etcd 3.5 and Cairn under the same seeded
//! random write load, with the same watchers, must send every watcher the
//! same flattened sequence of items: its Created response (header revision,
//! and for refused creations canceled + reason), every event with every
//! field of kv and prev_kv, and a Canceled (compact_revision, reason) when a
//! watcher is canceled for compaction.
//!
//! What is deliberately NOT compared: how events are grouped into
//! responses. etcd sends a synced watcher one response per revision, but a
//! watcher catching up from history gets whatever its sync pass read, so the
//! grouping depends on timing in etcd itself; the same holds for the header
//! revision of those responses. Instead every response on both sides must
//! satisfy the invariants of `cairn_e2e::events::Flat::feed` (events in revision order,
//! header revision >= every event revision in it, a watcher's revisions never
//! go back, fragments contiguous). The header revision of a compaction
//! cancel is compared in `watch_semantics`.
//!
//! For each seed (`CAIRN_WATCH_DIFF_SEEDS`, default "11,12,13") a fresh etcd and
//! Cairn get `CAIRN_WATCH_DIFF_OPS` (default 400) random writes (puts with
//! and without a lease, deletes, range deletes, txns with several puts and
//! deletes on distinct keys, one lease revoke deleting many keys in one
//! revision, one physical compaction) on three watch streams carrying:
//! initial watchers (all keys, prefixes, a single key, ranges, from-key,
//! prev_kv, NOPUT, NODELETE, fragment), and watchers created during the load
//! at start revisions 0, current+1, future (current+2..5), in the past, at
//! exactly the compact revision and below it (canceled), with automatic and
//! client-chosen watch ids (sometimes duplicated: refused).
//!
//! Determinism: watchers starting in the past are only created after the
//! compaction, so no watcher can be caught unsynced by it (that race is
//! timing-dependent in etcd too). The end of each watcher's sequence is
//! known exactly: after the load, a sentinel key inside every watcher's
//! range is put and deleted; the last sentinel write a watcher matches is its
//! last event, and the test waits for it (with a deadline), then checks that
//! nothing more arrives within a short window.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::dump::dump;
use cairn_e2e::events::*;
use cairn_e2e::failpoints;
use cairn_e2e::raw::*;
use cairn_e2e::watch::*;
use cairn_e2e::{Kind, Member, MemberOptions};
use cairn_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::util::*;

const LEASE: i64 = 0x5eed;
const STREAMS: usize = 3;

/// The keyspace of the load.
fn keys() -> Vec<Vec<u8>> {
    let mut k = Vec::new();
    for i in 0..8 {
        k.push(format!("a/{i}").into_bytes());
    }
    for i in 0..4 {
        k.push(format!("a/x/{i}").into_bytes());
    }
    for i in 0..6 {
        k.push(format!("b/{i}").into_bytes());
    }
    for i in 0..4 {
        k.push(format!("c/{i}").into_bytes());
    }
    k.push(b"z".to_vec());
    k
}

/// Key ranges watchers are made of.
fn spec_pool() -> Vec<Create> {
    vec![
        Create::from_key([0u8]),
        Create::prefix("a/"),
        Create::prefix("a/x/"),
        Create::key("b/3"),
        Create::range("a/3", "b/5"),
        Create::from_key("b/"),
        Create::prefix("c/"),
        Create::key("z"),
        Create::range("a/x/1", "a/x/3"),
        Create::prefix("b/"),
    ]
}

/// A key inside the watcher's range, for the end-of-load sentinel.
fn sentinel_key(c: &Create) -> Vec<u8> {
    let k = &c.0.key;
    let candidate = if c.0.range_end.is_empty() {
        k.clone()
    } else {
        let mut s = k.clone();
        s.extend_from_slice(b"~s");
        s
    };
    assert!(
        c.contains(&candidate),
        "sentinel {candidate:?} not in {c:?}"
    );
    candidate
}

struct Side {
    kind: Kind,
    member: Member,
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
    streams: Vec<RawWatch>,
    flats: Vec<Flat>,
}

/// A watcher of the test, the same on both sides.
#[derive(Clone, Debug)]
struct W {
    stream: usize,
    id: i64,
    create: Create,
    /// The first revision it can be sent.
    from: i64,
    /// Whether it must be canceled for compaction.
    compacted: bool,
    /// The store revision when it was created.
    created_at: i64,
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Del {
        key: Vec<u8>,
        end: Vec<u8>,
    },
    Txn {
        cmp_key: Vec<u8>,
        version: i64,
        then: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        otherwise: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    Compact {
        rev: i64,
    },
    Revoke,
    Regrant,
}

fn req_op(k: &[u8], v: &Option<Vec<u8>>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(match v {
            Some(v) => Request::RequestPut(pb::PutRequest {
                key: k.to_vec(),
                value: v.clone(),
                ..Default::default()
            }),
            None => Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: k.to_vec(),
                ..Default::default()
            }),
        }),
    }
}

/// Applies one op; returns the response header revision (or the error as
/// "code: message", which must be equal on both sides too).
async fn apply(side: &mut Side, op: &Op) -> Result<std::result::Result<i64, String>> {
    let r = match op {
        Op::Put { key, value, lease } => side
            .kv
            .put(pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease: *lease,
                ..Default::default()
            })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
        Op::Del { key, end } => side
            .kv
            .delete_range(pb::DeleteRangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                ..Default::default()
            })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
        Op::Txn {
            cmp_key,
            version,
            then,
            otherwise,
        } => side
            .kv
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: cmp_key.clone(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::Version(*version)),
                }],
                success: then.iter().map(|(k, v)| req_op(k, v)).collect(),
                failure: otherwise.iter().map(|(k, v)| req_op(k, v)).collect(),
            })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
        Op::Compact { rev } => side
            .kv
            .compact(pb::CompactionRequest {
                revision: *rev,
                physical: true,
            })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
        Op::Revoke => side
            .lease
            .lease_revoke(pb::LeaseRevokeRequest { id: LEASE })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
        Op::Regrant => side
            .lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 3600,
                id: LEASE,
            })
            .await
            .map(|r| rev_of(&r.into_inner().header)),
    };
    Ok(r.map_err(|s| {
        let (c, m) = status_pair(&s);
        format!("{c}: {m}")
    }))
}

/// Distinct random keys.
fn pick_keys(rng: &mut StdRng, ks: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for _ in 0..50 {
        if out.len() == n {
            break;
        }
        let k = ks[rng.random_range(0..ks.len())].clone();
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

fn value(rng: &mut StdRng, i: usize) -> Vec<u8> {
    let len = if rng.random_bool(0.05) {
        2048
    } else {
        rng.random_range(0..24)
    };
    let mut v = format!("v{i}-").into_bytes();
    v.extend((0..len).map(|j| b'a' + ((i + j) % 26) as u8));
    v
}

fn random_write(rng: &mut StdRng, ks: &[Vec<u8>], i: usize, lease_live: bool) -> Op {
    let roll = rng.random_range(0..100);
    if roll < 55 {
        let key = ks[rng.random_range(0..ks.len())].clone();
        let lease = if lease_live && rng.random_bool(0.3) {
            LEASE
        } else {
            0
        };
        Op::Put {
            key,
            value: value(rng, i),
            lease,
        }
    } else if roll < 72 {
        Op::Del {
            key: ks[rng.random_range(0..ks.len())].clone(),
            end: Vec::new(),
        }
    } else if roll < 80 {
        let (key, end): (&[u8], &[u8]) = match rng.random_range(0..4) {
            0 => (b"a/", b"a0"),
            1 => (b"a/x/", b"a/x0"),
            2 => (b"a/2", b"a/6"),
            _ => (b"b/", b"b0"),
        };
        Op::Del {
            key: key.to_vec(),
            end: end.to_vec(),
        }
    } else {
        let n = rng.random_range(2..=4);
        let picked = pick_keys(rng, ks, 2 * n);
        let (a, b) = picked.split_at(picked.len() / 2);
        let mk = |rng: &mut StdRng, ks: &[Vec<u8>]| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            ks.iter()
                .map(|k| {
                    let v = if rng.random_bool(0.7) {
                        Some(value(rng, i))
                    } else {
                        None
                    };
                    (k.clone(), v)
                })
                .collect()
        };
        Op::Txn {
            cmp_key: ks[rng.random_range(0..ks.len())].clone(),
            version: rng.random_range(0..3),
            then: mk(rng, a),
            otherwise: mk(rng, b),
        }
    }
}

/// A random watcher spec (filters, prev_kv, fragment, id).
fn random_spec(rng: &mut StdRng) -> Create {
    let pool = spec_pool();
    let mut c = pool[rng.random_range(0..pool.len())].clone();
    if rng.random_bool(0.5) {
        c = c.prev_kv();
    }
    match rng.random_range(0..10) {
        0 | 1 => c = c.no_put(),
        2 | 3 => c = c.no_delete(),
        _ => {}
    }
    if rng.random_bool(0.3) {
        c = c.fragment();
    }
    // Client-chosen ids from a small set, so duplicates (refused) happen.
    if rng.random_bool(0.4) {
        c = c.id(rng.random_range(1..8));
    }
    c
}

async fn pair_start(cairn_failpoints: &[&str]) -> Result<(Side, Side)> {
    let (e, c) = if cairn_failpoints.is_empty() {
        start_pair(&[], &[], None).await?
    } else {
        let opts = MemberOptions {
            failpoints: cairn_failpoints.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (e, c) = tokio::join!(
            Member::start(Kind::Etcd),
            Member::start_with(Kind::Cairn, opts)
        );
        (e.context("starting etcd")?, c.context("starting cairn")?)
    };
    Ok((side(e).await?, side(c).await?))
}

async fn side(member: Member) -> Result<Side> {
    let ch = channel(&member).await?;
    Ok(Side {
        kind: member.kind(),
        kv: kv_client(&ch),
        lease: lease_client(&ch),
        member,
        streams: Vec::new(),
        flats: Vec::new(),
    })
}

/// Creates a watcher on stream `s` of a side and waits for its Created
/// response; returns the watch id it got (-1 if refused).
async fn create_on(side: &mut Side, s: usize, c: &Create) -> Result<(i64, Item)> {
    let before = side.flats[s].created_order.len();
    side.streams[s].create(c.clone()).await?;
    let what = format!("{} stream {s}: Created for {c:?}", side.kind);
    pump_until(
        &mut side.streams[s],
        &mut side.flats[s],
        STEP_TIMEOUT,
        &what,
        |f| f.created_order.len() > before,
    )
    .await?;
    let f = &side.flats[s];
    let id = f.created_order[before];
    let item = f
        .items(id)
        .iter()
        .rev()
        .find(|i| matches!(i, Item::Created { .. }))
        .cloned()
        .context("created item")?;
    Ok((id, item))
}

async fn run_seed(seed: u64, ops: usize, cairn_failpoints: &[&str]) -> Result<()> {
    let (mut etcd, mut cairn) = pair_start(cairn_failpoints).await?;
    let result = run_seed_on(seed, ops, &mut etcd, &mut cairn).await;
    if result.is_err() {
        etcd.member.keep_on_drop();
        cairn.member.keep_on_drop();
    }
    result.with_context(|| {
        format!(
            "seed {seed} (reproduce: CAIRN_WATCH_DIFF_SEEDS={seed} CAIRN_WATCH_DIFF_OPS={ops})\n{}",
            cairn.member.describe()
        )
    })
}

async fn run_seed_on(seed: u64, n_ops: usize, etcd: &mut Side, cairn: &mut Side) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ks = keys();
    let mut watchers: Vec<W> = Vec::new();
    let mut current = 1i64;
    let mut compact_rev = 0i64;
    let mut lease_live = true;
    // Differences found on the way (the comparison at the end adds more).
    let mut diffs: Vec<String> = Vec::new();

    for side in [&mut *etcd, &mut *cairn] {
        apply(side, &Op::Regrant)
            .await?
            .map_err(|e| anyhow::anyhow!("{} lease grant: {e}", side.kind))?;
    }

    // Initial watchers, three streams, all from "now" (revision 2).
    let initial: Vec<(usize, Create)> = vec![
        (0, Create::from_key([0u8])),
        (0, Create::prefix("a/").prev_kv().id(10)),
        (0, Create::key("b/3").prev_kv()),
        (1, Create::prefix("a/x/").prev_kv().no_delete()),
        (1, Create::range("a/3", "b/5").prev_kv().no_put()),
        (1, Create::from_key("b/").fragment()),
        (2, Create::prefix("c/").prev_kv()),
        (2, Create::prefix("b/").no_delete().id(3)),
        (2, Create::key("z").prev_kv().no_put()),
    ];
    for (s, c) in &initial {
        let mut ids = Vec::new();
        for side in [&mut *etcd, &mut *cairn] {
            if side.streams.len() == *s {
                let ch = channel(&side.member).await?;
                let what = format!("{} stream {s}", side.kind);
                side.streams
                    .push(RawWatch::open(&ch, &what, c.clone()).await?);
                side.flats.push(Flat::default());
                let before = 0;
                let st = &mut side.streams[*s];
                pump_until(
                    st,
                    &mut side.flats[*s],
                    STEP_TIMEOUT,
                    "first Created",
                    |f| f.created_order.len() > before,
                )
                .await?;
                let id = side.flats[*s].created_order[0];
                ids.push((id, side.flats[*s].items(id)[0].clone()));
            } else {
                ids.push(create_on(side, *s, c).await?);
            }
        }
        ensure!(
            ids[0].0 == ids[1].0,
            "initial watcher {c:?} on stream {s}: etcd created {:?}, cairn created {:?}",
            ids[0],
            ids[1]
        );
        if ids[0] != ids[1] {
            diffs.push(format!(
                "initial watcher {c:?} on stream {s}: etcd created {:?}, cairn created {:?}",
                ids[0], ids[1]
            ));
        }
        watchers.push(W {
            stream: *s,
            id: ids[0].0,
            create: c.clone(),
            from: 2,
            compacted: false,
            created_at: 1,
        });
    }
    ensure!(etcd.streams.len() == STREAMS && cairn.streams.len() == STREAMS);

    let compact_at = n_ops / 2;
    let revoke_at = n_ops * 3 / 4;
    for i in 0..n_ops {
        // Watchers created during the load.
        if i % 15 == 7 {
            let s = rng.random_range(0..STREAMS);
            let c = random_spec(&mut rng);
            let start = if compact_rev > 0 {
                match rng.random_range(0..7) {
                    0 => 0,
                    1 => current + 1,
                    2 => current + rng.random_range(2..=5),
                    3 => compact_rev,
                    4 if compact_rev > 1 => rng.random_range(1..compact_rev),
                    _ => rng.random_range(compact_rev..=current),
                }
            } else {
                // Before the compaction: no start in the past (see the top).
                match rng.random_range(0..3) {
                    0 => 0,
                    1 => current + 1,
                    _ => current + rng.random_range(2..=5),
                }
            };
            let c = c.rev(start);
            let e = create_on(etcd, s, &c).await?;
            let k = create_on(cairn, s, &c).await?;
            // Different ids would make the rest incomparable; a different
            // Created response is recorded and the run goes on.
            ensure!(
                e.0 == k.0,
                "op {i}: watcher {c:?} on stream {s}: etcd created {e:?}, cairn created {k:?}"
            );
            if e != k {
                diffs.push(format!(
                    "op {i}: watcher {c:?} on stream {s}: etcd created {e:?}, cairn created {k:?}"
                ));
            }
            if e.0 != -1 {
                let from = if start == 0 { current + 1 } else { start };
                watchers.push(W {
                    stream: s,
                    id: e.0,
                    create: c,
                    from,
                    compacted: start != 0 && start < compact_rev,
                    created_at: current,
                });
            }
        }
        let op = if i == compact_at {
            Op::Compact {
                rev: (current - 15).max(1),
            }
        } else if i == revoke_at {
            Op::Revoke
        } else if i == revoke_at + 10 {
            Op::Regrant
        } else {
            random_write(&mut rng, &ks, i, lease_live)
        };
        let (re, rc) = tokio::join!(apply(etcd, &op), apply(cairn, &op));
        let (re, rc) = (re?, rc?);
        ensure!(
            re == rc,
            "op {i} {op:?}: etcd answered {re:?}, cairn answered {rc:?}"
        );
        match (&op, &re) {
            (Op::Compact { rev }, Ok(_)) => compact_rev = *rev,
            (Op::Revoke, _) => lease_live = false,
            (Op::Regrant, _) => lease_live = true,
            _ => {}
        }
        if let Ok(r) = re {
            current = current.max(r);
        }
    }

    // Sentinels: put and delete a key inside every watcher's range.
    let mut sentinel_writes: Vec<(i64, Vec<u8>, bool)> = Vec::new();
    for (n, w) in watchers.iter().enumerate() {
        let key = sentinel_key(&w.create);
        for (j, op) in [
            Op::Put {
                key: key.clone(),
                value: format!("sentinel-{n}").into_bytes(),
                lease: 0,
            },
            Op::Del {
                key: key.clone(),
                end: Vec::new(),
            },
        ]
        .iter()
        .enumerate()
        {
            let (re, rc) = tokio::join!(apply(etcd, op), apply(cairn, op));
            let (re, rc) = (re?, rc?);
            ensure!(re == rc, "sentinel {op:?}: etcd {re:?}, cairn {rc:?}");
            let rev = re.map_err(|e| anyhow::anyhow!("sentinel {op:?}: {e}"))?;
            sentinel_writes.push((rev, key.clone(), j == 0));
        }
    }

    // Wait for every watcher's last event (or its compaction cancel).
    for side in [&mut *etcd, &mut *cairn] {
        for s in 0..STREAMS {
            let mine: Vec<(i64, Option<i64>, bool)> = watchers
                .iter()
                .filter(|w| w.stream == s)
                .map(|w| {
                    let target = sentinel_writes
                        .iter()
                        .filter(|(rev, key, put)| {
                            *rev >= w.from && w.create.contains(key) && w.create.passes(*put)
                        })
                        .map(|(rev, _, _)| *rev)
                        .max();
                    (w.id, target, w.compacted)
                })
                .collect();
            let what = format!(
                "{} stream {s}: every watcher's last event {mine:?}",
                side.kind
            );
            pump_until(
                &mut side.streams[s],
                &mut side.flats[s],
                Duration::from_secs(30),
                &what,
                |f| {
                    mine.iter().all(|(id, target, compacted)| {
                        if *compacted {
                            f.canceled(*id)
                        } else {
                            target.is_none_or(|t| f.last_event_rev.get(id).is_some_and(|r| *r >= t))
                        }
                    })
                },
            )
            .await?;
        }
    }
    // Nothing more may arrive: every write is done and every watcher has its
    // last event. (Waiting out this window is the check.)
    let quiet = Duration::from_millis(300);
    for side in [&mut *etcd, &mut *cairn] {
        for s in 0..STREAMS {
            while let Some(r) = side.streams[s].try_next(quiet).await? {
                side.flats[s].feed(&r);
            }
        }
    }

    // Compare.
    for side in [&*etcd, &*cairn] {
        for (s, f) in side.flats.iter().enumerate() {
            for v in &f.violations {
                diffs.push(format!("{} stream {s}: invariant violated: {v}", side.kind));
            }
            if !f.progress.is_empty() {
                diffs.push(format!(
                    "{} stream {s}: unexpected progress responses {:?} (no watcher asked)",
                    side.kind, f.progress
                ));
            }
        }
    }
    for s in 0..STREAMS {
        let (fe, fc) = (&etcd.flats[s], &cairn.flats[s]);
        let ids: std::collections::BTreeSet<i64> =
            fe.items.keys().chain(fc.items.keys()).copied().collect();
        for id in ids {
            if let Some(d) = first_difference(fe.items(id), fc.items(id)) {
                let w = watchers.iter().find(|w| w.stream == s && w.id == id);
                diffs.push(format!("stream {s} watch id {id} ({w:?}): {d}"));
            }
        }
    }
    let (de, dc) = (
        dump(&mut etcd.member.client().await?).await?,
        dump(&mut cairn.member.client().await?).await?,
    );
    if de != dc {
        diffs.push(format!(
            "final keyspace differs:\n  etcd  {de:?}\n  cairn {dc:?}"
        ));
    }
    let total: usize = etcd
        .flats
        .iter()
        .flat_map(|f| f.items.values())
        .map(|v| v.len())
        .sum();
    let all: Vec<&Item> = etcd
        .flats
        .iter()
        .flat_map(|f| f.items.values().flatten())
        .collect();
    let count = |p: &dyn Fn(&Item) -> bool| all.iter().filter(|i| p(i)).count();
    let multi_delete_revs = {
        let mut per_rev: BTreeMap<i64, std::collections::BTreeSet<&[u8]>> = BTreeMap::new();
        for i in &all {
            if let Item::Event(e) = i {
                if !e.put {
                    per_rev.entry(e.rev()).or_default().insert(&e.kv.key);
                }
            }
        }
        per_rev.values().filter(|keys| keys.len() > 1).count()
    };
    eprintln!(
        "watch_differential seed {seed}: {n_ops} ops, {} watchers ({} future, {} in the past, {} compacted), {total} items per side \
         ({} refused creates, {} compaction cancels, {} events with prev_kv, {} revisions with several deletes), final revision {current}",
        watchers.len(),
        watchers.iter().filter(|w| w.from > w.created_at + 1).count(),
        watchers.iter().filter(|w| w.from <= w.created_at).count(),
        watchers.iter().filter(|w| w.compacted).count(),
        count(&|i| matches!(i, Item::Created { canceled: true, .. })),
        count(&|i| matches!(i, Item::Canceled { compact_revision, .. } if *compact_revision > 0)),
        count(&|i| matches!(i, Item::Event(e) if e.prev.is_some())),
        multi_delete_revs,
    );
    if !diffs.is_empty() {
        bail!("{} difference(s):\n{}", diffs.len(), diffs.join("\n"));
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    std::env::var("CAIRN_WATCH_DIFF_SEEDS")
        .unwrap_or_else(|_| "11,12,13".to_string())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("CAIRN_WATCH_DIFF_SEEDS: comma-separated integers")
        })
        .collect()
}

fn ops() -> usize {
    std::env::var("CAIRN_WATCH_DIFF_OPS")
        .ok()
        .map(|s| s.parse().expect("CAIRN_WATCH_DIFF_OPS: an integer"))
        .unwrap_or(400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_event_sequences_match_etcd() -> Result<()> {
    run_seeds(&[]).await
}

/// The same, with Cairn's applier never loading previous kvs (the
/// `prev_kv_never_load` fail point): every prev_kv watcher then reads the
/// revisions it needs from history, as one does that registered while a batch
/// was being applied. Those events must be the same as etcd's too. A binary
/// built without fail points ignores the point, and this test then only
/// repeats the one above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_event_sequences_match_etcd_with_prev_kv_from_history() -> Result<()> {
    run_seeds(&[failpoints::PREV_KV_NEVER_LOAD]).await
}

async fn run_seeds(cairn_failpoints: &[&str]) -> Result<()> {
    let n = ops();
    let mut failures = Vec::new();
    for seed in seeds() {
        if let Err(e) = run_seed(seed, n, cairn_failpoints).await {
            failures.push(format!("{e:?}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} seed(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}
