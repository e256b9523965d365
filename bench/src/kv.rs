//! The client a put or range phase drives: Cairn's own generated tonic
//! client, or the independent `etcd-client` crate.
//!
//! A server's numbers measured only with a client generated from its own
//! build can hide costs that other clients pay (frames, flushes, window
//! updates). So comparisons use a client we did not write; the generated one
//! stays as a second line. `etcd-client`'s build needs `protoc`, so it is a
//! cargo feature (`cairn-shim/bench-etcd-client`), which `scripts/bench.sh`
//! turns on.

#[cfg(feature = "etcd-client")]
use std::time::Duration;

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

use crate::args::BenchClient;

/// A failed request: (kind, for counting; message).
pub(crate) type OpError = (String, String);

/// One client's handle on one connection.
#[derive(Clone)]
pub(crate) enum KvConn {
    Generated(KvClient<Channel>),
    #[cfg(feature = "etcd-client")]
    EtcdClient(etcd_client::KvClient),
}

impl KvConn {
    /// Opens `conns` connections for `kind` (round robin over `endpoints`)
    /// and spreads `clients` handles over them.
    pub(crate) async fn open(
        kind: BenchClient,
        endpoints: &[String],
        generated: &[Channel],
        clients: usize,
    ) -> anyhow::Result<Vec<KvConn>> {
        let conns: Vec<KvConn> = match kind {
            BenchClient::Generated => generated
                .iter()
                .map(|c| KvConn::Generated(KvClient::new(c.clone())))
                .collect(),
            BenchClient::EtcdClient => etcd_client_conns(endpoints, generated.len()).await?,
        };
        Ok((0..clients)
            .map(|i| conns[i % conns.len()].clone())
            .collect())
    }

    pub(crate) async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        match self {
            KvConn::Generated(c) => c
                .put(PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| (format!("{:?}", s.code()), s.message().to_string())),
            #[cfg(feature = "etcd-client")]
            KvConn::EtcdClient(c) => c.put(key, value, None).await.map(drop).map_err(etcd_error),
        }
    }

    /// A single-key Range; how many key-values it returned.
    pub(crate) async fn range(
        &mut self,
        key: Vec<u8>,
        serializable: bool,
    ) -> Result<usize, OpError> {
        match self {
            KvConn::Generated(c) => c
                .range(RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|r| r.get_ref().kvs.len())
                .map_err(|s| (format!("{:?}", s.code()), s.message().to_string())),
            #[cfg(feature = "etcd-client")]
            KvConn::EtcdClient(c) => {
                let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                c.get(key, opts)
                    .await
                    .map(|r| r.kvs().len())
                    .map_err(etcd_error)
            }
        }
    }
}

#[cfg(feature = "etcd-client")]
async fn etcd_client_conns(endpoints: &[String], conns: usize) -> anyhow::Result<Vec<KvConn>> {
    use anyhow::Context as _;
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        // tonic's defaults under it, as kube-apiserver's client has Go's:
        // Nagle off.
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let client = etcd_client::Client::connect([endpoint.as_str()], Some(opts))
            .await
            .with_context(|| format!("etcd-client cannot connect to {endpoint}"))?;
        out.push(KvConn::EtcdClient(client.kv_client()));
    }
    Ok(out)
}

#[cfg(not(feature = "etcd-client"))]
async fn etcd_client_conns(_: &[String], _: usize) -> anyhow::Result<Vec<KvConn>> {
    anyhow::bail!(
        "--client etcd-client: this cairn was built without it; build with \
         `cargo build --release -p cairn-shim --features bench-etcd-client` (needs protoc)"
    )
}

#[cfg(feature = "etcd-client")]
fn etcd_error(e: etcd_client::Error) -> OpError {
    match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => ("Client".to_string(), other.to_string()),
    }
}
