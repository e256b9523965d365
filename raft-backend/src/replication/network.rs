//! Client side of the peer protocol: openraft's network, plus the calls a
//! member makes to the leader on a client's behalf (forwarded writes,
//! ReadIndex, membership changes, lease renewals).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer as pb;
use cairn_proto::peer::peer_client::PeerClient;
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::codec;
use super::state_machine::{SnapshotData, SnapshotFile};
use super::types::{MemberInfo, Snapshot, TypeConfig, Vote};

/// Metadata names every peer request carries.
pub(crate) const VERSION_HEADER: &str = "cairn-peer-version";
pub(crate) const CLUSTER_HEADER: &str = "cairn-cluster-id";

const SNAPSHOT_CHUNK: usize = 1 << 20;

/// How to reach peers: their cluster, and TLS when peer URLs are https.
/// Channels are made once per URL and shared: HTTP/2 multiplexes every call
/// (Raft replication, forwarded writes, ReadIndex) over one connection, and a
/// forwarded request must not pay for a new one.
pub struct PeerTransport {
    pub cluster_id: u64,
    pub tls: Option<ClientTlsConfig>,
    pub connect_timeout: Duration,
    channels: std::sync::Mutex<std::collections::HashMap<String, Channel>>,
}

impl PeerTransport {
    pub fn new(cluster_id: u64, tls: Option<ClientTlsConfig>, connect_timeout: Duration) -> Self {
        PeerTransport {
            cluster_id,
            tls,
            connect_timeout,
            channels: Default::default(),
        }
    }

    /// A lazily connecting channel to the first of `urls` (gRPC reconnects by itself).
    pub fn channel(&self, urls: &[String]) -> Result<Channel, String> {
        let url = urls
            .first()
            .ok_or_else(|| "member has no peer URL".to_string())?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(url) {
            return Ok(ch.clone());
        }
        let ch = self.connect(url)?;
        channels.insert(url.clone(), ch.clone());
        Ok(ch)
    }

    fn connect(&self, url: &str) -> Result<Channel, String> {
        let url = &dial_override(url);
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("peer URL {url:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if url.starts_with("https://") {
            let tls = self.tls.clone().unwrap_or_default();
            ep = ep
                .tls_config(tls)
                .map_err(|e| format!("peer TLS for {url:?}: {e}"))?;
        }
        Ok(ep.connect_lazy())
    }

    pub fn client(&self, urls: &[String]) -> Result<Peer, String> {
        Ok(Peer {
            client: PeerClient::new(self.channel(urls)?)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            cluster_id: self.cluster_id,
        })
    }
}

/// Fail point `peer_dial`, like etcd's failpoints: `return(adv=dial,...)`
/// makes this member dial `dial` for a peer advertising `adv`, so that a
/// fault test can route each ordered pair of members through its own proxy
/// and cut one member off in both directions.
fn dial_override(url: &str) -> String {
    fail::fail_point!("peer_dial", |map: Option<String>| {
        dial_for(&map.unwrap_or_default(), url)
    });
    url.to_string()
}

/// What `map` ("adv=dial,adv=dial") says to dial for `url`.
#[cfg(any(test, feature = "failpoints"))]
fn dial_for(map: &str, url: &str) -> String {
    map.split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(adv, _)| adv.trim() == url)
        .map(|(_, dial)| dial.trim().to_string())
        .unwrap_or_else(|| url.to_string())
}

/// One peer's client, with the protocol metadata attached to each request.
#[derive(Clone)]
pub struct Peer {
    pub client: PeerClient<Channel>,
    cluster_id: u64,
}

impl Peer {
    pub fn request<T>(&self, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        md.insert(VERSION_HEADER, pb::PROTOCOL_VERSION.into());
        if let Ok(v) = self.cluster_id.to_string().parse() {
            md.insert(CLUSTER_HEADER, v);
        }
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }
}

