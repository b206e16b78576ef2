//! One connected uplink session as a state machine with no I/O and no
//! clock, in the spirit of quinn-proto: the task around it (`super`) moves
//! bytes, reads files and keeps time; everything the protocol decides is
//! here, so it runs the same under a simulated transport and virtual time
//! (`tests/link_sim.rs`) as over TLS and QUIC.
//!
//! Inputs: messages from the receiver ([`Session::handle`]), the archive as
//! listed ([`Session::archive`]) and as it grows ([`Session::grown`]),
//! chunks read from files ([`Session::read_done`]), writes done
//! ([`Session::on_written`]) and time ([`Session::handle_timeout`]).
//! Outputs: bytes to send ([`Session::poll_transmit`]), chunks to read
//! ([`Session::next_read`]), when to wake ([`Session::poll_timeout`]) and
//! segments delivered ([`Session::poll_event`]).
//!
//! ## Protocol
//! OPEN each undelivered segment, learn from HAVE how many bytes the receiver
//! holds, APPEND whole frames from there with at most `window` bytes
//! unacknowledged; once every byte of a locally sealed segment is
//! acknowledged, SEAL it with its length and SHA-256 and, when the receiver
//! confirms, it is delivered. A segment the origin deleted undelivered
//! (`drop_oldest`) is told with GONE, once the receiver speaks version 2,
//! so central can name the hole. When behind, `live_share` of the bytes go to
//! the newest open segment of each stream and the rest to the backlog,
//! oldest first. Every request gets exactly one reply, in order: the link is
//! dead when a request waited longer than `dead_after` for its reply.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{error, info, warn};

use super::scan::Local;
use crate::link::proto::{Code, Msg, Tombstone, MIN_VERSION};
use crate::metrics::Metrics;
use crate::store::follow::{self, Following, Shares};
use crate::store::segment::SealRecord;

/// First wait before offering a segment again that the receiver could not write.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest such wait: a receiver whose disk recovered gets data within this.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a session needs to know of its uplink's configuration.
#[derive(Clone, Debug)]
pub struct Params {
    /// The uplink's name, for logs and metric labels.
    pub name: String,
    /// This node's name, sent in HELLO.
    pub node: String,
    /// Unacknowledged bytes in flight, at most (`window`).
    pub window: u64,
    /// Share of the bandwidth given to the newest data while a backlog drains.
    pub live_share: f64,
    /// Largest chunk of frames read for one APPEND.
    pub chunk_max: usize,
    /// A PING after this long without traffic.
    pub keepalive: Duration,
    /// The link is lost after this long without an answer.
    pub dead_after: Duration,
    /// How long WELCOME may take.
    pub connect_timeout: Duration,
    /// This node's site: only its own streams can be rotated.
    pub site: String,
    /// Unsent bytes in the newest segment of a stream beyond which a new
    /// segment is asked for ([`Event::Rotate`]).
    pub rotate_after: u64,
    /// The protocol version offered in HELLO.
    pub version: u16,
}

pub use crate::link::error::{End, Lost};

/// What the task around the session must do for it.
#[derive(Debug)]
pub enum Event {
    /// Sealed and verified at the receiver: record it, release it to retention.
    Delivered(Box<Local>),
    /// The newest segment of this node's `stream` holds more unsent bytes
    /// than `rotate_after`: fresh records appended to it would wait behind
    /// them. Ask the store to start a new segment, whose records the live
    /// share then carries alone.
    Rotate {
        /// The stream whose newest segment is to be sealed.
        stream: String,
    },
    /// The receiver keeps the tombstone of this deleted segment (for the log).
    Noted(PathBuf),
}

/// A tombstone to tell the receiver about. Every session tells every
/// tombstone once (they are few, and expire with retention): a receiver
/// that lost its state learns them again when it comes back.
#[derive(Debug)]
struct Gone {
    id: u32,
    tombstone: Tombstone,
    sent: bool,
    noted: bool,
    /// The receiver could not keep it: told again next session.
    failed: bool,
}

/// A chunk to read: whole frames of `rel` from `from`, about `max` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The segment, relative to `archive/`.
    pub rel: PathBuf,
    /// Offset of the first frame to read.
    pub from: u64,
    /// Bytes to read, about (whole frames only).
    pub max: usize,
}

