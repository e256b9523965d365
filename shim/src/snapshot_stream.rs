//! Maintenance.Snapshot's stream, as etcd's server sends it: the backend
//! file (here: the store written in etcd's bbolt format, see
//! `cairn_raft_backend::etcd_snapshot`) in 32 KiB chunks, each telling how
//! many bytes remain, then one last message whose blob is the SHA-256 of
//! everything sent. `etcdctl snapshot save` writes the blobs one after the
//! other, so the file ends with the hash that `snapshot restore` checks.
//!
//! The file is written first, from one read transaction (so it is
//! consistent at one revision while writes go on), then read back as the
//! client takes it: a bounded channel holds a few chunks, so memory does not
//! depend on the store's size or the client's speed. It is removed once
//! sent, or when the client goes away.

use cairn_proto::etcdserverpb::SnapshotResponse;
use cairn_raft_backend::Store;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

use crate::errors::store_status;
use crate::node::SharedNode;

/// etcd's chunk size (`snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;
/// Chunks queued ahead of the client.
const QUEUE: usize = 4;
/// The storage version a Cairn snapshot declares (as etcd 3.6 fills
/// `SnapshotResponse.version`).
const VERSION: &str = "3.6.0";

pub type SnapshotRx = mpsc::Receiver<Result<SnapshotResponse, Status>>;

/// Starts writing and sending a snapshot; the receiver is the response stream.
pub fn start(node: SharedNode) -> SnapshotRx {
    let (tx, rx) = mpsc::channel(QUEUE);
    let span = tracing::info_span!("snapshot");
    tokio::spawn(
        async move {
            if let Err(status) = send(&node.store, &node, &tx).await {
                tracing::warn!(error = %status.message(), "snapshot not sent");
                let _ = tx.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    rx
}

async fn send(
    store: &Store,
    node: &SharedNode,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), Status> {
    let started = std::time::Instant::now();
    let file = store.write_etcd_snapshot().await.map_err(store_status)?;
    let total = file.exported.size;
    tracing::info!(
        revision = file.exported.revision,
        compact_revision = file.exported.compact_revision,
        bytes = total,
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot written; sending"
    );
    let mut f = tokio::fs::File::open(&file.path)
        .await
        .map_err(|e| Status::internal(format!("etcdserver: open snapshot: {e}")))?;
    let header = node.header_at(file.exported.revision);
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let n = ((total - sent) as usize).min(CHUNK);
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)
            .await
            .map_err(|e| Status::internal(format!("etcdserver: read snapshot: {e}")))?;
        hasher.update(&buf);
        sent += n as u64;
        let resp = SnapshotResponse {
            header,
            remaining_bytes: total - sent,
            blob: buf,
            version: VERSION.to_string(),
        };
        if tx.send(Ok(resp)).await.is_err() {
            // The client went away; dropping `file` removes it.
            return Ok(());
        }
    }
    let _ = tx
        .send(Ok(SnapshotResponse {
            header,
            remaining_bytes: 0,
            blob: hasher.finalize().to_vec(),
            version: VERSION.to_string(),
        }))
        .await;
    tracing::info!(
        bytes = total,
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot sent"
    );
    Ok(())
}
