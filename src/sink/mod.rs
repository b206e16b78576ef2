//! Sinks: delivery of archived records into the bus the indexers read
//! (Kafka, RabbitMQ), with the link's discipline: the files are the queue.
//!
//! A sink walks the archive (mirror segments and local ones) frame by frame,
//! per origin (site/stream/node) in sequence order, decodes each frame into
//! one [`records::Batch`], publishes it, and moves its durable cursor
//! ([`cursor`]) only over frames whose every record the broker acknowledged.
//! A segment whose records are all acknowledged is delivered (its path goes
//! to `state/sinks/<name>.delivered`) and released to retention; until then
//! retention keeps it. Memory is bounded by `max_in_flight` records and
//! `max_in_flight_bytes`: a slow or absent broker makes the sink lag on
//! disk, never in memory, and never slows the link or ingest.
//!
//! Delivery is at least once. After a crash or a broker failure the sink
//! starts again from its acknowledged positions, so records acknowledged
//! since the last cursor write (or unconfirmed at the failure) are sent
//! again, with the same `site/node/stream/seq` id. A record the broker
//! refuses for good goes to the dead-letter file ([`deadletter`]) and is
//! counted; transient failures back off and retry.

pub mod cursor;
pub mod deadletter;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rabbitmq;
pub mod records;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BusConfig, SinkConfig};
use crate::link::uplink::scan::{Delivered, Local};
use crate::metrics::Metrics;
use crate::store::changes::Changes;
use crate::store::clock::Clock;
use crate::store::frame::{FrameHeader, MAX_HEADER_LEN};
use crate::store::fs::Fs;
use crate::store::recover::list_repaired;
use crate::store::segment::SegmentName;
use cursor::Pos;
use deadletter::DeadLetters;
use records::{Batch, FrameDecoder, Origin, Read};

/// Everything a sink needs; `run` drives it until cancelled.
pub struct Sink {
    pub cfg: SinkConfig,
    pub archive_dir: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub delivered: Arc<Delivered>,
    pub fs: Fs,
    /// Wakes the sink when the archive grows or changes.
    pub changes: Arc<Changes>,
}

/// The broker's answer for one record (`idx` of the batch sent with `token`).
#[derive(Debug)]
pub struct Ack {
    pub token: u32,
    pub idx: u32,
    pub outcome: Outcome,
}

/// Token of an [`Ack`] that reports the connection itself broken.
const BROKEN: u32 = u32::MAX;

impl Ack {
    pub fn broken(detail: String) -> Ack {
        Ack { token: BROKEN, idx: 0, outcome: Outcome::Retry("fatal", detail) }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// Refused for good (the reason label): dead-lettered, counted.
    Refused(&'static str),
    /// Failed for now (reason label, detail): start again from the
    /// acknowledged positions after a backoff.
    Retry(&'static str, String),
    /// Like `Retry`, but the broker refused one of the unconfirmed records
    /// without saying which: send them again one at a time to find it.
    RetryCarefully(String),
}

/// Why a Kafka sink cannot run in a build without the `kafka` feature.
pub const NO_KAFKA: &str = "this ferry is built without Kafka support (cargo feature \"kafka\")";

enum Bus {
    #[cfg(feature = "kafka")]
    Kafka(kafka::Kafka),
    Rabbit(Box<rabbitmq::Rabbit>),
}

impl Bus {
    async fn connect(
        cfg: &SinkConfig,
        tx: mpsc::UnboundedSender<Ack>,
        metrics: &Metrics,
        careful: usize,
    ) -> Result<Bus, String> {
        match &cfg.bus {
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(k) => kafka::Kafka::connect(cfg, k, tx, metrics).await.map(Bus::Kafka),
            #[cfg(not(feature = "kafka"))]
            BusConfig::Kafka(_) => {
                let _ = (tx, metrics);
                Err(NO_KAFKA.to_owned())
            }
            BusConfig::RabbitMq(r) => {
                let mut b = rabbitmq::Rabbit::connect(&cfg.name, r, tx).await?;
                b.careful = careful;
                Ok(Bus::Rabbit(Box::new(b)))
            }
        }
    }

    async fn publish(&mut self, batch: Arc<Batch>, token: u32) -> Result<Vec<(u32, Outcome)>, String> {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(k) => k.publish(batch, token).await,
            Bus::Rabbit(r) => r.publish(batch, token).await,
        }
    }

    fn take_broken(&mut self) -> Option<String> {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(_) => None,
            Bus::Rabbit(r) => r.take_broken(),
        }
    }

    async fn close(self) {
        match self {
            #[cfg(feature = "kafka")]
            Bus::Kafka(k) => k.close().await,
            Bus::Rabbit(r) => r.close().await,
        }
    }
}

/// One undelivered segment.
struct Seg {
    local: Local,
    origin: Arc<Origin>,
    /// Everything before this is acknowledged by the broker.
    acked: Pos,
    /// The next frame to read and publish.
    read: Pos,
    flights: VecDeque<Flight>,
    /// File length at which no whole frame was left to read (wait for growth).
    stalled_at: Option<u64>,
    /// A read failed: try again at this time.
    retry_at: Option<Instant>,
}

impl Seg {
    fn fully_read(&self) -> bool {
        self.local.seal.as_ref().is_some_and(|s| self.read.offset >= s.len)
    }

