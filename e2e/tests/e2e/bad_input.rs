//! Bad input: every error etcd gives for a bad request, with its exact gRPC
//! code and message, and the store unchanged afterwards (same header revision
//! and same contents of a full range).
//!
//! Each case runs against a real etcd and against Cairn, started with the same
//! flags and fed the same setup, and must give the expected (code, message)
//! on both. All failures are collected and reported together.
//!
//! * `bad_requests_match_etcd`: compacted / future revision (range and
//!   compaction), request too large (`--max-request-bytes 1048576`, a 1.2 MiB
//!   value; above max-request-bytes + 512 KiB gRPC itself refuses the message
//!   with ResourceExhausted), key not provided, duplicate key in txn, too many
//!   txn operations, missing lease, ignore_value/ignore_lease on a missing key,
//!   value/lease provided with ignore_value/ignore_lease.
//! * `space_quota_nospace_alarm_and_recovery`: `--quota-backend-bytes 8 MiB`,
//!   write until "database space exceeded"; the NOSPACE alarm is listed;
//!   writes keep failing, reads and deletes work; then delete everything,
//!   compact, defragment, disarm the alarm, and a put works again.
//! * `cairn_survives_txn_that_crashes_etcd_351`: a txn that makes etcd 3.5.1
//!   panic (see differential_kv.rs) must not take Cairn down.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::dump::{dump, Dump};
use cairn_e2e::{expect_grpc_error, grpc_error, GrpcError, Kind, Member, MemberOptions};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Compare, CompareOp,
    DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const TOO_LARGE: &str = "etcdserver: request is too large";
const NO_KEY: &str = "etcdserver: key is not provided";
const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const NO_LEASE: &str = "etcdserver: requested lease not found";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

const MAX_REQUEST_BYTES: u64 = 1024 * 1024;
const MISSING_LEASE: i64 = 0x7e57_1ea5e;

