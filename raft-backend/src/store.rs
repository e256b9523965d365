//! The store as the rest of Cairn sees it: propose writes, read snapshots,
//! follow applied events.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use tokio::sync::{broadcast, oneshot, watch};

use crate::apply::ApplyState;
use crate::checkpointer::Checkpointer;
use crate::command::{AppliedBatch, Command, CommandOutput};
use crate::compactor::Compactor;
use crate::error::{Result, StoreError};
use crate::local_log::{LocalLog, LogOutputs, WriterMsg};
use crate::metrics::StoreMetrics;
use crate::readers::Readers;
use crate::schema;

/// How many applied batches a slow subscriber may fall behind before it is
/// told it lagged (and must catch up from history).
const EVENT_BUFFER: usize = 4096;
const MAX_READERS: usize = 32;

/// The database file inside a data dir.
pub const DB_FILE: &str = "cairn.db";

pub struct Store {
    path: PathBuf,
    readers: Readers,
    // Field order is drop order: the log stops (committing nothing new)
    // before the compactor and checkpointer it feeds.
    log: LocalLog,
    compactor: Arc<Compactor>,
    _checkpointer: Checkpointer,
    state: watch::Receiver<ApplyState>,
    events: broadcast::Sender<Arc<AppliedBatch>>,
    metrics: StoreMetrics,
}

/// A point-in-time summary for Status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    pub applied: ApplyState,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path, registry: &prometheus::Registry) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Storage(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE);
        let conn = schema::open_writer(&path)?;
        let metrics = StoreMetrics::new(registry)
            .map_err(|e| StoreError::Storage(format!("register metrics: {e}")))?;
        let state_now = crate::apply::ApplyState::load(&conn)?;
        let (state_tx, state) = watch::channel(state_now);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let compactor = Arc::new(Compactor::start(&path)?);
        let checkpointer = Checkpointer::start(&path)?;
        let log = LocalLog::start(
            conn,
            LogOutputs {
                state: state_tx,
                events: events.clone(),
                compactor: compactor.clone(),
                metrics: metrics.clone(),
            },
        )?;
        Ok(Store {
            readers: Readers::new(&path, MAX_READERS),
            path,
            log,
            compactor,
            _checkpointer: checkpointer,
            state,
            events,
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `cmd` to the log and resolves once it is durable and applied.
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput> {
        let (reply, rx) = oneshot::channel();
        self.log.send(WriterMsg::Propose { cmd, reply })?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Waits until everything committed before the call is applied, so that a
    /// read after it is linearizable. With one member every acknowledged write
    /// is already applied; a replicated log makes this a ReadIndex round.
    pub async fn read_barrier(&self) -> Result<()> {
        Ok(())
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        if r.range_end.is_empty() {
            // One key: a couple of index lookups, served without a thread hop.
            return self.readers.read_inline(|v| v.range(&r));
        }
        self.readers.read(move |v| v.range(&r)).await
    }

    /// A txn with no writes at any depth, answered from a snapshot without a log entry.
    pub async fn txn_readonly(&self, t: TxnRequest) -> Result<TxnResponse> {
        self.readers.read(move |v| v.txn(&t)).await
    }

    /// Changes with revisions in `[from, to]` (see `View::events_between`);
    /// `Compacted` if `from` is below the compact revision.
    pub async fn events_between(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<Vec<cairn_proto::mvccpb::Event>> {
        self.readers
            .read(move |v| v.events_between(from, to, max_events))
            .await
    }

    pub fn applied(&self) -> ApplyState {
        *self.state.borrow()
    }

    pub async fn status(&self) -> Result<StoreStatus> {
        let (db_size, db_size_in_use) = self.readers.with_conn(schema::db_size).await?;
        Ok(StoreStatus {
            applied: self.applied(),
            db_size,
            db_size_in_use,
        })
    }

    /// Live keys attached to a lease.
    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        self.readers.read(move |v| v.lease_keys(id)).await
    }

    /// Every lease as (id, granted TTL seconds).
    pub async fn leases(&self) -> Result<Vec<(i64, i64)>> {
        self.readers.read(|v| v.leases()).await
    }

    pub async fn alarms(&self) -> Result<Vec<cairn_proto::etcdserverpb::AlarmMember>> {
        self.readers.with_conn(crate::apply::list_alarms).await
    }

    /// Resolves when physical compaction has reached `revision`.
    pub async fn wait_compacted(&self, revision: i64) {
        self.compactor.wait(revision).await
    }

    pub async fn defragment(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.log.send(WriterMsg::Defragment { reply })?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Every batch applied from now on, in order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedBatch>> {
        self.events.subscribe()
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}