    fn readable(&self, now: Instant) -> bool {
        self.read.offset < self.local.len
            && self.stalled_at != Some(self.local.len)
            && self.retry_at.is_none_or(|t| now >= t)
    }
}

/// One published frame awaiting its acknowledgements.
struct Flight {
    token: u32,
    end: Pos,
    outstanding: u32,
    /// Records and bytes the broker acknowledged.
    ok: u64,
    ok_bytes: u64,
    batch: Arc<Batch>,
}

/// How often the cursor is written (the crash-duplicate window).
const PERSIST_EVERY: Duration = Duration::from_millis(500);
const LAG_EVERY: Duration = Duration::from_secs(1);
const READ_RETRY: Duration = Duration::from_secs(5);

/// The running state of a sink.
struct Run<'a> {
    sink: &'a Sink,
    tx: mpsc::UnboundedSender<Ack>,
    segs: BTreeMap<PathBuf, Seg>,
    /// Undelivered segments per origin, oldest first.
    origins: Vec<(Arc<Origin>, Vec<PathBuf>)>,
    interned: HashMap<(String, String, String), Arc<Origin>>,
    /// Positions from the cursor file, used when a segment is first seen.
    saved: HashMap<PathBuf, Pos>,
    tokens: HashMap<u32, PathBuf>,
    next_token: u32,
    dead: DeadLetters,
    decoder: Option<FrameDecoder>,
    in_flight_records: usize,
    in_flight_bytes: usize,
    live_sent: u64,
    backlog_sent: u64,
    rr: usize,
    dirty: bool,
    careful: usize,
    seen_streams: HashSet<(String, String)>,
    /// Paths being written that the last listing did not select (other
    /// sites or streams, delivered): their growth asks for no listing.
    unlisted: HashSet<PathBuf>,
}