/// openraft's network factory: one [`Network`] per target member.
pub struct Factory {
    pub transport: Arc<PeerTransport>,
}

pub struct Network {
    peer: Result<Peer, String>,
    target: u64,
    /// The target's name, or its ID while it has none, for logs.
    target_name: String,
    /// False once the target answered StreamAppend with UNIMPLEMENTED (a
    /// member of an earlier version): replication then uses AppendEntries.
    streaming: bool,
}

fn unreachable<E: std::error::Error>(
    target: u64,
    msg: impl std::fmt::Display,
) -> RPCError<TypeConfig, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "member {target:x}: {msg}"
    ))))
}

fn status_err<E: std::error::Error>(target: u64, s: tonic::Status) -> RPCError<TypeConfig, E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(target, s.message())
        }
        _ => RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "member {target:x}: {}: {}",
            s.code(),
            s.message()
        )))),
    }
}

fn decode_err<E: std::error::Error>(e: codec::DecodeError) -> RPCError<TypeConfig, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Network;

    async fn new_client(&mut self, target: u64, node: &MemberInfo) -> Network {
        Network {
            peer: self.transport.client(&node.peer_urls),
            target,
            target_name: if node.name.is_empty() {
                format!("{target:x}")
            } else {
                node.name.clone()
            },
            streaming: true,
        }
    }
}

impl Network {
    fn peer(&self) -> Result<&Peer, String> {
        self.peer.as_ref().map_err(|e| e.clone())
    }

    async fn vote_rpc(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let target = self.target;
        let peer = self.peer().map_err(|e| unreachable(target, e))?;
        let msg = pb::VoteRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
            leadership_transfer: rpc.leadership_transfer,
        };
        let mut client = peer.client.clone();
        let req = peer.request(msg, Some(option.soft_ttl()));
        let resp = if pre {
            client.pre_vote(req).await
        } else {
            client.vote(req).await
        }
        .map_err(|s| status_err(target, s))?
        .into_inner();
        Ok(VoteResponse {
            vote: codec::vote_from_pb(resp.vote).map_err(decode_err)?,
            vote_granted: resp.vote_granted,
            last_log_id: codec::opt_log_id_from_pb(resp.last_log_id),
        })
    }
}

