//! Assembles one member: store, services, TLS, and the client listeners where
//! gRPC and HTTP share each port, as in etcd.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use cairn_proto::encoded_watch::watch_server::WatchServer;
use cairn_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use cairn_proto::migrate::migration_server::MigrationServer;
use cairn_proto::peer::peer_server::PeerServer;
use cairn_raft_backend::{Bootstrap, MemberInfo, PeerTransport, RaftTiming, ReplicaOptions, Store};
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{ClientTlsConfig, Server};

use crate::cluster_config::{
    check_data_dir, parse_initial_cluster, validate_bootstrap, ClusterState,
};
use crate::cluster_service::ClusterService;
use crate::config::{resolve_listen_url, ServeArgs, GRPC_OVERHEAD_BYTES};
use crate::identity::Identity;
use crate::kv_service::KvService;
use crate::lease::{LeaseService, Lessor};
use crate::maintenance_service::MaintenanceService;
use crate::metrics::{track, ServerMetrics};
use crate::migrate_service::MigrationService;
use crate::node::{Node, SharedNode, ETCD_VERSION};
use crate::stream_end::StreamEnd;
use crate::watch::{WatchHub, WatchService};
use cairn_raft_backend::PeerService;

/// Decides this member's identity and how it joins Raft: from its data dir
/// when it has one, else from the bootstrap flags (new cluster) or from the
/// running cluster (existing).
async fn bootstrap(
    args: &ServeArgs,
    transport_tls: &Option<ClientTlsConfig>,
) -> anyhow::Result<(Identity, Bootstrap)> {
    let data_dir = args.data_dir();
    let initial = parse_initial_cluster(&args.initial_cluster())?;
    let boot = validate_bootstrap(
        &args.name,
        &args.initial_advertise_peer_urls,
        &initial,
        args.initial_cluster_state,
        &args.initial_cluster_token,
    )?;
    let stored = Identity::load(&data_dir)?;
    check_data_dir(
        stored.as_ref().map(|s| s.stored()).as_ref(),
        args.initial_cluster_state,
        &boot,
        &args.initial_cluster_token,
    )?;
    // Identical on every initial member (their first log entry must be the
    // same); client URLs are published once running.
    let initial_members = || {
        boot.members
            .iter()
            .map(|m| {
                (
                    m.id,
                    MemberInfo {
                        name: m.name.clone(),
                        peer_urls: m.peer_urls.clone(),
                        client_urls: Vec::new(),
                    },
                )
            })
            .collect()
    };
    if let Some(id) = stored {
        // A restart: Raft state on disk says who the members are. A member
        // of a new cluster still passes the initial membership: if it died
        // after saving its identity but before Raft stored the first entry,
        // it must bootstrap now (Raft ignores it once initialized).
        let how = match args.initial_cluster_state {
            ClusterState::New => Bootstrap::New(initial_members()),
            ClusterState::Existing => Bootstrap::Existing,
        };
        return Ok((id, how));
    }
    let id = match args.initial_cluster_state {
        ClusterState::New => {
            let id = Identity {
                name: args.name.clone(),
                member_id: boot.local_id,
                cluster_id: boot.cluster_id,
                cluster_token: args.initial_cluster_token.clone(),
            };
            id.save(&data_dir)?;
            return Ok((id, Bootstrap::New(initial_members())));
        }
        ClusterState::Existing => join_existing(args, &boot, transport_tls).await?,
    };
    id.save(&data_dir)?;
    Ok((id, Bootstrap::Existing))
}

