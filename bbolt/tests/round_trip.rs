//! The writer's files read back by the reader, and the reader's typed
//! errors on files that are not what they should be.

use std::path::Path;

use cairn_bbolt::{BoltError, Db, DbWriter};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

/// A file with a large bucket (branch levels), a bucket with values larger
/// than a page (overflow), a small one (inline) and an empty one.
fn write(path: &Path) {
    let mut w = DbWriter::create(path).unwrap();
    let mut b = w.bucket(b"many").unwrap();
    for i in 0..50_000 {
        b.put(&key(i), format!("v{i}").as_bytes()).unwrap();
    }
    b.finish().unwrap();
    let mut b = w.bucket(b"big").unwrap();
    for i in 0..5 {
        b.put(&key(i), &vec![i as u8; 3000 + i as usize * 5000])
            .unwrap();
    }
    b.finish().unwrap();
    let mut b = w.bucket(b"small").unwrap();
    b.put(b"one", b"1").unwrap();
    b.finish().unwrap();
    w.bucket(b"empty").unwrap().finish().unwrap();
    w.finish(7).unwrap();
}

#[test]
fn what_the_writer_writes_the_reader_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write(&path);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.meta_txid(), 7);
    assert_eq!(db.size(), std::fs::metadata(&path).unwrap().len());
    let names = db.bucket_names().unwrap();
    assert_eq!(
        names,
        vec![
            b"big".to_vec(),
            b"empty".to_vec(),
            b"many".to_vec(),
            b"small".to_vec()
        ]
    );
    let many: Vec<_> = db
        .bucket(b"many")
        .unwrap()
        .unwrap()
        .entries()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(many.len(), 50_000);
    for (i, e) in many.iter().enumerate() {
        assert_eq!(e.key, key(i as u32));
        assert_eq!(e.value, format!("v{i}").into_bytes());
    }
    let big: Vec<_> = db
        .bucket(b"big")
        .unwrap()
        .unwrap()
        .entries()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(big.len(), 5);
    for (i, e) in big.iter().enumerate() {
        assert_eq!(e.value, vec![i as u8; 3000 + i * 5000]);
    }
    assert!(db.bucket(b"empty").unwrap().unwrap().is_empty().unwrap());
    assert_eq!(db.bucket(b"small").unwrap().unwrap().len().unwrap(), 1);
    assert!(db.bucket(b"absent").unwrap().is_none());
}

#[test]
fn keys_out_of_order_and_a_bucket_twice_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DbWriter::create(&dir.path().join("db")).unwrap();
    let mut b = w.bucket(b"b").unwrap();
    b.put(b"2", b"").unwrap();
    assert!(matches!(b.put(b"1", b""), Err(BoltError::KeyOrder { .. })));
    assert!(matches!(b.put(b"2", b""), Err(BoltError::KeyOrder { .. })));
    b.finish().unwrap();
    assert!(matches!(w.bucket(b"b"), Err(BoltError::DuplicateBucket(_))));
    assert!(
        DbWriter::create(&dir.path().join("db")).is_err(),
        "an existing file is never overwritten"
    );
}

#[test]
fn a_truncated_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    let err = Db::open(&path).unwrap_err();
    assert!(matches!(err, BoltError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_file_that_is_not_bbolt_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for content in [vec![], b"SQLite format 3\0".to_vec(), vec![0x5a; 3 * 4096]] {
        std::fs::write(&path, &content).unwrap();
        let err = Db::open(&path).unwrap_err();
        assert!(matches!(err, BoltError::NotBolt), "{err}");
        assert_eq!(err.to_string(), "not a bbolt database (no valid meta page)");
    }
}

#[test]
fn meta_pages_that_fail_their_checksum_are_refused_and_one_good_one_suffices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // The high-water mark of meta 0 (txid 7): meta 1 (txid 6) takes over.
    bytes[16 + 40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Db::open(&path).unwrap().meta_txid(), 6);
    bytes[4096 + 16 + 40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Db::open(&path), Err(BoltError::BadChecksum)));
}

#[test]
fn a_page_pointing_outside_the_file_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Every branch element's child id set out of range.
    for page in bytes.chunks_mut(4096).skip(2) {
        if u16::from_le_bytes([page[8], page[9]]) == 0x01 {
            let count = u16::from_le_bytes([page[10], page[11]]) as usize;
            for i in 0..count {
                page[16 + i * 16 + 8..16 + i * 16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
            }
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let db = Db::open(&path).unwrap();
    let bucket = db.bucket(b"many").unwrap().unwrap();
    let err = bucket.entries().find_map(|e| e.err()).unwrap();
    assert!(matches!(err, BoltError::Corrupt(_)), "{err}");
}
