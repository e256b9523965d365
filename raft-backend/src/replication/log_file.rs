//! The Raft log on disk: append-only segment files of checksummed records,
//! and a small state file for the vote and the purge point.
//!
//! A log only ever grows at its end, is cut back at its end (a conflicting
//! suffix) or dropped from its start (behind a snapshot), so it needs no
//! B-tree: a group of appends is one `write` and one `fdatasync`. Records are
//! replayed in file order at open: an entry record at index i replaces
//! whatever the log held from i on, and a truncate record drops the entries
//! after its index, so the newest record always wins. Whole segments behind
//! the purge point are deleted; the purge point itself is opaque here (an
//! encoded log id the caller reads).
//!
//! Record: `len: u32 LE | crc32: u32 LE | kind: u8 | payload`, where len and
//! crc cover kind and payload. A torn record at the end of the last segment
//! (a crash mid-write, never acknowledged) is cut off at open; a bad record
//! anywhere else is corruption and refuses the open.
//!
//! Segments are preallocated (as etcd preallocates its WAL files): an
//! fdatasync that must also record a larger file size costs more per write.
//! The records end where the zeros begin (no record has length 0).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The directory, under the data dir, holding the segments and the state.
pub const LOG_DIR: &str = "raft-log";
const STATE_FILE: &str = "state";
const SEGMENT_SUFFIX: &str = ".seg";
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
/// Larger than any entry the server accepts (requests are capped far lower).
const MAX_RECORD: usize = 256 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
const KIND_TRUNCATE: u8 = 3;

/// The vote and the purge point, each an encoded protobuf, or absent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LogState {
    pub vote: Option<Vec<u8>>,
    pub purged: Option<Vec<u8>>,
}

/// What replay found: the entries (encoded) by index, the newest commit
/// index record, and the state file. Entries at or below the purge point may
/// be among them (their segment still holds newer ones); the purge point is
/// opaque here, and the caller drops them.
#[derive(Debug, Default)]
pub struct Recovered {
    pub entries: BTreeMap<u64, Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub state: LogState,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index ever written to it (None: no entry).
    max_index: Option<u64>,
}

