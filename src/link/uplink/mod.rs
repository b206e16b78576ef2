//! An uplink: forwards this node's archive (its own segments and any mirror
//! segments it holds, for regional hops) to a receiver.
//!
//! On every (re)connect it OPENs each undelivered segment, learns from the
//! receiver's HAVE how many bytes it holds, and APPENDs whole frames from
//! there, keeping up to `window` bytes unacknowledged. Frames are read from
//! the files as they are: no recompression, no in-memory queue. A locally
//! sealed segment whose bytes are all acknowledged is SEALed with its length
//! and SHA-256; once the receiver confirms, it is delivered, recorded, and
//! released to retention. When behind, `live_share` of the bytes go to the
//! newest open segment of each stream and the rest drain the backlog, oldest
//! first.

pub mod backoff;
pub mod bucket;
pub mod scan;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::proto::{Code, Msg, MAX_APPEND, MIN_VERSION, VERSION};
use super::transport::{quic, tls, Io, Link, Timing, WireCounter};
use crate::config::{LinkTransport, UplinkConfig};
use crate::metrics::Metrics;
use crate::pki::Live;
use crate::store::changes::{Changes, Subscriber};
use crate::store::clock::Clock;
use crate::store::follow::{self, Behind, StreamKey};
use crate::store::fs::Fs;
use crate::store::segment::{list_tombstones, SealRecord};
use backoff::Backoff;
use bucket::TokenBucket;
use scan::{Delivered, Local};
use session::{End, Event, Params, Session};

/// Everything an uplink needs; `run` drives it until cancelled.
pub struct Uplink {
    /// The `[[uplink]]` section.
    pub cfg: UplinkConfig,
    /// This node's name, sent in HELLO.
    pub node: String,
    /// This node's site: the streams it may ask the store to rotate.
    pub site: String,
    /// `data_dir/archive`: this node's segments to ship.
    pub archive_dir: PathBuf,
    /// `data_dir/state`: seals, tombstones and `uplinks/<name>.delivered`.
    pub state_dir: PathBuf,
    /// The TLS material in force (replaced on reload).
    pub tls: Arc<Live>,
    /// `max_rate`, `burst`, `live_share`, changed in place on reload.
    pub tune: tokio::sync::watch::Receiver<Tuning>,
    /// `ferry_uplink_*` are counted here.
    pub metrics: Metrics,
    /// The time for lag and backoff (a test clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Segments sealed and verified at the receiver (retention may delete them).
    pub delivered: Arc<Delivered>,
    /// For state files (the delivered list, re-derived seals).
    pub fs: Fs,
    /// Wakes the uplink when the archive grows or changes.
    pub changes: Arc<Changes>,
}

/// What a reload changes in a running uplink without ending its session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Cap on bytes per second put on the wire; `None`: no cap.
    pub max_rate: Option<f64>,
    /// Bytes that may go at once above the cap.
    pub burst: u64,
    /// Share of the bandwidth given to the newest data while a backlog drains.
    pub live_share: f64,
}

impl Tuning {
    /// An uplink's tuning as configured.
    pub fn of(cfg: &UplinkConfig) -> Tuning {
        Tuning { max_rate: cfg.max_rate, burst: cfg.burst, live_share: cfg.live_share }
    }

    /// Largest APPEND: under a cap, about a burst, so one write does not
    /// overrun the bucket by much.
    fn chunk_max(&self) -> usize {
        match self.max_rate {
            Some(_) => (self.burst as usize).clamp(16 << 10, MAX_APPEND),
            None => MAX_APPEND,
        }
    }
}

/// What outlives a session: the store's news, the reload's tuning, and
/// when each stream was last rotated (a flapping link must not cut the
/// stream into small segments).
struct Across {
    changes: Subscriber,
    tune: tokio::sync::watch::Receiver<Tuning>,
    rotated: HashMap<String, Instant>,
}

#[derive(Clone)]
enum Dialer {
    Tls(tls::Dialer),
    Quic(quic::Dialer),
}

impl Uplink {
    fn timing(&self) -> Timing {
        Timing {
            keepalive: self.cfg.keepalive,
            dead_after: self.cfg.dead_after,
            connect_timeout: self.cfg.connect_timeout,
        }
    }