/// A bad request; returns the gRPC error it got (or fails if it succeeded).
type Case =
    fn(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcError>> + Send>>;

macro_rules! case {
    (|$c:ident| $body:expr) => {{
        fn f(
            mut $c: Client,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcError>> + Send>>
        {
            Box::pin(async move { $body })
        }
        f as Case
    }};
}

fn ranges(n: usize) -> Vec<TxnOp> {
    (0..n).map(|i| TxnOp::get(format!("r{i}"), None)).collect()
}

/// (name, expected code, expected message, case). A `None` message means
/// only the code is compared (the message is gRPC's own and differs between
/// Go gRPC and other implementations).
fn cases() -> Vec<(&'static str, &'static str, Option<&'static str>, Case)> {
    vec![
        (
            "range at a compacted revision",
            "OutOfRange",
            Some(COMPACTED),
            case!(|c| expect_grpc_error(
                "range",
                c.get("a", Some(GetOptions::new().with_revision(2))).await
            )),
        ),
        (
            "range of a prefix at a compacted revision",
            "OutOfRange",
            Some(COMPACTED),
            case!(|c| expect_grpc_error(
                "range",
                c.get("", Some(GetOptions::new().with_prefix().with_revision(3)))
                    .await
            )),
        ),
        (
            "compaction at the compacted revision",
            "OutOfRange",
            Some(COMPACTED),
            case!(|c| expect_grpc_error("compact", c.compact(5, None).await)),
        ),
        (
            "compaction below the compacted revision",
            "OutOfRange",
            Some(COMPACTED),
            case!(|c| expect_grpc_error(
                "compact",
                c.compact(3, Some(CompactionOptions::new().with_physical()))
                    .await
            )),
        ),
        (
            "range at a future revision",
            "OutOfRange",
            Some(FUTURE),
            case!(|c| expect_grpc_error(
                "range",
                c.get("a", Some(GetOptions::new().with_revision(1000)))
                    .await
            )),
        ),
        (
            "compaction at a future revision",
            "OutOfRange",
            Some(FUTURE),
            case!(|c| expect_grpc_error("compact", c.compact(1000, None).await)),
        ),
        (
            "txn with a range at a compacted revision",
            "OutOfRange",
            Some(COMPACTED),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::get(
                    "a",
                    Some(GetOptions::new().with_revision(2))
                )]))
                .await
            )),
        ),
        (
            "txn with a range at a future revision",
            "OutOfRange",
            Some(FUTURE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(
                    Txn::new()
                        .when(vec![Compare::version("a", CompareOp::Equal, 100)])
                        .or_else(vec![TxnOp::get(
                            "a",
                            Some(GetOptions::new().with_revision(1000))
                        )])
                )
                .await
            )),
        ),
        (
            "put of a 1.2 MiB value (max-request-bytes 1 MiB)",
            "InvalidArgument",
            Some(TOO_LARGE),
            case!(|c| expect_grpc_error("put", c.put("big", vec![b'x'; 1200 * 1024], None).await)),
        ),
        (
            "txn putting a 1.2 MiB value",
            "InvalidArgument",
            Some(TOO_LARGE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::put("big", vec![b'y'; 1200 * 1024], None)]))
                    .await
            )),
        ),
        (
            "put of a 2 MiB value (> max-request-bytes + 512 KiB: gRPC's own limit)",
            "ResourceExhausted",
            None,
            case!(|c| expect_grpc_error(
                "put",
                c.put("huge", vec![b'z'; 2 * 1024 * 1024], None).await
            )),
        ),
        (
            "put with an empty key",
            "InvalidArgument",
            Some(NO_KEY),
            case!(|c| expect_grpc_error("put", c.put("", "v", None).await)),
        ),
        (
            "range with an empty key",
            "InvalidArgument",
            Some(NO_KEY),
            case!(|c| expect_grpc_error("range", c.get("", None).await)),
        ),
        (
            "range with an empty key and a range end",
            "InvalidArgument",
            Some(NO_KEY),
            case!(|c| expect_grpc_error(
                "range",
                c.get("", Some(GetOptions::new().with_range("z"))).await
            )),
        ),
        (
            "delete with an empty key",
            "InvalidArgument",
            Some(NO_KEY),
            case!(|c| expect_grpc_error("delete", c.delete("", None).await)),
        ),
        (
            "txn with a put of an empty key",
            "InvalidArgument",
            Some(NO_KEY),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::put("", "v", None)]))
                    .await
            )),
        ),
        (
            "txn with two puts of one key",
            "InvalidArgument",
            Some(DUPLICATE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(
                    Txn::new()
                        .and_then(vec![TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])
                )
                .await
            )),
        ),
        (
            "txn with a put inside a deleted range",
            "InvalidArgument",
            Some(DUPLICATE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().or_else(vec![
                    TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
                    TxnOp::put("b", "2", None)
                ]))
                .await
            )),
        ),
        (
            "txn with a nested txn putting the outer put's key",
            "InvalidArgument",
            Some(DUPLICATE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![
                    TxnOp::put("n", "1", None),
                    TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("n", "2", None)]))
                ]))
                .await
            )),
        ),
        (
            "txn with 129 ops in success",
            "InvalidArgument",
            Some(TOO_MANY_OPS),
            case!(|c| expect_grpc_error("txn", c.txn(Txn::new().and_then(ranges(129))).await)),
        ),
        (
            "txn with 129 ops in failure",
            "InvalidArgument",
            Some(TOO_MANY_OPS),
            case!(|c| expect_grpc_error("txn", c.txn(Txn::new().or_else(ranges(129))).await)),
        ),
        (
            "txn with 129 compares",
            "InvalidArgument",
            Some(TOO_MANY_OPS),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(
                    Txn::new().when(
                        (0..129)
                            .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
                            .collect::<Vec<_>>()
                    )
                )
                .await
            )),
        ),
        (
            "nested txn with 129 ops",
            "InvalidArgument",
            Some(TOO_MANY_OPS),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::txn(Txn::new().and_then(ranges(129)))]))
                    .await
            )),
        ),
        (
            "put with a lease that does not exist",
            "NotFound",
            Some(NO_LEASE),
            case!(|c| expect_grpc_error(
                "put",
                c.put("a", "v", Some(PutOptions::new().with_lease(MISSING_LEASE)))
                    .await
            )),
        ),
        (
            "txn put with a lease that does not exist",
            "NotFound",
            Some(NO_LEASE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::put(
                    "a",
                    "v",
                    Some(PutOptions::new().with_lease(MISSING_LEASE))
                )]))
                .await
            )),
        ),
        (
            "put ignore_value on a missing key",
            "InvalidArgument",
            Some(KEY_NOT_FOUND),
            case!(|c| expect_grpc_error(
                "put",
                c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
                    .await
            )),
        ),
        (
            "put ignore_lease on a missing key",
            "InvalidArgument",
            Some(KEY_NOT_FOUND),
            case!(|c| expect_grpc_error(
                "put",
                c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
                    .await
            )),
        ),
        (
            "txn put ignore_value on a missing key",
            "InvalidArgument",
            Some(KEY_NOT_FOUND),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![TxnOp::put(
                    "missing",
                    "",
                    Some(PutOptions::new().with_ignore_value())
                )]))
                .await
            )),
        ),
        // etcd checks every put of the txn path (key exists for ignore_*,
        // lease exists) before any range's revision: put errors win.
        (
            "txn: compacted range, then ignore_value put of a missing key",
            "InvalidArgument",
            Some(KEY_NOT_FOUND),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![
                    TxnOp::get("a", Some(GetOptions::new().with_revision(2))),
                    TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value()))
                ]))
                .await
            )),
        ),
        (
            "txn: future range, then put with a missing lease",
            "NotFound",
            Some(NO_LEASE),
            case!(|c| expect_grpc_error(
                "txn",
                c.txn(Txn::new().and_then(vec![
                    TxnOp::get("a", Some(GetOptions::new().with_revision(1000))),
                    TxnOp::put("a", "v", Some(PutOptions::new().with_lease(MISSING_LEASE)))
                ]))
                .await
            )),
        ),
        (
            "put ignore_value with a value",
            "InvalidArgument",
            Some(VALUE_PROVIDED),
            case!(|c| expect_grpc_error(
                "put",
                c.put("a", "v", Some(PutOptions::new().with_ignore_value()))
                    .await
            )),
        ),
        (
            "put ignore_lease with a lease",
            "InvalidArgument",
            Some(LEASE_PROVIDED),
            case!(|c| expect_grpc_error(
                "put",
                c.put(
                    "a",
                    "v",
                    Some(
                        PutOptions::new()
                            .with_ignore_lease()
                            .with_lease(MISSING_LEASE)
                    )
                )
                .await
            )),
        ),
    ]
}