/// One segment's state within a session.
#[derive(Debug)]
struct Seg {
    local: Local,
    id: u32,
    /// OPEN has been queued.
    opened: bool,
    /// The receiver's answer to OPEN has arrived.
    known: bool,
    acked: u64,
    sent: u64,
    seal_sent: bool,
    /// Newest open segment of its stream: gets the live share.
    live: bool,
    /// A new segment was asked for while this one was the newest.
    rotate_asked: bool,
    /// Refused by the receiver this session (logged, counted); retried next session.
    failed: bool,
    /// File length at which no whole frame was left to send (wait for growth).
    stalled_at: Option<u64>,
    /// The receiver refused it for a reason it may lift (its disk is full,
    /// read-only, failing): offered again from the acknowledged length at
    /// this time, with the backoff doubling.
    retry: Option<(Instant, Duration, Code)>,
}

impl follow::Followed for Seg {
    fn local(&mut self) -> &mut Local {
        &mut self.local
    }
    fn stalled_at(&mut self) -> &mut Option<u64> {
        &mut self.stalled_at
    }
}

impl Seg {
    fn new(local: Local, id: u32) -> Seg {
        Seg {
            local,
            id,
            opened: false,
            known: false,
            acked: 0,
            sent: 0,
            seal_sent: false,
            live: false,
            rotate_asked: false,
            failed: false,
            stalled_at: None,
            retry: None,
        }
    }
}

/// One link session's protocol state: what to send, what was acknowledged, what is delivered. No sockets and no clock
/// (the caller passes `now`): the task around it does the I/O, and the link simulation drives it directly.
pub struct Session {
    p: Params,
    metrics: Metrics,
    out: BytesMut,
    /// Requests encoded in `out`, and those handed to the transport and not yet written.
    queued: u64,
    writing: u64,
    /// Requests written whose reply has not come.
    outstanding: u64,
    waiting_since: Option<Instant>,
    last_tx: Instant,
    welcomed: bool,
    /// The version agreed in WELCOME.
    version: u16,
    /// The receiver's state epoch from WELCOME (0 in version 1).
    epoch: u64,
    listed: bool,
    segs: Following<Seg>,
    by_id: HashMap<u32, PathBuf>,
    gone: BTreeMap<PathBuf, Gone>,
    gone_by_id: HashMap<u32, PathBuf>,
    next_id: u32,
    shares: Shares,
    /// A read handed out and not yet done.
    reading: Option<PathBuf>,
    progressed: bool,
    lag_dirty: bool,
    events: VecDeque<Event>,
}

impl Session {
    /// A session on a fresh connection: HELLO is the first thing to send.
    pub fn new(p: Params, metrics: Metrics, now: Instant) -> Session {
        let mut out = BytesMut::with_capacity(64 << 10);
        Msg::Hello { version: p.version, node: p.node.clone() }.encode(&mut out);
        Session {
            p,
            metrics,
            out,
            queued: 1,
            writing: 0,
            outstanding: 0,
            waiting_since: None,
            last_tx: now,
            welcomed: false,
            version: 0,
            epoch: 0,
            listed: false,
            segs: Following::default(),
            by_id: HashMap::new(),
            gone: BTreeMap::new(),
            gone_by_id: HashMap::new(),
            next_id: 1,
            shares: Shares::default(),
            reading: None,
            progressed: false,
            lag_dirty: true,
            events: VecDeque::new(),
        }
    }

    /// Whether any byte was acknowledged in this session.
    pub fn progressed(&self) -> bool {
        self.progressed
    }

    /// WELCOME has come: the version is agreed.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Nothing deliverable is left (everything delivered or refused): a
    /// draining uplink may stop.
    pub fn drained(&self) -> bool {
        self.listed
            && self.segs.values().all(|s| s.failed)
            && (self.version < 2 || self.gone.values().all(|g| g.failed || g.noted))
    }