    /// Connect, ship, reconnect with jittered exponential backoff over the
    /// configured addresses, until `stop`. Once `drain` is cancelled the
    /// uplink stops as soon as nothing deliverable is left (shutdown grace).
    pub async fn run(self, stop: CancellationToken, drain: CancellationToken) {
        let m = &self.metrics;
        let name = self.cfg.name.clone();
        m.link.uplink_connected.with_label_values(&[&name]).set(0);
        let mut tune = self.tune.clone();
        m.link.uplink_max_rate.with_label_values(&[&name]).set(tune.borrow_and_update().max_rate.unwrap_or(0.0) as i64);
        let timing = self.timing();
        let dialer = match self.cfg.transport {
            LinkTransport::Tcp => tls::Dialer::new(&self.tls).map(Dialer::Tls).map_err(io::Error::other),
            LinkTransport::Quic => quic::Dialer::new(&self.tls, &timing, false).map(Dialer::Quic),
        };
        let dialer = match dialer {
            Ok(d) => d,
            Err(e) => {
                error!(uplink = %name, error = %e, "cannot set up TLS for the uplink; it will not run");
                return;
            }
        };
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut across = Across { changes: self.changes.subscribe(), tune, rotated: HashMap::new() };
        // Lowered once when a receiver of an older version refuses this one.
        let mut offer = VERSION;
        let mut attempt = 0usize;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let addr_str = &self.cfg.addresses[attempt % self.cfg.addresses.len()];
            let connected = self.dial(&dialer, addr_str, &timing).await;
            let mut refused = false;
            match connected {
                Ok(link) => {
                    m.link.uplink_connected.with_label_values(&[&name]).set(1);
                    info!(uplink = %name, addr = %addr_str, receiver_site = %link.identity.site, receiver_node = %link.identity.node, "uplink connected");
                    let started = Instant::now();
                    let (end, progressed) = self.session(link, offer, &mut across, &stop, &drain).await;
                    m.link.uplink_connected.with_label_values(&[&name]).set(0);
                    match &end {
                        End::Stopped => return,
                        End::Refused(Code::VersionUnsupported, reason) if offer > MIN_VERSION => {
                            offer -= 1;
                            warn!(uplink = %name, addr = %addr_str, %reason, version = offer,
                                "receiver speaks an older protocol: offering the version below (deletions at this node are not told to it)");
                        }
                        End::Refused(code, reason) => {
                            m.link.uplink_errors.with_label_values(&[&name, code.as_str()]).inc();
                            refused = *code != Code::ShuttingDown;
                            error!(uplink = %name, addr = %addr_str, code = code.as_str(), %reason, "receiver refused the link")
                        }
                        End::Lost(session::Lost::Tls { reason, by_peer, detail }) => {
                            m.link.uplink_errors.with_label_values(&[name.as_str(), reason]).inc();
                            refused = true;
                            tls_refused(&name, addr_str, reason, *by_peer, detail);
                        }
                        End::Lost(e) => warn!(uplink = %name, addr = %addr_str, error = %e, "link lost"),
                        End::Drained => {
                            info!(uplink = %name, "everything deliverable delivered; uplink stopped");
                            return;
                        }
                    }
                    if drain.is_cancelled() {
                        return;
                    }
                    m.link.uplink_reconnects.with_label_values(&[&name]).inc();
                    if progressed || started.elapsed() > self.cfg.backoff_max.max(Duration::from_secs(10)) {
                        backoff.reset();
                    } else {
                        attempt += 1;
                    }
                }
                Err(_) if drain.is_cancelled() => return,
                Err(e) if crate::pki::is_name_mismatch(&e) => {
                    m.link.uplink_errors.with_label_values(&[&name, "certificate_name"]).inc();
                    let server_name = self.cfg.server_name.as_deref().unwrap_or("the host of the address");
                    warn!(uplink = %name, addr = %addr_str, error = %e, %server_name,
                        "cannot connect: the receiver's certificate does not name the address dialled; issue it with `ferry certs issue --dns <name>` (or `--ip <address>`) for that address, or set the uplink's server_name to a name it holds");
                    attempt += 1;
                }
                Err(e) => match crate::pki::tls_failure(&e) {
                    Some(reason) => {
                        m.link.uplink_errors.with_label_values(&[name.as_str(), reason]).inc();
                        tls_refused(&name, addr_str, reason, crate::pki::refused_by_peer(&e), &e.to_string());
                        attempt += 1;
                    }
                    None => {
                        m.link.uplink_errors.with_label_values(&[&name, "connect"]).inc();
                        warn!(uplink = %name, addr = %addr_str, error = %e, "cannot connect");
                        attempt += 1;
                    }
                },
            }
            let sleep = if refused { backoff.next_refused(&mut rand::rng()) } else { backoff.next(&mut rand::rng()) };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Dial `addr_str`. A receiver that is down drops the first packets and
    /// the transport retries them ever more slowly (TCP SYN and QUIC Initial
    /// both back off 1, 2, 4 s…), so one attempt could notice the receiver's
    /// return seconds late. While an attempt is unanswered, another starts
    /// every [`DIAL_RACE`] (at most [`DIAL_RACES`] at once); the first to
    /// connect wins. The return is noticed within about `DIAL_RACE`, and a
    /// slow handshake over a long path still completes.
    async fn dial(&self, dialer: &Dialer, addr_str: &str, timing: &Timing) -> io::Result<Link> {
        let addr: SocketAddr = tokio::net::lookup_host(addr_str)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr_str} resolves to nothing")))?;
        let host =
            addr_str.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(addr_str);
        let server_name = self.cfg.server_name.as_deref().unwrap_or(host).to_owned();
        let started = Instant::now();
        let mut attempts = tokio::task::JoinSet::new();
        let mut last_err = None;
        loop {
            if attempts.len() < DIAL_RACES && started.elapsed() < timing.connect_timeout {
                let (d, name, t) = (dialer.clone(), server_name.clone(), *timing);
                attempts.spawn(async move {
                    match &d {
                        Dialer::Tls(x) => x.connect(addr, &name, &t).await,
                        Dialer::Quic(x) => x.connect(addr, &name, &t).await,
                    }
                });
            }
            tokio::select! {
                r = attempts.join_next(), if !attempts.is_empty() => match r {
                    Some(Ok(Ok(link))) => return Ok(link),
                    Some(Ok(Err(e))) if e.kind() == io::ErrorKind::TimedOut => last_err = Some(e),
                    // Refused, reset, a certificate problem: no point waiting for the others.
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => last_err = Some(io::Error::other(e)),
                    None => {}
                },
                _ = tokio::time::sleep(DIAL_RACE) => {}
            }
            if attempts.is_empty() && started.elapsed() >= timing.connect_timeout {
                return Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
            }
        }
    }

