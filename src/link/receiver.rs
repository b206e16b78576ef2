//! The receiver (`kind = "ferry"` listener): authenticates each uplink by its
//! certificate, then serves OPEN/APPEND/SEAL against the [`Mirror`]. The site
//! comes from the certificate, never from the payload: a peer writes only
//! its own node's segments under `archive/<its site>/` (and, if its site is
//! listed in `relays`, other sites' segments it forwards). Every refusal is
//! counted and logged with the peer (an unauthorized path at most once a
//! minute per peer: a misconfigured relay retries forever).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::error::{End, Lost};
use super::proto::{Code, DecodeError, Msg, Tombstone, MIN_VERSION, VERSION};
use super::transport::{quic, tls, Link, Timing};
use crate::config::{ListenerConfig, Transport};
use crate::metrics::Metrics;
use crate::mirror::{self, AppendError, Mirror, SealError};
use crate::pki::Live;
use crate::shutdown::Shutdown;

/// What every session of one receiver shares.
pub struct ReceiverCtx {
    /// The `kind = "ferry"` listener's config: name, `relays`, `max_connections`.
    pub cfg: ListenerConfig,
    /// Where the uplinks' segments are written.
    pub mirror: Arc<Mirror>,
    /// `ferry_link_*` and `ferry_mirror_*` are counted here.
    pub metrics: Metrics,
    /// Handshake, keepalive and idle timeouts of the transport.
    pub timing: Timing,
    /// The mirror's state epoch, sent in WELCOME.
    pub epoch: u64,
    /// The TLS material in force: a session whose peer a reloaded CRL
    /// revokes ends at once.
    pub tls: Arc<Live>,
    /// A failing mirror disk logs once a second, not per append.
    warn_limit: crate::metrics::WarnLimit,
    /// When each peer (`site/node`) last had an unauthorized path logged.
    unauthorized_logged: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// A peer refused for a path it may not write is logged at most this often.
const UNAUTHORIZED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl ReceiverCtx {
    /// The context of one receiver; `epoch` is the mirror's state epoch.
    pub fn new(
        cfg: ListenerConfig,
        mirror: Arc<Mirror>,
        metrics: Metrics,
        timing: Timing,
        epoch: u64,
        tls: Arc<Live>,
    ) -> ReceiverCtx {
        ReceiverCtx {
            cfg,
            mirror,
            metrics,
            timing,
            epoch,
            tls,
            warn_limit: Default::default(),
            unauthorized_logged: Default::default(),
        }
    }
}

impl ReceiverCtx {
    /// Whether an unauthorized path from this peer may be logged now.
    fn may_log_unauthorized(&self, site: &str, node: &str) -> bool {
        let now = std::time::Instant::now();
        let mut seen = self.unauthorized_logged.lock().expect("not poisoned");
        seen.retain(|_, at| now.duration_since(*at) < UNAUTHORIZED_LOG_EVERY);
        let key = format!("{site}/{node}");
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, now);
        true
    }
}

/// A bound receiver socket.
pub enum Bound {
    /// TLS 1.3 over TCP (`transport = "tls"`).
    Tls(tls::Acceptor),
    /// QUIC (`transport = "quic"`).
    Quic(quic::Acceptor),
}

