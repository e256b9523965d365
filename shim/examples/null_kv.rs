//! A KV server that stores nothing: Put answers at once with the next
//! revision, Range with nothing. It measures the ceiling that the gRPC stack
//! and the load generator leave on a machine: `cairn bench` against it shows
//! how many puts per second are possible before any storage or consensus
//! work. docs/benchmarks.md uses it to say what a put-throughput target
//! means on 2 shared cores.
//!
//!     cargo run --release -p cairn-shim --example null_kv -- 127.0.0.1:23790
//!     target/release/cairn bench --endpoints http://127.0.0.1:23790 --duration 10s

use std::sync::atomic::{AtomicI64, Ordering};

use cairn_proto::etcdserverpb::kv_server::{Kv, KvServer};
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use futures::TryStreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

// The same allocator as the `cairn` binary, so the two compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Default)]
struct NullKv {
    revision: AtomicI64,
}

impl NullKv {
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 1,
            member_id: 1,
            revision,
            raft_term: 1,
        })
    }
}

#[tonic::async_trait]
impl Kv for NullKv {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse {
            header: self.header(self.revision.load(Ordering::Relaxed)),
            ..Default::default()
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(PutResponse {
            header: self.header(revision),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("null_kv stores nothing"))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("null_kv stores nothing"))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("null_kv stores nothing"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:23790".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("null_kv: serving on {}", listener.local_addr()?);
    // Nagle off, as `cairn` sets it on every accepted connection.
    let incoming = TcpListenerStream::new(listener).map_ok(|s| {
        let _ = s.set_nodelay(true);
        s
    });
    tonic::transport::Server::builder()
        .add_service(KvServer::new(NullKv::default()))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
