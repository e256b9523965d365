//! A store on a temporary file for the store wing's unit tests (`mvcc`,
//! `txn`, `apply`): commands applied as the writer applies them, reads
//! through a reader connection of its own.

use std::path::PathBuf;
use std::sync::Arc;

use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};
use rusqlite::Connection;

use crate::apply::apply_command::apply;
use crate::command::{Command, CommandOutput};
use crate::error::Result;
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::read_txn::ReadTxn;
use crate::mvcc::schema;
use crate::mvcc::write_txn::WriteTxn;

/// A put of `value` at `key`, as a log command.
pub fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

pub struct TestStore {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub conn: Connection,
    pub index: Arc<KeyIndex>,
    pub state: ApplyState,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = schema::open_writer(&path).unwrap();
        let index = Arc::new(KeyIndex::load(&conn).unwrap());
        let state = ApplyState::load(&conn).unwrap();
        TestStore {
            _dir: dir,
            path,
            conn,
            index,
            state,
        }
    }

    /// Applies `cmd` in a transaction of its own, as one batch.
    pub fn apply(&mut self, cmd: Command) -> Result<CommandOutput> {
        let tx = self.conn.unchecked_transaction()?;
        let out = apply(&tx, &self.index, &mut self.state, &cmd, true);
        // As the writer does after every batch with a migration command.
        self.index.release();
        let out = out?;
        self.state.persist(&tx)?;
        tx.commit()?;
        Ok(out.output)
    }

    /// Applies `cmd` in a transaction of its own, with everything it gave
    /// (events per revision, compaction, reset). A refused command rolls
    /// back, as the writer's would have written nothing.
    pub fn apply_full(&mut self, cmd: Command) -> Result<crate::apply::apply_command::Applied> {
        let tx = self.conn.unchecked_transaction()?;
        let out = apply(&tx, &self.index, &mut self.state, &cmd, true);
        self.index.release();
        let out = out?;
        self.state.persist(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn put(&mut self, key: &str, value: &str) {
        self.apply(put(key, value)).unwrap();
    }

    /// Runs `f` in a write transaction on the writer's connection, then
    /// commits it (or rolls back if `f` fails).
    pub fn write<T>(&mut self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let mut w = WriteTxn::new(
            &tx,
            &self.index,
            self.state.current_rev,
            self.state.compact_rev,
        );
        let t = f(&mut w)?;
        if w.has_changes() {
            self.state.current_rev += 1;
        }
        self.state.persist(&tx)?;
        tx.commit()?;
        Ok(t)
    }

    /// A Range as the server answers it, on a reader of its own.
    pub fn range(&self, r: &RangeRequest) -> Result<cairn_proto::etcdserverpb::RangeResponse> {
        self.read(|t| crate::txn::range(t, r))
    }

    /// A reader connection, for `read_with`.
    pub fn reader(&self) -> Connection {
        schema::open_reader(&self.path).unwrap()
    }

    /// Runs `f` on a read transaction of a new reader connection.
    pub fn read<T>(&self, f: impl FnOnce(&mut ReadTxn<'_>) -> T) -> T {
        let mut conn = self.reader();
        read_with(&mut conn, &self.index, f)
    }
}

/// Runs `f` on a read transaction of `conn`.
pub fn read_with<T>(
    conn: &mut Connection,
    index: &KeyIndex,
    f: impl FnOnce(&mut ReadTxn<'_>) -> T,
) -> T {
    let tx = conn.transaction().unwrap();
    let mut r = ReadTxn::open(&tx, index).unwrap();
    f(&mut r)
}

/// A range over `[key, end)` (`end` empty: the one key).
pub fn range_req(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

/// The (key, value) pairs of a range's answer, as strings.
pub fn pairs(kvs: &[cairn_proto::mvccpb::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}
