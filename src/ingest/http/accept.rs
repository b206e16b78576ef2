//! The HTTP listener's connections. axum's own accept loop knows no limits,
//! so connections come from the shared TCP accept loop (`max_connections`,
//! `max_connections_per_source`), get their TLS handshake there when the
//! listener is TLS, and an idle timeout here, before axum serves them. A
//! connection holds its place under the limits until axum drops it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::ingest::net::conn::TlsServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::info;

use crate::ingest::net::accept::accept_tcp;
use crate::ingest::net::guard::{Close, ConnGuard};
use crate::ingest::ListenerCtx;
use crate::shutdown::Shutdown;

/// Connections accepted under the listener's limits, for `axum::serve`.
pub struct Incoming {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

/// Start accepting on `listener` (TLS with `tls`) in a tracked task.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsServer>,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    sd.spawn(accept_tcp(listener, tls, ctx, sd.clone(), move |io, peer, _, ctx, _, permit| {
        let tx = tx.clone();
        async move {
            let Ok(addr) = peer.parse::<SocketAddr>() else { return };
            let (closed, on_close) = oneshot::channel();
            let guard = ConnGuard::open(&ctx);
            let idle = ctx.cfg.idle_timeout;
            let conn =
                Conn { io, idle, deadline: Box::pin(tokio::time::sleep(idle)), timed_out: false, closed: Some(closed) };
            if tx.send((conn, addr)).await.is_err() {
                // axum stopped taking connections: shutting down.
                guard.close(Close::Shutdown);
                return;
            }
            // The permit and the per-source count live until axum drops the connection.
            let timed_out = on_close.await.unwrap_or(false);
            guard.close(if timed_out { Close::IdleTimeout } else { Close::Eof });
            if timed_out {
                ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, "idle_timeout"]).inc();
                info!(listener = %ctx.name, %peer, idle_timeout = ?idle, "idle timeout: closing HTTP connection");
            }
            drop(permit);
        }
    }));
    Ok(Incoming { rx, local })
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): axum's graceful shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// One accepted connection: closed with `TimedOut` when nothing has been
/// read for the listener's `idle_timeout` while axum waits for bytes.
pub struct Conn {
    io: crate::ingest::net::conn::Conn,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: bool,
    /// Tells the accept task that the connection is gone (and whether it timed out).
    closed: Option<oneshot::Sender<bool>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.closed.take() {
            let _ = c.send(self.timed_out);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out = true;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