    fn params(&self, version: u16, t: &Tuning) -> Params {
        Params {
            name: self.cfg.name.clone(),
            node: self.node.clone(),
            window: self.cfg.window,
            live_share: t.live_share,
            chunk_max: t.chunk_max(),
            keepalive: self.cfg.keepalive,
            dead_after: self.cfg.dead_after,
            connect_timeout: self.cfg.connect_timeout,
            site: self.site.clone(),
            rotate_after: ROTATE_AFTER.max(t.burst),
            version,
        }
    }

    /// One connected session: moves bytes and time for the [`Session`]
    /// state machine, reads files for it, and wakes when the store says
    /// something changed. Returns how it ended and whether any byte was
    /// acknowledged.
    async fn session(
        &self,
        link: Link,
        version: u16,
        across: &mut Across,
        stop: &CancellationToken,
        drain: &CancellationToken,
    ) -> (End, bool) {
        let wire = link.wire.clone();
        let quic = link.quic.clone();
        let (receiver_id, receiver_certs) = (link.identity.clone(), link.peer_certs.clone());
        let mut tls_replaced = self.tls.subscribe();
        tls_replaced.mark_unchanged();
        let (rd, mut wr) = tokio::io::split(link.io);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(rd, tx));
        let Across { changes, tune, rotated } = across;
        let mut tuning = *tune.borrow_and_update();
        let mut sess = Session::new(self.params(version, &tuning), self.metrics.clone(), Instant::now());
        let end_session = |end: End, sess: &Session| {
            reader.abort();
            if let Some(c) = &quic {
                c.close(quinn::VarInt::from_u32(0), b"uplink closing");
            }
            (end, sess.progressed())
        };
        let mut pacer = Pacer::new(&tuning, wire.sent());
        let mut progress = Progress::new(&wire);
        let mut report = Report { next: Instant::now(), wire_reported: wire.sent(), seen_streams: HashSet::new() };
        changes.force_relist();
        let mut epoch_checked = false;
        loop {
            // A reload's tuning (woken by `tune.changed()` below, which marks it seen).
            self.retune(tune, &mut tuning, &mut sess);
            if !epoch_checked && sess.welcomed() {
                epoch_checked = true;
                self.check_epoch(&sess, changes);
            }
            self.take_events(&mut sess, rotated);
            if drain.is_cancelled() && sess.drained() {
                return end_session(End::Drained, &sess);
            }
            // 0. What the receiver said and what the store told, without waiting:
            // a long paced write must not hold back acknowledgements or a new segment.
            if let Err(e) = take_messages(&mut rx, &mut sess) {
                return end_session(e, &sess);
            }
            if changes.has_changed() {
                self.look(changes, &mut sess).await;
            }
            let now = Instant::now();
            if progress.moved(&wire) {
                sess.on_transport_progress(now);
            }
            if let Err(e) = sess.handle_timeout(now) {
                return end_session(e, &sess);
            }
            // 1. Whatever the session has to say.
            if let Some(buf) = sess.poll_transmit(now) {
                let w = tokio::select! {
                    _ = stop.cancelled() => return end_session(End::Stopped, &sess),
                    r = write_paced(&mut wr, &buf, &mut pacer, tune, &wire, &mut progress, self.cfg.dead_after.max(Duration::from_secs(5))) => r,
                };
                match w {
                    Ok(()) => sess.on_written(Instant::now()),
                    Err(WriteEnd::Io(e)) => return end_session(End::Lost(session::Lost::io(e)), &sess),
                    Err(WriteEnd::Blocked) => {
                        return end_session(End::Lost(session::Lost::WriteBlocked(self.cfg.dead_after)), &sess)
                    }
                }
                continue;
            }
            // 2. The next chunk of frames, if the window allows.
            if let Some(r) = sess.next_read(now) {
                let path = self.archive_dir.join(&r.rel);
                let (from, max) = (r.from, r.max);
                let chunk = tokio::task::spawn_blocking(move || scan::read_chunk(&path, from, max).map(|(b, _)| b))
                    .await
                    .expect("read task");
                sess.read_done(&r.rel, r.from, chunk);
                continue;
            }
            // 3. Lag and wire bytes, when they moved or while there is lag (for
            // its age), at most every REPORT_EVERY; nothing while idle.
            let report_due = sess.lag_dirty() || sess.lagging();
            if report_due && now >= report.next {
                self.report(&mut sess, &mut report, &wire, now).await;
            }
            // 4. Wait for the receiver, the store, or the session's next deadline.
            let mut until = sess.poll_timeout(now);
            if report_due {
                until = until.min(report.next.max(now + Duration::from_millis(1)));
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return end_session(End::Stopped, &sess),
                ev = rx.recv() => match ev {
                    Some(Ok(msg)) => if let Err(e) = sess.handle(msg, Instant::now()) {
                        return end_session(e, &sess);
                    },
                    Some(Err(e)) => return end_session(End::Lost(e), &sess),
                    None => return end_session(End::Lost(session::Lost::Closed), &sess),
                },
                _ = changes.changed() => self.look(changes, &mut sess).await,
                // A reload: handled at the top of the loop.
                Ok(()) = tune.changed() => {}
                // New TLS material: a receiver whose certificate a CRL now
                // revokes is not sent another byte.
                Ok(()) = tls_replaced.changed() => {
                    if let Some(end) = self.revoked(&receiver_certs, &receiver_id) {
                        return end_session(end, &sess);
                    }
                }
                _ = tokio::time::sleep_until(until.into()) => {
                    if progress.moved(&wire) {
                        sess.on_transport_progress(Instant::now());
                    }
                    if let Err(e) = sess.handle_timeout(Instant::now()) {
                        return end_session(e, &sess);
                    }
                }
            }
        }
    }

    /// Put a reload's rate settings in force. The cap itself is followed
    /// slice by slice in `write_paced`; the node sets the cap's gauge.
    fn retune(&self, tune: &tokio::sync::watch::Receiver<Tuning>, tuning: &mut Tuning, sess: &mut Session) {
        let t = *tune.borrow();
        if t != *tuning {
            info!(uplink = %self.cfg.name, max_rate = ?t.max_rate, burst = t.burst, live_share = t.live_share, "reload: new rate settings in force");
            sess.retune(t.live_share, t.chunk_max(), ROTATE_AFTER.max(t.burst));
            *tuning = t;
        }
    }

    /// Once per session, after WELCOME: a receiver whose state epoch is new
    /// (its state lost, or another receiver) is offered every segment again.
    fn check_epoch(&self, sess: &Session, changes: &mut Subscriber) {
        if sess.epoch() == 0 {
            return;
        }
        match self.delivered.check_epoch(sess.epoch()) {
            Ok(true) => {
                warn!(uplink = %self.cfg.name, "the receiver's state is new (lost, or another receiver): offering every segment still here again so it can seal them");
                changes.force_relist();
            }
            Ok(false) => {}
            Err(e) => warn!(uplink = %self.cfg.name, error = %e, "cannot record the receiver's state epoch"),
        }
    }

    /// What the session has to tell the uplink: segments delivered,
    /// deletions noted, streams to rotate.
    fn take_events(&self, sess: &mut Session, rotated: &mut HashMap<String, Instant>) {
        let name = self.cfg.name.as_str();
        while let Some(ev) = sess.poll_event() {
            match ev {
                Event::Delivered(l) => self.mark_delivered(&l),
                Event::Noted(rel) => {
                    info!(uplink = name, path = %rel.display(), "receiver noted the deletion of an undelivered segment")
                }
                Event::Rotate { stream } => {
                    let last = rotated.get(&stream);
                    if last.is_none_or(|t| t.elapsed() >= ROTATE_EVERY) {
                        info!(uplink = name, %stream, "behind on the newest segment: asking for a new one so fresh records go first");
                        self.changes.request_rotation(&stream);
                        rotated.insert(stream, Instant::now());
                    }
                }
            }
        }
    }

    /// Lag, blocked segments and wire bytes into the metrics.
    async fn report(&self, sess: &mut Session, r: &mut Report, wire: &WireCounter, now: Instant) {
        let (m, name) = (&self.metrics, self.cfg.name.as_str());
        sess.take_lag_dirty();
        r.next = now + REPORT_EVERY;
        self.report_lag(sess, &mut r.seen_streams).await;
        for code in [Code::NoSpace, Code::ReadOnly, Code::Io] {
            m.link.uplink_blocked_segments.with_label_values(&[name, code.as_str()]).set(sess.blocked(code) as i64);
        }
        let w = wire.sent();
        m.link.uplink_wire_bytes.with_label_values(&[name]).inc_by(w.saturating_sub(r.wire_reported));
        r.wire_reported = w;
    }

    /// After new TLS material: the session's end if the CRL now in force
    /// revokes the receiver's certificate.
    fn revoked(&self, certs: &[rustls_pki_types::CertificateDer<'static>], id: &crate::pki::Identity) -> Option<End> {
        match self.tls.current().verify_peer(certs) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                let detail = format!("the receiver's certificate ({id}) is revoked by the CRL now in force");
                Some(End::Lost(session::Lost::Tls { reason: "certificate_revoked", by_peer: false, detail }))
            }
            _ => None,
        }
    }

    /// What the store told: new lengths, and a new listing when segments came or went.
    async fn look(&self, changes: &mut Subscriber, sess: &mut Session) {
        let u = changes.take();
        if u.relist || sess.grown(&u.lens) {
            match self.list().await {
                Ok((found, gone)) => {
                    sess.archive(found, &u.lens);
                    sess.tombstones(gone);
                }
                Err(e) => warn!(uplink = %self.cfg.name, error = %e, "cannot list the archive"),
            }
        }
    }

    /// Every undelivered segment (a damaged seal is re-derived on the way),
    /// and every tombstone of one deleted undelivered.
    async fn list(&self) -> io::Result<(Vec<Local>, Vec<(PathBuf, SealRecord)>)> {
        let (a, st, d) = (self.archive_dir.clone(), self.state_dir.clone(), self.delivered.clone());
        let (fs, now, sm) = (self.fs.clone(), self.clock.now_ms(), self.metrics.clone());
        let name = self.cfg.name.clone();
        tokio::task::spawn_blocking(move || {
            let found = scan::scan(&fs, &a, &st, &d, now, &sm)?;
            let mut gone = Vec::new();
            for (rel, _, seal) in list_tombstones(&st) {
                match seal {
                    Ok(seal) => gone.push((rel, seal)),
                    Err(e) => warn!(uplink = %name, error = %e, "damaged tombstone; not told to the receiver"),
                }
            }
            Ok((found, gone))
        })
        .await
        .expect("scan task")
    }

    fn mark_delivered(&self, l: &Local) {
        if let Err(e) = self.delivered.add(&l.rel) {
            warn!(uplink = %self.cfg.name, error = %e, "cannot record delivery (will ask the receiver again)");
        }
        self.metrics.link.uplink_segments_delivered.with_label_values(&[&self.cfg.name]).inc();
        info!(uplink = %self.cfg.name, path = %l.rel.display(), "segment delivered: sealed and verified at the receiver");
    }

    /// Lag per (site, stream): bytes not yet acknowledged, and the age of the
    /// oldest unacknowledged record. Streams seen before and now caught up
    /// are reported as 0.
    async fn report_lag(&self, sess: &Session, seen: &mut HashSet<StreamKey>) {
        let behind: Vec<Behind> = sess.pending().map(|(local, acked)| Behind::new(local, acked, 0)).collect();
        seen.extend(behind.iter().map(|b| b.stream.clone()));
        let (archive, streams) = (self.archive_dir.clone(), seen.clone());
        let now = self.clock.now_ms();
        let m = self.metrics.clone();
        let name = self.cfg.name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ((site, stream), lag) in follow::lag_by_stream(&archive, behind, &streams, false) {
                m.link.uplink_lag_bytes.with_label_values(&[&name, &site, &stream]).set(lag.bytes as i64);
                m.link.uplink_lag_seconds.with_label_values(&[&name, &site, &stream]).set(lag.seconds(now));
            }
        })
        .await;
    }
}

