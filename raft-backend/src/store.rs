//! The store as the rest of Cairn sees it: propose writes, read snapshots,
//! follow applied events.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use cairn_proto::migrate::{self, MigrationState};
use tokio::sync::{broadcast, watch};

use crate::apply::writer::{Writer, WriterOutputs};
use crate::command::{AppliedBatch, Command, CommandOutput};
use crate::error::{Result, StoreError};
use crate::mvcc::apply_state::ApplyState;
use crate::mvcc::checkpointer::{Checkpointer, WalRestart};
use crate::mvcc::compactor::Compactor;
use crate::mvcc::file_size::FileSize;
use crate::mvcc::history::{self, HistoryRead};
use crate::mvcc::key_index::KeyIndex;
use crate::mvcc::metrics::StoreMetrics;
use crate::mvcc::prev_kv_interest::{PrevKvInterest, PrevKvWanted};
use crate::mvcc::readers::Readers;
use crate::mvcc::schema;
use crate::mvcc::TxnRead;
use crate::replication::{
    Bootstrap, LeaseAuthority, LogStore, MemberInfo, MemberList, PeerService, PeerTransport,
    RaftStatus, Replica, ReplicaOptions, StateMachine,
};
use crate::txn;
use crate::versions::{MinorVersion, VersionState};

/// How many applied batches a slow subscriber may fall behind before it is
/// told it lagged (and must catch up from history).
const EVENT_BUFFER: usize = 4096;
const MAX_READERS: usize = 32;

/// The database file inside a data dir.
pub const DB_FILE: &str = "cairn.db";

pub struct Store {
    path: PathBuf,
    readers: Readers,
    replica: Arc<Replica>,
    // Field order is drop order: apply stops before the compactor and
    // checkpointer it feeds.
    writer: Arc<Writer>,
    compactor: Arc<Compactor>,
    _checkpointer: Checkpointer,
    state: watch::Receiver<ApplyState>,
    events: broadcast::Sender<Arc<AppliedBatch>>,
    metrics: StoreMetrics,
    lease_changes: Arc<std::sync::atomic::AtomicU64>,
    prev_kv: PrevKvInterest,
    file_size: FileSize,
    version_monitor: tokio::task::AbortHandle,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.version_monitor.abort();
    }
}

/// A point-in-time summary for Status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    pub applied: ApplyState,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

