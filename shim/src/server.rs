//! Assembles one member: store, services, TLS, and the client listeners where
//! gRPC and HTTP share each port, as in etcd.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use cairn_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use cairn_raft_backend::Store;
use futures::{StreamExt, TryStreamExt};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};

use crate::cluster_service::ClusterService;
use crate::config::{resolve_listen_url, ServeArgs, GRPC_OVERHEAD_BYTES};
use crate::identity::Identity;
use crate::kv_service::KvService;
use crate::lease::{LeaseService, Lessor};
use crate::maintenance_service::MaintenanceService;
use crate::metrics::{track, ServerMetrics};
use crate::node::{Node, SharedNode};
use crate::watch::{WatchHub, WatchService};

/// Opens the store and identity in the configured data dir.
pub fn open_node(args: &ServeArgs) -> anyhow::Result<SharedNode> {
    args.validate()?;
    let data_dir = args.data_dir();
    let registry = prometheus::Registry::new();
    let id = Identity::load_or_create(
        &data_dir,
        &args.name,
        &args.initial_cluster_token,
        &args.initial_advertise_peer_urls,
    )?;
    let store = Store::open(&data_dir, &registry)
        .with_context(|| format!("open store in {}", data_dir.display()))?;
    let metrics = Arc::new(ServerMetrics::new(&registry)?);
    Ok(Arc::new(Node {
        store,
        id,
        client_urls: args.advertise_client_urls.clone(),
        peer_urls: args.initial_advertise_peer_urls.clone(),
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: args.max_txn_ops,
        quota_bytes: args.quota_bytes(),
        registry,
        metrics,
    }))
}

fn tls_config(args: &ServeArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        return Ok(None);
    };
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let mut tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
    if args.client_cert_auth {
        if let Some(ca) = &args.trusted_ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
    }
    Ok(Some(tls))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let node = open_node(&args)?;
    let limit = args.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let hub = WatchHub::start(node.clone(), args.watch_progress_notify_interval);
    let lessor = Lessor::start(node.clone()).await?;
    let grpc =
        Routes::new(KvServer::new(KvService::new(node.clone())).max_decoding_message_size(limit))
            .add_service(
                MaintenanceServer::new(MaintenanceService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(ClusterService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                WatchServer::new(WatchService::new(node.clone(), hub))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                LeaseServer::new(LeaseService::new(node.clone(), lessor))
                    .max_decoding_message_size(limit),
            );
    let app = grpc
        .into_axum_router()
        .merge(crate::http::routes(node.clone()))
        .layer(axum::middleware::from_fn(
            crate::grpc_compat::message_size_status,
        ))
        .layer(axum::middleware::from_fn_with_state(
            node.metrics.clone(),
            track,
        ));

    let mut listeners = Vec::new();
    for url in &args.listen_client_urls {
        for addr in resolve_listen_url(url).await? {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr} (from {url})"))?;
            tracing::info!(address = %l.local_addr()?, "serving client traffic");
            listeners.push(TcpListenerStream::new(l));
        }
    }
    let incoming = futures::stream::select_all(listeners).map_ok(|s| {
        // Small request/response pairs: never wait for Nagle.
        let _ = s.set_nodelay(true);
        s
    });

    let mut builder = Server::builder().accept_http1(true);
    if let Some(tls) = tls_config(&args)? {
        builder = builder.tls_config(tls)?;
    }
    tracing::info!(
        name = %node.id.name,
        member_id = format_args!("{:x}", node.id.member_id),
        cluster_id = format_args!("{:x}", node.id.cluster_id),
        data_dir = %args.data_dir().display(),
        "ready to serve client requests"
    );
    builder
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming.boxed(), shutdown)
        .await?;
    tracing::info!("stopped serving");
    Ok(())
}
