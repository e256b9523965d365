//! Snapshots in etcd's own format, both ways (issue 17): `etcdctl snapshot
//! save` against Cairn and `etcdutl snapshot restore` into etcd 3.5.1 (the
//! rollback), `etcdctl snapshot save` against etcd and `cairn snapshot
//! restore` (the offline migration, also into a 3-member cluster), each
//! compared key by key and by HashKV at several revisions, with leases and
//! the events a watcher from before the round trip receives. Then a
//! snapshot under a write load, and every bad input `cairn snapshot restore`
//! must refuse without writing anything.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::binaries::{cairn_bin, etcdctl_bin};
use cairn_e2e::compare::{events_between, expect_same_at};
use cairn_e2e::etcdctl::etcdctl;
use cairn_e2e::ports::free_port;
use cairn_e2e::{Kind, Member, MemberOptions};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

/// What `fill` wrote: the revisions a comparison visits.
#[derive(Debug, Clone)]
struct History {
    compact: i64,
    /// A revision after the compaction a watcher had reached before the
    /// snapshot: it must still be valid after the round trip.
    watched: i64,
    current: i64,
    leases: Vec<i64>,
}

/// kube-shaped history: leased keys, overwrites, multi-op Txns, a prefix
/// delete, a compaction, then more of each.
async fn fill(c: &mut Client) -> Result<History> {
    let l1 = c.lease_grant(600, None).await?.id();
    let l2 = c.lease_grant(900, None).await?.id();
    let pod = |i: usize| format!("/registry/pods/default/p{i:02}");
    for i in 0..40 {
        let opts = (i % 5 == 0).then(|| PutOptions::new().with_lease(l1));
        c.put(pod(i), format!("{{\"pod\":{i},\"v\":1}}"), opts)
            .await?;
    }
    for i in 0..10 {
        c.put(pod(i), format!("{{\"pod\":{i},\"v\":2}}"), None)
            .await?;
    }
    let txn = |n: usize| {
        Txn::new()
            .when([Compare::version(pod(1), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put(pod(1), format!("txn-{n}"), None),
                TxnOp::delete(pod(2 + n), None),
                TxnOp::put(format!("/registry/configmaps/c{n}"), "new", None),
            ])
            .or_else([TxnOp::put("never", "x", None)])
    };
    c.txn(txn(0)).await?;
    c.delete(
        "/registry/pods/default/p3",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await?;
    let at = c.put("/registry/marker", "compact-here", None).await?;
    let compact = at.header().context("header")?.revision() - 3;
    c.compact(compact, None).await?;
    let watched = c
        .put("/registry/marker", "watched", None)
        .await?
        .header()
        .context("header")?
        .revision();
    for i in 10..20 {
        c.put(
            pod(i),
            "with-lease-2",
            Some(PutOptions::new().with_lease(l2)),
        )
        .await?;
    }
    c.txn(txn(1)).await?;
    c.delete(pod(5), None).await?;
    let current = c
        .put("/registry/marker", "last", None)
        .await?
        .header()
        .context("header")?
        .revision();
    Ok(History {
        compact,
        watched,
        current,
        leases: vec![l1, l2],
    })
}

/// The same keys, values, revisions, versions and leases, and the same
/// HashKV, at revisions from just above the compact revision (etcd 3.5.1
/// refuses HashKV at the compact revision itself) to the current one; the
/// same events for a watcher from `watched`; the same leases with their
/// TTLs and keys; the same answer below the compact revision; and the next
/// write gets the same revision on both.
async fn expect_same_history(
    a: &mut Client,
    b: &mut Client,
    h: &History,
    what: &str,
) -> Result<()> {
    let mid = (h.watched + h.current) / 2;
    for rev in [h.compact + 1, h.watched, mid, h.current] {
        expect_same_at(a, b, rev, what).await?;
    }
    let (ea, eb) = (
        events_between(a, h.watched + 1, h.current).await?,
        events_between(b, h.watched + 1, h.current).await?,
    );
    ensure!(!ea.is_empty(), "{what}: no events after {}", h.watched);
    ensure!(
        ea == eb,
        "{what}: a watcher from {} sees different events",
        h.watched
    );
    for c in [&mut *a, &mut *b] {
        let err = c
            .get(
                "/registry/marker",
                Some(GetOptions::new().with_revision(h.compact - 1)),
            )
            .await
            .err()
            .context("a read below the compact revision succeeded")?;
        ensure!(err.to_string().contains("compacted"), "{what}: {err}");
    }
    for &id in &h.leases {
        let ttl = |c: &mut Client| {
            let mut c = c.clone();
            async move {
                let r = c
                    .lease_time_to_live(
                        id,
                        Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
                    )
                    .await?;
                let mut keys = r.keys().to_vec();
                keys.sort();
                anyhow::Ok((r.granted_ttl(), keys))
            }
        };
        let (ta, tb) = (ttl(a).await?, ttl(b).await?);
        ensure!(ta == tb, "{what}: lease {id:x}: {ta:?} vs {tb:?}");
        ensure!(
            ta.0 > 0 && !ta.1.is_empty(),
            "{what}: lease {id:x} lost: {ta:?}"
        );
    }
    for c in [&mut *a, &mut *b] {
        let rev = c
            .put("/registry/after", "x", None)
            .await?
            .header()
            .context("header")?
            .revision();
        ensure!(
            rev == h.current + 1,
            "{what}: the next write got revision {rev}, not {}",
            h.current + 1
        );
    }
    Ok(())
}

fn etcdutl_bin() -> Result<PathBuf> {
    Ok(etcdctl_bin()?.with_file_name("etcdutl"))
}

/// Runs a tool to completion (blocking: also used inside `start_prepared`).
fn run(bin: &Path, args: &[&str]) -> Result<Output> {
    std::process::Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .with_context(|| format!("running {} {}", bin.display(), args.join(" ")))
}

fn run_ok(bin: &Path, args: &[&str]) -> Result<String> {
    let out = run(bin, args)?;
    ensure!(
        out.status.success(),
        "{} {} failed: {}{}",
        bin.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `etcdctl snapshot save` against `endpoint`.
async fn save(endpoint: &str, to: &Path) -> Result<()> {
    let out = etcdctl(
        endpoint,
        &["snapshot", "save", &to.display().to_string()],
        None,
    )
    .await?;
    ensure!(out.code == 0, "snapshot save: {}{}", out.stdout, out.stderr);
    Ok(())
}

/// A status's (hash, revision, totalKey) from `-w json` output.
fn status_fields(json: &str) -> Result<(u64, i64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).with_context(|| json.to_string())?;
    let n = |k: &str| v[k].as_u64().with_context(|| format!("{k} in {json}"));
    Ok((n("hash")?, n("revision")? as i64, n("totalKey")?))
}

/// A restore with `tool` (cairn or etcdutl) into `data_dir` for a member
/// `name` at `peer`, in a cluster `initial`.
/// A one-member cluster of `kind` started from `snap`, restored by `tool`
/// (`cairn` or `etcdutl`).
async fn start_restored(kind: Kind, tool: &Path, snap: &Path) -> Result<Member> {
    Member::start_prepared(kind, MemberOptions::default(), |data_dir, peer| {
        restore(tool, snap, data_dir, "e2e", peer, &format!("e2e={peer}"))
    })
    .await
}

fn restore(
    tool: &Path,
    snap: &Path,
    data_dir: &Path,
    name: &str,
    peer: &str,
    initial: &str,
) -> Result<()> {
    run_ok(
        tool,
        &[
            "snapshot",
            "restore",
            &snap.display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--name",
            name,
            "--initial-cluster",
            initial,
            "--initial-advertise-peer-urls",
            peer,
        ],
    )
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_to_cairn_keeps_history_leases_and_hashes() -> Result<()> {
    let etcd = Member::start(Kind::Etcd).await?;
    let mut source = etcd.client().await?;
    let h = fill(&mut source).await?;
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("etcd.snapshot");
    save(&etcd.endpoint(), &snap).await?;

    // Both tools read the file alike.
    let snap_arg = snap.display().to_string();
    let ours = status_fields(&run_ok(
        &cairn_bin()?,
        &["snapshot", "status", &snap_arg, "-w", "json"],
    )?)?;
    let theirs = status_fields(&run_ok(
        &etcdutl_bin()?,
        &["snapshot", "status", &snap_arg, "-w", "json"],
    )?)?;
    ensure!(ours == theirs, "status: cairn {ours:?}, etcdutl {theirs:?}");
    ensure!(
        ours.1 == h.current,
        "status revision {} vs {}",
        ours.1,
        h.current
    );

    let cairn = start_restored(Kind::Cairn, &cairn_bin()?, &snap).await?;
    let mut restored = cairn.client().await?;
    expect_same_history(&mut source, &mut restored, &h, "etcd → cairn").await
}

/// An etcd member's own backend file (no hash, no freelist), copied from a
/// stopped member, restores like a snapshot with --skip-hash-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_members_db_file_restores_into_cairn() -> Result<()> {
    let mut etcd = Member::start(Kind::Etcd).await?;
    let h = fill(&mut etcd.client().await?).await?;
    etcd.terminate(Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    std::fs::copy(etcd.data_dir().join("member/snap/db"), &db)?;
    etcd.restart().await?;
    let mut source = etcd.client().await?;
    let cairn = Member::start_prepared(Kind::Cairn, MemberOptions::default(), |data_dir, peer| {
        run_ok(
            &cairn_bin()?,
            &[
                "snapshot",
                "restore",
                &db.display().to_string(),
                "--skip-hash-check",
                "--data-dir",
                &data_dir.display().to_string(),
                "--name",
                "e2e",
                "--initial-cluster",
                &format!("e2e={peer}"),
                "--initial-advertise-peer-urls",
                peer,
            ],
        )
        .map(drop)
    })
    .await?;
    let mut restored = cairn.client().await?;
    expect_same_history(&mut source, &mut restored, &h, "etcd member db → cairn").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cairn_to_etcd_rollback_keeps_history_leases_and_hashes() -> Result<()> {
    let cairn = Member::start(Kind::Cairn).await?;
    let mut source = cairn.client().await?;
    let h = fill(&mut source).await?;
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("cairn.snapshot");
    save(&cairn.endpoint(), &snap).await?;
    // The file the server wrote to stream goes once sent.
    let snap_dir = cairn.data_dir().join("snap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir(&snap_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("etcd-"))
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "snapshot files left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap_arg = snap.display().to_string();
    let theirs = status_fields(&run_ok(
        &etcdutl_bin()?,
        &["snapshot", "status", &snap_arg, "-w", "json"],
    )?)?;
    ensure!(
        theirs.1 == h.current,
        "etcdutl status revision {} vs {}",
        theirs.1,
        h.current
    );
    let ours = status_fields(&run_ok(
        &cairn_bin()?,
        &["snapshot", "status", &snap_arg, "-w", "json"],
    )?)?;
    ensure!(ours == theirs, "status: cairn {ours:?}, etcdutl {theirs:?}");

    let etcd = start_restored(Kind::Etcd, &etcdutl_bin()?, &snap).await?;
    let mut restored = etcd.client().await?;
    expect_same_history(&mut source, &mut restored, &h, "cairn → etcd").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_member_cluster_restores_from_one_etcd_snapshot() -> Result<()> {
    let etcd = Member::start(Kind::Etcd).await?;
    let mut source = etcd.client().await?;
    let h = fill(&mut source).await?;
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("etcd.snapshot");
    save(&etcd.endpoint(), &snap).await?;

    let ports = [free_port()?, free_port()?, free_port()?];
    let initial = cairn_e2e::member::initial_cluster(&ports);
    let start = |i: usize| {
        let (snap, initial) = (snap.clone(), initial.clone());
        let opts = MemberOptions {
            name: format!("m{i}"),
            peer_port: Some(ports[i]),
            initial_cluster: Some(initial.clone()),
            ready_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        Member::start_prepared(Kind::Cairn, opts, move |data_dir, peer| {
            restore(
                &cairn_bin()?,
                &snap,
                data_dir,
                &format!("m{i}"),
                peer,
                &initial,
            )
        })
    };
    let (m0, m1, m2) = tokio::join!(start(0), start(1), start(2));
    let members = [m0?, m1?, m2?];
    // Compare every member with the source before any write (the last step
    // of the comparison writes).
    for m in &members[1..] {
        let mut c = m.client().await?;
        for rev in [h.compact + 1, h.watched, h.current] {
            expect_same_at(&mut source, &mut c, rev, &format!("etcd → {}", m.name())).await?;
        }
    }
    let mut first = members[0].client().await?;
    expect_same_history(&mut source, &mut first, &h, "etcd → 3 members").await?;
    // The write the comparison made reached every member at its revision.
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in &members[1..] {
        let mut c = m.client().await?;
        loop {
            let kvs = c.get("/registry/after", None).await?.kvs().to_vec();
            if kvs.first().map(|kv| kv.mod_revision()) == Some(h.current + 1) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not apply the write: {kvs:?}",
                m.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_under_write_load_is_consistent_at_one_revision() -> Result<()> {
    let cairn = Member::start(Kind::Cairn).await?;
    let mut c = cairn.client().await?;
    let value = "v".repeat(1024);
    // Some bulk, so that the snapshot takes more than an instant.
    for batch in 0..40 {
        let ops: Vec<TxnOp> = (0..100)
            .map(|i| TxnOp::put(format!("/bulk/{batch:02}/{i:03}"), value.clone(), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: the test stops it after the snapshot.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                c.put(format!("/load/k{}", n % 300), format!("w{n}"), None)
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };
    // Let the load run before and during the snapshot.
    let started = Instant::now();
    loop {
        let written = c
            .get(
                "/load/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count();
        if written >= 300 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the load did not start ({written} keys)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = c
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision();
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("load.snapshot");
    save(&cairn.endpoint(), &snap).await?;
    let after = c
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await??;
    ensure!(
        after > before,
        "no write completed while the snapshot was taken"
    );

    let snap_arg = snap.display().to_string();
    let (_, rev, _) = status_fields(&run_ok(
        &cairn_bin()?,
        &["snapshot", "status", &snap_arg, "-w", "json"],
    )?)?;
    ensure!(
        (before..=after).contains(&rev),
        "snapshot revision {rev} outside [{before}, {after}] ({writes} writes)"
    );
    let restored = start_restored(Kind::Cairn, &cairn_bin()?, &snap).await?;
    let mut r = restored.client().await?;
    let now = r
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision();
    ensure!(now == rev, "restored store at {now}, its snapshot at {rev}");
    // Exactly the live store's state at that revision, and its history before.
    expect_same_at(&mut c, &mut r, rev, "under load").await?;
    expect_same_at(&mut c, &mut r, before, "under load, before the snapshot").await
}

/// Expects `cairn snapshot restore` of `file` (with `extra` flags) into
/// `data_dir` to fail saying `phrase`, and to leave nothing behind.
fn expect_refused(file: &Path, data_dir: &Path, extra: &[&str], phrase: &str) -> Result<()> {
    let existed = data_dir.exists();
    let mut args = vec![
        "snapshot".to_string(),
        "restore".to_string(),
        file.display().to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = run(&cairn_bin()?, &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "restore of {} succeeded",
        file.display()
    );
    ensure!(
        stderr.contains(phrase),
        "restore of {}: expected {phrase:?} in: {stderr}",
        file.display()
    );
    if existed {
        let entries = std::fs::read_dir(data_dir)?.count();
        ensure!(
            entries == 0,
            "restore wrote into the existing {}",
            data_dir.display()
        );
    } else {
        ensure!(
            !data_dir.exists(),
            "a refused restore created {}",
            data_dir.display()
        );
    }
    let parent = data_dir.parent().context("parent")?;
    for e in std::fs::read_dir(parent)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        ensure!(
            !name.contains(".restoring-"),
            "a staging dir was left behind: {name}"
        );
    }
    Ok(())
}

/// Rewrites the database part of `snap` into `to` (no hash trailer), with
/// `meta`'s storageVersion set to `version`.
fn with_storage_version(snap: &Path, to: &Path, version: &str) -> Result<()> {
    let len = std::fs::metadata(snap)?.len();
    let db = cairn_bbolt::Db::from_file(std::fs::File::open(snap)?, len - 32)?;
    let mut w = cairn_bbolt::DbWriter::create(to)?;
    for name in db.bucket_names()? {
        let mut b = w.bucket(&name)?;
        let bucket = db.bucket(&name)?.context("bucket")?;
        for e in bucket.entries() {
            let e = e?;
            let value = if name == b"meta" && e.key == b"storageVersion" {
                version.as_bytes().to_vec()
            } else {
                e.value
            };
            b.put(&e.key, &value)?;
        }
        b.finish()?;
    }
    w.finish(db.meta_txid())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_a_clear_error_and_nothing_written() -> Result<()> {
    let cairn = Member::start(Kind::Cairn).await?;
    let mut c = cairn.client().await?;
    for i in 0..200 {
        c.put(format!("/k/{i:03}"), "x".repeat(500), None).await?;
    }
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.snapshot");
    save(&cairn.endpoint(), &good).await?;
    let bytes = std::fs::read(&good)?;
    let target = dir.path().join("restored");

    let truncated = dir.path().join("truncated.snapshot");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    expect_refused(&truncated, &target, &[], "truncated")?;
    expect_refused(&truncated, &target, &["--skip-hash-check"], "truncated")?;

    let bad_hash = dir.path().join("bad-hash.snapshot");
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0xff;
    std::fs::write(&bad_hash, &flipped)?;
    expect_refused(&bad_hash, &target, &[], "hash mismatch")?;

    let not_bolt = dir.path().join("not-bolt.snapshot");
    std::fs::write(&not_bolt, "this is not a snapshot\n".repeat(1000))?;
    expect_refused(
        &not_bolt,
        &target,
        &["--skip-hash-check"],
        "not a bbolt database",
    )?;
    let status = run(
        &cairn_bin()?,
        &["snapshot", "status", &not_bolt.display().to_string()],
    )?;
    ensure!(
        !status.status.success()
            && String::from_utf8_lossy(&status.stderr).contains("not a bbolt database"),
        "status of a file that is not bbolt: {status:?}"
    );

    let no_buckets = dir.path().join("no-buckets.db");
    {
        let mut w = cairn_bbolt::DbWriter::create(&no_buckets)?;
        let mut b = w.bucket(b"foo")?;
        b.put(b"k", b"v")?;
        b.finish()?;
        w.finish(2)?;
    }
    expect_refused(
        &no_buckets,
        &target,
        &["--skip-hash-check"],
        "bucket(s) key, meta missing",
    )?;

    let newer = dir.path().join("newer.db");
    with_storage_version(&good, &newer, "3.7.0")?;
    expect_refused(
        &newer,
        &target,
        &["--skip-hash-check"],
        "storage version 3.7.0",
    )?;

    // A db file without a hash needs --skip-hash-check, as with etcdutl.
    let unhashed = dir.path().join("unhashed.db");
    with_storage_version(&good, &unhashed, "3.6.0")?;
    expect_refused(&unhashed, &target, &[], "no SHA-256 trailer")?;

    std::fs::create_dir(&target)?;
    expect_refused(&good, &target, &[], "already exists")?;
    std::fs::remove_dir(&target)?;

    expect_refused(
        &good,
        &target,
        &["--bump-revision", "5"],
        "--mark-compacted",
    )?;

    // And the good file restores.
    run_ok(
        &cairn_bin()?,
        &[
            "snapshot",
            "restore",
            &good.display().to_string(),
            "--data-dir",
            &target.display().to_string(),
        ],
    )?;
    ensure!(
        target.join("cairn.db").is_file(),
        "no store in {}",
        target.display()
    );
    if !target.join("member.json").is_file() {
        bail!("no identity in {}", target.display());
    }
    Ok(())
}