impl Store {
    /// Opens (or creates) the store in `data_dir` and starts its Raft member.
    pub async fn open(
        data_dir: &Path,
        registry: &prometheus::Registry,
        opts: ReplicaOptions,
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::io(format!("create {}", data_dir.display()), e))?;
        let path = data_dir.join(DB_FILE);
        let conn = schema::open_writer(&path)?;
        let metrics = StoreMetrics::new(registry)
            .map_err(|e| StoreError::Storage(format!("register metrics: {e}")))?;
        let state_now = ApplyState::load(&conn)?;
        // etcd's MustDetectDowngrade: an older release does not join a
        // cluster that moved past it unless a downgrade to it is enabled.
        crate::mvcc::cluster_version::load(&conn)?
            .admits(MinorVersion::this_release())
            .map_err(StoreError::ReleaseRefused)?;
        let membership_now = crate::mvcc::membership_blob::load(&conn)?;
        let (state_tx, state) = watch::channel(state_now);
        let (membership_tx, membership) = watch::channel(membership_now);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let index = Arc::new(KeyIndex::load(&conn)?);
        let compactor = Arc::new(Compactor::start(
            &path,
            index.clone(),
            metrics.compaction_failures.clone(),
        )?);
        let wal_restart = WalRestart::default();
        let file_size = FileSize::new(&path);
        let checkpointer = Checkpointer::start(&path, wal_restart.clone(), file_size.clone())?;
        let waiters = crate::replication::Waiters::default();
        let lease_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let prev_kv = PrevKvInterest::default();
        let writer = Arc::new(Writer::start(
            conn,
            WriterOutputs {
                state: state_tx,
                events: events.clone(),
                compactor: compactor.clone(),
                metrics: metrics.clone(),
                membership: membership_tx,
                check_membership: crate::replication::check_membership_blob,
                lease_changes: lease_changes.clone(),
                wal_restart,
                index: index.clone(),
                prev_kv: prev_kv.clone(),
                file_size: file_size.clone(),
            },
        )?);
        let io = |context: &'static str| move |e: std::io::Error| StoreError::io(context, e);
        let synced = path.clone();
        let log = LogStore::open(
            data_dir,
            metrics.clone(),
            Box::new(move || schema::sync_to_disk(&synced)),
        )
        .map_err(io("open the log"))?;
        let sm = StateMachine::new(
            data_dir,
            path.clone(),
            writer.clone(),
            state.clone(),
            membership,
            opts.member_id,
            waiters.clone(),
        )?;
        let replica = Arc::new(Replica::start(opts, log, sm, state.clone(), waiters).await?);
        let readers = Readers::new(&path, index, MAX_READERS);
        let version_monitor = tokio::spawn(crate::version_monitor::run(
            Arc::downgrade(&replica),
            readers.clone(),
        ))
        .abort_handle();
        Ok(Store {
            readers,
            version_monitor,
            replica,
            path,
            writer,
            compactor,
            _checkpointer: checkpointer,
            state,
            events,
            metrics,
            lease_changes,
            prev_kv,
            file_size,
        })
    }

    /// A one-member store that has elected itself (tests and tools).
    pub async fn open_single(data_dir: &Path, registry: &prometheus::Registry) -> Result<Self> {
        let id = 1;
        let opts = ReplicaOptions {
            member_id: id,
            timing: Default::default(),
            transport: Arc::new(PeerTransport::new(
                0,
                None,
                std::time::Duration::from_secs(1),
            )),
            bootstrap: Bootstrap::New(
                [(
                    id,
                    MemberInfo {
                        name: "single".into(),
                        peer_urls: vec!["http://127.0.0.1:1".into()],
                        client_urls: vec![],
                    },
                )]
                .into(),
            ),
            request_timeout: std::time::Duration::from_secs(10),
        };
        let store = Self::open(data_dir, registry, opts).await?;
        store
            .replica
            .wait_leader(std::time::Duration::from_secs(10))
            .await?;
        Ok(store)
    }

    /// Stops this member's Raft tasks; the store answers nothing new after it.
    pub async fn shutdown(&self) {
        self.replica.shutdown().await
    }

    /// Resolves once this member's Raft core has stopped on a fault (see
    /// [`StorageFault`]); never on a clean shutdown. The member can serve
    /// nothing trustworthy after it: the server exits with its message.
    pub async fn storage_fault(&self) -> crate::StorageFault {
        self.replica.storage_fault().await
    }

    // ---- Replication: this member's Raft state and the cluster's membership ----

    /// The leader, while it is reachable (heard from within an election
    /// timeout; for the leader: a quorum heard from); `None` otherwise.
    pub fn leader(&self) -> Option<u64> {
        self.replica.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    pub fn term(&self) -> u64 {
        self.replica.term()
    }

    /// This member's Raft state and the membership, now.
    pub fn raft_status(&self) -> RaftStatus {
        self.replica.status()
    }

    /// Resolves with the reachable leader once it differs from `last` (a new
    /// leader, or none); `None` when the Raft core stopped.
    pub async fn leader_change(&self, last: Option<u64>) -> Option<Option<u64>> {
        self.replica.leader_change(last).await
    }

    /// A client for the current leader, or `NoLeader`.
    pub async fn renew_lease_at_leader(&self, id: i64) -> Result<Option<i64>> {
        self.replica.renew_lease_at_leader(id).await
    }

    pub async fn lease_ttl_at_leader(&self, id: i64) -> Result<Option<(i64, i64)>> {
        self.replica.lease_ttl_at_leader(id).await
    }

    /// Applies a membership change on the leader, or forwards it there;
    /// resolves with the membership after it.
    pub async fn change_member(
        &self,
        kind: cairn_proto::peer::MemberChangeKind,
        member: cairn_proto::peer::Member,
    ) -> Result<MemberList> {
        self.replica.change_member(kind, member).await
    }

    /// Hands leadership to `target` (etcd's MoveLeader) and waits for it to take over.
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        self.replica.transfer_leader(target).await
    }

    /// The peer protocol's server for this member, to mount on the peer
    /// listeners. `lessor` serves leases to followers; `cluster_id` and
    /// `version` are what discovery (`ClusterInfo`) reports.
    pub fn peer_service<L: LeaseAuthority>(
        &self,
        lessor: Arc<L>,
        cluster_id: u64,
        version: &'static str,
    ) -> PeerService<L> {
        PeerService::new(self.replica.clone(), lessor, cluster_id, version)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file's size as of the last checkpoint, defragmentation
    /// or snapshot install (what the quota is checked against).
    pub fn file_size(&self) -> i64 {
        self.file_size.bytes()
    }

    /// Registers a watcher that wants previous kvs in events: while one is
    /// registered, applied batches carry them (`AppliedBatch::prev_kv_complete`).
    pub fn want_prev_kv(&self) -> PrevKvWanted {
        self.prev_kv.register()
    }

    /// Replicates `cmd` and resolves once a quorum has it durably and this
    /// member has applied it.
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput> {
        self.replica.propose(cmd).await
    }

    /// Waits until everything committed before the call is applied here, so
    /// that a read after it is linearizable (ReadIndex).
    pub async fn read_barrier(&self) -> Result<()> {
        self.replica.read_barrier().await
    }

    /// Waits until this member has applied everything it knows is committed.
    pub async fn catch_up_apply(&self) -> Result<()> {
        self.replica.catch_up_apply().await
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        if r.range_end.is_empty() {
            // One key: a couple of index lookups, served without a thread hop.
            return self.readers.read_inline(|v| txn::range(v, &r));
        }
        self.readers.read(move |v| txn::range(v, &r)).await
    }

    /// A txn with no writes at any depth, answered from a snapshot without a log entry.
    pub async fn txn_readonly(&self, t: TxnRequest) -> Result<TxnResponse> {
        self.readers.read(move |v| txn::txn(v, &t)).await
    }

    /// Changes with revisions in `[from, to]`, stopping after the revision in
    /// which `max_events`, or `max_bytes` of keys and values, is reached (see
    /// `history::events_between`); `Compacted` if `from` is below the compact
    /// revision.
    pub async fn events_between(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead> {
        self.readers
            .read(move |v| history::events_between(v, from, to, max_events, max_bytes))
            .await
    }

    /// etcd's HashKV of the history up to `revision` (0: the current one),
    /// from one consistent snapshot (see `hash_kv`).
    pub async fn hash_kv(&self, revision: i64) -> Result<crate::KvHash> {
        self.readers
            .read(move |v| crate::mvcc::hash_kv::hash_kv(v, revision))
            .await
    }

    // ---- Live migration from etcd (docs/design.md; `apply::migration`) ----

    /// Proposes a migration command and answers with the migration's state
    /// after it was applied here.
    async fn propose_migration(&self, cmd: Command) -> Result<MigrationState> {
        match self.propose(cmd).await? {
            CommandOutput::Migration(state) => Ok(state),
            other => Err(StoreError::Storage(format!(
                "a migration command answered {other:?}"
            ))),
        }
    }

    pub async fn migration_begin(&self, req: migrate::BeginRequest) -> Result<MigrationState> {
        self.propose_migration(Command::MigrationBegin(req)).await
    }

    pub async fn import_base(&self, req: migrate::ImportBaseRequest) -> Result<MigrationState> {
        self.propose_migration(Command::ImportBase(req)).await
    }

    pub async fn import_revisions(
        &self,
        req: migrate::ImportRevisionsRequest,
    ) -> Result<MigrationState> {
        self.propose_migration(Command::ImportRevisions(req)).await
    }

    pub async fn migration_cutover(&self, req: migrate::CutoverRequest) -> Result<MigrationState> {
        self.propose_migration(Command::MigrationCutover(req)).await
    }

    pub async fn migration_abort(&self, req: migrate::AbortRequest) -> Result<MigrationState> {
        self.propose_migration(Command::MigrationAbort(req)).await
    }

    /// This member's migration state as applied here (no Raft round), with
    /// `target_revision` from the same snapshot.
    pub async fn migration_state(&self) -> Result<MigrationState> {
        self.readers
            .read(|v| {
                let mut state = crate::mvcc::migration::load(v.conn())?;
                state.target_revision = v.current_rev();
                Ok(state)
            })
            .await
    }

    /// The migration's phase as applied here, and the error a client write
    /// gets now (`MigrationGate::check_write`): cheap, from memory.
    pub fn migration_gate(&self) -> crate::MigrationGate {
        self.state.borrow().migration
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

    /// Counts applied changes to the set of leases (grants, revokes, an
    /// installed snapshot) since this process started: a reader of `leases`
    /// can skip re-reading while it stays the same.
    pub fn lease_changes(&self) -> u64 {
        self.lease_changes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every lease as (id, granted TTL seconds).
    pub async fn leases(&self) -> Result<Vec<(i64, i64)>> {
        self.readers.read(|v| v.leases()).await
    }

    /// The cluster version and the downgrade under way, as applied here.
    pub async fn version_state(&self) -> Result<VersionState> {
        self.readers
            .with_conn(crate::mvcc::cluster_version::load)
            .await
    }

    pub async fn alarms(&self) -> Result<Vec<cairn_proto::etcdserverpb::AlarmMember>> {
        self.readers
            .with_conn(crate::mvcc::alarms::list_alarms)
            .await
    }

    /// Resolves when physical compaction has reached `revision`.
    pub async fn wait_compacted(&self, revision: i64) {
        self.compactor.wait(revision).await
    }

    pub async fn defragment(&self) -> Result<()> {
        self.writer.defragment().await
    }

    /// Every batch applied from now on, in order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedBatch>> {
        self.events.subscribe()
    }

    /// Writes the store as one read transaction sees it to a new file in
    /// etcd's backend format (bbolt), in the data dir's snapshot directory,
    /// while writes go on. The file goes when the returned handle is dropped.
    pub async fn write_etcd_snapshot(&self) -> Result<crate::etcd_snapshot::EtcdSnapshotFile> {
        // Created (and emptied of crash leftovers) at open: snapshot_dir.
        let dir = self
            .path
            .parent()
            .map(|d| d.join(crate::mvcc::snapshot::SNAP_DIR))
            .unwrap_or_else(|| PathBuf::from(crate::mvcc::snapshot::SNAP_DIR));
        let path = crate::mvcc::snapshot::unique(&dir, "etcd");
        self.readers
            .read(move |txn| {
                let conn = txn.conn();
                // In the read transaction txn began: the same view as its rows.
                let state = ApplyState::load(conn)?;
                let done = schema::get_meta(conn, schema::meta::COMPACT_DONE_REV)?;
                let blob = crate::mvcc::membership_blob::load(conn)?;
                let members: Vec<crate::etcd_snapshot::EtcdMember> =
                    crate::replication::member_list_of_blob(blob.as_deref())?
                        .into_iter()
                        .map(|(id, info, is_learner)| crate::etcd_snapshot::EtcdMember {
                            id,
                            name: info.name,
                            peer_urls: info.peer_urls,
                            is_learner,
                        })
                        .collect();
                // Made first so that a failed export leaves no partial file.
                let mut file = crate::etcd_snapshot::EtcdSnapshotFile {
                    path: path.clone(),
                    exported: crate::etcd_snapshot::Exported {
                        revision: 0,
                        compact_revision: 0,
                        revisions: 0,
                        size: 0,
                    },
                };
                file.exported =
                    crate::mvcc::etcd_snapshot::export::export(txn, &state, done, &members, &path)?;
                Ok(file)
            })
            .await
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}