    /// The version agreed with the receiver (0 before WELCOME).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The receiver's state epoch (0 before WELCOME and in version 1).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A message from the receiver.
    pub fn handle(&mut self, msg: Msg, now: Instant) -> Result<(), End> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.waiting_since = (self.outstanding > 0).then_some(now);
        if !self.welcomed {
            return self.welcome(msg);
        }
        let name = self.p.name.as_str();
        let m = &self.metrics;
        match msg {
            Msg::Have { id, len, sealed } => self.on_have(id, len, sealed),
            Msg::Ack { id, len } => {
                let Some(s) = self.by_id.get(&id).and_then(|r| self.segs.get_mut(r)) else { return Ok(()) };
                if s.retry.take().is_some() {
                    info!(uplink = name, path = %s.local.rel.display(), "receiver takes this segment again");
                }
                if len > s.acked {
                    let delta = len - s.acked;
                    s.acked = len;
                    self.progressed = true;
                    self.lag_dirty = true;
                    m.link
                        .uplink_acked_bytes
                        .with_label_values(&[name, &s.local.name.site, &s.local.name.stream])
                        .inc_by(delta);
                }
            }
            Msg::WrongOffset { id, expected } => {
                let Some(s) = self.by_id.get(&id).and_then(|r| self.segs.get_mut(r)) else { return Ok(()) };
                if s.retry.is_some() && expected == s.acked {
                    // An APPEND sent before the refusal, after the one refused: expected.
                    return Ok(());
                }
                warn!(uplink = name, path = %s.local.rel.display(), sent = s.sent, expected, "receiver asked to resume elsewhere");
                s.acked = expected;
                s.sent = expected;
                s.stalled_at = None;
            }
            Msg::Sealed { id, .. } if self.gone_by_id.contains_key(&id) => {
                let rel = &self.gone_by_id[&id];
                if let Some(g) = self.gone.get_mut(rel) {
                    g.noted = true;
                    self.events.push_back(Event::Noted(rel.clone()));
                }
            }
            Msg::Error { id, code, reason } if self.gone_by_id.contains_key(&id) => {
                m.link.uplink_errors.with_label_values(&[name, code.as_str()]).inc();
                if let Some(g) = self.gone.get_mut(&self.gone_by_id[&id]) {
                    g.failed = true;
                    warn!(uplink = name, path = %self.gone_by_id[&id].display(), code = code.as_str(), %reason,
                        "receiver cannot keep the tombstone of a deleted segment; telling it again next session");
                }
            }
            Msg::Sealed { id, ok } => self.on_sealed(id, ok),
            Msg::Error { id, code, reason } => self.on_error(id, code, &reason, now),
            Msg::Refuse { code, reason } => return Err(End::Refused(code, reason)),
            Msg::Pong { .. } => {}
            other => return Err(Lost::unexpected(&other).into()),
        }
        Ok(())
    }

    /// Before WELCOME only WELCOME (of a version this node speaks) or REFUSE.
    fn welcome(&mut self, msg: Msg) -> Result<(), End> {
        match msg {
            Msg::Welcome { version, epoch } if (MIN_VERSION..=self.p.version).contains(&version) => {
                self.welcomed = true;
                self.version = version;
                self.epoch = epoch;
                Ok(())
            }
            Msg::Welcome { version, .. } => Err(Lost::Version { chose: version, offered: self.p.version }.into()),
            Msg::Refuse { code, reason } => Err(End::Refused(code, reason)),
            other => Err(Lost::unexpected(&other).into()),
        }
    }

    /// HAVE: where the receiver stands on a segment offered.
    fn on_have(&mut self, id: u32, len: u64, sealed: bool) {
        let (name, m) = (self.p.name.as_str(), &self.metrics);
        let Some(rel) = self.by_id.get(&id).cloned() else { return };
        let Some(s) = self.segs.get_mut(&rel) else { return };
        s.known = true;
        s.acked = len;
        s.sent = len;
        self.lag_dirty = true;
        if sealed {
            if s.local.seal.as_ref().is_some_and(|l| l.len == len) {
                let s = self.segs.remove(&rel).expect("present");
                self.events.push_back(Event::Delivered(Box::new(s.local)));
            } else {
                s.failed = true;
                m.link.link_checksum_mismatches.with_label_values(&["uplink"]).inc();
                error!(uplink = name, path = %rel.display(), receiver_len = len,
                    "receiver has this segment sealed at a length this node does not have");
            }
        } else if len > s.local.len {
            s.failed = true;
            m.link.uplink_errors.with_label_values(&[name, "receiver_ahead"]).inc();
            error!(uplink = name, path = %rel.display(), receiver_len = len, local_len = s.local.len,
                "receiver holds more of this segment than this node (local data lost?); not sending it");
        } else {
            self.maybe_rotate(&rel);
        }
    }

    /// SEALED: the receiver sealed its copy (delivered) or refused to.
    fn on_sealed(&mut self, id: u32, ok: bool) {
        let Some(rel) = self.by_id.get(&id).cloned() else { return };
        if ok {
            if let Some(s) = self.segs.remove(&rel) {
                self.lag_dirty = true;
                self.events.push_back(Event::Delivered(Box::new(s.local)));
            }
        } else if let Some(s) = self.segs.get_mut(&rel) {
            s.failed = true;
            self.metrics.link.link_checksum_mismatches.with_label_values(&["uplink"]).inc();
            error!(uplink = %self.p.name, path = %rel.display(), "receiver refused the seal: its copy differs from this segment");
        }
    }

    /// ERROR on a segment: retried after a backoff when transient (the
    /// receiver's disk may recover), else the segment is failed.
    fn on_error(&mut self, id: u32, code: Code, reason: &str, now: Instant) {
        let name = self.p.name.as_str();
        self.metrics.link.uplink_errors.with_label_values(&[name, code.as_str()]).inc();
        let Some(s) = self.by_id.get(&id).and_then(|r| self.segs.get_mut(r)) else { return };
        if code.is_transient() {
            // Its disk may recover: keep the backlog, offer the same bytes later.
            let backoff = s.retry.map_or(RETRY_MIN, |(_, b, _)| (b * 2).min(RETRY_MAX));
            if s.retry.is_none() {
                warn!(uplink = name, path = %s.local.rel.display(), code = code.as_str(), %reason,
                    "receiver cannot write this segment now; keeping it here and retrying");
            }
            s.retry = Some((now + backoff, backoff, code));
            s.sent = s.acked;
            s.seal_sent = false;
        } else {
            s.failed = true;
            error!(uplink = name, path = %s.local.rel.display(), code = code.as_str(), %reason, "receiver refused a segment");
        }
    }

    /// The archive as listed now: every undelivered segment, oldest first,
    /// and the length of every segment being written.
    pub fn archive(&mut self, found: Vec<Local>, lens: &HashMap<PathBuf, u64>) {
        self.listed = true;
        self.lag_dirty = true;
        let live = follow::newest_open(&found);
        let (next_id, by_id) = (&mut self.next_id, &mut self.by_id);
        let merged = self.segs.merge(found, lens, |l| {
            let id = *next_id;
            *next_id += 1;
            by_id.insert(id, l.rel.clone());
            Seg::new(l, id)
        });
        for (_, s) in merged.removed {
            self.by_id.remove(&s.id);
        }
        for (rel, s) in self.segs.iter_mut() {
            s.live = live.contains(rel);
        }
        self.grown(lens);
    }

    /// Tombstones of segments deleted undelivered (as listed now).
    pub fn tombstones(&mut self, found: Vec<(PathBuf, SealRecord)>) {
        let present: HashSet<&PathBuf> = found.iter().map(|(r, _)| r).collect();
        self.gone.retain(|rel, _| present.contains(rel));
        self.gone_by_id.retain(|_, rel| present.contains(rel));
        for (rel, seal) in found {
            if self.gone.contains_key(&rel) {
                continue;
            }
            let Some(tombstone) = Tombstone::of_seal(&seal) else {
                warn!(uplink = %self.p.name, path = %rel.display(), "tombstone holds no valid SHA-256; not told to the receiver");
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            self.gone_by_id.insert(id, rel.clone());
            self.gone.insert(rel, Gone { id, tombstone, sent: false, noted: false, failed: false });
        }
    }

    /// Segments being written grew. Returns true when one of them is not
    /// known to this session (created since the last listing): list again.
    pub fn grown(&mut self, lens: &HashMap<PathBuf, u64>) -> bool {
        let (grew, unknown) = self.segs.grown(lens);
        for rel in grew {
            self.lag_dirty = true;
            self.maybe_rotate(&rel);
        }
        unknown || !self.listed
    }

    /// Ask for a new segment when fresh records appended to the newest one
    /// of a stream would wait behind more than `rotate_after` unsent bytes.
    fn maybe_rotate(&mut self, rel: &Path) {
        let Some(s) = self.segs.get_mut(rel) else { return };
        let due = s.live
            && s.known
            && !s.failed
            && !s.rotate_asked
            && s.local.seal.is_none()
            && s.local.name.site == self.p.site
            && s.local.len.saturating_sub(s.sent) > self.p.rotate_after;
        if due {
            s.rotate_asked = true;
            self.events.push_back(Event::Rotate { stream: s.local.name.stream.clone() });
        }
    }

    /// Bytes to hand to the transport now, if any. Call
    /// [`on_written`](Self::on_written) once they are written.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.writing > 0 {
            return None;
        }
        if self.welcomed {
            self.queue_opens();
            self.queue_seals(now);
            self.queue_gones();
        }
        if self.out.is_empty() && now >= self.last_tx + self.p.keepalive {
            Msg::Ping { nonce: 0 }.encode(&mut self.out);
            self.queued += 1;
        }
        if self.out.is_empty() {
            return None;
        }
        self.writing = std::mem::take(&mut self.queued).max(1);
        Some(self.out.split().freeze())
    }

    /// New rate settings from a reload, for the reads from now on.
    pub fn retune(&mut self, live_share: f64, chunk_max: usize, rotate_after: u64) {
        self.p.live_share = live_share;
        self.p.chunk_max = chunk_max;
        self.p.rotate_after = rotate_after;
    }

    /// The transport delivered bytes to the peer (TCP acknowledgements): the
    /// path is moving, so an answer held up behind what is queued on it is
    /// late, not lost. `dead_after` counts again from now.
    pub fn on_transport_progress(&mut self, now: Instant) {
        if self.outstanding > 0 {
            self.waiting_since = Some(now);
        }
    }

    /// What [`poll_transmit`](Self::poll_transmit) returned is written.
    pub fn on_written(&mut self, now: Instant) {
        self.last_tx = now;
        self.outstanding += std::mem::take(&mut self.writing);
        if self.outstanding > 0 && self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    fn queue_opens(&mut self) {
        for s in self.segs.values_mut().filter(|s| !s.opened) {
            Msg::Open { id: s.id, path: s.local.rel.to_string_lossy().into_owned() }.encode(&mut self.out);
            self.queued += 1;
            s.opened = true;
        }
    }

    fn queue_gones(&mut self) {
        if self.version < 2 {
            return;
        }
        for (rel, g) in self.gone.iter_mut().filter(|(_, g)| !g.sent) {
            let path = rel.to_string_lossy().into_owned();
            Msg::Gone { id: g.id, path, tombstone: g.tombstone.clone() }.encode(&mut self.out);
            self.queued += 1;
            g.sent = true;
        }
    }

    fn queue_seals(&mut self, now: Instant) {
        for s in self.segs.values_mut() {
            let Some(seal) = &s.local.seal else { continue };
            let waiting = s.retry.is_some_and(|(at, _, _)| now < at);
            if s.known && !s.failed && !waiting && !s.seal_sent && s.acked == seal.len && s.sent == seal.len {
                match seal.sha256_bytes() {
                    Some(sha256) => {
                        Msg::Seal { id: s.id, len: seal.len, sha256 }.encode(&mut self.out);
                        self.queued += 1;
                        s.seal_sent = true;
                    }
                    None => {
                        s.failed = true;
                        error!(uplink = %self.p.name, path = %s.local.rel.display(), "seal record holds no valid SHA-256; not sealing at the receiver");
                    }
                }
            }
        }
    }

    /// The next chunk to read and send, if the window allows one. At most
    /// one read is out at a time; answer it with [`read_done`](Self::read_done).
    pub fn next_read(&mut self, now: Instant) -> Option<Read> {
        if !self.welcomed || self.reading.is_some() {
            return None;
        }
        let inflight: u64 = self.segs.values().map(|s| s.sent - s.acked.min(s.sent)).sum();
        if inflight >= self.p.window {
            return None;
        }
        let rel = pick(&self.segs, &self.shares, self.p.live_share, now)?;
        let s = &self.segs[&rel];
        let max = self.p.chunk_max.min((self.p.window - inflight) as usize).max(16 << 10);
        self.reading = Some(rel.clone());
        Some(Read { rel, from: s.sent, max })
    }

    /// The chunk asked for by [`next_read`](Self::next_read): whole frames
    /// (empty when none was complete yet), or why the file could not be read.
    pub fn read_done(&mut self, rel: &Path, from: u64, chunk: io::Result<Vec<u8>>) {
        self.reading = None;
        let Some(s) = self.segs.get_mut(rel) else { return };
        if s.sent != from || s.failed || !s.known {
            // The receiver moved it meanwhile (WRONG_OFFSET, an error): read again.
            return;
        }
        match chunk {
            Ok(bytes) if bytes.is_empty() => s.stalled_at = Some(s.local.len),
            Ok(bytes) => {
                let n = bytes.len() as u64;
                Msg::Append { id: s.id, offset: from, frames: Bytes::from(bytes) }.encode(&mut self.out);
                self.queued += 1;
                s.sent += n;
                self.shares.sent(n, s.live);
            }
            Err(e) => {
                warn!(uplink = %self.p.name, path = %rel.display(), error = %e, "cannot read segment");
                s.failed = true;
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) at the latest.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let dead = if self.welcomed { self.p.dead_after } else { self.p.connect_timeout };
        let mut at = self.last_tx + self.p.keepalive;
        if let Some(w) = self.waiting_since {
            at = at.min(w + dead);
        }
        if let Some(r) = self.segs.values().filter_map(|s| s.retry.map(|(t, _, _)| t)).filter(|t| *t > now).min() {
            at = at.min(r);
        }
        at
    }

    /// Time passed: is the link dead?
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), End> {
        let dead = if self.welcomed { self.p.dead_after } else { self.p.connect_timeout };
        match self.waiting_since {
            Some(t) if now.saturating_duration_since(t) > dead => {
                Err(if self.welcomed { Lost::NoAnswer(dead) } else { Lost::NoWelcome(dead) }.into())
            }
            _ => Ok(()),
        }
    }

    /// The next thing the task must do for the session (record a delivery, ask for a rotation, log a tombstone).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether lag may have changed since the last call.
    pub fn take_lag_dirty(&mut self) -> bool {
        std::mem::take(&mut self.lag_dirty)
    }

    /// Whether lag may have changed since [`take_lag_dirty`](Self::take_lag_dirty).
    pub fn lag_dirty(&self) -> bool {
        self.lag_dirty && self.listed
    }

    /// Whether any byte is not acknowledged yet (its age grows).
    pub fn lagging(&self) -> bool {
        self.segs.values().any(|s| !s.failed && s.acked < s.local.len)
    }

    /// Every segment still to deliver, with its acknowledged length.
    pub fn pending(&self) -> impl Iterator<Item = (&Local, u64)> {
        self.segs.values().map(|s| (&s.local, s.acked))
    }

    /// Segments held back because the receiver cannot write them, for `code`.
    pub fn blocked(&self, code: Code) -> usize {
        self.segs.values().filter(|s| s.retry.is_some_and(|(_, _, c)| c == code)).count()
    }
}