impl RaftNetworkV2<TypeConfig> for Network {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let target = self.target;
        let peer = self.peer().map_err(|e| unreachable(target, e))?;
        let msg = codec::append_request_to_pb(&rpc);
        let resp = peer
            .client
            .clone()
            .append_entries(peer.request(msg, Some(option.soft_ttl())))
            .await
            .map_err(|s| status_err(target, s))?
            .into_inner();
        codec::append_response_from_pb(resp).map_err(decode_err)
    }

    /// One gRPC stream per replication session, so that the next entries
    /// (and a commit index) go out while earlier ones are still being stored:
    /// with one call at a time, a write arriving just after a commit waited
    /// for the round trip that carried the commit.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendStreamItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        if !self.streaming {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let target = self.target;
            let peer = self.peer().map_err(|e| unreachable(target, e))?.clone();
            let sent = Arc::new(AtomicU64::new(0));
            let counter = sent.clone();
            let requests = input.map(move |rpc| {
                counter.fetch_add(1, Ordering::Relaxed);
                codec::append_request_to_pb(&rpc)
            });
            let responses = match peer
                .client
                .clone()
                .stream_append(peer.request(requests, None))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        member = format_args!("{target:x}"),
                        "peer does not stream replication; using AppendEntries"
                    );
                    self.streaming = false;
                    return Err(status_err(target, s));
                }
                Err(s) => return Err(status_err(target, s)),
            };
            let state = AnswerState {
                responses: responses.boxed(),
                sent,
                received: 0,
                stalled: false,
                target,
                wait: option.soft_ttl(),
            };
            Ok(futures::stream::unfold(Some(state), next_answer).boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let peer = self
            .peer()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?
            .clone();
        let meta = &snapshot.meta;
        let head = pb::SnapshotChunk {
            payload: Some(pb::snapshot_chunk::Payload::Head(pb::SnapshotHead {
                vote: Some(codec::vote_to_pb(&vote)),
                meta: Some(pb::SnapshotMeta {
                    last_log_id: codec::opt_log_id_to_pb(meta.last_log_id.as_ref()),
                    ..codec::stored_membership_to_pb(&meta.last_membership)
                }),
            })),
        };
        let unreachable = |e: std::io::Error| StreamingError::Unreachable(Unreachable::new(&e));
        // The file is removed when `sent` drops, after the transfer.
        let sent: SnapshotFile = match snapshot.snapshot {
            SnapshotData::Received(file) => file,
            SnapshotData::Pinned(pinned) => {
                tokio::task::spawn_blocking(move || pinned.copy_to_file())
                    .await
                    .map_err(|e| unreachable(std::io::Error::other(e)))?
                    .map_err(unreachable)?
            }
        };
        let mut file = tokio::fs::File::open(&sent.path)
            .await
            .map_err(unreachable)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let feeder = async move {
            if tx.send(head).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = pb::SnapshotChunk {
                    payload: Some(pb::snapshot_chunk::Payload::Data(buf)),
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        };
        let feeder = tokio::spawn(feeder);
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let to = self.target_name.clone();
        tracing::info!(
            %to,
            index,
            "sending a snapshot to a member behind the log"
        );
        let started = std::time::Instant::now();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut client = peer.client.clone();
        let call = client.install_snapshot(peer.request(stream, None));
        let result = tokio::select! {
            r = call => r,
            closed = cancel => {
                feeder.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        feeder.abort();
        let resp = result
            .map_err(|s| {
                StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                    "member {target:x}: snapshot: {}",
                    s.message()
                ))))
            })?
            .into_inner();
        let vote = codec::vote_from_pb(resp.vote).map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
        })?;
        tracing::info!(
            %to,
            index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        );
        Ok(SnapshotResponse { vote })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let target = self.target;
        let peer = self.peer().map_err(|e| unreachable(target, e))?;
        let msg = pb::TransferLeaderRequest {
            from_leader: Some(codec::vote_to_pb(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: codec::opt_log_id_to_pb(req.last_log_id()),
        };
        peer.client
            .clone()
            .transfer_leader(peer.request(msg, Some(option.soft_ttl())))
            .await
            .map_err(|s| status_err(target, s))?;
        Ok(Ok(()))
    }
}

type AppendStreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The reading end of one replication stream.
struct AnswerState {
    responses: BoxStream<'static, Result<pb::StreamAppendResponse, tonic::Status>>,
    /// Requests handed to the stream so far.
    sent: Arc<AtomicU64>,
    received: u64,
    /// A whole `wait` passed with requests unanswered.
    stalled: bool,
    target: u64,
    wait: Duration,
}

