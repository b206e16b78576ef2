//! Listeners: sockets in, batches of records out to the store. Ingest never
//! imports the link; the store is the only hand-off.
//!
//! Listener kinds and transports form a closed set matched in [`bind`] and
//! [`serve`]; adding one means adding a variant, not registering a plugin.

pub mod batcher;
pub mod file;
pub mod gelf;
pub mod http;
pub mod limits;
pub mod net;
pub mod relp;
pub mod router;
pub mod syslog;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket, UnixDatagram, UnixListener};
use tracing::warn;

use crate::config::{ListenAddr, ListenerConfig, ListenerKind, Transport};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Error as StoreError, Store, StreamHandle};
use router::Router;

/// Why a listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config was validated against the same streams: a bug if seen.
    #[error("listener {listener}: no stream {stream:?}")]
    UnknownStream {
        /// The listener.
        listener: String,
        /// The stream it names.
        stream: String,
    },
}

/// What every task of one listener shares.
pub struct ListenerCtx {
    /// The listener's config.
    pub cfg: ListenerConfig,
    /// The listener's name, the `listener` label of its metrics.
    pub name: Arc<str>,
    /// Which stream each record goes to.
    pub router: Arc<Router>,
    /// Handles of `router.streams`, same order.
    pub streams: Vec<StreamHandle>,
    /// `ferry_received_*`, `ferry_dropped_*`, `ferry_connections_*` are counted here.
    pub metrics: Metrics,
    /// Per-source records/s and bytes/s (untrusted listeners by default).
    pub limits: limits::SourceLimits,
    /// Open connections per source address, for `max_connections_per_source`.
    per_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    warn_limit: crate::metrics::WarnLimit,
}