/// Unsent bytes in a stream's newest segment beyond which the uplink asks
/// for a new segment (or `burst`, when larger: a paced link sends a burst
/// at once).
const ROTATE_AFTER: u64 = 256 << 10;
/// A stream's segment is rotated for an uplink at most this often: a link
/// that cannot even carry the live traffic does not cut the stream into
/// tiny segments.
const ROTATE_EVERY: Duration = Duration::from_secs(30);

/// While a dial is unanswered, another starts this often ([`Uplink::dial`]).
const DIAL_RACE: Duration = Duration::from_millis(500);
/// Dial attempts in flight at once at most.
const DIAL_RACES: usize = 4;

/// Lag and wire bytes are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// The token bucket of the rate settings in force, if there is a cap.
struct Pacer {
    bucket: Option<TokenBucket>,
    rate: Option<f64>,
    burst: u64,
}

impl Pacer {
    fn new(t: &Tuning, wire: u64) -> Pacer {
        Pacer {
            bucket: t.max_rate.map(|r| TokenBucket::new(r, t.burst, Instant::now(), wire)),
            rate: t.max_rate,
            burst: t.burst,
        }
    }

    /// Take a reload's rate and burst; what was sent stays paid for.
    fn follow(&mut self, t: &Tuning, wire: u64) {
        if (t.max_rate, t.burst) == (self.rate, self.burst) {
            return;
        }
        self.bucket = match (self.bucket.take(), t.max_rate) {
            (Some(mut b), Some(r)) => {
                b.retune(r, t.burst, Instant::now(), wire);
                Some(b)
            }
            (_, r) => r.map(|r| TokenBucket::new(r, t.burst, Instant::now(), wire)),
        };
        (self.rate, self.burst) = (t.max_rate, t.burst);
    }
}

