//! A pool of read-only connections. WAL mode lets each read run in its own
//! snapshot beside the writer, so reads never wait for a group commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::read_txn::ReadTxn;
use crate::mvcc::schema;

#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    index: Arc<KeyIndex>,
    idle: Arc<Mutex<Vec<Connection>>>,
    /// Bounds the connections open at once (and the blocking threads reading).
    permits: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    pub fn new(path: &Path, index: Arc<KeyIndex>, max: usize) -> Self {
        Readers {
            path: path.to_path_buf(),
            index,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
        }
    }

    /// Runs `f` on a consistent snapshot of the store.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut ReadTxn<'_>) -> Result<T> + Send + 'static,
    {
        let index = self.index.clone();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let mut txn = ReadTxn::open(&tx, &index)?;
            f(&mut txn)
        })
        .await
    }

    /// Like `read`, but on the calling thread. Only for reads bounded to a few
    /// rows (a single key): handing microseconds of work to a blocking thread
    /// and back costs more than the work.
    pub fn read_inline<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut ReadTxn<'_>) -> Result<T>,
    {
        let mut conn = self.checkout()?;
        let result = (|| {
            let tx = conn.transaction()?;
            let mut txn = ReadTxn::open(&tx, &self.index)?;
            f(&mut txn)
        })();
        self.checkin(conn);
        result
    }

    /// Runs `f` on a pooled connection outside any read transaction (sizes, pragmas).
    pub async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.run(move |conn| f(conn)).await
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Stopped)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = this.checkout()?;
            let result = f(&mut conn);
            this.checkin(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?
    }

    /// An idle connection, or a new one when all are in use.
    fn checkout(&self) -> Result<Connection> {
        match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => Ok(c),
            None => schema::open_reader(&self.path),
        }
    }

    fn checkin(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}
