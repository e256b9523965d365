//! A test-controlled TCP proxy, for partitioning cluster members.
//!
//! Raft fault tests put one [`Proxy`] in front of a member's peer port and
//! configure the other members to reach that peer URL through it, so a test
//! can cut a member off ([`Proxy::partition`]) and reconnect it
//! ([`Proxy::heal`]).
//!
//! A proxy listens on `127.0.0.1:<free port>` and forwards every accepted
//! connection to its target (a fresh upstream connection per accepted one,
//! bytes copied in both directions, half-closes passed on, `TCP_NODELAY` on
//! both legs). It runs on a dedicated thread with its own single-threaded tokio
//! runtime, so it can be used from sync and async tests alike and does not
//! depend on (or die with) the test's runtime. All methods are synchronous.
//!
//! Partition semantics (the chosen behaviour):
//!
//! * [`Proxy::partition`] resets (`RST`, zero linger) both legs of every
//!   forwarded connection and returns only once they are closed, so nothing
//!   flows in either direction afterwards.
//! * While partitioned, new connections are accepted and reset at once. A
//!   gRPC/HTTP2 client therefore fails fast (connection reset during its
//!   handshake) and goes into its reconnect backoff, instead of hanging on a
//!   silently held connection until some keepalive or connect timeout fires
//!   (not accepting at all would not help either: the kernel completes the TCP
//!   handshake for the backlog, so the client would hang just the same).
//! * [`Proxy::heal`] lets new connections through again; connections cut by
//!   the partition stay closed (clients reconnect).
//!
//! [`Proxy::stats`] counts connections and the bytes forwarded each way, e.g.
//! to measure a member's idle peer traffic over an interval (take two
//! snapshots and subtract).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long [`Proxy::start`] waits for the proxy thread to come up.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Proxy::partition`] waits for the cut connections to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping a [`Proxy`] waits for its thread to finish.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Copy buffer size, per direction and connection.
const BUF_SIZE: usize = 16 * 1024;

/// A snapshot of a proxy's counters (all since [`Proxy::start`]).
///
/// "Client" is the side that connected to the proxy, "target" the address it
/// forwards to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted by the listener, including refused ones.
    pub connections_accepted: u64,
    /// Accepted connections reset at once because the proxy was partitioned.
    pub connections_refused: u64,
    /// Forwarded connections currently open (or connecting to the target).
    pub active_connections: u64,
    /// Bytes forwarded from clients to the target.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target back to clients.
    pub bytes_from_target: u64,
}

impl ProxyStats {
    /// Bytes forwarded in both directions.
    pub fn total_bytes(&self) -> u64 {
        self.bytes_to_target + self.bytes_from_target
    }
}

/// A TCP proxy on 127.0.0.1 that a test can partition and heal.
///
/// Dropping it stops its thread and closes the listener and every connection
/// (waiting at most a few seconds).
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Disconnects when the proxy thread has dropped its runtime.
    done: Option<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

/// State shared by the [`Proxy`] handle and its thread.
struct Shared {
    state: Mutex<State>,
    /// Notified whenever a forwarded connection ends.
    conn_closed: Condvar,
    accepted: AtomicU64,
    refused: AtomicU64,
    to_target: AtomicU64,
    from_target: AtomicU64,
}