/// Revisions 2..=9: a..h, then "a" rewritten at 10..=12; compacted at 5.
async fn setup(c: &mut Client) -> Result<()> {
    for k in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        c.put(k, format!("value-of-{k}"), None).await?;
    }
    for i in 0..3 {
        c.put("a", format!("a-{i}"), None).await?;
    }
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await?;
    Ok(())
}

async fn start_both(opts: MemberOptions, candidate: Kind) -> Result<(Member, Member)> {
    let (e, c) = tokio::join!(
        Member::start_with(Kind::Etcd, opts.clone()),
        Member::start_with(candidate, opts)
    );
    Ok((
        e.context("starting etcd")?,
        c.with_context(|| format!("starting {candidate}"))?,
    ))
}

async fn bad_requests(candidate: Kind) -> Result<()> {
    let opts = MemberOptions {
        max_request_bytes: Some(MAX_REQUEST_BYTES),
        ..MemberOptions::default()
    };
    let (mut etcd, mut cand) = start_both(opts, candidate).await?;
    let (mut ce, mut cc) = (etcd.client().await?, cand.client().await?);
    // 2 MiB requests: allow the client to send them (its default is unlimited)
    // and to receive big answers.
    setup(&mut ce).await.context("setup on etcd")?;
    setup(&mut cc)
        .await
        .with_context(|| format!("setup on {candidate}"))?;
    let (d0e, d0c) = (dump(&mut ce).await?, dump(&mut cc).await?);
    let mut problems = Vec::new();
    if d0e != d0c {
        problems.push(format!(
            "after the same setup the stores differ:\n  etcd : {d0e:?}\n  {candidate}: {d0c:?}"
        ));
    }
    for (name, code, message, case) in cases() {
        let mut line = |side: &str, got: &Result<GrpcError>, before: &Dump, after: Result<Dump>| {
            match got {
                Err(e) => problems.push(format!("{name}: {side}: {e:#}")),
                Ok(g) => {
                    if g.code != code || message.is_some_and(|m| g.message != m) {
                        problems.push(format!(
                            "{name}: {side} answered {g}, expected {code}: {:?}",
                            message.unwrap_or("<gRPC's message>")
                        ));
                    }
                }
            }
            match after {
                Err(e) => problems.push(format!(
                    "{name}: {side}: reading the store afterwards: {e:#}"
                )),
                Ok(a) if &a != before => problems.push(format!(
                    "{name}: {side}: the store changed:\n  before {before:?}\n  after  {a:?}"
                )),
                Ok(_) => {}
            }
        };
        let (ge, gc) = tokio::join!(case(ce.clone()), case(cc.clone()));
        let (ae, ac) = (dump(&mut ce).await, dump(&mut cc).await);
        line("etcd", &ge, &d0e, ae);
        line(&candidate.to_string(), &gc, &d0c, ac);
        if let (Ok(e), Ok(c)) = (&ge, &gc) {
            if message.is_none() && e.message != c.message {
                eprintln!(
                    "note: {name}: messages differ (not compared): etcd {e}, {candidate} {c}"
                );
            }
        }
    }
    if !problems.is_empty() {
        etcd.keep_on_drop();
        cand.keep_on_drop();
        bail!(
            "{} problem(s):\n{}\n{candidate} log: {}",
            problems.len(),
            problems.join("\n"),
            cand.log_path().display()
        );
    }
    Ok(())
}

