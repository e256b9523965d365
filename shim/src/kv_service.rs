//! etcdserverpb.KV: reads from a store snapshot, writes through the log.

use cairn_proto::etcdserverpb::{
    kv_server::Kv, request_op::Request as Op, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use cairn_raft_backend::{is_txn_readonly, Command, CommandOutput};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::errors::store_status;
use crate::node::SharedNode;
use crate::{quota, validate};

pub struct KvService {
    node: SharedNode,
}

impl KvService {
    pub fn new(node: SharedNode) -> Self {
        KvService { node }
    }

    async fn propose(&self, cmd: Command) -> Result<CommandOutput, Status> {
        self.node.store.propose(cmd).await.map_err(store_status)
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}

/// Bytes a txn would add, for the quota check (deletes and reads add none).
fn txn_cost(t: &TxnRequest) -> i64 {
    t.success
        .iter()
        .chain(&t.failure)
        .map(|op| match &op.request {
            Some(Op::RequestPut(p)) => (p.key.len() + p.value.len()) as i64,
            Some(Op::RequestTxn(inner)) => txn_cost(inner),
            _ => 0,
        })
        .sum()
}

fn all_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(r)) => r.serializable,
            Some(Op::RequestTxn(inner)) => all_serializable(inner),
            _ => true,
        })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::debug_span!(
            "range",
            key_len = r.key.len(),
            rev = r.revision,
            limit = r.limit
        );
        async move {
            validate::range(&r)?;
            if !r.serializable {
                self.node.store.read_barrier().await.map_err(store_status)?;
            }
            let mut resp = self.node.store.range(r).await.map_err(store_status)?;
            self.node.fill(&mut resp.header);
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::debug_span!("put", key_len = r.key.len(), value_len = r.value.len());
        async move {
            validate::put(&r)?;
            self.node.check_writable()?;
            self.node.check_size(&r)?;
            quota::check(&self.node, (r.key.len() + r.value.len()) as i64).await?;
            match self.propose(Command::Put(r)).await? {
                CommandOutput::Put(mut resp) => {
                    self.node.fill(&mut resp.header);
                    Ok(Response::new(resp))
                }
                _ => Err(unexpected("put")),
            }
        }
        .instrument(span)
        .await
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::debug_span!("delete_range", key_len = r.key.len());
        async move {
            validate::delete_range(&r)?;
            self.node.check_writable()?;
            self.node.check_size(&r)?;
            match self.propose(Command::DeleteRange(r)).await? {
                CommandOutput::DeleteRange(mut resp) => {
                    self.node.fill(&mut resp.header);
                    Ok(Response::new(resp))
                }
                _ => Err(unexpected("delete_range")),
            }
        }
        .instrument(span)
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::debug_span!(
            "txn",
            compares = r.compare.len(),
            success = r.success.len(),
            failure = r.failure.len()
        );
        async move {
            validate::txn(&r, self.node.max_txn_ops)?;
            let mut resp = if is_txn_readonly(&r) {
                if !all_serializable(&r) {
                    self.node.store.read_barrier().await.map_err(store_status)?;
                }
                self.node
                    .store
                    .txn_readonly(r)
                    .await
                    .map_err(store_status)?
            } else {
                self.node.check_writable()?;
                self.node.check_size(&r)?;
                quota::check(&self.node, txn_cost(&r)).await?;
                match self.propose(Command::Txn(r)).await? {
                    CommandOutput::Txn(resp) => resp,
                    _ => return Err(unexpected("txn")),
                }
            };
            self.node.fill(&mut resp.header);
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.node.check_leader(&req)?;
        let r = req.into_inner();
        let span = tracing::info_span!("compact", revision = r.revision, physical = r.physical);
        async move {
            self.node.check_writable()?;
            let physical = r.physical;
            match self.propose(Command::Compact(r)).await? {
                CommandOutput::Compact {
                    mut response,
                    compact_revision,
                } => {
                    if physical {
                        self.node.store.wait_compacted(compact_revision).await;
                    }
                    // etcd answers with the revision current when the call returns.
                    if let Some(h) = response.header.as_mut() {
                        h.revision = self.node.store.applied().current_rev;
                    }
                    self.node.fill(&mut response.header);
                    Ok(Response::new(response))
                }
                _ => Err(unexpected("compact")),
            }
        }
        .instrument(span)
        .await
    }
}