impl Sink {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Deliver until `stop`; the cursor is written on the way out.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.cfg.name.clone();
        let m = self.metrics.clone();
        m.sink_connected.with_label_values(&[&name]).set(0);
        m.sink_segments_delivered.with_label_values(&[&name]);
        m.sink_dead_letters.with_label_values(&[&name, "too_large"]);
        let cursor_file = cursor::cursor_file(&self.state_dir, &name);
        let saved = match cursor::load(&cursor_file, &m) {
            Ok(s) => s,
            Err(e) => {
                error!(sink = %name, file = %cursor_file.display(), error = %e, "cannot read the sink cursor; the sink does not run");
                return;
            }
        };
        let dead = match DeadLetters::open(&self.fs, &self.state_dir, &name, &m) {
            Ok(d) => d,
            Err(e) => {
                error!(sink = %name, error = %e, "cannot read the dead-letter file; the sink does not run");
                return;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut run = Run {
            sink: &self,
            tx,
            segs: BTreeMap::new(),
            origins: Vec::new(),
            interned: HashMap::new(),
            saved,
            tokens: HashMap::new(),
            next_token: 0,
            dead,
            decoder: Some(FrameDecoder::new().expect("zstd decompressor")),
            in_flight_records: 0,
            in_flight_bytes: 0,
            live_sent: 0,
            backlog_sent: 0,
            rr: 0,
            dirty: false,
            careful: 0,
            seen_streams: HashSet::new(),
            unlisted: HashSet::new(),
        };
        let mut bus: Option<Bus> = None;
        let mut backoff = self.cfg.backoff_min;
        let mut next_connect = Instant::now();
        let mut changes = self.changes.subscribe();
        let mut next_persist = Instant::now() + PERSIST_EVERY;
        let mut next_lag = Instant::now();
        let mut inbox: VecDeque<Ack> = VecDeque::new();
        info!(sink = %name, "sink started");
        loop {
            if stop.is_cancelled() {
                break;
            }
            // 1. What the broker said.
            let mut broken: Option<(&'static str, String)> = None;
            while broken.is_none() {
                let ack = match inbox.pop_front() {
                    Some(a) => a,
                    None => match rx.try_recv() {
                        Ok(a) => a,
                        Err(_) => break,
                    },
                };
                if matches!(ack.outcome, Outcome::Ok) {
                    backoff = self.cfg.backoff_min;
                }
                broken = run.apply(ack);
            }
            if let Some((reason, detail)) = broken {
                m.sink_errors.with_label_values(&[&name, reason]).inc();
                warn!(sink = %name, reason, %detail, retry_in = ?backoff, "broker failed; starting again from the acknowledged positions");
                if let Some(b) = bus.take() {
                    b.close().await;
                }
                m.sink_connected.with_label_values(&[&name]).set(0);
                run.reset();
                // Reports of the old session may still be queued: they name
                // tokens that no longer exist and are ignored.
                inbox.clear();
                next_connect = Instant::now() + backoff;
                backoff = (backoff * 2).min(self.cfg.backoff_max);
            }

            // 2. Connect.
            if bus.is_none() && Instant::now() >= next_connect {
                match Bus::connect(&self.cfg, run.tx.clone(), &m, run.careful).await {
                    Ok(b) => {
                        m.sink_connected.with_label_values(&[&name]).set(1);
                        bus = Some(b);
                        // Handed to this connection; a later failure sets it anew.
                        run.careful = 0;
                    }
                    Err(e) => {
                        m.sink_errors.with_label_values(&[&name, "connect"]).inc();
                        warn!(sink = %name, error = %e, retry_in = ?backoff, "cannot reach the broker");
                        next_connect = Instant::now() + backoff;
                        backoff = (backoff * 2).min(self.cfg.backoff_max);
                    }
                }
            }

            // 3. The archive: new segments, growth, seals, deletions, as the store tells.
            if changes.has_changed() {
                let u = changes.take();
                if u.relist || run.grown(&u.lens) {
                    run.scan(&u.lens).await;
                }
            }
            if Instant::now() >= next_persist {
                next_persist = Instant::now() + PERSIST_EVERY;
                run.persist().await;
            }
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + LAG_EVERY;
                run.report_lag().await;
            }

            // 4. The next frame, if the in-flight limits allow.
            let mut published = false;
            if let Some(b) = bus.as_mut() {
                if run.in_flight_records < self.cfg.max_in_flight && run.in_flight_bytes < self.cfg.max_in_flight_bytes
                {
                    match run.publish_next(b).await {
                        Ok(p) => published = p,
                        Err(detail) => {
                            inbox.push_back(Ack { token: BROKEN, idx: 0, outcome: Outcome::Retry("publish", detail) })
                        }
                    }
                }
            }
            if published || !inbox.is_empty() {
                continue;
            }
            // 5. Nothing to do now: wait for an answer or the next timer.
            let mut until = next_persist.min(next_lag);
            if bus.is_none() {
                until = until.min(next_connect);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                a = rx.recv() => if let Some(a) = a { inbox.push_back(a) },
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        run.persist_now().await;
        if let Some(b) = bus.take() {
            b.close().await;
        }
        m.sink_connected.with_label_values(&[&name]).set(0);
        info!(sink = %name, "sink stopped");
    }
}

impl Run<'_> {
    fn name(&self) -> &str {
        &self.sink.cfg.name
    }

    /// Apply one answer; `Some` when the session must start again.
    fn apply(&mut self, ack: Ack) -> Option<(&'static str, String)> {
        if ack.token == BROKEN {
            return match ack.outcome {
                Outcome::Retry(r, d) => Some((r, d)),
                other => Some(("fatal", format!("{other:?}"))),
            };
        }
        let rel = self.tokens.get(&ack.token)?.clone();
        let seg = self.segs.get_mut(&rel)?;
        let f = seg.flights.iter_mut().find(|f| f.token == ack.token)?;
        match ack.outcome {
            Outcome::Ok => {
                f.outstanding = f.outstanding.saturating_sub(1);
                f.ok += 1;
                f.ok_bytes += f.batch.record(ack.idx as usize).len() as u64;
            }
            Outcome::Refused(reason) => {
                let b = f.batch.clone();
                let i = ack.idx as usize;
                if let Err(e) = self.dead.add(&b.origin, b.seq(i), b.last_ms, &b.rel, reason, b.record(i)) {
                    return Some(("dead_letter_write", format!("cannot write the dead-letter file: {e}")));
                }
                let m = &self.sink.metrics;
                m.sink_dead_letters.with_label_values(&[&self.sink.cfg.name, reason]).inc();
                warn!(sink = %self.sink.cfg.name, origin = %b.origin.key, seq = b.seq(i), bytes = b.record(i).len(), reason,
                    "broker refused a record for good; written to the dead-letter file");
                let f = seg.flights.iter_mut().find(|f| f.token == ack.token)?;
                f.outstanding = f.outstanding.saturating_sub(1);
            }
            Outcome::Retry(r, d) => return Some((r, d)),
            Outcome::RetryCarefully(d) => {
                self.careful = self.in_flight_records.max(1);
                return Some(("refused_unknown_record", d));
            }
        }
        self.advance(&rel);
        None
    }

    /// Move the acknowledged position over completed frames, in order.
    fn advance(&mut self, rel: &Path) {
        let m = &self.sink.metrics;
        let name = &self.sink.cfg.name;
        let Some(seg) = self.segs.get_mut(rel) else { return };
        while seg.flights.front().is_some_and(|f| f.outstanding == 0) {
            let f = seg.flights.pop_front().expect("checked");
            seg.acked = f.end;
            self.tokens.remove(&f.token);
            self.in_flight_records -= f.batch.len();
            self.in_flight_bytes -= f.batch.bytes();
            let o = &f.batch.origin;
            m.sink_records.with_label_values(&[name, &o.site, &o.stream]).inc_by(f.ok);
            m.sink_bytes.with_label_values(&[name, &o.site, &o.stream]).inc_by(f.ok_bytes);
            // Acknowledgements flow: the broker is there (librdkafka only
            // reports that it is gone, not that it is back).
            m.sink_connected.with_label_values(&[name]).set(1);
            self.dirty = true;
        }
        self.check_done(rel);
    }

    /// A sealed segment whose every record is acknowledged is delivered.
    fn check_done(&mut self, rel: &Path) {
        let Some(seg) = self.segs.get(rel) else { return };
        let done = seg.flights.is_empty() && seg.local.seal.as_ref().is_some_and(|s| seg.acked.offset >= s.len);
        if !done {
            return;
        }
        if let Err(e) = self.sink.delivered.add(rel) {
            // Kept as undelivered: delivered again after a restart (duplicates), never lost.
            self.sink.metrics.sink_errors.with_label_values(&[self.name(), "state_write"]).inc();
            warn!(sink = %self.name(), error = %e, "cannot record a delivered segment");
            return;
        }
        self.sink.metrics.sink_segments_delivered.with_label_values(&[self.name()]).inc();
        let origin = seg.origin.clone();
        self.segs.remove(rel);
        if let Some((_, list)) = self.origins.iter_mut().find(|(o, _)| *o == origin) {
            list.retain(|r| r != rel);
        }
        self.dirty = true;
    }

    /// After a broker failure: forget everything unacknowledged.
    fn reset(&mut self) {
        for s in self.segs.values_mut() {
            s.flights.clear();
            s.read = s.acked;
            s.stalled_at = None;
        }
        self.tokens.clear();
        self.in_flight_records = 0;
        self.in_flight_bytes = 0;
    }

    /// Segments being written grew. Returns true when one of them, of this
    /// sink's sites and streams, is not known yet: list again.
    fn grown(&mut self, lens: &HashMap<PathBuf, u64>) -> bool {
        let mut unknown = false;
        for (rel, &len) in lens {
            match self.segs.get_mut(rel) {
                Some(s) if len > s.local.len && s.local.seal.is_none() => {
                    s.local.len = len;
                    s.stalled_at = None;
                }
                Some(_) => {}
                None => unknown |= !self.unlisted.contains(rel),
            }
        }
        unknown
    }

    async fn scan(&mut self, lens: &HashMap<PathBuf, u64>) {
        let s = self.sink;
        let (fs, a, st, d) = (s.fs.clone(), s.archive_dir.clone(), s.state_dir.clone(), s.delivered.clone());
        let (now, m, cfg) = (s.clock.now_ms(), s.metrics.clone(), s.cfg.clone());
        let sel = move |rel: &Path| {
            SegmentName::parse_rel(rel).is_some_and(|n| {
                (cfg.sites.is_empty() || cfg.sites.contains(&n.site))
                    && (cfg.streams.is_empty() || cfg.streams.contains(&n.stream))
            })
        };
        let found =
            tokio::task::spawn_blocking(move || list_repaired(&fs, &a, &st, |r| d.contains(r) || !sel(r), now, &m))
                .await
                .expect("scan task");
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                warn!(sink = %self.name(), error = %e, "cannot scan the archive");
                return;
            }
        };
        let present: HashSet<&PathBuf> = found.iter().map(|l| &l.rel).collect();
        let gone: Vec<PathBuf> = self.segs.keys().filter(|r| !present.contains(r)).cloned().collect();
        for rel in gone {
            // Deleted under the sink (retention with on_full = "drop_oldest").
            if let Some(s) = self.segs.remove(&rel) {
                for f in s.flights {
                    self.tokens.remove(&f.token);
                    self.in_flight_records -= f.batch.len();
                    self.in_flight_bytes -= f.batch.bytes();
                }
                if s.local.seal.as_ref().is_none_or(|x| s.acked.offset < x.len) {
                    self.sink.metrics.sink_errors.with_label_values(&[self.name(), "deleted_undelivered"]).inc();
                    warn!(sink = %self.name(), path = %rel.display(), "segment deleted before the sink delivered it");
                }
                self.dirty = true;
            }
        }
        let mut origins: BTreeMap<Arc<Origin>, Vec<PathBuf>> = BTreeMap::new();
        let mut to_check = Vec::new();
        for l in found {
            let key = (l.name.site.clone(), l.name.stream.clone(), l.name.node.clone());
            let origin = self
                .interned
                .entry(key)
                .or_insert_with(|| Arc::new(Origin::new(&l.name.site, &l.name.stream, &l.name.node)))
                .clone();
            origins.entry(origin.clone()).or_default().push(l.rel.clone());
            match self.segs.get_mut(&l.rel) {
                Some(s) => {
                    if s.stalled_at.is_some_and(|at| at != l.len) {
                        s.stalled_at = None;
                    }
                    let newly_sealed = s.local.seal.is_none() && l.seal.is_some();
                    s.local = l;
                    if newly_sealed {
                        to_check.push(s.local.rel.clone());
                    }
                }
                None => {
                    let pos = self.saved.remove(&l.rel).unwrap_or_default();
                    to_check.push(l.rel.clone());
                    self.segs.insert(
                        l.rel.clone(),
                        Seg {
                            local: l,
                            origin,
                            acked: pos,
                            read: pos,
                            flights: VecDeque::new(),
                            stalled_at: None,
                            retry_at: None,
                        },
                    );
                }
            }
        }
        self.origins = origins.into_iter().collect();
        for rel in to_check {
            self.check_done(&rel);
        }
        self.unlisted = lens.keys().filter(|r| !self.segs.contains_key(*r)).cloned().collect();
        self.grown(lens);
    }