/// The next answer; an error (and the end) when requests go unanswered for
/// two waits in a row, so that a member cut off without a reset connection
/// is noticed. An idle stream (nothing unanswered) may stay silent forever.
async fn next_answer(
    state: Option<AnswerState>,
) -> Option<(AppendStreamItem, Option<AnswerState>)> {
    let mut st = state?;
    loop {
        match tokio::time::timeout(st.wait, st.responses.next()).await {
            Ok(Some(Ok(msg))) => {
                st.received += 1;
                st.stalled = false;
                return match codec::stream_append_result_from_pb(msg) {
                    Ok(result) => {
                        let more = result.is_ok();
                        Some((Ok(result), more.then_some(st)))
                    }
                    Err(e) => Some((Err(decode_err(e)), None)),
                };
            }
            Ok(Some(Err(s))) => return Some((Err(status_err(st.target, s)), None)),
            Ok(None) => return None,
            Err(_) => {
                let waiting = st.sent.load(Ordering::Relaxed) > st.received;
                if waiting && st.stalled {
                    let msg = format!("no replication answer for {:?}", st.wait * 2);
                    return Some((Err(unreachable(st.target, msg)), None));
                }
                st.stalled = waiting;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dial_map_reroutes_only_the_urls_it_names() {
        let map = "http://a:1=http://127.0.0.1:9001, http://b:1=http://127.0.0.1:9002";
        assert_eq!(dial_for(map, "http://b:1"), "http://127.0.0.1:9002");
        assert_eq!(dial_for(map, "http://c:1"), "http://c:1");
        assert_eq!(dial_for("", "http://a:1"), "http://a:1");
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn the_peer_dial_fail_point_reroutes_dials() {
        let scenario = fail::FailScenario::setup();
        fail::cfg("peer_dial", "return(http://a:1=http://127.0.0.1:9001)").unwrap();
        assert_eq!(dial_override("http://a:1"), "http://127.0.0.1:9001");
        assert_eq!(dial_override("http://b:1"), "http://b:1");
        scenario.teardown();
        assert_eq!(dial_override("http://a:1"), "http://a:1");
    }

    fn answers(
        sent: u64,
    ) -> (
        tokio::sync::mpsc::Sender<Result<pb::StreamAppendResponse, tonic::Status>>,
        BoxStream<'static, AppendStreamItem>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = AnswerState {
            responses: tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
            sent: Arc::new(AtomicU64::new(sent)),
            received: 0,
            stalled: false,
            target: 7,
            wait: Duration::from_millis(20),
        };
        (
            tx,
            futures::stream::unfold(Some(state), next_answer).boxed(),
        )
    }

    fn matching(index: u64) -> pb::StreamAppendResponse {
        pb::StreamAppendResponse {
            result: Some(pb::stream_append_response::Result::Matching(pb::Matching {
                log_id: Some(pb::LogId {
                    leader_id: Some(pb::LeaderId {
                        term: 1,
                        node_id: 1,
                    }),
                    index,
                }),
            })),
        }
    }

    #[tokio::test]
    async fn unanswered_requests_end_the_stream_and_an_idle_stream_stays_open() {
        // Nothing sent: silence is fine, however long.
        let (_tx, mut idle) = answers(0);
        let waited = tokio::time::timeout(Duration::from_millis(200), idle.next()).await;
        assert!(waited.is_err(), "an idle stream ended: {:?}", waited.ok());

        // Two requests sent, one answered, then silence: an error, then the end.
        let (tx, mut stalled) = answers(2);
        tx.send(Ok(matching(5))).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), stalled.next()).await;
        match first {
            Ok(Some(Ok(Ok(Some(log_id))))) => assert_eq!(log_id.index, 5),
            other => panic!("expected the first answer, got {other:?}"),
        }
        let second = tokio::time::timeout(Duration::from_secs(5), stalled.next()).await;
        assert!(
            matches!(second, Ok(Some(Err(RPCError::Unreachable(_))))),
            "expected unreachable, got {second:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), stalled.next()).await;
        assert!(matches!(end, Ok(None)), "expected the end, got {end:?}");
    }

    #[tokio::test]
    async fn a_refusal_is_the_last_answer() {
        let (tx, mut s) = answers(2);
        let conflict = pb::StreamAppendResponse {
            result: Some(pb::stream_append_response::Result::Conflict(pb::LogId {
                leader_id: Some(pb::LeaderId {
                    term: 1,
                    node_id: 1,
                }),
                index: 3,
            })),
        };
        tx.send(Ok(conflict)).await.unwrap();
        tx.send(Ok(matching(4))).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert!(
            matches!(
                first,
                Ok(Some(Ok(Err(openraft::raft::StreamAppendError::Conflict(
                    _
                )))))
            ),
            "got {first:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert!(matches!(end, Ok(None)), "expected the end, got {end:?}");
    }
}