/// Whether the transport delivered bytes since the last look (TCP only).
struct Progress(Option<u64>);

impl Progress {
    fn new(wire: &WireCounter) -> Progress {
        Progress(wire.delivered())
    }

    fn moved(&mut self, wire: &WireCounter) -> bool {
        let now = wire.delivered();
        let moved = matches!((self.0, now), (Some(a), Some(b)) if b > a);
        self.0 = now;
        moved
    }
}

/// Why [`write_paced`] stopped short.
/// When the session's metrics were last reported, and what they said.
struct Report {
    next: Instant,
    wire_reported: u64,
    seen_streams: HashSet<StreamKey>,
}

/// The receiver's messages that arrived, handed to the session without
/// waiting; `Err` when the session ends on one, or the connection did.
fn take_messages(rx: &mut mpsc::UnboundedReceiver<Result<Msg, session::Lost>>, sess: &mut Session) -> Result<(), End> {
    loop {
        match rx.try_recv() {
            Ok(Ok(msg)) => sess.handle(msg, Instant::now())?,
            Ok(Err(e)) => return Err(End::Lost(e)),
            Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(End::Lost(session::Lost::Closed)),
        }
    }
}

enum WriteEnd {
    Io(io::Error),
    /// One slice made no progress for the stall time: the peer or the path is stuck.
    Blocked,
}

