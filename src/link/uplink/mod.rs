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

pub mod bucket;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::proto::{Code, Msg, MAX_APPEND, VERSION};
use super::transport::{quic, tls, Io, Link, Timing, WireCounter};
use crate::config::{LinkTransport, UplinkConfig};
use crate::metrics::Metrics;
use crate::pki::TlsFiles;
use crate::store::clock::Clock;
use crate::store::fs::Fs;
use bucket::TokenBucket;
use scan::{Delivered, Local};

/// Everything an uplink needs; `run` drives it until cancelled.
pub struct Uplink {
    pub cfg: UplinkConfig,
    pub node: String,
    pub archive_dir: PathBuf,
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub delivered: Arc<Delivered>,
    /// For state files (the delivered list, re-derived seals).
    pub fs: Fs,
}

enum Dialer {
    Tls(tls::Dialer),
    Quic(quic::Dialer),
}

/// How a session ended.
#[derive(Debug)]
enum End {
    Cancelled,
    /// Shutdown grace: nothing deliverable was left.
    Drained,
    Refused(Code, String),
    Lost(String),
}

/// One segment's state within a session.
struct Seg {
    local: Local,
    id: u32,
    /// The receiver's answer to OPEN has arrived.
    known: bool,
    acked: u64,
    sent: u64,
    seal_sent: bool,
    /// Newest open segment of its stream: gets the live share.
    live: bool,
    /// Refused by the receiver this session (logged, counted); retried next session.
    failed: bool,
    /// File length at which no whole frame was left to send (wait for growth).
    stalled_at: Option<u64>,
    /// The receiver refused it for a reason it may lift (its disk is full,
    /// read-only, failing): offered again from the acknowledged length at
    /// this time, with the backoff doubling.
    retry: Option<(Instant, Duration, Code)>,
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
        m.uplink_connected.with_label_values(&[&name]).set(0);
        m.uplink_max_rate.with_label_values(&[&name]).set(self.cfg.max_rate.unwrap_or(0.0) as i64);
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
        let mut backoff = self.cfg.backoff_min;
        let mut attempt = 0usize;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let addr_str = &self.cfg.addresses[attempt % self.cfg.addresses.len()];
            let connected = self.dial(&dialer, addr_str, &timing).await;
            match connected {
                Ok(link) => {
                    m.uplink_connected.with_label_values(&[&name]).set(1);
                    info!(uplink = %name, addr = %addr_str, receiver_site = %link.identity.site, receiver_node = %link.identity.node, "uplink connected");
                    let started = Instant::now();
                    let (end, progressed) = self.session(link, &stop, &drain).await;
                    m.uplink_connected.with_label_values(&[&name]).set(0);
                    match &end {
                        End::Cancelled => return,
                        End::Refused(code, reason) => {
                            m.uplink_errors.with_label_values(&[&name, code.as_str()]).inc();
                            error!(uplink = %name, addr = %addr_str, code = code.as_str(), %reason, "receiver refused the link")
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
                    m.uplink_reconnects.with_label_values(&[&name]).inc();
                    if progressed || started.elapsed() > self.cfg.backoff_max {
                        backoff = self.cfg.backoff_min;
                    } else {
                        attempt += 1;
                    }
                }
                Err(_) if drain.is_cancelled() => return,
                Err(e) => {
                    m.uplink_errors.with_label_values(&[&name, "connect"]).inc();
                    warn!(uplink = %name, addr = %addr_str, error = %e, retry_in = ?backoff, "cannot connect");
                    attempt += 1;
                }
            }
            // Full jitter between half and all of the backoff.
            let sleep = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    async fn dial(&self, dialer: &Dialer, addr_str: &str, timing: &Timing) -> io::Result<Link> {
        let addr: SocketAddr = tokio::net::lookup_host(addr_str)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr_str} resolves to nothing")))?;
        let host =
            addr_str.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(addr_str);
        let server_name = self.cfg.server_name.as_deref().unwrap_or(host);
        match dialer {
            Dialer::Tls(d) => d.connect(addr, server_name, timing).await,
            Dialer::Quic(d) => d.connect(addr, server_name, timing).await,
        }
    }

    /// One connected session. Returns how it ended and whether any byte was acknowledged.
    async fn session(&self, link: Link, stop: &CancellationToken, drain: &CancellationToken) -> (End, bool) {
        let name = self.cfg.name.as_str();
        let m = &self.metrics;
        let wire = link.wire.clone();
        let quic = link.quic.clone();
        let (rd, mut wr) = tokio::io::split(link.io);
        let mut out = BytesMut::with_capacity(64 << 10);
        let wire_start = wire.sent();
        // HELLO, then WELCOME or REFUSE.
        Msg::Hello { version: VERSION, node: self.node.clone() }.encode(&mut out);
        if let Err(e) = write(&mut wr, &mut out).await {
            return (End::Lost(e.to_string()), false);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(rd, tx));
        let end_session = |end: End, progressed: bool| {
            reader.abort();
            if let Some(c) = &quic {
                c.close(quinn::VarInt::from_u32(0), b"uplink closing");
            }
            (end, progressed)
        };
        match tokio::time::timeout(self.cfg.connect_timeout, rx.recv()).await {
            Ok(Some(Ok(Msg::Welcome { .. }))) => {}
            Ok(Some(Ok(Msg::Refuse { code, reason }))) => return end_session(End::Refused(code, reason), false),
            Ok(Some(Ok(other))) => return end_session(End::Lost(format!("expected WELCOME, got {other:?}")), false),
            Ok(Some(Err(e))) => return end_session(End::Lost(e), false),
            Ok(None) => return end_session(End::Lost("closed during HELLO".into()), false),
            Err(_) => return end_session(End::Lost("no WELCOME in time".into()), false),
        }

        let mut segs: BTreeMap<PathBuf, Seg> = BTreeMap::new();
        let mut by_id: HashMap<u32, PathBuf> = HashMap::new();
        let mut next_id: u32 = 1;
        let mut bucket = self.cfg.max_rate.map(|r| TokenBucket::new(r, self.cfg.burst, Instant::now(), wire.sent()));
        let chunk_max = match self.cfg.max_rate {
            Some(_) => (self.cfg.burst as usize).clamp(16 << 10, MAX_APPEND),
            None => MAX_APPEND,
        };
        let (mut live_sent, mut backlog_sent) = (0u64, 0u64);
        // Liveness: every request gets exactly one reply, in order. The link is
        // dead when a request has waited longer than dead_after for its reply
        // (time spent pacing a long write out does not count).
        let mut queued: u64 = 0;
        let mut outstanding: u64 = 0;
        let mut waiting_since: Option<Instant> = None;
        let mut last_tx = Instant::now();
        let mut next_scan = Instant::now();
        let mut progressed = false;
        let mut wire_reported = wire_start;
        let mut inbox: VecDeque<Result<Msg, String>> = VecDeque::new();
        let mut seen_streams: HashSet<StreamKey> = HashSet::new();

        loop {
            // 1. Everything the receiver said.
            loop {
                let ev = match inbox.pop_front() {
                    Some(ev) => ev,
                    None => match rx.try_recv() {
                        Ok(ev) => ev,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            return end_session(End::Lost("reader stopped".into()), progressed)
                        }
                    },
                };
                outstanding = outstanding.saturating_sub(1);
                waiting_since = (outstanding > 0).then(Instant::now);
                let msg = match ev {
                    Ok(msg) => msg,
                    Err(e) => return end_session(End::Lost(e), progressed),
                };
                match msg {
                    Msg::Have { id, len, sealed } => {
                        let Some(s) = by_id.get(&id).and_then(|r| segs.get_mut(r)) else { continue };
                        s.known = true;
                        s.acked = len;
                        s.sent = len;
                        if sealed {
                            if s.local.seal.as_ref().is_some_and(|l| l.len == len) {
                                self.mark_delivered(&s.local);
                                let rel = s.local.rel.clone();
                                segs.remove(&rel);
                            } else {
                                s.failed = true;
                                m.link_checksum_mismatches.with_label_values(&["uplink"]).inc();
                                error!(uplink = name, path = %s.local.rel.display(), receiver_len = len,
                                    "receiver has this segment sealed at a length this node does not have");
                            }
                        } else if len > s.local.len {
                            s.failed = true;
                            m.uplink_errors.with_label_values(&[name, "receiver_ahead"]).inc();
                            error!(uplink = name, path = %s.local.rel.display(), receiver_len = len, local_len = s.local.len,
                                "receiver holds more of this segment than this node (local data lost?); not sending it");
                        }
                    }
                    Msg::Ack { id, len } => {
                        let Some(s) = by_id.get(&id).and_then(|r| segs.get_mut(r)) else { continue };
                        if s.retry.take().is_some() {
                            info!(uplink = name, path = %s.local.rel.display(), "receiver takes this segment again");
                        }
                        if len > s.acked {
                            let delta = len - s.acked;
                            s.acked = len;
                            progressed = true;
                            m.uplink_acked_bytes
                                .with_label_values(&[name, &s.local.name.site, &s.local.name.stream])
                                .inc_by(delta);
                        }
                    }
                    Msg::WrongOffset { id, expected } => {
                        let Some(s) = by_id.get(&id).and_then(|r| segs.get_mut(r)) else { continue };
                        if s.retry.is_some() && expected == s.acked {
                            // An APPEND sent before the refusal, after the one refused: expected.
                            continue;
                        }
                        warn!(uplink = name, path = %s.local.rel.display(), sent = s.sent, expected, "receiver asked to resume elsewhere");
                        s.acked = expected;
                        s.sent = expected;
                        s.stalled_at = None;
                    }
                    Msg::Sealed { id, ok } => {
                        let Some(rel) = by_id.get(&id).cloned() else { continue };
                        if ok {
                            if let Some(s) = segs.remove(&rel) {
                                self.mark_delivered(&s.local);
                            }
                        } else if let Some(s) = segs.get_mut(&rel) {
                            s.failed = true;
                            m.link_checksum_mismatches.with_label_values(&["uplink"]).inc();
                            error!(uplink = name, path = %rel.display(), "receiver refused the seal: its copy differs from this segment");
                        }
                    }
                    Msg::Error { id, code, reason } => {
                        m.uplink_errors.with_label_values(&[name, code.as_str()]).inc();
                        if let Some(s) = by_id.get(&id).and_then(|r| segs.get_mut(r)) {
                            if code.is_transient() {
                                // Its disk may recover: keep the backlog, offer the same bytes later.
                                let backoff = s.retry.map_or(RETRY_MIN, |(_, b, _)| (b * 2).min(RETRY_MAX));
                                if s.retry.is_none() {
                                    warn!(uplink = name, path = %s.local.rel.display(), code = code.as_str(), %reason,
                                        "receiver cannot write this segment now; keeping it here and retrying");
                                }
                                s.retry = Some((Instant::now() + backoff, backoff, code));
                                s.sent = s.acked;
                                s.seal_sent = false;
                            } else {
                                s.failed = true;
                                error!(uplink = name, path = %s.local.rel.display(), code = code.as_str(), %reason, "receiver refused a segment");
                            }
                        }
                    }
                    Msg::Refuse { code, reason } => return end_session(End::Refused(code, reason), progressed),
                    Msg::Pong { .. } => {}
                    other => return end_session(End::Lost(format!("unexpected message {other:?}")), progressed),
                }
            }
            if stop.is_cancelled() {
                return end_session(End::Cancelled, progressed);
            }
            if waiting_since.is_some_and(|t| t.elapsed() > self.cfg.dead_after) {
                return end_session(End::Lost(format!("no answer for {:?}", self.cfg.dead_after)), progressed);
            }

            // 2. Rescan the archive: growth, seals, new and deleted segments.
            if Instant::now() >= next_scan {
                next_scan = Instant::now() + Duration::from_millis(200);
                let (a, st, d) = (self.archive_dir.clone(), self.state_dir.clone(), self.delivered.clone());
                let (fs, now, sm) = (self.fs.clone(), self.clock.now_ms(), self.metrics.clone());
                let found = match tokio::task::spawn_blocking(move || scan::scan(&fs, &a, &st, &d, now, &sm))
                    .await
                    .expect("scan task")
                {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(uplink = name, error = %e, "cannot scan the archive");
                        Vec::new()
                    }
                };
                let present: std::collections::HashSet<&PathBuf> = found.iter().map(|l| &l.rel).collect();
                segs.retain(|rel, _| present.contains(rel));
                let mut newest: HashMap<(String, String), PathBuf> = HashMap::new();
                for l in &found {
                    if l.seal.is_none() {
                        newest.insert((l.name.site.clone(), l.name.stream.clone()), l.rel.clone());
                    }
                }
                for l in found {
                    match segs.get_mut(&l.rel) {
                        Some(s) => {
                            if s.stalled_at.is_some_and(|at| at != l.len) {
                                s.stalled_at = None;
                            }
                            s.local = l;
                        }
                        None => {
                            let id = next_id;
                            next_id += 1;
                            Msg::Open { id, path: l.rel.to_string_lossy().into_owned() }.encode(&mut out);
                            queued += 1;
                            by_id.insert(id, l.rel.clone());
                            segs.insert(
                                l.rel.clone(),
                                Seg {
                                    local: l,
                                    id,
                                    known: false,
                                    acked: 0,
                                    sent: 0,
                                    seal_sent: false,
                                    live: false,
                                    failed: false,
                                    stalled_at: None,
                                    retry: None,
                                },
                            );
                        }
                    }
                }
                for (rel, s) in segs.iter_mut() {
                    s.live = newest.get(&(s.local.name.site.clone(), s.local.name.stream.clone())) == Some(rel);
                }
                self.report_lag(&segs, &mut seen_streams).await;
                self.report_blocked(&segs);
                if drain.is_cancelled() && segs.values().all(|s| s.failed) {
                    return end_session(End::Drained, progressed);
                }
                let w = wire.sent();
                m.uplink_wire_bytes.with_label_values(&[name]).inc_by(w.saturating_sub(wire_reported));
                wire_reported = w;
            }

            // 3. Seals that are due.
            for s in segs.values_mut() {
                if let Some(seal) = &s.local.seal {
                    let waiting = s.retry.is_some_and(|(at, _, _)| Instant::now() < at);
                    if s.known && !s.failed && !waiting && !s.seal_sent && s.acked == seal.len && s.sent == seal.len {
                        match seal.sha256_bytes() {
                            Some(sha256) => {
                                Msg::Seal { id: s.id, len: seal.len, sha256 }.encode(&mut out);
                                queued += 1;
                                s.seal_sent = true;
                            }
                            None => {
                                s.failed = true;
                                error!(uplink = name, path = %s.local.rel.display(), "seal record holds no valid SHA-256; not sealing at the receiver");
                            }
                        }
                    }
                }
            }

            // 4. The next chunk of frames, if the window and the bucket allow.
            let inflight: u64 = segs.values().map(|s| s.sent - s.acked.min(s.sent)).sum();
            let mut sent_chunk = false;
            if inflight < self.cfg.window {
                if let Some(rel) = pick(&segs, live_sent, backlog_sent, self.cfg.live_share) {
                    let s = segs.get(&rel).expect("picked from segs");
                    let (path, from, live) = (self.archive_dir.join(&rel), s.sent, s.live);
                    let max = chunk_max.min((self.cfg.window - inflight) as usize).max(16 << 10);
                    match tokio::task::spawn_blocking(move || scan::read_chunk(&path, from, max))
                        .await
                        .expect("read task")
                    {
                        Ok((bytes, _)) if bytes.is_empty() => {
                            let s = segs.get_mut(&rel).expect("present");
                            s.stalled_at = Some(s.local.len);
                        }
                        Ok((bytes, _)) => {
                            let s = segs.get_mut(&rel).expect("present");
                            let n = bytes.len() as u64;
                            Msg::Append { id: s.id, offset: from, frames: Bytes::from(bytes) }.encode(&mut out);
                            queued += 1;
                            s.sent += n;
                            if live {
                                live_sent += n;
                            } else {
                                backlog_sent += n;
                            }
                            sent_chunk = true;
                        }
                        Err(e) => {
                            warn!(uplink = name, path = %rel.display(), error = %e, "cannot read segment");
                            segs.get_mut(&rel).expect("present").failed = true;
                        }
                    }
                }
            }

            // 5. Keepalive.
            if out.is_empty() && last_tx.elapsed() >= self.cfg.keepalive {
                Msg::Ping { nonce: 0 }.encode(&mut out);
                queued += 1;
            }
            if !out.is_empty() {
                let w = tokio::select! {
                    _ = stop.cancelled() => return end_session(End::Cancelled, progressed),
                    r = tokio::time::timeout(self.cfg.dead_after.max(Duration::from_secs(5)), write_paced(&mut wr, &mut out, bucket.as_mut(), &wire)) => r,
                };
                match w {
                    Ok(Ok(())) => {
                        last_tx = Instant::now();
                        outstanding += std::mem::take(&mut queued);
                        if outstanding > 0 && waiting_since.is_none() {
                            waiting_since = Some(last_tx);
                        }
                    }
                    Ok(Err(e)) => return end_session(End::Lost(e.to_string()), progressed),
                    Err(_) => {
                        return end_session(
                            End::Lost(format!("write blocked for {:?}", self.cfg.dead_after)),
                            progressed,
                        )
                    }
                }
            }
            if sent_chunk {
                continue;
            }
            // 6. Nothing to do now: wait for the receiver, the next scan or a retry.
            let mut until = next_scan.min(last_tx + self.cfg.keepalive);
            if let Some(at) = segs.values().filter_map(|s| s.retry.map(|(at, _, _)| at)).min() {
                until = until.min(at.max(Instant::now() + Duration::from_millis(10)));
            }
            tokio::select! {
                _ = stop.cancelled() => return end_session(End::Cancelled, progressed),
                ev = rx.recv() => match ev {
                    // Handled, in order, at the top of the loop.
                    Some(ev) => inbox.push_back(ev),
                    None => return end_session(End::Lost("connection closed".into()), progressed),
                },
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// Segments held back because the receiver cannot write them, per
    /// reason: what `ferry status` shows beside the lag.
    fn report_blocked(&self, segs: &BTreeMap<PathBuf, Seg>) {
        for code in [Code::NoSpace, Code::ReadOnly, Code::Io] {
            let n = segs.values().filter(|s| s.retry.is_some_and(|(_, _, c)| c == code)).count();
            self.metrics.uplink_blocked_segments.with_label_values(&[&self.cfg.name, code.as_str()]).set(n as i64);
        }
    }

    fn mark_delivered(&self, l: &Local) {
        if let Err(e) = self.delivered.add(&l.rel) {
            warn!(uplink = %self.cfg.name, error = %e, "cannot record delivery (will ask the receiver again)");
        }
        self.metrics.uplink_segments_delivered.with_label_values(&[&self.cfg.name]).inc();
        info!(uplink = %self.cfg.name, path = %l.rel.display(), "segment delivered: sealed and verified at the receiver");
    }

    /// Lag per (site, stream): bytes not yet acknowledged, and the age of the
    /// oldest unacknowledged record. Streams seen before and now caught up
    /// are reported as 0.
    async fn report_lag(&self, segs: &BTreeMap<PathBuf, Seg>, seen: &mut HashSet<StreamKey>) {
        let mut pending: HashMap<StreamKey, StreamLag> = HashMap::new();
        for key in seen.iter() {
            pending.insert(key.clone(), StreamLag::default());
        }
        for s in segs.values() {
            seen.insert((s.local.name.site.clone(), s.local.name.stream.clone()));
            let e = pending.entry((s.local.name.site.clone(), s.local.name.stream.clone())).or_default();
            let lag = s.local.len.saturating_sub(s.acked);
            e.0 += lag;
            if lag > 0 {
                e.1.push((self.archive_dir.join(&s.local.rel), s.acked));
            }
        }
        let now = self.clock.now_ms();
        let m = self.metrics.clone();
        let name = self.cfg.name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ((site, stream), (bytes, at)) in pending {
                let oldest = at.iter().filter_map(|(p, off)| scan::first_ms_at(p, *off)).min();
                m.uplink_lag_bytes.with_label_values(&[&name, &site, &stream]).set(bytes as i64);
                let secs = oldest.map(|ms| (now - ms).max(0) as f64 / 1000.0).unwrap_or(0.0);
                m.uplink_lag_seconds.with_label_values(&[&name, &site, &stream]).set(secs);
            }
        })
        .await;
    }
}

