//! An accepted TCP connection, plain or TLS: what the shared accept loop
//! hands every stream listener kind. The TLS handshake happens in the
//! connection's own task, so a slow or hostile client never holds up accepts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::ingest::ListenerCtx;

/// A TLS listener's server config: the TLS material in force at each
/// handshake (replaced on reload; established connections keep theirs).
pub type TlsServer = std::sync::Arc<crate::pki::Derived<TlsAcceptor>>;

/// An accepted stream connection, plain or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, with the watch that ends it if a reloaded CRL revokes the client.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Revoked),
}

/// Ready when a reload has put in force a CRL that revokes the client's
/// certificate: its connection then ends at its next read. It holds the
/// material and a watch of its replacements, not a copy of the chain: the
/// chain is rustls's, read when the material changes. `None` for a client
/// without a certificate. Once revoked, it stays ready.
pub struct Revoked {
    watch: Option<(Arc<crate::pki::Live>, Replaced)>,
    revoked: bool,
}

type Replaced = Pin<Box<dyn Future<Output = Option<watch::Receiver<u64>>> + Send>>;

/// Completes (with the receiver, to wait again) at the next replacement.
fn next_replacement(mut rx: watch::Receiver<u64>) -> Replaced {
    Box::pin(async move { rx.changed().await.ok().map(|_| rx) })
}

impl Revoked {
    fn watch(live: &Arc<crate::pki::Live>, has_cert: bool) -> Revoked {
        if !has_cert {
            return Revoked { watch: None, revoked: false };
        }
        let mut rx = live.subscribe();
        rx.mark_unchanged();
        Revoked { watch: Some((live.clone(), next_replacement(rx))), revoked: false }
    }

    fn poll(&mut self, cx: &mut Context<'_>, chain: Option<&[CertificateDer<'static>]>) -> Poll<()> {
        if self.revoked {
            return Poll::Ready(());
        }
        let Some((live, replaced)) = &mut self.watch else { return Poll::Pending };
        loop {
            match replaced.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.watch = None;
                    return Poll::Pending;
                }
                Poll::Ready(Some(rx)) => {
                    *replaced = next_replacement(rx);
                    let verdict = live.current().verify_peer(chain.unwrap_or_default());
                    if let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) = verdict {
                        self.revoked = true;
                        self.watch = None;
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// A stream whose readiness can be awaited without a buffer: an idle
/// connection waits holding no read buffer, and allocates one only when
/// bytes are there (issue 26: thousands of idle collectors).
pub trait ReadReady: AsyncRead + Unpin {
    /// Ready when a read would not block (or would end the stream).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::UnixStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for Conn {
    /// TLS: the socket's readiness. Valid because readers drain the stream
    /// until a read is pending before they wait, so rustls holds no
    /// plaintext then. A revocation makes it ready (the read then fails).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Conn::Plain(s) => s.poll_read_ready(cx),
            Conn::Tls(s, revoked) => {
                if revoked.poll(cx, s.get_ref().1.peer_certificates()).is_ready() {
                    return Poll::Ready(Ok(()));
                }
                s.get_ref().0.poll_read_ready(cx)
            }
        }
    }
}

/// Wait until `sock` is readable.
pub async fn readable<S: ReadReady>(sock: &mut S) -> io::Result<()> {
    std::future::poll_fn(|cx| sock.poll_read_ready(cx)).await
}

/// Read what `sock` has now into `buf` without waiting: `None` when a read
/// would block (the task then waits with [`readable`]), else the read's
/// result (`Ok(0)`: the stream ended).
pub fn read_now<S: AsyncRead + Unpin>(sock: &mut S, buf: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    sock.read_buf(buf).now_or_never()
}

impl Conn {
    /// `sock` after a TLS handshake with `tls`; `None` if refused.
    pub(crate) async fn tls(sock: TcpStream, server: &TlsServer, peer: &str, ctx: &ListenerCtx) -> Option<Conn> {
        let s = handshake(&server.get(), sock, peer, ctx).await?;
        let revoked = Revoked::watch(server.live(), s.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()));
        Some(Conn::Tls(Box::new(s), revoked))
    }
}

/// The TLS handshake of a collector connection, bounded by the listener's
/// `handshake_timeout` (10 s, 5 s untrusted): a client that connects and
/// sends nothing, or half a ClientHello, holds its connection slot (and its
/// source's) no longer than that. A failure (a certificate from another CA,
/// none where one is required, a client speaking plain text) is logged with
/// the peer and the reason, and counted as a refused connection.
async fn handshake(
    acceptor: &TlsAcceptor,
    sock: TcpStream,
    peer: &str,
    ctx: &ListenerCtx,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let limit = ctx.cfg.handshake_timeout;
    let refuse = |cause: &'static str, detail: String| {
        ctx.metrics.ingest.connections_refused.with_label_values(&[&ctx.name, "tls_handshake"]).inc();
        let what = match cause {
            "unknown_ca" => "the client certificate is not issued by the deployment CA",
            "no_client_cert" => "the client sent no certificate and this listener requires one (client_cert)",
            "expired" => "the client certificate has expired",
            "certificate_revoked" => "the client certificate is revoked (a CRL in [tls] crl lists it)",
            "timeout" => "no handshake in time",
            "aborted" => "the client went away during the handshake",
            _ => "TLS handshake failed",
        };
        if ctx.may_warn() {
            warn!(listener = %ctx.name, %peer, cause, %detail, "TLS connection refused: {what}");
        }
    };
    match tokio::time::timeout(limit, acceptor.accept(sock)).await {
        Ok(Ok(tls)) => {
            if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                match crate::pki::identity_from_cert(c) {
                    Ok(id) => debug!(listener = %ctx.name, %peer, client = %id, "TLS client authenticated"),
                    Err(_) => {
                        debug!(listener = %ctx.name, %peer, "TLS client authenticated (certificate without a ferry identity)")
                    }
                }
            }
            Some(tls)
        }
        Ok(Err(e)) => {
            refuse(crate::pki::classify_tls_error(&e), e.to_string());
            None
        }
        Err(_) => {
            refuse("timeout", format!("no handshake within {limit:?}"));
            None
        }
    }
}

macro_rules! io {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => $e,
            Conn::Tls($s, _) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // A TLS client that closes without close_notify (rsyslog's gtls often
            // does) has still ended its stream: an end, not a read error.
            Conn::Tls(s, revoked) => {
                if revoked.poll(cx, s.get_ref().1.peer_certificates()).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the client certificate is revoked by the CRL a reload put in force",
                    )));
                }
                match Pin::new(s).poll_read(cx, buf) {
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
                    r => r,
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        io!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