struct State {
    partitioned: bool,
    target: SocketAddr,
    next_id: u64,
    /// Cancel handles of the live forwarded connections. Dropping one makes
    /// that connection reset both legs and end.
    cancels: HashMap<u64, oneshot::Sender<()>>,
    /// Forwarded connections whose task has not finished yet.
    live: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Proxy {
    /// Starts a proxy listening on `127.0.0.1:0` that forwards to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("proxy: bind 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("proxy: set listener non-blocking")?;
        let addr = listener.local_addr().context("proxy: listener address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("proxy: build tokio runtime")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                partitioned: false,
                target,
                next_id: 0,
                cancels: HashMap::new(),
                live: 0,
            }),
            conn_closed: Condvar::new(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            to_target: AtomicU64::new(0),
            from_target: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("e2e-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    tokio::select! {
                        _ = shutdown_rx => {}
                        () = accept_loop(&listener, &thread_shared) => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing
                // their sockets; only then report the thread done.
                drop(runtime);
                drop(done_tx);
            })
            .context("proxy: spawn thread")?;
        let mut proxy = Proxy {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            done: Some(done_rx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(proxy),
            Ok(Err(e)) => Err(anyhow!(e).context("proxy: register listener with tokio")),
            Err(e) => {
                // Do not wait for a thread that did not come up; detach it.
                proxy.done = None;
                proxy.thread = None;
                Err(anyhow!(
                    "proxy thread did not start within {START_TIMEOUT:?}: {e}"
                ))
            }
        }
    }

    /// The address the proxy listens on (give this to the clients).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address new connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.lock().target
    }

    /// Forwards connections accepted from now on to `target` (e.g. when the
    /// member behind the proxy restarted on another port). Connections already
    /// forwarded are left alone.
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.lock().target = target;
    }

    /// Cuts the proxy: resets both legs of every forwarded connection and, until
    /// [`heal`](Proxy::heal), resets every new connection as soon as it is
    /// accepted. Returns once the cut connections are closed (or after a few
    /// seconds if the proxy thread is unresponsive). Idempotent.
    pub fn partition(&self) {
        let mut state = self.shared.lock();
        state.partitioned = true;
        // Dropping the senders cancels the connections.
        state.cancels.clear();
        let _ = self
            .shared
            .conn_closed
            .wait_timeout_while(state, CLOSE_TIMEOUT, |s| s.live > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Ends a partition: new connections are forwarded again. Idempotent.
    pub fn heal(&self) {
        self.shared.lock().partitioned = false;
    }

    /// Whether the proxy is currently partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.shared.lock().partitioned
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let active = self.shared.lock().live as u64;
        ProxyStats {
            connections_accepted: self.shared.accepted.load(Ordering::Relaxed),
            connections_refused: self.shared.refused.load(Ordering::Relaxed),
            active_connections: active,
            bytes_to_target: self.shared.to_target.load(Ordering::Relaxed),
            bytes_from_target: self.shared.from_target.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &state.target)
            .field("partitioned", &state.partitioned)
            .field("live", &state.live)
            .finish()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(done) = self.done.take() {
            match done.recv_timeout(DROP_TIMEOUT) {
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(thread) = self.thread.take() {
                        let _ = thread.join();
                    }
                }
                // Still running after the timeout: leave the thread detached
                // rather than hang the test.
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Removes a connection from the shared state when its task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.live = state.live.saturating_sub(1);
        state.cancels.remove(&self.id);
        drop(state);
        self.shared.conn_closed.notify_all();
    }
}

async fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let mut state = shared.lock();
        if state.partitioned {
            drop(state);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let id = state.next_id;
        state.next_id += 1;
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        state.cancels.insert(id, cancel_tx);
        state.live += 1;
        let target = state.target;
        drop(state);
        let guard = ConnGuard {
            shared: Arc::clone(shared),
            id,
        };
        tokio::spawn(async move {
            forward(&guard.shared, client, target, cancel_rx).await;
            // The sockets are closed (owned and dropped by `forward`) before
            // the guard tells `partition` this connection is gone.
            drop(guard);
        });
    }
}