    /// The segment to read next: origins in turn; within one, its oldest
    /// segment not fully read (sequence order), or, by `live_share`, its
    /// newest open segment while a backlog drains.
    fn pick(&mut self) -> Option<(PathBuf, bool)> {
        let now = Instant::now();
        let n = self.origins.len();
        let share = self.sink.cfg.live_share;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let list = &self.origins[i].1;
            let head = list.iter().find(|r| self.segs.get(*r).is_some_and(|s| !s.fully_read()));
            let Some(head) = head else { continue };
            let head_ok = self.segs[head].readable(now);
            let live = (share > 0.0)
                .then(|| list.last())
                .flatten()
                .filter(|l| *l != head)
                .filter(|l| self.segs.get(*l).is_some_and(|s| s.local.seal.is_none() && s.readable(now)));
            let total = (self.live_sent + self.backlog_sent).max(1) as f64;
            let choice = match (head_ok, live) {
                (true, Some(l)) if (self.live_sent as f64) / total <= share => Some((l.clone(), true)),
                (true, _) => Some((head.clone(), false)),
                (false, Some(l)) => Some((l.clone(), true)),
                (false, None) => None,
            };
            if choice.is_some() {
                self.rr = (i + 1) % n.max(1);
                return choice;
            }
        }
        None
    }

    /// Read the next frame of the picked segment and publish it. `Ok(true)`
    /// when something was published or skipped (more may be ready).
    async fn publish_next(&mut self, bus: &mut Bus) -> Result<bool, String> {
        let Some((rel, live)) = self.pick() else { return Ok(false) };
        let seg = &self.segs[&rel];
        let (origin, pos) = (seg.origin.clone(), seg.read);
        let archive = self.sink.archive_dir.clone();
        let mut dec = self.decoder.take().expect("decoder is returned after each read");
        let rel2 = rel.clone();
        let (dec, read) = tokio::task::spawn_blocking(move || {
            let r = dec.read(&archive, &rel2, &origin, pos.offset, pos.next_seq);
            (dec, r)
        })
        .await
        .expect("read task");
        self.decoder = Some(dec);
        let name = self.sink.cfg.name.clone();
        let m = self.sink.metrics.clone();
        let seg = self.segs.get_mut(&rel).expect("picked");
        let mut batch = match read {
            Ok(Read::Nothing) => {
                seg.stalled_at = Some(seg.local.len);
                return Ok(false);
            }
            Ok(Read::Damaged { at, next, error }) => {
                m.sink_errors.with_label_values(&[&name, "damaged_frame"]).inc();
                error!(sink = %name, path = %rel.display(), offset = at, resumes_at = next, %error,
                    "damaged frame in the archive: its records cannot be delivered (ferry verify tells more)");
                seg.read = Pos { offset: next, next_seq: 0 };
                if seg.flights.is_empty() {
                    seg.acked = seg.read;
                }
                return Ok(true);
            }
            Err(e) => {
                m.sink_errors.with_label_values(&[&name, "read"]).inc();
                warn!(sink = %name, path = %rel.display(), error = %e, "cannot read a segment; trying again later");
                seg.retry_at = Some(Instant::now() + READ_RETRY);
                return Ok(false);
            }
            Ok(Read::Batch(b)) => b,
        };
        seg.retry_at = None;
        // Records dead-lettered before are not offered again; records larger
        // than the broker takes never are.
        let mut refused: Vec<(u32, Outcome)> = Vec::new();
        for i in 0..batch.len() {
            if !self.dead.is_empty() && self.dead.contains(&batch.origin, batch.seq(i)) {
                batch.skip.push(i as u32);
            } else if self.sink.cfg.max_message_bytes.is_some_and(|max| batch.record(i).len() > max) {
                batch.skip.push(i as u32);
                refused.push((i as u32, Outcome::Refused("too_large")));
            }
        }
        let batch = Arc::new(batch);
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        if self.next_token == BROKEN {
            self.next_token = 0;
        }
        let n = batch.len();
        let outstanding = (n - batch.skip.len() + refused.len()) as u32;
        seg.read = Pos { offset: batch.end, next_seq: batch.next_seq };
        seg.flights.push_back(Flight { token, end: seg.read, outstanding, ok: 0, ok_bytes: 0, batch: batch.clone() });
        self.tokens.insert(token, rel.clone());
        self.in_flight_records += n;
        self.in_flight_bytes += batch.bytes();
        if live {
            self.live_sent += n as u64;
        } else {
            self.backlog_sent += n as u64;
        }
        for (idx, outcome) in refused {
            if let Some(b) = self.apply(Ack { token, idx, outcome }) {
                return Err(b.1);
            }
        }
        if n > batch.skip.len() {
            let more = bus.publish(batch, token).await?;
            for (idx, outcome) in more {
                if let Some(b) = self.apply(Ack { token, idx, outcome }) {
                    return Err(b.1);
                }
            }
            if let Some(e) = bus.take_broken() {
                return Err(e);
            }
        } else {
            self.advance(&rel);
        }
        Ok(true)
    }

    async fn persist(&mut self) {
        if self.dirty {
            self.persist_now().await;
        }
    }

    async fn persist_now(&mut self) {
        let file = cursor::cursor_file(&self.sink.state_dir, &self.sink.cfg.name);
        let positions: Vec<(PathBuf, Pos)> = self.segs.iter().map(|(r, s)| (r.clone(), s.acked)).collect();
        let fs = self.sink.fs.clone();
        let r = tokio::task::spawn_blocking(move || {
            cursor::store(&fs, &file, positions.iter().map(|(r, p)| (r.as_path(), *p)))
        })
        .await
        .expect("cursor task");
        match r {
            Ok(()) => self.dirty = false,
            Err(e) => {
                self.sink.metrics.sink_errors.with_label_values(&[self.name(), "state_write"]).inc();
                warn!(sink = %self.name(), error = %e, "cannot write the sink cursor (kept in memory; retried)");
            }
        }
    }

    /// Lag per (site, stream): records, bytes and the age of the oldest
    /// record not yet acknowledged. Streams caught up report 0.
    async fn report_lag(&mut self) {
        struct Behind {
            path: PathBuf,
            acked: Pos,
            len: u64,
            sealed: Option<(u64, u64)>,
        }
        let mut per: HashMap<(String, String), Vec<Behind>> = HashMap::new();
        for k in &self.seen_streams {
            per.entry(k.clone()).or_default();
        }
        for s in self.segs.values() {
            let key = (s.origin.site.clone(), s.origin.stream.clone());
            if self.seen_streams.insert(key.clone()) {
                // Every site/stream the sink carries has its series from the start.
                let m = &self.sink.metrics;
                m.sink_records.with_label_values(&[&self.sink.cfg.name, &key.0, &key.1]);
                m.sink_bytes.with_label_values(&[&self.sink.cfg.name, &key.0, &key.1]);
            }
            per.entry(key).or_default().push(Behind {
                path: self.sink.archive_dir.join(&s.local.rel),
                acked: s.acked,
                len: s.local.len,
                sealed: s.local.seal.as_ref().map(|x| (x.first_seq, x.next_seq)),
            });
        }
        let now = self.sink.clock.now_ms();
        let m = self.sink.metrics.clone();
        let name = self.sink.cfg.name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ((site, stream), segs) in per {
                let (mut records, mut bytes, mut oldest) = (0u64, 0u64, None::<i64>);
                for b in segs {
                    if b.acked.offset >= b.len {
                        continue;
                    }
                    bytes += b.len - b.acked.offset;
                    let (n, first_ms) = headers_from(&b.path, b.acked.offset, b.len);
                    records += match b.sealed {
                        Some((first, next)) => next.saturating_sub(b.acked.next_seq.max(first)),
                        None => n,
                    };
                    if let Some(ms) = first_ms {
                        oldest = Some(oldest.map_or(ms, |o: i64| o.min(ms)));
                    }
                }
                m.sink_lag_records.with_label_values(&[&name, &site, &stream]).set(records as i64);
                m.sink_lag_bytes.with_label_values(&[&name, &site, &stream]).set(bytes as i64);
                let secs = oldest.map(|ms| (now - ms).max(0) as f64 / 1000.0).unwrap_or(0.0);
                m.sink_lag_seconds.with_label_values(&[&name, &site, &stream]).set(secs);
            }
        })
        .await;
    }
}

/// Records in the frames from `offset` to `len` (headers only, no data
/// read), and the first record time there. Stops at anything not a header.
fn headers_from(path: &Path, mut offset: u64, len: u64) -> (u64, Option<i64>) {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else { return (0, None) };
    let mut head = vec![0u8; 8 + MAX_HEADER_LEN];
    let (mut records, mut first) = (0u64, None);
    while offset < len {
        let Ok(n) = f.read_at(&mut head, offset) else { break };
        let Ok(h) = FrameHeader::decode(&head[..n]) else { break };
        records += u64::from(h.records);
        first.get_or_insert(h.first_ms);
        offset += h.frame_len();
    }
    (records, first)
}