impl Bound {
    /// Bind the listener's address with the TLS material in force; the socket is open before `ferry_ready` says so.
    pub async fn bind(cfg: &ListenerConfig, tls: &Arc<Live>, timing: &Timing) -> std::io::Result<Bound> {
        let crate::config::ListenAddr::Socket(addr) = &cfg.listen else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "ferry receivers listen on address:port",
            ));
        };
        match cfg.transport {
            Transport::Quic => Ok(Bound::Quic(quic::Acceptor::bind(*addr, tls, timing)?)),
            _ => Ok(Bound::Tls(tls::Acceptor::bind(*addr, tls).await?)),
        }
    }

    /// The bound address (with the port the kernel chose for port 0), for logs and tests; empty if unknown.
    pub fn local_addr(&self) -> String {
        match self {
            Bound::Tls(a) => a.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Bound::Quic(a) => a.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

fn refused(ctx: &ReceiverCtx, peer: SocketAddr, reason: &str, detail: &str) {
    ctx.metrics.link.link_refused.with_label_values(&[&ctx.cfg.name, reason]).inc();
    warn!(listener = %ctx.cfg.name, %peer, reason, detail, "link refused");
}

/// Accept uplinks until shutdown.
pub async fn serve(bound: Bound, ctx: Arc<ReceiverCtx>, sd: Shutdown) {
    let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    match bound {
        Bound::Tls(acc) => loop {
            let (tcp, peer) = tokio::select! {
                _ = sd.token.cancelled() => return,
                r = acc.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(listener = %ctx.cfg.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                refused(&ctx, peer, "max_connections", "too many links");
                continue;
            };
            let (ctx, sd2, tlsacc) = (ctx.clone(), sd.clone(), acc.tls());
            sd.spawn(async move {
                let _permit = permit;
                match tls::handshake(tlsacc, tcp, peer, &ctx.timing).await {
                    Ok(link) => session(link, ctx, sd2).await,
                    Err(r) => refused(&ctx, peer, r.reason, &r.detail),
                }
            });
        },
        Bound::Quic(acc) => {
            loop {
                let incoming = tokio::select! {
                    _ = sd.token.cancelled() => break,
                    r = acc.accept() => match r { Some(i) => i, None => break },
                };
                let peer = incoming.remote_address();
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    incoming.refuse();
                    refused(&ctx, peer, "max_connections", "too many links");
                    continue;
                };
                let (ctx, sd2, config) = (ctx.clone(), sd.clone(), acc.config());
                sd.spawn(async move {
                    let _permit = permit;
                    match quic::handshake(incoming, config, &ctx.timing).await {
                        Ok(link) => session(link, ctx, sd2).await,
                        Err(r) => refused(&ctx, peer, r.reason, &r.detail),
                    }
                });
            }
            acc.close(Code::ShuttingDown as u32, "receiver shutting down");
        }
    }
}

/// The receiver's side of one session with no I/O: it checks each message
/// against the protocol and the peer's rights, and says what to do with the
/// mirror. The task around it (`session`) does the mirror's blocking I/O,
/// logs and counts; the link simulation (`tests/link_sim.rs`) drives it
/// directly.
pub struct Core {
    /// The peer's site and node, from its certificate.
    site: String,
    node: String,
    /// Sites this peer may forward for (`relays`).
    relays: Vec<String>,
    hello: bool,
    /// The version agreed in WELCOME.
    version: u16,
    /// This receiver's state epoch ([`Mirror::epoch`]).
    epoch: u64,
    ids: HashMap<u32, PathBuf>,
}

/// What to do with a message.
#[derive(Debug)]
pub enum Step {
    /// Send this message; nothing to write.
    Reply(Msg),
    /// Answer with [`have_reply`] of `Mirror::have`.
    Have {
        /// The segment's connection-local id.
        id: u32,
        /// Its path relative to `archive/`, checked as writable by this peer.
        rel: PathBuf,
    },
    /// Answer with [`append_reply`] of `Mirror::append`.
    Append {
        /// The segment's connection-local id.
        id: u32,
        /// Its path relative to `archive/`.
        rel: PathBuf,
        /// Where the frames go.
        offset: u64,
        /// Whole frames, as the uplink sent them.
        frames: Bytes,
    },
    /// Answer with [`seal_reply`] of `Mirror::seal`.
    Seal {
        /// The segment's connection-local id.
        id: u32,
        /// Its path relative to `archive/`.
        rel: PathBuf,
        /// The length the origin sealed at.
        len: u64,
        /// The origin's SHA-256 of the whole segment.
        sha256: [u8; 32],
    },
    /// Answer with [`gone_reply`] of `Mirror::note_gone`.
    Gone {
        /// The id to answer with.
        id: u32,
        /// The deleted segment's path relative to `archive/`.
        rel: PathBuf,
        /// The deleted segment's seal record, to keep.
        tombstone: Tombstone,
    },
    /// Send REFUSE and close.
    Refuse(Code, String),
}

impl Core {
    /// A session with the peer `site`/`node` (from its certificate), which may forward for itself only, or for other
    /// sites if its site is in `relays`.
    pub fn new(site: &str, node: &str, relays: &[String], epoch: u64) -> Core {
        Core {
            site: site.to_owned(),
            node: node.to_owned(),
            relays: relays.to_vec(),
            hello: false,
            version: 0,
            epoch,
            ids: HashMap::new(),
        }
    }

    /// `path` as a segment path this peer may write, or the refusal.
    fn writable(&self, path: &str) -> Result<PathBuf, Step> {
        let Some(name) = mirror::parse_path(path) else {
            return Err(Step::Refuse(Code::InvalidPath, format!("{path:?} is not a segment path")));
        };
        // Its own site: only its own node's segments (a compromised relay must
        // not write in a sibling's name). Another site: only as a relay.
        let allowed = if name.site == self.site { name.node == self.node } else { self.relays.contains(&self.site) };
        if !allowed {
            let why = if name.site == self.site {
                "a node writes only its own segments"
            } else {
                "only a peer whose site is listed in the receiver's relays forwards other sites' segments"
            };
            return Err(Step::Refuse(
                Code::NotAuthorized,
                format!(
                    "ferry://{}/{} may not write {path:?} (site {:?}, node {:?}): {why}",
                    self.site, self.node, name.site, name.node
                ),
            ));
        }
        Ok(PathBuf::from(path))
    }

    /// What to do with the uplink's next message: checks order (HELLO first), ids and what this peer may write.
    pub fn handle(&mut self, msg: Msg) -> Step {
        match msg {
            Msg::Hello { version, node: claimed } => {
                if self.hello {
                    return Step::Refuse(Code::ProtocolViolation, "second HELLO".into());
                }
                if version < MIN_VERSION {
                    return Step::Refuse(
                        Code::VersionUnsupported,
                        format!("peer speaks version {version}, this receiver speaks {MIN_VERSION} to {VERSION}"),
                    );
                }
                if claimed != self.node {
                    warn!(site = %self.site, cert_node = %self.node, hello_node = %claimed, "HELLO names another node than the certificate; the certificate wins");
                }
                self.hello = true;
                self.version = version.min(VERSION);
                Step::Reply(Msg::Welcome { version: self.version, epoch: self.epoch })
            }
            _ if !self.hello => Step::Refuse(Code::BadHello, "expected HELLO first".into()),
            Msg::Open { id, path } => match self.writable(&path) {
                Ok(rel) => {
                    self.ids.insert(id, rel.clone());
                    Step::Have { id, rel }
                }
                Err(refuse) => refuse,
            },
            Msg::Gone { .. } if self.version < 2 => {
                Step::Refuse(Code::ProtocolViolation, format!("GONE in a version {} session", self.version))
            }
            Msg::Gone { id, path, tombstone } => match self.writable(&path) {
                Ok(rel) => Step::Gone { id, rel, tombstone },
                Err(refuse) => refuse,
            },
            Msg::Append { id, offset, frames } => match self.ids.get(&id) {
                Some(rel) => Step::Append { id, rel: rel.clone(), offset, frames },
                None => Step::Refuse(Code::ProtocolViolation, format!("APPEND for unknown id {id}")),
            },
            Msg::Seal { id, len, sha256 } => match self.ids.get(&id) {
                Some(rel) => Step::Seal { id, rel: rel.clone(), len, sha256 },
                None => Step::Refuse(Code::ProtocolViolation, format!("SEAL for unknown id {id}")),
            },
            Msg::Ping { nonce } => Step::Reply(Msg::Pong { nonce }),
            other => Step::Refuse(
                Code::ProtocolViolation,
                format!("unexpected message from an uplink: {other:?}").chars().take(200).collect(),
            ),
        }
    }
}

/// HAVE with what the mirror holds, or ERROR with the disk's code.
pub fn have_reply(id: u32, r: io::Result<(u64, bool)>) -> Msg {
    match r {
        Ok((len, sealed)) => Msg::Have { id, len, sealed },
        Err(e) => Msg::Error { id, code: Code::of_io(&e), reason: e.to_string() },
    }
}

/// ACK with the durable length, WRONG_OFFSET with the mirror's length, or ERROR.
pub fn append_reply(id: u32, r: &Result<u64, AppendError>) -> Msg {
    match r {
        Ok(len) => Msg::Ack { id, len: *len },
        Err(AppendError::WrongOffset { expected, .. }) => Msg::WrongOffset { id, expected: *expected },
        Err(e @ AppendError::InvalidFrame { .. }) => Msg::Error { id, code: Code::InvalidFrame, reason: e.to_string() },
        Err(AppendError::Io(e)) => Msg::Error { id, code: Code::of_io(e), reason: e.to_string() },
        Err(e @ AppendError::Full) => Msg::Error { id, code: Code::NoSpace, reason: e.to_string() },
        Err(e @ AppendError::Sealed) => Msg::Error { id, code: Code::Io, reason: e.to_string() },
    }
}

/// SEALED (ok when the mirror matched the origin's length and SHA-256), or ERROR when the disk failed.
pub fn seal_reply(id: u32, r: &Result<(), SealError>) -> Msg {
    match r {
        Ok(()) => Msg::Sealed { id, ok: true },
        Err(SealError::Checksum { .. } | SealError::Length { .. }) => Msg::Sealed { id, ok: false },
        Err(SealError::Io(e)) => Msg::Error { id, code: Code::of_io(e), reason: e.to_string() },
    }
}

/// SEALED ok: the tombstone is kept (or the segment is sealed here anyway).
pub fn gone_reply(id: u32, r: &io::Result<()>) -> Msg {
    match r {
        Ok(()) => Msg::Sealed { id, ok: true },
        Err(e) => Msg::Error { id, code: Code::of_io(e), reason: e.to_string() },
    }
}

/// A session's peer checked against the TLS material a reload just put in
/// force: a revoked certificate ends the session (the handshake would now
/// fail); any other failure (a CA taken out of the bundle) is logged and the
/// session kept, as a TLS session is never re-verified otherwise.
fn still_trusted(
    ctx: &ReceiverCtx,
    certs: &[rustls_pki_types::CertificateDer<'static>],
    identity: &crate::pki::Identity,
    peer: SocketAddr,
) -> Result<(), End> {
    match ctx.tls.current().verify_peer(certs) {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
            let serial = certs.first().and_then(|c| crate::pki::serial_hex(c)).unwrap_or_default();
            Err(End::Refused(
                Code::CertificateRevoked,
                format!("the certificate of {identity} (serial {serial}) is revoked by the CRL now in force"),
            ))
        }
        Err(e) => {
            warn!(listener = %ctx.cfg.name, %peer, %identity, error = %e,
                "after the TLS reload this peer's certificate would not verify; its session stays until it reconnects");
            Ok(())
        }
    }
}

async fn session(mut link: Link, ctx: Arc<ReceiverCtx>, sd: Shutdown) {
    let who = Peer { ctx: &ctx, addr: link.peer, site: link.identity.site.clone(), node: link.identity.node.clone() };
    let m = &ctx.metrics;
    m.link.link_sessions_active.with_label_values(&[&ctx.cfg.name]).inc();
    let mut rbuf = BytesMut::with_capacity(1 << 20);
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut core = Core::new(&who.site, &who.node, &ctx.cfg.relays, ctx.epoch);
    let mut tls_replaced = ctx.tls.subscribe();
    tls_replaced.mark_unchanged();
    let end = loop {
        let msg = match Msg::decode(&mut rbuf) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let read = tokio::select! {
                    _ = sd.token.cancelled() => break End::Stopped,
                    Ok(()) = tls_replaced.changed() => match still_trusted(&ctx, &link.peer_certs, &link.identity, who.addr) {
                        Ok(()) => continue,
                        Err(end) => break end,
                    },
                    r = tokio::time::timeout(ctx.timing.dead_after, link.io.read_buf(&mut rbuf)) => r,
                };
                match read {
                    Err(_) => break End::Lost(Lost::NoAnswer(ctx.timing.dead_after)),
                    Ok(Ok(0)) => break End::Lost(Lost::Closed),
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => break End::Lost(Lost::io(e)),
                }
            }
            Err(e @ (DecodeError::TooLarge(_) | DecodeError::UnknownType(_) | DecodeError::Malformed(_))) => {
                break End::Refused(e.code(), e.to_string());
            }
        };
        let mirror = ctx.mirror.clone();
        let reply = match core.handle(msg) {
            Step::Reply(r) => {
                if matches!(r, Msg::Welcome { .. }) {
                    who.welcomed(&link.peer_certs).await;
                }
                r
            }
            Step::Refuse(code, reason) => break End::Refused(code, reason),
            Step::Have { id, rel } => {
                have_reply(id, tokio::task::spawn_blocking(move || mirror.have(&rel)).await.expect("mirror task"))
            }
            Step::Append { id, rel, offset, frames } => who.append(id, rel, offset, frames).await,
            Step::Seal { id, rel, len, sha256 } => who.seal(id, rel, len, sha256).await,
            Step::Gone { id, rel, tombstone } => who.gone(id, rel, tombstone).await,
        };
        wbuf.clear();
        reply.encode(&mut wbuf);
        let w = async {
            link.io.write_all(&wbuf).await?;
            link.io.flush().await
        };
        if let Err(e) = w.await {
            break End::Lost(Lost::io(e));
        }
    };
    who.end(&mut link, &mut wbuf, end).await;
    m.link.link_sessions_active.with_label_values(&[&ctx.cfg.name]).dec();
}

