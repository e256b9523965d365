//! The reader and the writer against files etcd 3.5.1 writes in the test:
//! a `etcdctl snapshot save` file and a stopped member's `member/snap/db`.
//! The reader must see what etcdutl sees; a file the writer makes from them
//! must pass etcdutl's checks and restore into an etcd that serves the data.

mod support;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use cairn_bbolt::{Db, DbWriter};
use support::{bin, etcdutl_status, run, Etcd};

/// etcd's history with what stresses the format: thousands of keys (branch
/// pages), a 20 KiB value (overflow pages), a lease, deletes, a compaction.
fn fill(etcd: &Etcd) {
    let lease = etcd.ctl_ok(&["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    etcd.ctl_ok(&["put", "leased", "v", "--lease", &lease]);
    // One etcdctl per write would take minutes; a txn carries many.
    for batch in 0..30 {
        let mut txn = String::from("\n");
        for i in 0..100 {
            txn.push_str(&format!(
                "put /registry/k{batch:02}-{i:03} value-{batch}-{i}\n"
            ));
        }
        txn.push_str("\n\n");
        let mut c = etcd.ctl();
        c.args(["txn"]).stdin(std::process::Stdio::piped());
        let mut child = c.stdout(std::process::Stdio::null()).spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(txn.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    etcd.ctl_ok(&["put", "big", &"x".repeat(20 << 10)]);
    etcd.ctl_ok(&["put", "a", "1"]);
    etcd.ctl_ok(&["put", "a", "2"]);
    etcd.ctl_ok(&["del", "/registry/k00-", "--prefix"]);
    etcd.ctl_ok(&["compact", "20"]);
    etcd.ctl_ok(&["put", "a", "3"]);
}

/// What etcdutl's `snapshot status` computes, from our reader: CRC-32C over
/// each bucket's name and its keys and values, the last revision in `key`,
/// the number of keys, the size.
fn status(db: &Db) -> (u32, i64, u64, u64) {
    let mut crc = 0u32;
    let (mut revision, mut keys) = (0i64, 0u64);
    for name in db.bucket_names().unwrap() {
        crc = crc32c::crc32c_append(crc, &name);
        for e in db.bucket(&name).unwrap().unwrap().entries() {
            let e = e.unwrap();
            crc = crc32c::crc32c_append(crc, &e.key);
            crc = crc32c::crc32c_append(crc, &e.value);
            if name == b"key" {
                revision = i64::from_be_bytes(e.key[..8].try_into().unwrap());
            }
            keys += 1;
        }
    }
    (crc, revision, keys, db.size())
}

/// Opens an etcd snapshot: the database, then its SHA-256.
fn open_snapshot(path: &Path) -> Db {
    let len = std::fs::metadata(path).unwrap().len();
    assert_eq!(len % 512, 32, "a snapshot ends with its hash");
    Db::from_file(File::open(path).unwrap(), len - 32).unwrap()
}

/// Copies every bucket of `from` into a new file at `to` with the writer.
fn copy(from: &Db, to: &Path) -> u64 {
    let mut w = DbWriter::create(to).unwrap();
    for name in from.bucket_names().unwrap() {
        let mut b = w.bucket(&name).unwrap();
        for e in from.bucket(&name).unwrap().unwrap().entries() {
            let e = e.unwrap();
            b.put(&e.key, &e.value).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish(from.meta_txid()).unwrap()
}

#[test]
fn etcds_files_read_as_etcdutl_reads_them_and_a_rewritten_copy_restores_into_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd"), "src", None);
    fill(&etcd);
    let snap = dir.path().join("snap.db");
    run(etcd.ctl().args(["snapshot", "save"]).arg(&snap));
    let keys_before = etcd.ctl_ok(&["get", "", "--prefix", "-w", "json"]);
    etcd.stop();

    // The snapshot, read past its hash.
    let db = open_snapshot(&snap);
    let ours = status(&db);
    assert_eq!(ours, etcdutl_status(&snap));
    assert!(ours.2 > 3000, "{ours:?}");
    for bucket in [
        "key", "meta", "lease", "members", "cluster", "alarm", "auth",
    ] {
        assert!(db.bucket(bucket.as_bytes()).unwrap().is_some(), "{bucket}");
    }

    // The stopped member's own file, as it lies (no hash, no freelist).
    let member_db = dir.path().join("etcd/member/snap/db");
    let live = Db::open(&member_db).unwrap();
    let (hash, revision, keys, _) = status(&live);
    let (u_hash, u_revision, u_keys, _) = etcdutl_status(&member_db);
    assert_eq!((hash, revision, keys), (u_hash, u_revision, u_keys));
    assert_eq!(revision, ours.1);

    // Rewritten by the writer: etcdutl sees the same data...
    let copied = dir.path().join("copy.db");
    let size = copy(&db, &copied);
    assert_eq!(size, std::fs::metadata(&copied).unwrap().len());
    let theirs = etcdutl_status(&copied);
    assert_eq!((theirs.0, theirs.1, theirs.2), (ours.0, ours.1, ours.2));
    assert_eq!(status(&Db::open(&copied).unwrap()), theirs);

    // ...and etcd, restored from it, serves it.
    let restored = dir.path().join("restored");
    // The restore writes the member's peer URL; etcd must advertise the same.
    let peer = support::free_port();
    let url = format!("http://127.0.0.1:{peer}");
    run(Command::new(bin("etcdutl"))
        .args(["snapshot", "restore", "--skip-hash-check"])
        .arg(&copied)
        .arg("--data-dir")
        .arg(&restored)
        .args(["--name", "copy", "--initial-advertise-peer-urls", &url])
        .arg(format!("--initial-cluster=copy={url}")));
    let etcd = Etcd::start(&restored, "copy", Some(peer));
    let keys_after = etcd.ctl_ok(&["get", "", "--prefix", "-w", "json"]);
    let strip = |s: &str| s[s.find("\"kvs\"").unwrap()..].to_string();
    assert_eq!(strip(&keys_after), strip(&keys_before));
}
