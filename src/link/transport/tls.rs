//! TLS 1.3 over TCP.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Link, Refused, Timing, WireCounter};
use crate::link::proto::ALPN;
use crate::pki::{self, identity_from_cert, Derived, Live};

/// A TCP stream that counts the bytes written to it (TLS records).
pub struct Counting {
    inner: TcpStream,
    sent: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client side: each connection uses the TLS material in force.
#[derive(Clone)]
pub struct Dialer {
    connector: Arc<Derived<TlsConnector>>,
}

impl Dialer {
    /// A dialer with the TLS material in force (replaced on reload).
    pub fn new(live: &Arc<Live>) -> Result<Dialer, pki::Error> {
        let connector =
            Derived::new(live.clone(), |m| Ok(TlsConnector::from(Arc::new(pki::client_config_from(m, &[ALPN])?))))?;
        Ok(Dialer { connector: Arc::new(connector) })
    }

    /// Connect to `addr`, verifying the receiver's certificate for `server_name`.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str, timing: &Timing) -> io::Result<Link> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{server_name:?} is not a valid server name"))
        })?;
        let fut = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let sent = Arc::new(AtomicU64::new(0));
            let fd = tcp.as_raw_fd();
            let tls = self.connector.get().connect(name, Counting { inner: tcp, sent: sent.clone() }).await?;
            let (identity, peer_certs) = {
                let (_, conn) = tls.get_ref();
                let certs = conn.peer_certificates().unwrap_or_default();
                let der = certs.first().ok_or_else(|| io::Error::other("receiver sent no certificate"))?;
                (identity_from_cert(der).map_err(io::Error::other)?, certs.to_vec())
            };
            Ok(Link {
                io: Box::new(tls),
                peer: addr,
                identity,
                peer_certs,
                wire: WireCounter::Tcp(sent, fd),
                quic: None,
            })
        };
        tokio::time::timeout(timing.connect_timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// The receiver side: each handshake uses the TLS material in force.
pub struct Acceptor {
    listener: TcpListener,
    acceptor: Derived<TlsAcceptor>,
}

impl Acceptor {
    /// Bind a TCP listener on `addr`.
    pub async fn bind(addr: SocketAddr, live: &Arc<Live>) -> io::Result<Acceptor> {
        let acceptor =
            Derived::new(live.clone(), |m| Ok(TlsAcceptor::from(Arc::new(pki::server_config_from(m, &[ALPN])?))))
                .map_err(io::Error::other)?;
        Ok(Acceptor { listener: TcpListener::bind(addr).await?, acceptor })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept a TCP connection; the handshake is [`handshake`], run in the connection's own task.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// The acceptor with the TLS material in force now.
    pub fn tls(&self) -> TlsAcceptor {
        self.acceptor.get()
    }
}

/// Complete the server side of the TLS handshake and authenticate the peer.
pub async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timing: &Timing,
) -> Result<Link, Refused> {
    let _ = tcp.set_nodelay(true);
    let sent = Arc::new(AtomicU64::new(0));
    let fd = tcp.as_raw_fd();
    let fut = acceptor.accept(Counting { inner: tcp, sent: sent.clone() });
    let tls = match tokio::time::timeout(timing.connect_timeout, fut).await {
        Err(_) => return Err(Refused { reason: "timeout", detail: "TLS handshake timed out".into() }),
        Ok(Err(e)) => {
            let detail = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => format!("{r:?}: {r}"),
                None => e.to_string(),
            };
            return Err(Refused { reason: crate::pki::classify_tls_error(&e), detail });
        }
        Ok(Ok(t)) => t,
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(Refused {
            reason: "alpn",
            detail: format!("peer did not negotiate ALPN {:?}", String::from_utf8_lossy(ALPN)),
        });
    }
    let certs = conn.peer_certificates().unwrap_or_default();
    let der = certs.first().ok_or(Refused { reason: "no_client_cert", detail: "no client certificate".into() })?;
    let identity = identity_from_cert(der).map_err(|e| Refused { reason: "bad_identity", detail: e.to_string() })?;
    let peer_certs = certs.to_vec();
    Ok(Link { io: Box::new(tls), peer, identity, peer_certs, wire: WireCounter::Tcp(sent, fd), quic: None })
}