/// The peer of one session, for its mirror calls, logs and counts.
struct Peer<'a> {
    ctx: &'a ReceiverCtx,
    addr: SocketAddr,
    site: String,
    node: String,
}

impl Peer<'_> {
    /// After WELCOME: note the peer's certificate in `state/peers`.
    async fn welcomed(&self, certs: &[rustls_pki_types::CertificateDer<'static>]) {
        let (ctx, peer, site, node) = (self.ctx, self.addr, &self.site, &self.node);
        info!(listener = %ctx.cfg.name, %peer, %site, %node, "uplink connected");
        if let Some(serial) = certs.first().and_then(|c| crate::pki::serial_hex(c)) {
            let (s, n, mirror) = (site.clone(), node.clone(), ctx.mirror.clone());
            let r = tokio::task::spawn_blocking(move || mirror.saw_peer(&s, &n, &serial)).await;
            if let Ok(Err(e)) = r {
                warn!(listener = %ctx.cfg.name, %site, %node, error = %e, "cannot note this peer in state/peers (ferry audit would not name its data if it is revoked)");
            }
        }
    }

    /// APPEND: write through the mirror, count and log, and the reply.
    async fn append(&self, id: u32, rel: PathBuf, offset: u64, frames: Bytes) -> Msg {
        let (ctx, peer, site, m) = (self.ctx, self.addr, &self.site, &self.ctx.metrics);
        let n = frames.len() as u64;
        let (r2, mirror) = (rel.clone(), ctx.mirror.clone());
        let r = tokio::task::spawn_blocking(move || mirror.append(&r2, offset, &frames)).await.expect("mirror task");
        match &r {
            Ok(_) => m.link.link_received_bytes.with_label_values(&[&ctx.cfg.name, site]).inc_by(n),
            Err(e @ AppendError::InvalidFrame { .. }) => {
                m.link.link_refused.with_label_values(&[&ctx.cfg.name, "invalid_frame"]).inc();
                warn!(listener = %ctx.cfg.name, %peer, %site, reason = "invalid_frame", path = %rel.display(), error = %e, "link refused invalid frames; nothing written");
            }
            Err(AppendError::Io(e)) => {
                if ctx.warn_limit.may_warn() {
                    warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(), code = Code::of_io(e).as_str(), error = %e,
                        "mirror append failed: nothing of it kept; the uplink will offer it again");
                }
            }
            Err(AppendError::WrongOffset { .. }) => {}
            Err(e @ AppendError::Full) => {
                if ctx.warn_limit.may_warn() {
                    warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(), code = "no_space", error = %e,
                        "mirror append refused: the origin keeps it and offers it again");
                }
            }
            Err(e) => {
                warn!(listener = %ctx.cfg.name, %peer, path = %rel.display(), error = %e, "mirror append refused")
            }
        }
        append_reply(id, &r)
    }

    /// SEAL: check and seal through the mirror, count and log, and the reply.
    async fn seal(&self, id: u32, rel: PathBuf, len: u64, sha256: [u8; 32]) -> Msg {
        let (ctx, peer, site, m) = (self.ctx, self.addr, &self.site, &self.ctx.metrics);
        let (r2, mirror) = (rel.clone(), ctx.mirror.clone());
        let r = tokio::task::spawn_blocking(move || mirror.seal(&r2, len, &sha256)).await.expect("mirror task");
        match &r {
            Ok(()) => {}
            Err(e @ (SealError::Checksum { .. } | SealError::Length { .. })) => {
                m.link.link_checksum_mismatches.with_label_values(&["receiver"]).inc();
                warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(), error = %e, "seal refused: mirror differs from origin");
            }
            Err(SealError::Io(e)) => {
                let trouble = crate::store::fs::Trouble::of(e);
                m.link.mirror_errors.with_label_values(&[trouble.as_str()]).inc();
                warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(), error = %e, "mirror seal failed; the uplink will seal again");
            }
        }
        seal_reply(id, &r)
    }

    /// GONE: keep the tombstone, log, and the reply.
    async fn gone(&self, id: u32, rel: PathBuf, tombstone: Tombstone) -> Msg {
        let (ctx, peer, site) = (self.ctx, self.addr, &self.site);
        let (r2, mirror, seal) = (rel.clone(), ctx.mirror.clone(), tombstone.to_seal());
        let r = tokio::task::spawn_blocking(move || mirror.note_gone(&r2, &seal)).await.expect("mirror task");
        match &r {
            Ok(()) => warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(),
                first_seq = tombstone.first_seq, next_seq = tombstone.next_seq,
                "the origin deleted this segment before delivering it (on_full = drop_oldest); tombstone kept"),
            Err(e) => warn!(listener = %ctx.cfg.name, %peer, %site, path = %rel.display(), error = %e,
                "cannot keep the tombstone of a segment deleted at the origin; the uplink will tell again"),
        }
        gone_reply(id, &r)
    }

    /// How the session ended: a REFUSE sent and the link closed with its
    /// code, or the loss logged.
    async fn end(&self, link: &mut Link, wbuf: &mut BytesMut, end: End) {
        let (ctx, peer, site, node) = (self.ctx, self.addr, &self.site, &self.node);
        match end {
            End::Refused(code, reason) => {
                if code == Code::NotAuthorized && !ctx.may_log_unauthorized(site, node) {
                    ctx.metrics.link.link_refused.with_label_values(&[&ctx.cfg.name, code.as_str()]).inc();
                } else {
                    refused(ctx, peer, code.as_str(), &format!("site={site} node={node}: {reason}"));
                }
                wbuf.clear();
                Msg::Refuse { code, reason }.encode(wbuf);
                let _ = link.io.write_all(wbuf).await;
                let _ = link.io.flush().await;
                link.close(code as u32, code.as_str()).await;
            }
            End::Lost(Lost::Closed) => info!(listener = %ctx.cfg.name, %peer, %site, %node, "uplink disconnected"),
            End::Lost(Lost::NoAnswer(after)) => {
                warn!(listener = %ctx.cfg.name, %peer, %site, %node, error = %format!("no traffic for {after:?}"), "uplink connection lost")
            }
            End::Lost(e) => warn!(listener = %ctx.cfg.name, %peer, %site, %node, error = %e, "uplink connection lost"),
            End::Stopped | End::Drained => link.close(Code::ShuttingDown as u32, "receiver shutting down").await,
        }
    }
}
