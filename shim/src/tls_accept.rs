//! The TLS handshake for a listener, done here rather than by tonic so that
//! the rustls config can carry what tonic's `ServerTlsConfig` cannot: the
//! cipher suites, protocol versions and CRLs of etcd's flags (`tls_policy`,
//! `tls`). Handshakes run concurrently, each bounded in time, so a client
//! that connects and says nothing delays no one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished and not yet taken by the server.
const BACKLOG: usize = 128;

/// A connection, with or without TLS.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections as the server takes them.
pub type Incoming = futures::stream::BoxStream<'static, io::Result<MaybeTls>>;

/// Wraps accepted TCP connections in TLS when `config` is given.
pub fn incoming(
    tcp: crate::server::Incoming,
    config: Option<Arc<rustls::ServerConfig>>,
) -> Incoming {
    let Some(config) = config else {
        return tcp.map(|r| r.map(MaybeTls::Plain)).boxed();
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        let mut tcp = tcp;
        loop {
            // Stop when the server drops its end, so the listener closes.
            let next = tokio::select! {
                () = tx.closed() => return,
                next = tcp.next() => next,
            };
            let stream = match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(s)) => s,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(MaybeTls::Tls(Box::new(tls)))).await;
                    }
                    // A refused certificate, version or suite, as etcd
                    // warns "rejected connection"; a peer that hung up
                    // (probes, scanners) only at debug.
                    Ok(Err(e)) if is_tls_error(&e) => {
                        tracing::warn!(?peer, error = %e, "rejected TLS connection")
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Whether the handshake failed on TLS's terms, not the socket's.
fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

impl Connected for MaybeTls {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            MaybeTls::Plain(s) => s.connect_info(),
            MaybeTls::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
