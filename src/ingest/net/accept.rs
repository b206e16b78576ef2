//! Accepting stream connections for every listener kind (syslog, RELP,
//! HTTP, GELF over TCP): the listen backlog, the connection caps
//! (`max_connections`, `max_connections_per_source`) applied at accept,
//! before any byte is read, and the TLS handshake in the connection's own
//! task ([`super::conn`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::ingest::net::conn::TlsServer;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::conn::Conn;
use crate::ingest::ListenerCtx;
use crate::shutdown::Shutdown;

/// Connections the kernel completes and queues before ferry accepts them
/// (capped by `net.core.somaxconn`): a burst of connections (a flood, every
/// collector reconnecting at once) waits there instead of being retried by
/// the clients a second later.
const ACCEPT_BACKLOG: u32 = 4096;

pub fn listen_tcp(a: std::net::SocketAddr) -> io::Result<TcpListener> {
    let s = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(a)?;
    s.listen(ACCEPT_BACKLOG)
}

/// Accept TCP connections under `max_connections` and
/// `max_connections_per_source`, and serve each with `serve` in a tracked
/// task, after its TLS handshake when the listener has `tls`. Shared by
/// every TCP listener kind.
pub(crate) async fn accept_tcp<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsServer>,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    serve: F,
) where
    F: Fn(Conn, String, std::net::IpAddr, Arc<ListenerCtx>, Shutdown, OwnedSemaphorePermit) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = sd.token.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, addr)) => {
                let peer = addr.to_string();
                let Some(permit) = admit(&ctx, &limit, &peer) else {
                    continue;
                };
                if !ctx.enter_source(addr.ip()) {
                    ctx.metrics.connections_refused.with_label_values(&[&ctx.name, "max_connections_per_source"]).inc();
                    if ctx.may_warn() {
                        warn!(listener = %ctx.name, %peer, "connection refused: max_connections_per_source reached");
                    }
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let (ctx, sd2, tls, serve, ip) = (ctx.clone(), sd.clone(), tls.clone(), serve.clone(), addr.ip());
                sd.spawn(async move {
                    if let Some(conn) = Conn::open(sock, tls.as_ref(), &peer, &ctx).await {
                        serve(conn, peer, ip, ctx.clone(), sd2, permit).await;
                    }
                    ctx.leave_source(ip);
                });
            }
            Err(e) => accept_error(&ctx, e).await,
        }
    }
}

/// A permit under `max_connections`, or a refusal that is logged and counted.
/// The refused socket is dropped at once: it never costs a task.
pub(crate) fn admit(ctx: &ListenerCtx, limit: &Arc<Semaphore>, peer: &str) -> Option<OwnedSemaphorePermit> {
    match limit.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            ctx.metrics.connections_refused.with_label_values(&[&ctx.name, "max_connections"]).inc();
            if ctx.may_warn() {
                warn!(listener = %ctx.name, %peer, max_connections = ctx.cfg.max_connections,
                    "connection refused: max_connections reached (further refusals this second are only counted)");
            }
            None
        }
    }
}

/// Accept errors (EMFILE, ENFILE, ...) are transient: log, back off, go on.
pub(crate) async fn accept_error(ctx: &ListenerCtx, e: io::Error) {
    ctx.metrics.connections_refused.with_label_values(&[&ctx.name, "accept_error"]).inc();
    if ctx.may_warn() {
        warn!(listener = %ctx.name, error = %e, "accept failed; backing off");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}