/// Forwards `client` to `target` until both directions are done, either one
/// fails, or `cancel` fires (its sender is dropped), in which case both legs
/// are reset.
async fn forward(
    shared: &Shared,
    mut client: TcpStream,
    target: SocketAddr,
    mut cancel: oneshot::Receiver<()>,
) {
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut upstream = tokio::select! {
        _ = &mut cancel => {
            reset(client);
            return;
        }
        r = connect => match r {
            Ok(Ok(upstream)) => upstream,
            // Target down or unreachable: fail the client fast.
            Ok(Err(_)) | Err(_) => {
                reset(client);
                return;
            }
        },
    };
    let _ = upstream.set_nodelay(true);
    let cancelled = {
        let (client_r, client_w) = client.split();
        let (upstream_r, upstream_w) = upstream.split();
        let to_target = copy_counting(client_r, upstream_w, &shared.to_target);
        let from_target = copy_counting(upstream_r, client_w, &shared.from_target);
        tokio::select! {
            _ = &mut cancel => true,
            _ = async { tokio::try_join!(to_target, from_target) } => false,
        }
    };
    if cancelled {
        reset(client);
        reset(upstream);
    }
}

/// Copies `r` to `w` until EOF (then shuts `w` down for writing), adding the
/// bytes written to `counter` as they go.
async fn copy_counting<R, W>(mut r: R, mut w: W, counter: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Closes `stream` with a reset (zero linger) so the peer sees the cut at once.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpStream as StdStream};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// Generous bound for anything that should happen "at once".
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Polls `cond` until it holds; panics naming `what` after [`DEADLINE`].
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An echo server on 127.0.0.1 (threads; lives until the test process ends).
    struct Echo {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        active: Arc<AtomicUsize>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let active = Arc::new(AtomicUsize::new(0));
            let (acc, act) = (Arc::clone(&accepted), Arc::clone(&active));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    acc.fetch_add(1, Ordering::SeqCst);
                    act.fetch_add(1, Ordering::SeqCst);
                    let act = Arc::clone(&act);
                    std::thread::spawn(move || {
                        if let Ok(mut reader) = stream.try_clone() {
                            if std::io::copy(&mut reader, &mut stream).is_ok() {
                                let _ = stream.shutdown(Shutdown::Write);
                            }
                        }
                        drop(stream);
                        act.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
            Echo {
                addr,
                accepted,
                active,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn active(&self) -> usize {
            self.active.load(Ordering::SeqCst)
        }
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s
    }

    /// Sends `msg` and expects it echoed back.
    fn roundtrip(s: &mut StdStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    /// Asserts that `s` is closed: a read returns EOF or a (non-timeout) error
    /// well before the read timeout, and never data.
    fn assert_closed(s: &mut StdStream) {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected a closed connection, read {n} bytes"),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "expected a closed connection, read timed out after {:?}",
                start.elapsed()
            ),
        }
        assert!(start.elapsed() < DEADLINE);
    }

    /// Asserts that a new connection through `proxy` carries no data.
    fn assert_refused(addr: SocketAddr) {
        let Ok(mut s) = StdStream::connect(addr) else {
            return; // refused outright is fine too
        };
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = s.write_all(b"ping");
        assert_closed(&mut s);
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.addr).unwrap();
        assert_eq!(proxy.target(), echo.addr);
        assert!(!proxy.is_partitioned());
        assert_ne!(proxy.addr(), echo.addr);

        let mut s = connect(proxy.addr());
        roundtrip(&mut s, b"hello");
        wait_for("5 bytes each way", || {
            let st = proxy.stats();
            st.bytes_to_target == 5 && st.bytes_from_target == 5
        });
        let st = proxy.stats();
        assert_eq!(st.connections_accepted, 1);
        assert_eq!(st.connections_refused, 0);
        assert_eq!(st.active_connections, 1);
        assert_eq!(st.total_bytes(), 10);

        // A payload bigger than the socket buffers, written while reading.
        let payload: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut writer = s.try_clone().unwrap();
        let to_send = payload.clone();
        let w = std::thread::spawn(move || writer.write_all(&to_send).unwrap());
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).unwrap();
        w.join().unwrap();
        assert!(got == payload, "payload corrupted");

        // Half-close passes through: the echo server sees EOF, finishes and
        // closes, and we read EOF.
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");

        let n = 5 + payload.len() as u64 + 3;
        wait_for("connection finished", || {
            proxy.stats().active_connections == 0
        });
        let st = proxy.stats();
        assert_eq!(st.bytes_to_target, n);
        assert_eq!(st.bytes_from_target, n);
        wait_for("echo connection closed", || echo.active() == 0);
    }

    #[test]
    fn partition_cuts_existing_and_refuses_new_then_heal() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.addr).unwrap();
        let mut a = connect(proxy.addr());
        let mut b = connect(proxy.addr());
        roundtrip(&mut a, b"a");
        roundtrip(&mut b, b"b");
        assert_eq!(echo.active(), 2);

        proxy.partition();
        assert!(proxy.is_partitioned());
        assert_eq!(proxy.stats().active_connections, 0);
        // Both directions are cut: the clients see the close...
        assert_closed(&mut a);
        assert_closed(&mut b);
        // ...and so does the target.
        wait_for("echo connections closed", || echo.active() == 0);

        // New connections are accepted and dropped without reaching the target.
        let before = proxy.stats();
        for _ in 0..3 {
            assert_refused(proxy.addr());
        }
        wait_for("3 refused connections", || {
            proxy.stats().connections_refused == before.connections_refused + 3
        });
        assert_eq!(echo.accepted(), 2);
        let after = proxy.stats();
        assert_eq!(after.bytes_to_target, before.bytes_to_target);
        assert_eq!(after.bytes_from_target, before.bytes_from_target);

        // Partitioning again is harmless.
        proxy.partition();
        assert!(proxy.is_partitioned());

        proxy.heal();
        assert!(!proxy.is_partitioned());
        let mut c = connect(proxy.addr());
        roundtrip(&mut c, b"after heal");
        assert_eq!(echo.accepted(), 3);
        let st = proxy.stats();
        assert_eq!(st.connections_accepted, 2 + 3 + 1);
        assert_eq!(st.active_connections, 1);
    }

    #[test]
    fn set_target_applies_to_new_connections() {
        let first = Echo::start();
        let second = Echo::start();
        let proxy = Proxy::start(first.addr).unwrap();
        let mut old = connect(proxy.addr());
        roundtrip(&mut old, b"1");

        proxy.set_target(second.addr);
        assert_eq!(proxy.target(), second.addr);
        let mut new = connect(proxy.addr());
        roundtrip(&mut new, b"2");
        assert_eq!(second.accepted(), 1);
        // The existing connection still goes to the first target.
        roundtrip(&mut old, b"3");
        assert_eq!(first.accepted(), 1);
    }

    #[test]
    fn unreachable_target_closes_client() {
        // A port that is bound (so nobody else can take it) but not listening:
        // connecting to it is refused.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dead = reserved.local_addr().unwrap();
        let proxy = Proxy::start(dead).unwrap();
        let mut s = connect(proxy.addr());
        let _ = s.write_all(b"x");
        assert_closed(&mut s);
        wait_for("no live connections", || {
            proxy.stats().active_connections == 0
        });
        assert_eq!(proxy.stats().total_bytes(), 0);
        drop(reserved);
    }

    #[test]
    fn drop_closes_everything_promptly() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.addr).unwrap();
        let addr = proxy.addr();
        let mut s = connect(addr);
        roundtrip(&mut s, b"x");

        let start = Instant::now();
        drop(proxy);
        assert!(
            start.elapsed() < DROP_TIMEOUT,
            "drop took {:?}",
            start.elapsed()
        );
        assert_closed(&mut s);
        wait_for("echo connection closed", || echo.active() == 0);
    }

    /// The proxy keeps working from inside (and after) a test's own runtime.
    #[tokio::test]
    async fn works_from_async_tests() {
        let echo = Echo::start();
        let proxy = Proxy::start(echo.addr).unwrap();

        let mut s = tokio::time::timeout(DEADLINE, TcpStream::connect(proxy.addr()))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"async").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"async");

        proxy.partition();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "read after partition: {r:?}");

        proxy.heal();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"again").await.unwrap();
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"again");
    }
}