/// The open log: every segment, the last one open for appending.
pub struct LogFile {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Appends one record to `buf`.
fn encode(buf: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

pub fn encode_entry(buf: &mut Vec<u8>, index: u64, entry: &[u8]) {
    encode(buf, KIND_ENTRY, &[&index.to_le_bytes(), entry]);
}

pub fn encode_committed(buf: &mut Vec<u8>, log_id: &[u8]) {
    encode(buf, KIND_COMMITTED, &[log_id]);
}

/// Drops every entry after `after` (all of them for None).
pub fn encode_truncate(buf: &mut Vec<u8>, after: Option<u64>) {
    let (flag, index) = match after {
        Some(i) => (1u8, i),
        None => (0u8, 0),
    };
    encode(buf, KIND_TRUNCATE, &[&[flag], &index.to_le_bytes()]);
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// One step through a file of records.
enum Step<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// No more records: the end of the data, or the zeros of preallocation.
    End,
    Bad(&'static str),
}

fn read_record(data: &[u8], at: usize) -> Step<'_> {
    let rest = &data[at..];
    let zeros = || rest.iter().all(|b| *b == 0);
    let Some(head) = rest.get(..HEADER) else {
        return if zeros() {
            Step::End
        } else {
            Step::Bad("truncated header")
        };
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 {
        return if zeros() {
            Step::End
        } else {
            Step::Bad("data after the end of the records")
        };
    }
    if len > MAX_RECORD {
        return Step::Bad("oversized record");
    }
    let Some(body) = rest.get(HEADER..HEADER + len) else {
        return Step::Bad("truncated body");
    };
    if crc32fast::hash(body) != crc {
        return Step::Bad("checksum mismatch");
    }
    Step::Record {
        kind: body[0],
        payload: &body[1..],
        next: at + HEADER + len,
    }
}

/// What replaying one segment found besides its records.
struct Replayed {
    /// Where its valid records end.
    valid_len: u64,
    max_index: Option<u64>,
    /// Whether only zeros (or nothing) follow the valid records.
    clean_tail: bool,
}

/// Replays one segment's records into `rec`. A bad record is an error
/// unless the segment is the `last`, where it is a torn write that ends the
/// valid records.
fn replay_segment(path: &Path, last: bool, rec: &mut Recovered) -> io::Result<Replayed> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut at = 0usize;
    let mut max_index = None;
    let clean_tail = loop {
        let bad = |why: &str| {
            corrupt(format!(
                "raft log {}: bad record at byte {at}: {why}",
                path.display()
            ))
        };
        let (kind, payload, next) = match read_record(&data, at) {
            Step::Record {
                kind,
                payload,
                next,
            } => (kind, payload, next),
            Step::End => break true,
            Step::Bad(_) if last => break false,
            Step::Bad(why) => return Err(bad(why)),
        };
        match kind {
            KIND_ENTRY => {
                let index = u64_at(payload, 0).ok_or_else(|| bad("short entry"))?;
                // Writing index i replaces the log from i on.
                let _ = rec.entries.split_off(&index);
                rec.entries.insert(index, payload[8..].to_vec());
                max_index = max_index.max(Some(index));
            }
            KIND_COMMITTED => rec.committed = Some(payload.to_vec()),
            KIND_TRUNCATE => {
                let index = u64_at(payload, 1).ok_or_else(|| bad("short truncate"))?;
                let from = match payload[0] {
                    0 => 0,
                    _ => index + 1,
                };
                let _ = rec.entries.split_off(&from);
            }
            other => return Err(bad(&format!("unknown kind {other}"))),
        }
        at = next;
    };
    Ok(Replayed {
        valid_len: at as u64,
        max_index,
        clean_tail,
    })
}

fn read_state(dir: &Path) -> io::Result<LogState> {
    let path = dir.join(STATE_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LogState::default()),
        Err(e) => return Err(e),
    };
    // One record per field, written whole and renamed in: nothing may be torn.
    let mut state = LogState::default();
    let mut at = 0usize;
    loop {
        let bad = |why: &str| corrupt(format!("raft log state {}: {why}", path.display()));
        match read_record(&data, at) {
            Step::Record {
                kind,
                payload,
                next,
            } => {
                match kind {
                    STATE_VOTE => state.vote = Some(payload.to_vec()),
                    STATE_PURGED => state.purged = Some(payload.to_vec()),
                    other => return Err(bad(&format!("unknown kind {other}"))),
                }
                at = next;
            }
            Step::End => return Ok(state),
            Step::Bad(why) => return Err(bad(why)),
        }
    }
}

const STATE_VOTE: u8 = 1;
const STATE_PURGED: u8 = 2;

impl LogFile {
    /// Opens (creating if new) the log under `data_dir`, replaying it.
    pub fn open(data_dir: &Path) -> io::Result<(LogFile, Recovered)> {
        let dir = data_dir.join(LOG_DIR);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            sync_dir(data_dir)?;
        }
        let mut seqs: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(SEGMENT_SUFFIX) {
                seqs.push(seq.parse().map_err(|_| {
                    corrupt(format!(
                        "raft log: unexpected file {name} in {}",
                        dir.display()
                    ))
                })?);
            } else if name.ends_with(".tmp") {
                // A state file whose rename a crash prevented.
                std::fs::remove_file(dir.join(name.as_ref()))?;
            }
        }
        seqs.sort_unstable();
        let mut rec = Recovered {
            state: read_state(&dir)?,
            ..Default::default()
        };
        let mut segments = Vec::new();
        let (mut valid_len, mut clean_tail) = (0, true);
        for (i, seq) in seqs.iter().enumerate() {
            let path = segment_path(&dir, *seq);
            let last = i + 1 == seqs.len();
            let replayed = replay_segment(&path, last, &mut rec)?;
            (valid_len, clean_tail) = (replayed.valid_len, replayed.clean_tail);
            segments.push(Segment {
                seq: *seq,
                path,
                max_index: replayed.max_index,
            });
        }
        let active = match segments.last() {
            Some(seg) => {
                let f = OpenOptions::new().read(true).write(true).open(&seg.path)?;
                if !clean_tail {
                    tracing::warn!(
                        segment = %seg.path.display(),
                        valid_len,
                        "raft log: cutting off a torn record at the end (a write a crash interrupted)"
                    );
                    f.set_len(valid_len)?;
                    f.sync_all()?;
                }
                f
            }
            None => {
                let seg = Segment {
                    seq: 1,
                    path: segment_path(&dir, 1),
                    max_index: None,
                };
                let f = create_segment(&dir, &seg.path)?;
                segments.push(seg);
                f
            }
        };
        let mut log = LogFile {
            dir,
            segments,
            active,
            active_len: valid_len,
        };
        use std::io::Seek;
        log.active.seek(io::SeekFrom::Start(valid_len))?;
        Ok((log, rec))
    }

    /// Writes `records` at the end and makes them durable. `max_index` is
    /// the highest entry index among them, for purging whole segments later.
    pub fn append(&mut self, records: &[u8], max_index: Option<u64>) -> io::Result<()> {
        if self.active_len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        fail::fail_point!("raft_log_write_error", |errno| Err(injected(errno)));
        self.active.write_all(records)?;
        // `slow_fsync=sleep(ms)`: a slow disk, every log fsync taking longer.
        fail::fail_point!("slow_fsync");
        self.active.sync_data()?;
        self.active_len += records.len() as u64;
        if let Some(seg) = self.segments.last_mut() {
            seg.max_index = seg.max_index.max(max_index);
        }
        Ok(())
    }

    /// Writes records that need not be durable on their own (the next
    /// `append` syncs them along).
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.active.write_all(records)?;
        self.active_len += records.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let path = segment_path(&self.dir, seq);
        self.active.sync_data()?;
        self.active = create_segment(&self.dir, &path)?;
        self.active_len = 0;
        self.segments.push(Segment {
            seq,
            path,
            max_index: None,
        });
        Ok(())
    }

    /// Deletes every closed segment whose entries are all at or below `upto`.
    /// The purge point must already be in the state file.
    pub fn remove_segments_upto(&mut self, upto: u64) -> io::Result<()> {
        while self.segments.len() > 1 {
            let first = &self.segments[0];
            if first.max_index.is_some_and(|m| m > upto) {
                break;
            }
            std::fs::remove_file(&first.path)?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Replaces the state file atomically and durably.
    pub fn write_state(&self, state: &LogState) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(v) = &state.vote {
            encode(&mut buf, STATE_VOTE, &[v]);
        }
        if let Some(p) = &state.purged {
            encode(&mut buf, STATE_PURGED, &[p]);
        }
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        sync_dir(&self.dir)
    }

    #[cfg(test)]
    fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// The error the `raft_log_write_error` fail point makes an append fail
/// with: `return(enospc)` a full disk, anything else an I/O error.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(errno: Option<String>) -> io::Error {
    match errno.as_deref() {
        Some("enospc") => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

fn create_segment(dir: &Path, path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    if let Err(e) = preallocate(&f, SEGMENT_BYTES) {
        // Leave no empty segment behind: the next start retries cleanly.
        let _ = std::fs::remove_file(path);
        return Err(match e.raw_os_error() {
            Some(libc::ENOSPC) => io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "no room for a new {} MiB Raft log segment in {} (ENOSPC): free disk space (the log preallocates its segments)",
                    SEGMENT_BYTES >> 20,
                    dir.display()
                ),
            ),
            _ => e,
        });
    }
    f.sync_all()?;
    // The new file's name must survive a crash before anything in it counts.
    sync_dir(dir)?;
    Ok(f)
}

