//! Moves committed WAL pages into the main database file in the background,
//! so that no commit on the request path pays for a checkpoint.
//!
//! A checkpoint alone never makes the WAL shorter: SQLite starts writing it
//! from the top again only when a write transaction begins with every frame
//! already copied back. Under a steady write load the writer always has
//! committed new frames by the time a background checkpoint ends, so the WAL
//! would grow without bound, every new WAL page zeroed by the kernel on the
//! apply thread. So after a background checkpoint that found the WAL long, the
//! checkpointer asks the writer (`WalRestart`) to copy back the few frames
//! written since, between two of its transactions; its next transaction then
//! rewinds the WAL. The bulk of the copying and its fsync stay here.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::mvcc::file_size::FileSize;
use crate::mvcc::schema;

/// Each pass writes the pages dirtied since the last one and fsyncs the WAL
/// and the database; the Raft log's fdatasync queues behind that writeback,
/// so shorter passes give shorter stalls, down to about this interval, below
/// which the put tail gained nothing.
const INTERVAL: Duration = Duration::from_millis(100);

/// A WAL longer than this many frames (4 KiB pages) after a checkpoint is
/// rewound by the writer; a shorter one is left to rewind by itself when
/// writes pause.
const REWIND_FRAMES: i64 = 4096;

/// Set by the checkpointer, taken by the writer between transactions.
#[derive(Clone, Default)]
pub(crate) struct WalRestart(Arc<AtomicBool>);

impl WalRestart {
    /// Called by the WAL's only writer, outside any transaction: copies back
    /// what the background checkpoint left, so that its next transaction
    /// starts the WAL over. Readers still on old frames just defer that to a
    /// later request; nothing waits for them.
    /// Returns whether it ran.
    pub(crate) fn run_if_requested(&self, writer: &Connection) -> Result<bool> {
        if !self.0.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(true)
    }

    fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}

pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Refreshes `size` after each pass: a checkpoint is what grows the file.
    pub(crate) fn start(path: &Path, restart: WalRestart, size: FileSize) -> Result<Self> {
        let conn = schema::open_writer(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cairn-checkpoint".into())
            .spawn(move || {
                yield_to_request_path();
                // Logged when passes start failing and when they succeed
                // again, not every pass: a full disk fails ten a second.
                let mut failing = false;
                // recv_timeout doubles as the period and the shutdown signal.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    match checkpoint(&conn, &restart) {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "WAL checkpoint failed (retried every pass; logged again once it succeeds)");
                        }
                        Err(_) => {}
                        Ok(_) if failing => {
                            failing = false;
                            tracing::info!("WAL checkpoint succeeded again");
                        }
                        Ok(_) => {}
                    }
                    size.refresh();
                }
            })
            .map_err(|e| StoreError::io("spawn checkpointer", e))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// How much lower than a request's thread a pass runs (Linux nice value).
#[cfg(target_os = "linux")]
const NICE: libc::c_int = 10;

/// Lowers this thread's priority, so that a pass seldom holds a core that a
/// request's thread is waiting for: on a small machine the slowest puts are
/// those that overlap a pass.
///
/// Not the idle scheduling class: under load it showed write stalls of
/// seconds, which fits a priority inversion: a pass briefly holds SQLite's WAL locks (a read mark,
/// exclusively), a thread in that class can be kept off the cores for as
/// long as anything else is runnable, and a transaction that needs the lock
/// retries with growing sleeps. At nice 10 the thread still gets a bounded
/// share. Its I/O class, derived from the nice value, stays best-effort.
///
/// Best effort: a failure leaves the thread at normal priority.
fn yield_to_request_path() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        // SAFETY: plain integers; on Linux PRIO_PROCESS with a thread id
        // sets that thread's nice value alone.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "checkpointer keeps normal priority");
        }
    }
}

/// One background pass: copies back every frame no reader still needs, and
/// asks for a rewind when the WAL has grown long.
fn checkpoint(conn: &Connection, restart: &WalRestart) -> rusqlite::Result<()> {
    // Columns: busy flag, frames in the WAL, frames copied back.
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if frames >= REWIND_FRAMES {
        restart.request();
    }
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WAL header's checkpoint sequence: SQLite bumps it each time the
    /// WAL starts over from its first frame.
    fn rewinds(path: &Path) -> u32 {
        let header = std::fs::read(schema::wal_path(path)).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// A store with the writer's connection and the checkpointer's.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        writer: Connection,
        background: Connection,
        restart: WalRestart,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Fixture {
            writer: schema::open_writer(&path).unwrap(),
            background: schema::open_writer(&path).unwrap(),
            restart: WalRestart::default(),
            path,
            _dir: dir,
        }
    }

    fn write(conn: &Connection, name: &str, bytes: i64) {
        conn.execute(
            "INSERT OR REPLACE INTO raft_state (name, value) VALUES (?1, zeroblob(?2))",
            rusqlite::params![name, bytes],
        )
        .unwrap();
    }

    /// Frames the background checkpoint could not copy (here: written after
    /// a reader's snapshot; under load: written while it ran) keep the WAL
    /// growing; the writer's short checkpoint on request lets it start over.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_checkpointer_thread_runs_at_a_lower_priority_in_the_normal_class() {
        let (policy, nice) = std::thread::spawn(|| {
            yield_to_request_path();
            // SAFETY: pid 0 and a thread id name the calling thread.
            unsafe {
                let tid = libc::gettid();
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!((policy, nice), (libc::SCHED_OTHER, NICE));
    }

    #[test]
    fn long_wal_is_rewound_by_the_writer_on_request() {
        let Fixture {
            path,
            writer,
            background,
            restart,
            ..
        } = &fixture();
        let path = path.as_path();

        write(writer, "big", (REWIND_FRAMES + 100) * 4096);
        let before = rewinds(path);
        let reader = schema::open_reader(path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        write(writer, "during", 10);
        checkpoint(background, restart).unwrap();
        reader.execute_batch("COMMIT").unwrap();
        write(writer, "after", 10);
        assert_eq!(
            rewinds(path),
            before,
            "a copied-back WAL is not rewound by itself under load"
        );

        restart.run_if_requested(writer).unwrap();
        write(writer, "next", 10);
        assert_eq!(
            rewinds(path),
            before + 1,
            "the writer's next transaction starts the WAL over"
        );
        // The request was taken: nothing more happens until the next one.
        restart.run_if_requested(writer).unwrap();
        write(writer, "later", 10);
        assert_eq!(rewinds(path), before + 1);
    }

    #[test]
    fn short_wal_asks_for_nothing() {
        let f = fixture();
        write(&f.writer, "small", 4096);
        checkpoint(&f.background, &f.restart).unwrap();
        assert!(!f.restart.0.load(Ordering::Acquire));
    }
}