impl ListenerCtx {
    /// The context of a listener: its routes resolved to the store's streams, its per-source limits set up.
    pub fn new(cfg: ListenerConfig, store: &Store, metrics: Metrics) -> Result<ListenerCtx, Error> {
        let router = Router::new(&cfg);
        let streams = router
            .streams
            .iter()
            .map(|s| {
                store.stream(s).ok_or_else(|| Error::UnknownStream { listener: cfg.name.clone(), stream: s.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for r in net::guard::Close::ALL {
            metrics.ingest.connections_closed.with_label_values(&[&cfg.name, r.as_str()]);
        }
        metrics.ingest.received_records.with_label_values(&[&cfg.name]);
        Ok(ListenerCtx {
            limits: limits::SourceLimits::with(
                cfg.source_records_per_sec,
                cfg.source_bytes_per_sec,
                limits::Tracking { max_sources: cfg.max_sources, ipv6_prefix: cfg.source_ipv6_prefix },
                limits::Meters {
                    aggregate: Some(metrics.ingest.source_limit_shared.with_label_values(&[&cfg.name, "aggregate"])),
                    global: Some(metrics.ingest.source_limit_shared.with_label_values(&[&cfg.name, "global"])),
                    tracked: Some(metrics.ingest.source_limit_tracked.with_label_values(&[&cfg.name])),
                },
            ),
            per_source: Default::default(),
            name: cfg.name.as_str().into(),
            router: Arc::new(router),
            streams,
            metrics,
            cfg,
            warn_limit: Default::default(),
        })
    }

    /// True at most once a second: keeps floods from flooding the log too.
    pub fn may_warn(&self) -> bool {
        self.warn_limit.may_warn()
    }

    /// Count a connection from `ip`; false (and nothing counted) when the
    /// source already has `max_connections_per_source` open.
    pub fn enter_source(&self, ip: std::net::IpAddr) -> bool {
        let Some(max) = self.cfg.max_connections_per_source else { return true };
        let mut m = self.per_source.lock().expect("not poisoned");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn leave_source(&self, ip: std::net::IpAddr) {
        if self.cfg.max_connections_per_source.is_none() {
            return;
        }
        let mut m = self.per_source.lock().expect("not poisoned");
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Whether a record of `len` bytes from `ip` is within the source's rate;
    /// if not it is counted as dropped (`rate_limited`) and logged (rate-limited).
    #[inline]
    pub fn admit_record(&self, ip: Option<std::net::IpAddr>, len: usize) -> bool {
        let Some(ip) = ip else { return true };
        if self.limits.is_unlimited() || self.limits.take_one(ip, len, std::time::Instant::now()) {
            return true;
        }
        self.metrics.drop_records(&self.name, crate::metrics::DropReason::RateLimited, 1);
        if self.may_warn() {
            warn!(listener = %self.name, source = %ip, "source over its rate limit: dropping records (counted as rate_limited)");
        }
        false
    }

    /// For acknowledged protocols (RELP): wait until a record of `len` bytes
    /// from `ip` fits the source's rate instead of dropping it. The sender's
    /// window fills and it slows down; nothing is lost and nothing is counted
    /// as dropped.
    pub async fn pace_record(&self, ip: std::net::IpAddr, len: usize) {
        if self.limits.is_unlimited() {
            return;
        }
        let mut warned = false;
        while let Err(wait) = self.limits.pace_one(ip, len, std::time::Instant::now()) {
            if !warned && self.may_warn() {
                warn!(listener = %self.name, source = %ip, "source over its rate limit: slowing it down (acknowledged protocol, nothing dropped)");
            }
            warned = true;
            tokio::time::sleep(wait).await;
        }
    }

    /// Log (rate-limited) that records were dropped for `e`.
    pub fn note_drop(&self, e: &StoreError) {
        if self.may_warn() {
            warn!(listener = %self.name, error = %e, "dropping records (counted in ferry_dropped_records_total)");
        }
    }
}

/// A bound listener socket, ready to serve.
pub enum Bound {
    /// With an acceptor for `transport = "tls"` (syslog per RFC 5425, RELP,
    /// HTTP): each connection's handshake runs in that connection's task.
    Tcp(TcpListener, Option<net::conn::TlsServer>),
    /// A unix stream socket, and its path (removed at the end).
    UnixStream(UnixListener, PathBuf),
    /// A UDP socket.
    Udp(UdpSocket),
    /// A unix datagram socket, and its path (removed at the end).
    UnixDatagram(UnixDatagram, PathBuf),
    /// `kind = "file"`: no socket, its checkpoints loaded.
    Files(file::Prepared),
}

impl Bound {
    /// The address actually bound (port 0 resolved), for logs and tests.
    pub fn local_addr(&self) -> String {
        match self {
            Bound::Tcp(l, _) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Bound::Udp(s) => s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Bound::UnixStream(_, p) | Bound::UnixDatagram(_, p) => p.display().to_string(),
            Bound::Files(p) => p.paths.clone(),
        }
    }
}

/// Bind a listener's socket. A stale unix socket file is replaced. TLS
/// listeners load `tls` (the deployment CA, the node's certificate and key)
/// here, so a bad file fails the start, not the first connection.
pub async fn bind(
    cfg: &ListenerConfig,
    tls: Option<&Arc<crate::pki::Live>>,
    state_dir: &std::path::Path,
) -> io::Result<Bound> {
    match (&cfg.listen, cfg.transport) {
        (_, Transport::File) => Ok(Bound::Files(file::Prepared::open(state_dir, cfg)?)),
        (ListenAddr::Socket(a), Transport::Tls) => {
            let live = tls.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "TLS listener without [tls]"))?;
            let optional = cfg.client_cert == crate::config::ClientCert::Optional;
            let server = crate::pki::Derived::new(live.clone(), move |m| {
                Ok(tokio_rustls::TlsAcceptor::from(Arc::new(crate::pki::collector_server_config_from(m, optional)?)))
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            Ok(Bound::Tcp(net::accept::listen_tcp(*a)?, Some(Arc::new(server))))
        }
        (ListenAddr::Socket(a), Transport::Tcp) => Ok(Bound::Tcp(net::accept::listen_tcp(*a)?, None)),
        (ListenAddr::Socket(a), Transport::Udp) => {
            let s = UdpSocket::bind(a).await?;
            net::datagram::check_receive_buffer(&cfg.name, net::datagram::grow_receive_buffer(&s));
            Ok(Bound::Udp(s))
        }
        (ListenAddr::Path(p), Transport::UnixStream) => {
            remove_stale_socket(p)?;
            let l = UnixListener::bind(p)?;
            world_writable(p)?;
            Ok(Bound::UnixStream(l, p.clone()))
        }
        (ListenAddr::Path(p), Transport::Unix) => {
            remove_stale_socket(p)?;
            let s = UnixDatagram::bind(p)?;
            world_writable(p)?;
            // Local senders block when it is full rather than lose: no warning needed.
            net::datagram::grow_receive_buffer(&s);
            Ok(Bound::UnixDatagram(s, p.clone()))
        }
        (addr, t) => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("transport {t:?} cannot listen on {addr}")))
        }
    }
}

/// Local log sockets are writable by every local process, like `/dev/log`,
/// whatever the service's umask; restrict access with the directory's mode.
fn world_writable(p: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666))
}

fn remove_stale_socket(p: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(p),
        Ok(_) => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a socket", p.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Serve a bound listener until shutdown.
pub async fn serve(bound: Bound, ctx: Arc<ListenerCtx>, store: Arc<Store>, sd: Shutdown) {
    match bound {
        Bound::Tcp(l, tls) => match ctx.cfg.kind {
            ListenerKind::Http => http::serve(l, tls, ctx, store, sd).await,
            ListenerKind::Relp => relp::serve(l, tls, ctx, sd).await,
            ListenerKind::Gelf => gelf::serve_tcp(l, ctx, sd).await,
            ListenerKind::Syslog | ListenerKind::Ferry | ListenerKind::File => {
                syslog::stream::serve_tcp(l, tls, ctx, sd).await
            }
        },
        Bound::Udp(s) if ctx.cfg.kind == ListenerKind::Gelf => gelf::serve_udp(s, ctx, sd).await,
        Bound::UnixStream(l, p) => {
            syslog::stream::serve_unix(l, ctx, sd).await;
            let _ = std::fs::remove_file(p);
        }
        Bound::Udp(s) => net::datagram::serve(net::datagram::Udp(s), syslog::datagram::Syslog, ctx, sd).await,
        Bound::UnixDatagram(s, p) => {
            net::datagram::serve(net::datagram::Unix(s), syslog::datagram::Syslog, ctx, sd).await;
            let _ = std::fs::remove_file(p);
        }
        Bound::Files(p) => file::serve(p, ctx, sd.token.clone()).await,
    }
}

/// Format a socket peer for logs.
pub fn peer_string(a: &SocketAddr) -> String {
    a.to_string()
}
