//! etcd's defragment: rewrite the database file to return its free pages.

use rusqlite::Connection;

use crate::error::Result;

/// Attempts at folding a defragmented database back into its file.
const DEFRAG_CHECKPOINT_TRIES: u32 = 100;

/// Runs on the writer's connection, between its transactions.
pub fn defragment(conn: &Connection) -> Result<()> {
    conn.execute_batch("VACUUM")?;
    // Fold the rewritten pages back into the main file and shrink the WAL, so
    // that the file's size (Status, the quota) drops before the call returns,
    // as etcd's does. The background checkpointer may hold the checkpoint
    // lock for a moment, and then this reports busy without waiting: retry.
    for _ in 0..DEFRAG_CHECKPOINT_TRIES {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!("defragment: the file shrinks at a later checkpoint (WAL busy for 1 s)");
    Ok(())
}