/// The segment to send from next: the first live one or the oldest of the
/// backlog, by the live share.
fn pick(segs: &BTreeMap<PathBuf, Seg>, shares: &Shares, live_share: f64, now: Instant) -> Option<PathBuf> {
    let ready = |s: &&Seg| {
        s.known
            && !s.failed
            && s.sent < s.local.len
            && s.stalled_at.is_none()
            && s.retry.is_none_or(|(at, _, _)| now >= at)
    };
    let live = segs.values().filter(ready).find(|s| s.live);
    let backlog = segs.values().filter(ready).find(|s| !s.live);
    shares.choose(live, backlog, live_share).map(|(s, _)| s.local.rel.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::proto::VERSION;
    use crate::link::receiver::{Core, Step};

    fn params() -> Params {
        Params {
            name: "central".into(),
            node: "relay-1".into(),
            window: 1 << 20,
            live_share: 0.5,
            chunk_max: 1 << 20,
            keepalive: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            site: "sg1".into(),
            rotate_after: 1 << 20,
            version: VERSION,
        }
    }

    const REL: &str = "sg1/live/2026-11-30/live-2026-11-30T10-relay-1-00000003.log.zst";

    fn tombstone() -> (PathBuf, SealRecord) {
        let seal = SealRecord {
            len: 10,
            sha256: "ab".repeat(32),
            frames: 1,
            records: 5,
            first_seq: 100,
            next_seq: 105,
            sealed_ms: 1,
        };
        (PathBuf::from(REL), seal)
    }

    /// Everything the session sends once welcomed at `version`, as the receiver's core sees it.
    fn sent_after_welcome(version: u16) -> Vec<Step> {
        let now = Instant::now();
        let mut s = Session::new(params(), Metrics::new(), now);
        let mut core = Core::new("sg1", "relay-1", &[], 5);
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&s.poll_transmit(now).unwrap());
        s.on_written(now);
        let hello = Msg::decode(&mut wire).unwrap().unwrap();
        let Msg::Hello { version: offered, .. } = hello else { panic!("{hello:?}") };
        assert_eq!(offered, VERSION);
        s.handle(Msg::Welcome { version, epoch: 5 }, now).unwrap();
        s.archive(Vec::new(), &HashMap::new());
        s.tombstones(vec![tombstone()]);
        let mut steps = Vec::new();
        // The receiver's core at that version: a HELLO naming it.
        assert!(matches!(core.handle(Msg::Hello { version, node: "relay-1".into() }), Step::Reply(_)));
        if let Some(b) = s.poll_transmit(now) {
            wire.extend_from_slice(&b);
            while let Some(m) = Msg::decode(&mut wire).unwrap() {
                steps.push(core.handle(m));
            }
        }
        steps
    }

    /// An unanswered message is `dead_after` old: dead, unless the transport
    /// delivered bytes meanwhile (the answer is queued behind them).
    #[test]
    fn transport_progress_keeps_a_slow_answer_from_counting_as_a_dead_link() {
        let t0 = Instant::now();
        let dead = params().dead_after;
        let mut s = Session::new(params(), Metrics::new(), t0);
        s.poll_transmit(t0).unwrap();
        s.on_written(t0);
        let mut t = t0;
        for _ in 0..5 {
            t += dead - Duration::from_millis(100);
            s.on_transport_progress(t);
            assert!(s.handle_timeout(t).is_ok());
        }
        t += dead + Duration::from_millis(100);
        assert!(s.handle_timeout(t).is_err(), "nothing moved for longer than dead_after");
    }

    #[test]
    fn tombstones_go_to_a_version_2_receiver_and_not_to_a_version_1_one() {
        let steps = sent_after_welcome(2);
        assert_eq!(steps.len(), 1, "{steps:?}");
        let Step::Gone { rel, tombstone: told, .. } = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(rel, Path::new(REL));
        assert_eq!(told.to_seal(), tombstone().1);
        assert!(sent_after_welcome(1).is_empty());
    }

    #[test]
    fn a_receiver_answers_the_highest_common_version_and_refuses_gone_in_version_1() {
        let welcome = |v| match Core::new("sg1", "n", &[], 5).handle(Msg::Hello { version: v, node: "n".into() }) {
            Step::Reply(Msg::Welcome { version, .. }) => Some(version),
            _ => None,
        };
        assert_eq!((welcome(1), welcome(2), welcome(9), welcome(0)), (Some(1), Some(2), Some(VERSION), None));
        let mut core = Core::new("sg1", "n", &[], 5);
        core.handle(Msg::Hello { version: 1, node: "n".into() });
        let (rel, seal) = tombstone();
        let gone = Msg::Gone {
            id: 1,
            path: rel.to_string_lossy().into_owned(),
            tombstone: Tombstone::of_seal(&seal).unwrap(),
        };
        assert!(matches!(core.handle(gone), Step::Refuse(Code::ProtocolViolation, _)));
    }

    #[test]
    fn a_welcome_above_the_offer_ends_the_session() {
        let now = Instant::now();
        let mut p = params();
        p.version = 1;
        let mut s = Session::new(p, Metrics::new(), now);
        s.poll_transmit(now);
        s.on_written(now);
        assert!(matches!(
            s.handle(Msg::Welcome { version: 2, epoch: 5 }, now),
            Err(End::Lost(Lost::Version { chose: 2, offered: 1 }))
        ));
    }
}