/// (site, stream)
type StreamKey = (String, String);
/// Unacknowledged bytes, and (file, acknowledged offset) of each segment behind.
type StreamLag = (u64, Vec<(PathBuf, u64)>);

/// First wait before offering a segment again that the receiver could not write.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest such wait: a receiver whose disk recovered gets data within this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The segment to send from next: live-first by share, then the oldest backlog.
fn pick(segs: &BTreeMap<PathBuf, Seg>, live_sent: u64, backlog_sent: u64, live_share: f64) -> Option<PathBuf> {
    let now = Instant::now();
    let ready = |s: &&Seg| {
        s.known
            && !s.failed
            && s.sent < s.local.len
            && s.stalled_at.is_none()
            && s.retry.is_none_or(|(at, _, _)| now >= at)
    };
    let live = segs.values().filter(ready).find(|s| s.live);
    let backlog = segs.values().filter(ready).find(|s| !s.live);
    let total = (live_sent + backlog_sent).max(1) as f64;
    match (live, backlog) {
        (Some(l), Some(b)) => {
            Some(if (live_sent as f64) / total <= live_share { &l.local.rel } else { &b.local.rel }.clone())
        }
        (Some(l), None) => Some(l.local.rel.clone()),
        (None, Some(b)) => Some(b.local.rel.clone()),
        (None, None) => None,
    }
}

/// Write `out`, in slices paced by the token bucket when there is one.
async fn write_paced(
    wr: &mut WriteHalf<Box<dyn Io>>,
    out: &mut BytesMut,
    bucket: Option<&mut TokenBucket>,
    wire: &WireCounter,
) -> io::Result<()> {
    let Some(b) = bucket else { return write(wr, out).await };
    let mut at = 0;
    while at < out.len() {
        loop {
            let wait = b.wait_time(Instant::now(), wire.sent());
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let n = b.slice().min(out.len() - at);
        b.debit(n);
        wr.write_all(&out[at..at + n]).await?;
        wr.flush().await?;
        at += n;
    }
    out.clear();
    Ok(())
}

async fn write(wr: &mut WriteHalf<Box<dyn Io>>, out: &mut BytesMut) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await?;
    wr.flush().await?;
    out.clear();
    Ok(())
}

/// Read and decode messages until the stream ends; errors end the stream.
async fn read_loop(mut rd: ReadHalf<Box<dyn Io>>, tx: mpsc::UnboundedSender<Result<Msg, String>>) {
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
                    let _ = tx.send(Err(format!("receiver sent garbage: {e}")));
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(Err("receiver closed the connection".into()));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}
