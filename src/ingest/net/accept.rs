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

/// A TCP listener on `a`, with `SO_REUSEADDR` and a deep accept backlog.
pub fn listen_tcp(a: std::net::SocketAddr) -> io::Result<TcpListener> {
    let s = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(a)?;
    s.listen(ACCEPT_BACKLOG)
}

/// A connection's place under its listener's caps: the `max_connections`
/// permit and, for TCP, its count under `max_connections_per_source`. Both
/// are given back when it drops, however the connection ends.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    source: Option<(Arc<ListenerCtx>, std::net::IpAddr)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ctx, ip)) = &self.source {
            ctx.leave_source(*ip);
        }
    }
}

/// Accept TCP connections under `max_connections` and
/// `max_connections_per_source`, and serve each with `serve` in a tracked
/// task, after its TLS handshake when the listener has `tls`. Shared by
/// every TCP listener kind.
///
/// Memory (issue 26): `serve`'s future is the connection's task itself, not
/// wrapped in another: a wrapping future holds a second copy of it (rustc
/// lays out the awaited future beside the wrapper's own state), which
/// doubled what every idle connection cost. A TLS handshake runs in a task
/// of its own that hands the connection to a new one.
pub(crate) async fn accept_tcp<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsServer>,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    serve: F,
) where
    F: Fn(Conn, String, std::net::IpAddr, Arc<ListenerCtx>, Shutdown, Admission) -> Fut + Clone + Send + 'static,
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
                let Some(mut admission) = admit(&ctx, &limit, &peer) else {
                    continue;
                };
                if !ctx.enter_source(addr.ip()) {
                    ctx.metrics
                        .ingest
                        .connections_refused
                        .with_label_values(&[&ctx.name, "max_connections_per_source"])
                        .inc();
                    if ctx.may_warn() {
                        warn!(listener = %ctx.name, %peer, "connection refused: max_connections_per_source reached");
                    }
                    continue;
                }
                admission.source = Some((ctx.clone(), addr.ip()));
                let _ = sock.set_nodelay(true);
                let ip = addr.ip();
                match &tls {
                    None => sd.spawn(serve(Conn::Plain(sock), peer, ip, ctx.clone(), sd.clone(), admission)),
                    Some(tls) => {
                        let (ctx, sd2, tls, serve) = (ctx.clone(), sd.clone(), tls.clone(), serve.clone());
                        sd.spawn(async move {
                            if let Some(conn) = Conn::tls(sock, &tls, &peer, &ctx).await {
                                sd2.clone().spawn(serve(conn, peer, ip, ctx, sd2, admission));
                            }
                        });
                    }
                }
            }
            Err(e) => accept_error(&ctx, e).await,
        }
    }
}

/// A place under `max_connections`, or a refusal that is logged and counted.
/// The refused socket is dropped at once: it never costs a task.
pub(crate) fn admit(ctx: &ListenerCtx, limit: &Arc<Semaphore>, peer: &str) -> Option<Admission> {
    match limit.clone().try_acquire_owned() {
        Ok(p) => Some(Admission { _permit: p, source: None }),
        Err(_) => {
            ctx.metrics.ingest.connections_refused.with_label_values(&[&ctx.name, "max_connections"]).inc();
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
    ctx.metrics.ingest.connections_refused.with_label_values(&[&ctx.name, "accept_error"]).inc();
    if ctx.may_warn() {
        warn!(listener = %ctx.name, error = %e, "accept failed; backing off");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}