/// Reserves `len` bytes of disk for `f`, reading back as zeros.
#[cfg(target_os = "linux")]
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Some file systems cannot; the log works unpreallocated, only slower.
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_f: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purged(index: u64) -> Vec<u8> {
        format!("purged at {index}").into_bytes()
    }

    /// The records of entries `range`, entry i holding "e{i}".
    fn records(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in range {
            encode_entry(&mut buf, i, format!("e{i}").as_bytes());
        }
        buf
    }

    fn append_entries(log: &mut LogFile, range: std::ops::RangeInclusive<u64>) {
        let max = *range.end();
        log.append(&records(range), Some(max)).unwrap();
    }

    fn indexes(rec: &Recovered) -> Vec<u64> {
        rec.entries.keys().copied().collect()
    }

    #[test]
    fn replays_appends_truncates_and_the_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, rec) = LogFile::open(dir.path()).unwrap();
            assert!(rec.entries.is_empty());
            append_entries(&mut log, 1..=5);
            let mut buf = Vec::new();
            encode_truncate(&mut buf, Some(3));
            encode_committed(&mut buf, b"c3");
            log.write(&buf).unwrap();
            append_entries(&mut log, 4..=6);
        }
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(rec.entries[&5], b"e5");
        assert_eq!(rec.committed.as_deref(), Some(&b"c3"[..]));
    }

    #[test]
    fn an_entry_replaces_the_log_from_its_index_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=5);
            let mut buf = Vec::new();
            encode_entry(&mut buf, 3, b"new3");
            log.append(&buf, Some(3)).unwrap();
        }
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3]);
        assert_eq!(rec.entries[&3], b"new3");
    }

    #[test]
    fn truncating_everything_leaves_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=3);
            let mut buf = Vec::new();
            encode_truncate(&mut buf, None);
            log.append(&buf, None).unwrap();
        }
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert!(rec.entries.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=3);
        }
        let seg = segment_path(&dir.path().join(LOG_DIR), 1);
        let good = records(1..=3).len() as u64;
        // Half of a fourth record right after them, as a crash mid-write
        // leaves it in the preallocated space.
        let mut buf = Vec::new();
        encode_entry(&mut buf, 4, b"e4");
        let mut f = OpenOptions::new().write(true).open(&seg).unwrap();
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(good)).unwrap();
        f.write_all(&buf[..buf.len() / 2]).unwrap();
        drop(f);
        {
            let (mut log, rec) = LogFile::open(dir.path()).unwrap();
            assert_eq!(indexes(&rec), vec![1, 2, 3]);
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
            append_entries(&mut log, 4..=4);
        }
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
    }

    #[test]
    fn segments_are_preallocated_and_their_zeros_are_not_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=2);
            log.rotate().unwrap();
            append_entries(&mut log, 3..=3);
        }
        let seg = segment_path(&dir.path().join(LOG_DIR), 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        assert!(
            len == SEGMENT_BYTES || cfg!(not(target_os = "linux")),
            "{len}"
        );
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3]);
    }

    #[test]
    fn a_bad_record_before_the_last_segment_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=3);
            log.rotate().unwrap();
            append_entries(&mut log, 4..=5);
        }
        let seg = segment_path(&dir.path().join(LOG_DIR), 1);
        let mut data = std::fs::read(&seg).unwrap();
        // The last byte of the third record's payload.
        data[records(1..=3).len() - 1] ^= 0xff;
        std::fs::write(&seg, data).unwrap();
        let err = LogFile::open(dir.path())
            .err()
            .expect("corruption accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn purging_removes_whole_segments_behind_the_point() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = LogFile::open(dir.path()).unwrap();
            append_entries(&mut log, 1..=3);
            log.rotate().unwrap();
            append_entries(&mut log, 4..=6);
            log.rotate().unwrap();
            append_entries(&mut log, 7..=8);
            assert_eq!(log.segment_count(), 3);
            let state = LogState {
                vote: Some(b"v".to_vec()),
                purged: Some(purged(5)),
            };
            log.write_state(&state).unwrap();
            log.remove_segments_upto(5).unwrap();
            // The second segment still holds 6.
            assert_eq!(log.segment_count(), 2);
        }
        let (log, rec) = LogFile::open(dir.path()).unwrap();
        // 4 and 5 share a segment with 6; the caller drops them.
        assert_eq!(indexes(&rec), vec![4, 5, 6, 7, 8]);
        assert_eq!(rec.state.vote.as_deref(), Some(&b"v"[..]));
        assert_eq!(rec.state.purged, Some(purged(5)));
        assert_eq!(log.segment_count(), 2);
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn the_fail_points_fail_and_slow_an_append() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(dir.path()).unwrap();
        append_entries(&mut log, 1..=2);
        fail::cfg("raft_log_write_error", "return(enospc)").unwrap();
        let e = log.append(&records(3..=3), Some(3)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        fail::cfg("raft_log_write_error", "return(eio)").unwrap();
        let e = log.append(&records(3..=3), Some(3)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        fail::remove("raft_log_write_error");
        fail::cfg("slow_fsync", "sleep(50)").unwrap();
        let started = std::time::Instant::now();
        append_entries(&mut log, 3..=3);
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        scenario.teardown();
        drop(log);
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3]);
    }

    #[test]
    fn the_active_segment_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogFile::open(dir.path()).unwrap();
        append_entries(&mut log, 1..=3);
        log.write_state(&LogState {
            vote: None,
            purged: Some(purged(10)),
        })
        .unwrap();
        log.remove_segments_upto(10).unwrap();
        assert_eq!(log.segment_count(), 1);
        append_entries(&mut log, 11..=11);
        drop(log);
        let (_, rec) = LogFile::open(dir.path()).unwrap();
        // 1..=3 stay in the segment still being written; the caller drops them.
        assert_eq!(indexes(&rec), vec![1, 2, 3, 11]);
    }
}