server_test!(bad_requests_match_etcd, bad_requests, ignore_etcd);

// ---------------------------------------------------------------------------
// Space quota
// ---------------------------------------------------------------------------

const QUOTA: u64 = 8 * 1024 * 1024;
const BIG_VALUE: usize = 256 * 1024;
/// 8 MiB / 256 KiB = 32 puts fill the quota; 400 bounds the loop (100 MiB).
const MAX_FILL_PUTS: usize = 400;

/// (header revision, [(key, mod_revision)]) of the whole keyspace, keys only
/// (the values here are too big for one response).
async fn keys_and_revisions(c: &mut Client) -> Result<(i64, Vec<(Vec<u8>, i64)>)> {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .context("keys-only range")?;
    Ok((
        r.header().context("range without header")?.revision(),
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect(),
    ))
}

/// Fills the quota and recovers. Returns the NOSPACE error observed.
async fn nospace_cycle(m: &Member) -> Result<GrpcError> {
    let mut c = m.client().await?;
    let member_id = c
        .status()
        .await?
        .header()
        .context("status without header")?
        .member_id();

    // 1. Fill until the quota refuses a put.
    let mut err = None;
    let mut written = 0;
    for i in 0..MAX_FILL_PUTS {
        match c
            .put(format!("quota/{i:04}"), vec![b'q'; BIG_VALUE], None)
            .await
        {
            Ok(_) => written += 1,
            Err(e) => {
                err =
                    Some(grpc_error(&e).with_context(|| format!("put #{i}: non-gRPC error {e}"))?);
                break;
            }
        }
    }
    let err = err.with_context(|| {
        format!("{MAX_FILL_PUTS} puts of {BIG_VALUE} bytes never exceeded a {QUOTA}-byte quota")
    })?;
    ensure!(
        err == GrpcError::new("ResourceExhausted", NO_SPACE),
        "after {written} puts: expected ResourceExhausted {NO_SPACE:?}, got {err}"
    );

    // 2. The NOSPACE alarm is raised for this member.
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    let listed: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    ensure!(
        listed == vec![(member_id, AlarmType::Nospace)],
        "alarm list should be exactly [NOSPACE for member {member_id:x}], got {listed:?}"
    );

    // 3. Writes keep failing without changing anything; reads work.
    let before = keys_and_revisions(&mut c).await?;
    let again = expect_grpc_error("small put under NOSPACE", c.put("small", "v", None).await)?;
    ensure!(
        again == GrpcError::new("ResourceExhausted", NO_SPACE),
        "small put under NOSPACE: got {again}"
    );
    let txn = expect_grpc_error(
        "txn put under NOSPACE",
        c.txn(Txn::new().and_then(vec![TxnOp::put("small", "v", None)]))
            .await,
    )?;
    ensure!(
        txn == GrpcError::new("ResourceExhausted", NO_SPACE),
        "txn put under NOSPACE: got {txn}"
    );
    let after = keys_and_revisions(&mut c).await?;
    ensure!(before == after, "a refused write changed the store");

    // 4. Deletes work.
    let d = c
        .delete("quota/0000", None)
        .await
        .context("delete under NOSPACE")?;
    ensure!(
        d.deleted() == 1,
        "delete under NOSPACE deleted {}",
        d.deleted()
    );

    // 5. Recover: delete all, compact, defragment, disarm; then a put works.
    let d = c
        .delete("quota/", Some(DeleteOptions::new().with_prefix()))
        .await
        .context("delete all under NOSPACE")?;
    let rev = d.header().context("delete without header")?.revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .context("compaction under NOSPACE")?;
    c.defragment().await.context("defragment")?;
    let mut opts = AlarmOptions::new();
    opts.with_member(member_id);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .context("disarming NOSPACE")?;
    let left = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    ensure!(
        left.alarms().is_empty(),
        "alarms left after disarm: {:?}",
        left.alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect::<Vec<_>>()
    );
    let p = c
        .put("after-recovery", "v", None)
        .await
        .context("put after recovery")?;
    let prev = d.header().map(|h| h.revision()).unwrap_or(0);
    ensure!(
        p.header().map(|h| h.revision()) == Some(prev + 1),
        "put after recovery got revision {:?}, expected {}",
        p.header().map(|h| h.revision()),
        prev + 1
    );
    eprintln!(
        "{}: NOSPACE after {written} puts of {BIG_VALUE} bytes; recovered",
        m.kind()
    );
    Ok(err)
}