/// Largest slice written at once without a cap.
const UNPACED_SLICE: usize = 256 << 10;

/// Write `out` in slices, paced by the token bucket when there is a cap.
/// What ends the session (`Blocked`) is a slice that does not leave within
/// `stall` while the transport delivers nothing either: never the pacing (a
/// chunk holds whole frames, up to a commit batch of megabytes, which at a
/// low cap takes longer than any fixed timeout) nor a thin path that moves,
/// however slowly, behind a send buffer filled at first-hop speed. A
/// reload's new cap applies from the next slice.
async fn write_paced(
    wr: &mut WriteHalf<Box<dyn Io>>,
    out: &[u8],
    pacer: &mut Pacer,
    tune: &tokio::sync::watch::Receiver<Tuning>,
    wire: &WireCounter,
    progress: &mut Progress,
    stall: Duration,
) -> Result<(), WriteEnd> {
    // Its own receiver: waking on a reload must not mark it seen for the
    // session loop, which retunes the rest.
    let mut tune = tune.clone();
    let mut at = 0;
    while at < out.len() {
        let n = loop {
            pacer.follow(&tune.borrow_and_update(), wire.sent());
            let Some(b) = pacer.bucket.as_mut() else { break UNPACED_SLICE.min(out.len() - at) };
            let wait = b.wait_time(Instant::now(), wire.sent());
            if wait.is_zero() {
                let n = b.slice().min(out.len() - at);
                b.debit(n);
                break n;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = tune.changed() => {}
            }
        };
        let slice = &out[at..at + n];
        let write = async {
            wr.write_all(slice).await?;
            wr.flush().await
        };
        tokio::pin!(write);
        loop {
            match tokio::time::timeout(stall, &mut write).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => return Err(WriteEnd::Io(e)),
                Err(_) if progress.moved(wire) => {}
                Err(_) => return Err(WriteEnd::Blocked),
            }
        }
        at += n;
    }
    Ok(())
}

/// Read and decode messages until the stream ends; errors end the stream.
async fn read_loop(mut rd: ReadHalf<Box<dyn Io>>, tx: mpsc::UnboundedSender<Result<Msg, session::Lost>>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        loop {
            match Msg::decode(&mut buf) {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(session::Lost::Garbage(e)));
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(Err(session::Lost::Closed));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(session::Lost::io(e)));
                return;
            }
        }
    }
}

/// A TLS refusal in the log, said as what the operator must do.
fn tls_refused(name: &str, addr: &str, reason: &str, by_peer: bool, detail: &str) {
    if reason == "certificate_revoked" && !by_peer {
        error!(uplink = %name, %addr, reason, error = %detail,
            "the receiver's certificate is revoked by a CRL in [tls] crl: nothing is delivered to it");
    } else if reason == "certificate_revoked" {
        error!(uplink = %name, %addr, reason, error = %detail,
            "the receiver refuses this node's certificate: it is revoked; nothing can be delivered until this node has a new certificate (`ferry certs issue`) and reloads");
    } else {
        warn!(uplink = %name, %addr, reason, error = %detail, "cannot connect: TLS refused");
    }
}