/// Asks the running cluster (through the other members in --initial-cluster)
/// which member this is: the one `member add` registered with our peer URLs.
async fn join_existing(
    args: &ServeArgs,
    boot: &crate::cluster_config::Bootstrap,
    tls: &Option<ClientTlsConfig>,
) -> anyhow::Result<Identity> {
    let transport = PeerTransport::new(0, tls.clone(), Duration::from_secs(2));
    let own: Vec<String> = boot
        .members
        .iter()
        .find(|m| m.id == boot.local_id)
        .map(|m| m.peer_urls.clone())
        .unwrap_or_default();
    let mut last_err = String::from("no other member in --initial-cluster");
    for m in boot.members.iter().filter(|m| m.id != boot.local_id) {
        let peer = match transport.client(&m.peer_urls) {
            Ok(p) => p,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let info = peer
            .client
            .clone()
            .cluster_info(peer.request(
                cairn_proto::peer::ClusterInfoRequest {},
                Some(Duration::from_secs(5)),
            ))
            .await;
        let info = match info {
            Ok(r) => r.into_inner(),
            Err(s) => {
                last_err = format!("{}: {}", m.name, s.message());
                continue;
            }
        };
        let members = info.membership.map(|x| x.nodes).unwrap_or_default();
        let Some(me) = members
            .iter()
            .find(|x| x.peer_urls.iter().any(|u| own.contains(u)))
        else {
            // This member may not have applied the `member add` yet; the
            // leader has (it answered the add). Ask the others.
            last_err = format!(
                "{} lists no member with peer URLs {own:?}; add this one first with `etcdctl member add {} --peer-urls={}`",
                m.name,
                args.name,
                own.join(",")
            );
            continue;
        };
        return Ok(Identity {
            name: args.name.clone(),
            member_id: me.id,
            cluster_id: info.cluster_id,
            cluster_token: args.initial_cluster_token.clone(),
        });
    }
    anyhow::bail!("cannot join the running cluster: {last_err}")
}

/// Appends timed at start, and the longest that may take: a short
/// `cairn check disk`, off the request path.
const START_DISK_CHECK: (u32, Duration) = (32, Duration::from_secs(1));

/// Times a few fdatasyncs in the data dir in the background and warns when
/// their p99 is over etcd's 10 ms guidance: every write waits on the log's.
fn warn_if_disk_is_slow(data_dir: std::path::PathBuf) {
    tokio::task::spawn_blocking(move || {
        let (count, limit) = START_DISK_CHECK;
        match crate::disk_check::measure(&data_dir, count, limit) {
            Ok(r) if r.fast_enough => tracing::info!(
                p50_ms = r.p50_ms, p99_ms = r.p99_ms, samples = r.count,
                "disk check: fdatasync is fast enough"
            ),
            Ok(r) => tracing::warn!(
                p50_ms = r.p50_ms, p99_ms = r.p99_ms, max_ms = r.max_ms, samples = r.count,
                "disk check: fdatasync p99 is over etcd's 10 ms guidance; writes will be slow (cairn check disk --data-dir {} measures longer)",
                data_dir.display()
            ),
            Err(e) => tracing::warn!(error = %e, "disk check: could not measure fdatasync"),
        }
    });
}

/// Opens the store and identity in the configured data dir and starts Raft.
pub(crate) async fn open_node(args: &ServeArgs) -> anyhow::Result<SharedNode> {
    args.validate()?;
    let data_dir = args.data_dir();
    let registry = prometheus::Registry::new();
    let peer_tls = crate::tls::peer_client(args)?;
    let (id, bootstrap) = bootstrap(args, &peer_tls).await?;
    let election = Duration::from_millis(args.election_timeout);
    let opts = ReplicaOptions {
        member_id: id.member_id,
        timing: RaftTiming {
            heartbeat: Duration::from_millis(args.heartbeat_interval),
            election,
            snapshot_count: args.snapshot_count,
            catchup_entries: args.snapshot_catchup_entries,
        },
        transport: Arc::new(PeerTransport::new(id.cluster_id, peer_tls, election)),
        bootstrap,
        request_timeout: request_timeout(args),
    };
    let store = Store::open(&data_dir, &registry, opts)
        .await
        .with_context(|| format!("open store in {}", data_dir.display()))?;
    warn_if_disk_is_slow(data_dir);
    Ok(Arc::new(Node {
        store,
        id,
        client_urls: args.advertise_client_urls.clone(),
        peer_urls: args.initial_advertise_peer_urls.clone(),
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: args.max_txn_ops,
        quota_bytes: args.quota_bytes(),
        registry,
    }))
}

/// Once a leader is known, records this member's name and client URLs in the
/// membership (etcd "publishes" its attributes through Raft the same way).
async fn publish_self(node: SharedNode) {
    let replica = &node.store;
    let me = cairn_proto::peer::Member {
        id: node.id.member_id,
        name: node.id.name.clone(),
        peer_urls: node.peer_urls.clone(),
        client_urls: node.client_urls.clone(),
    };
    let mut waiting_logged = false;
    loop {
        let listed = replica
            .raft_status()
            .members
            .into_iter()
            .find(|(id, _, _)| *id == me.id)
            .map(|(_, info, _)| info.name == me.name && info.client_urls == me.client_urls);
        if listed == Some(true) {
            return;
        }
        if !waiting_logged {
            tracing::debug!("publishing member attributes through Raft before serving clients");
            waiting_logged = true;
        }
        if replica.leader().is_some() && listed.is_some() {
            match replica
                .change_member(
                    cairn_proto::peer::MemberChangeKind::MemberPublish,
                    me.clone(),
                )
                .await
            {
                Ok(_) => continue,
                Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs when this member loses and regains a leader (quorum), as etcd warns.
async fn watch_leader(node: SharedNode, metrics: Arc<ServerMetrics>) {
    let replica = &node.store;
    let name = |id: u64| {
        replica
            .raft_status()
            .members
            .into_iter()
            .find(|(m, info, _)| *m == id && !info.name.is_empty())
            .map(|(_, info, _)| info.name)
            .unwrap_or_else(|| format!("{id:x}"))
    };
    let mut last = replica.leader();
    while let Some(now) = replica.leader_change(last).await {
        match (last, now) {
            (Some(_), None) => tracing::warn!(
                "lost the leader: no quorum reachable; requests fail with \"no leader\""
            ),
            (None, Some(l)) => tracing::info!(leader = %name(l), "leader elected; quorum regained"),
            (Some(a), Some(b)) if a != b => {
                tracing::info!(from = %name(a), to = %name(b), "leader changed")
            }
            _ => {}
        }
        metrics.leader_changed(now);
        last = now;
    }
}

/// Connections accepted on every address the URLs resolve to.
pub(crate) type Incoming =
    futures::stream::BoxStream<'static, std::io::Result<tokio::net::TcpStream>>;

/// Binds every address of `urls` (`what`: "client" or "peer", for errors
/// and logs). Accepted connections have Nagle off: small request/response
/// pairs must never wait for it.
async fn bind_all(urls: &[String], what: &str) -> anyhow::Result<Incoming> {
    let mut listeners = Vec::new();
    for url in urls {
        for addr in resolve_listen_url(url).await? {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for {what} traffic on {addr} (from {url})"))?;
            tracing::info!(address = %l.local_addr()?, "listening for {what} traffic");
            listeners.push(TcpListenerStream::new(l));
        }
    }
    Ok(futures::stream::select_all(listeners)
        .map_ok(|s| {
            let _ = s.set_nodelay(true);
            s
        })
        .boxed())
}

async fn serve_peers(
    args: &ServeArgs,
    svc: PeerService<Lessor>,
    metrics: Arc<ServerMetrics>,
) -> anyhow::Result<()> {
    let incoming = bind_all(&args.listen_peer_urls, "peer").await?;
    let incoming = crate::tls_accept::incoming(incoming, crate::tls::peer_listener(args)?);
    let mut builder = Server::builder();
    // Counted under grpc_server_*_total like client RPCs (service
    // cairnpb.peer.v1.Peer), which is how idle Raft traffic is measured.
    let routes = Routes::new(
        PeerServer::new(svc)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
    .into_axum_router()
    .layer(axum::middleware::from_fn_with_state(metrics, track));
    let server = builder.add_routes(Routes::from(routes));
    tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "peer server stopped");
        }
    });
    Ok(())
}

/// Serves /metrics and the health endpoints on `--listen-metrics-urls`, as
/// etcd does, so that probes and scrapes need no client certificate on
/// plain `http://` URLs. `https://` ones use the client TLS settings.
async fn serve_metrics(
    args: &ServeArgs,
    node: SharedNode,
    metrics: Arc<ServerMetrics>,
    stream_end: &StreamEnd,
) -> anyhow::Result<()> {
    for (scheme, tls) in [("http", false), ("https", true)] {
        let urls: Vec<String> = args
            .listen_metrics_urls
            .iter()
            .filter(|u| u.split("://").next() == Some(scheme))
            .cloned()
            .collect();
        if urls.is_empty() {
            continue;
        }
        let tcp = bind_all(&urls, "metrics").await?;
        let config = match tls {
            true => Some(crate::tls::client_listener(args)?.context(
                "--listen-metrics-urls: an https:// URL needs --cert-file and --key-file",
            )?),
            false => None,
        };
        let incoming = crate::tls_accept::incoming(tcp, config);
        let app = crate::http::routes(node.clone(), metrics.clone());
        let server = Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(app))
            .serve_with_incoming_shutdown(incoming, stream_end.stopped());
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    Ok(())
}

/// etcd's request timeout: 5 s plus two election timeouts.
fn request_timeout(args: &ServeArgs) -> Duration {
    Duration::from_secs(5) + 2 * Duration::from_millis(args.election_timeout)
}

/// What the member says as it exits on a fault of its storage: logged, and
/// the error `serve` returns (the binary prints it and exits with status 1,
/// as etcd's `lg.Fatal` does).
fn stop_on_fault(args: &ServeArgs, fault: cairn_raft_backend::StorageFault) -> anyhow::Error {
    let data_dir = args.data_dir();
    if fault.disk_full {
        tracing::error!(
            data_dir = %data_dir.display(),
            error = %fault,
            "stopping: no space left on device (ENOSPC) under the data dir. Free space on its \
             filesystem, then restart this member: every write it acknowledged is in its Raft \
             log, and the restart applies what it had not"
        );
        anyhow::anyhow!(
            "no space left on device (ENOSPC) under the data dir {}: {fault}; free space there \
             and restart this member (nothing it acknowledged is lost)",
            data_dir.display()
        )
    } else {
        tracing::error!(
            data_dir = %data_dir.display(),
            error = %fault,
            "stopping: a storage fault stopped Raft. After a failed write or fsync the files' \
             state is unknown, so this member stops rather than go on (as etcd does); check the \
             disk, then restart it: the restart recovers from what is durable"
        );
        anyhow::anyhow!(
            "storage fault under the data dir {}: {fault}; check the disk, then restart this member",
            data_dir.display()
        )
    }
}

/// Serves until `shutdown` resolves.
///
/// Then: no new connections; watch and keep-alive streams, which never end
/// by themselves, end with "etcdserver: server stopped" (clients retry on
/// another member); requests under way get up to the request timeout to
/// finish, as etcd gives them, and whatever is still open then is closed.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(
        cairn_version = crate::release::VERSION,
        etcd_api = ETCD_VERSION,
        name = %args.name,
        data_dir = %args.data_dir().display(),
        "starting Cairn"
    );
    let node = open_node(&args).await?;
    // A storage fault stops the Raft core; the member then exits (below).
    let mut fault = Box::pin({
        let node = node.clone();
        async move { node.store.storage_fault().await }
    });
    let metrics = Arc::new(ServerMetrics::new(&node.registry, args.metrics)?);
    let limit = args.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let hub = WatchHub::start(node.clone(), args.watch_progress_notify_interval);
    let election = Duration::from_millis(args.election_timeout);
    let lessor = Lessor::start(node.clone(), election).await?;
    let (stream_end, stop_streams) = StreamEnd::start(node.clone(), election);
    serve_peers(
        &args,
        node.store.peer_service(
            lessor.clone(),
            node.id.cluster_id,
            crate::node::ETCD_VERSION,
        ),
        metrics.clone(),
    )
    .await?;
    // Bound before publishing, as etcd binds its client listeners first: once
    // the client URLs are in the membership, connecting to them never fails;
    // a client that connects early waits in the accept queue.
    let incoming = bind_all(&args.listen_client_urls, "client").await?;
    serve_metrics(&args, node.clone(), metrics.clone(), &stream_end).await?;
    // As etcd, serve clients only once this member's name and client URLs
    // are in the membership (so MemberList and `endpoint status --cluster`
    // never show it half-published); on a restart they already are.
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        () = publish_self(node.clone()) => {}
        () = &mut shutdown => return Ok(()),
        f = &mut fault => return Err(stop_on_fault(&args, f)),
    }
    tokio::spawn(watch_leader(node.clone(), metrics.clone()));
    let _compactor = crate::compactor::start(node.clone(), crate::compactor::from_args(&args)?);
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
                WatchServer::new(WatchService::new(node.clone(), hub, stream_end.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                LeaseServer::new(LeaseService::new(node.clone(), lessor, stream_end.clone()))
                    .max_decoding_message_size(limit),
            )
            // Live migration from etcd: one import call may carry a revision
            // far above --max-request-bytes (a delete of a million keys).
            .add_service(
                MigrationServer::new(MigrationService::new(node.clone()))
                    .max_decoding_message_size(crate::migrate_service::MAX_MESSAGE_BYTES),
            );
    let app = grpc
        .into_axum_router()
        .merge(crate::http::routes(node.clone(), metrics.clone()))
        .layer(axum::middleware::from_fn(
            crate::grpc_compat::message_size_status,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, track));

    let incoming = crate::tls_accept::incoming(incoming, crate::tls::client_listener(&args)?);
    let mut builder = crate::keepalive::apply(
        Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(Some(args.max_concurrent_streams)),
        &args,
    );
    tracing::info!(
        name = %node.id.name,
        member_id = format_args!("{:x}", node.id.member_id),
        cluster_id = format_args!("{:x}", node.id.cluster_id),
        data_dir = %args.data_dir().display(),
        "ready to serve client requests"
    );
    crate::systemd_notify::ready();
    // One signal for both: the server stops taking connections as the
    // streams are told to end.
    let server = builder
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming, stream_end.stopped());
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        f = &mut fault => {
            // No grace: nothing more this member answers can be trusted.
            stop_streams.stop();
            return Err(stop_on_fault(&args, f));
        }
        () = &mut shutdown => {
            stop_streams.stop();
            let grace = request_timeout(&args);
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r?,
                Err(_) => tracing::info!(
                    grace_ms = grace.as_millis() as u64,
                    "closing the client connections still open"
                ),
            }
        }
    }
    tracing::info!("stopped serving");
    Ok(())
}