async fn space_quota(candidate: Kind) -> Result<()> {
    let opts = MemberOptions {
        quota_backend_bytes: Some(QUOTA),
        ..MemberOptions::default()
    };
    let (mut etcd, mut cand) = start_both(opts, candidate).await?;
    let (re, rc) = tokio::time::timeout(Duration::from_secs(150), async {
        tokio::join!(nospace_cycle(&etcd), nospace_cycle(&cand))
    })
    .await
    .context("quota test timed out")?;
    let mut problems = Vec::new();
    if let Err(e) = &re {
        problems.push(format!("etcd: {e:#}"));
    }
    if let Err(e) = &rc {
        problems.push(format!("{candidate}: {e:#}"));
    }
    if !problems.is_empty() {
        etcd.keep_on_drop();
        cand.keep_on_drop();
        bail!(
            "{}\n{candidate} log: {}",
            problems.join("\n"),
            cand.log_path().display()
        );
    }
    Ok(())
}

server_test!(
    space_quota_nospace_alarm_and_recovery,
    space_quota,
    ignore_etcd
);

// ---------------------------------------------------------------------------
// A txn that crashes etcd 3.5.1
// ---------------------------------------------------------------------------

/// etcd 3.5.1 panics on this txn (a from-key delete, then a put with
/// ignore_value of a key it deleted; see differential_kv.rs). Cairn must keep
/// serving, and apply the txn atomically: either all of it or, with an error,
/// none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_survives_txn_that_crashes_etcd_351() -> Result<()> {
    let mut m = Member::start(Kind::Cairn).await?;
    let mut c = m.client().await?;
    c.put("k1", "v1", None).await?;
    c.put("k2", "v2", None).await?;
    let before = dump(&mut c).await?;
    let txn = Txn::new().and_then(vec![
        TxnOp::delete("k", Some(DeleteOptions::new().with_from_key())),
        TxnOp::put("k2", "", Some(PutOptions::new().with_ignore_value())),
    ]);
    let r = c.txn(txn).await;
    let alive = m.exit_status();
    ensure!(
        alive.is_none(),
        "cairn exited ({alive:?}) on the txn that crashes etcd 3.5.1\n{}",
        m.describe()
    );
    let after = dump(&mut c).await?;
    match r {
        Ok(resp) => ensure!(
            after.revision == before.revision + 1,
            "the txn succeeded ({resp:?}) but the revision went {} -> {}",
            before.revision,
            after.revision
        ),
        Err(e) => {
            let g = grpc_error(&e).with_context(|| format!("non-gRPC error {e}"))?;
            ensure!(
                after == before,
                "the txn failed ({g}) but changed the store: {before:?} -> {after:?}"
            );
        }
    }
    m.kill9()?;
    Ok(())
}
