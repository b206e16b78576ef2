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

pub mod broker;
pub mod bus;
pub mod cursor;
pub mod deadletter;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rabbitmq;
pub mod records;
pub mod watchdog;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BusConfig, SinkConfig};
use crate::metrics::{Metrics, Reason};
use crate::store::changes::{Changes, Subscriber};
use crate::store::clock::Clock;
use crate::store::delivered::Delivered;
use crate::store::follow::{self, Following, Shares};
use crate::store::fs::Fs;
use crate::store::recover::list_repaired;
use crate::store::segment::OnDisk as Local;
use crate::store::segment::SegmentName;
use broker::BusError;
use bus::Bus;
use cursor::Pos;
use deadletter::DeadLetters;
use records::{Batch, FrameDecoder, Origin, Read};
use watchdog::{Verdict, Watchdog};

/// Everything a sink needs; `run` drives it until cancelled.
pub struct Sink {
    /// The `[[sink]]` section.
    pub cfg: SinkConfig,
    /// `data_dir/archive`: the segments to deliver (mirrored and local).
    pub archive_dir: PathBuf,
    /// `data_dir/state`: cursors, dead letters and `sinks/<name>.delivered`.
    pub state_dir: PathBuf,
    /// `ferry_sink_*` are counted here.
    pub metrics: Metrics,
    /// The time for lag and backoff (a test clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Segments whose every record the broker acknowledged (retention may delete them).
    pub delivered: Arc<Delivered>,
    /// The filesystem state files are written through (fault injection in tests).
    pub fs: Fs,
    /// Wakes the sink when the archive grows or changes.
    pub changes: Arc<Changes>,
}

/// The broker's answer for one record (`idx` of the batch sent with `token`).
#[derive(Debug)]
pub struct Ack {
    /// The batch's token, given at publish.
    pub token: u32,
    /// The record's index in the batch.
    pub idx: u32,
    /// Acknowledged, refused or to retry.
    pub outcome: Outcome,
}

/// Token of an [`Ack`] that reports the connection itself broken; its
/// `idx` is the connection's session number.
const BROKEN: u32 = u32::MAX;

impl Ack {
    /// The connection of `session` is broken (`reason` is the label it is
    /// counted by; a report from a session already replaced is ignored).
    pub fn broken(session: u32, reason: &'static str, detail: String) -> Ack {
        Ack { token: BROKEN, idx: session, outcome: Outcome::Retry(reason, detail) }
    }
}

/// What the broker said about one record.
#[derive(Debug)]
pub enum Outcome {
    /// Acknowledged: durable in the broker.
    Ok,
    /// Refused for good (the reason label): dead-lettered, counted.
    Refused(&'static str),
    /// Failed for now (reason label, detail): start again from the
    /// acknowledged positions after a backoff.
    Retry(&'static str, String),
    /// Like `Retry`, but the broker refused one of the unconfirmed records
    /// without saying which: send them again one at a time to find it.
    RetryCarefully(String),
    /// The Kafka topic does not exist (and the brokers do not create it).
    UnknownTopic(String),
}

/// Why a Kafka sink cannot run in a build without the `kafka` feature.
pub use crate::config::NO_KAFKA;

/// Why the sink drops its connection and starts again from its
/// acknowledged positions.
#[derive(Debug, thiserror::Error)]
enum Restart {
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A record's answer said the connection is unusable (reason, detail).
    #[error("{1}")]
    Answer(&'static str, String),
    #[error("topic {0:?} does not exist; create it or allow auto-creation on the brokers")]
    UnknownTopic(String),
    #[error("no acknowledgement for {0:?} while records wait")]
    Stalled(Duration),
}

impl Reason for Restart {
    fn reason(&self) -> &'static str {
        match self {
            Restart::Bus(e) => e.reason(),
            Restart::Answer(r, _) => r,
            Restart::UnknownTopic(_) => "unknown_topic",
            Restart::Stalled(_) => "stalled",
        }
    }
}

/// The sink's own failures (the broker's are [`BusError`] and
/// [`Restart`]), as `ferry_sink_errors_total` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Its cursor or dead-letter file could not be written.
    StateWrite,
    /// A segment was deleted before the sink delivered it.
    DeletedUndelivered,
    /// A frame of the archive cannot be read: its records are skipped.
    DamagedFrame,
    /// A segment cannot be read now: tried again later.
    Read,
    /// No acknowledgement while records wait.
    Stalled,
}

impl Reason for Trouble {
    fn reason(&self) -> &'static str {
        match self {
            Trouble::StateWrite => "state_write",
            Trouble::DeletedUndelivered => "deleted_undelivered",
            Trouble::DamagedFrame => "damaged_frame",
            Trouble::Read => "read",
            Trouble::Stalled => "stalled",
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

impl follow::Followed for Seg {
    fn local(&mut self) -> &mut Local {
        &mut self.local
    }
    fn stalled_at(&mut self) -> &mut Option<u64> {
        &mut self.stalled_at
    }
}

/// The one `Origin` of a site/stream/node, shared by its segments.
fn intern(map: &mut HashMap<(String, String, String), Arc<Origin>>, n: &SegmentName) -> Arc<Origin> {
    map.entry((n.site.clone(), n.stream.clone(), n.node.clone()))
        .or_insert_with(|| Arc::new(Origin::new(&n.site, &n.stream, &n.node)))
        .clone()
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
    /// Records answered (acknowledged, refused, or skipped), one bit each.
    answered: Vec<u64>,
    /// Records 0..prefix are all answered: the cursor may move past them
    /// before the whole frame is (a crash then repeats less than a frame).
    prefix: u32,
}

impl Flight {
    fn new(token: u32, end: Pos, outstanding: u32, batch: Arc<Batch>) -> Flight {
        let mut f = Flight {
            token,
            end,
            outstanding,
            ok: 0,
            ok_bytes: 0,
            answered: vec![0; batch.len().div_ceil(64)],
            prefix: 0,
            batch,
        };
        let batch = f.batch.clone();
        for &i in &batch.skip {
            f.answer(i);
        }
        f
    }

    /// Record `idx` is answered; true when the answered prefix grew.
    fn answer(&mut self, idx: u32) -> bool {
        let i = idx as usize;
        if let Some(w) = self.answered.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
        let before = self.prefix;
        while (self.prefix as usize) < self.batch.len() {
            let p = self.prefix as usize;
            if self.answered[p / 64] & (1 << (p % 64)) == 0 {
                break;
            }
            self.prefix += 1;
        }
        self.prefix > before
    }

    /// Where a restart resumes if this is the oldest flight of its segment.
    fn resume_at(&self) -> Pos {
        Pos { offset: self.batch.offset, next_seq: self.batch.first_seq + u64::from(self.prefix) }
    }
}

/// What [`Run::next_flight`] found.
enum Next {
    /// Nothing readable now.
    Nothing,
    /// A frame passed over (damaged, or nothing in it to send): more may be ready.
    Skipped,
    /// A flight to hand to the broker.
    Publish(Arc<Batch>, u32),
}

const LAG_EVERY: Duration = Duration::from_secs(1);
const READ_RETRY: Duration = Duration::from_secs(5);

/// The running state of a sink.
struct Run<'a> {
    sink: &'a Sink,
    tx: mpsc::UnboundedSender<Ack>,
    segs: Following<Seg>,
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
    shares: Shares,
    rr: usize,
    dirty: bool,
    careful: usize,
    /// Number of the current broker connection (stamps its breakage reports).
    session: u32,
    watchdog: Watchdog,
    /// The broker acknowledged or refused a record since the watchdog's last look.
    heard: bool,
    /// Kafka topics found missing (named once each, until delivery to them works).
    missing_topics: HashSet<String>,
    /// Why the last session ended or the last connect failed (said with a stall).
    last_failure: String,
    seen_streams: HashSet<(String, String)>,
}

impl Sink {
    /// The sink's name (`[[sink]] name`).
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Deliver until `stop`; the cursor is written on the way out.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.cfg.name.clone();
        let m = self.metrics.clone();
        m.sink.sink_connected.with_label_values(&[&name]).set(0);
        m.sink.sink_stalled.with_label_values(&[&name]).set(0);
        m.sink.sink_segments_delivered.with_label_values(&[&name]);
        m.sink.sink_dead_letters.with_label_values(&[&name, "too_large"]);
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
        let writer = cursor::Writer::start(self.fs.clone(), cursor_file, name.clone(), m.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let run = self.start(tx, saved, dead);
        let mut delivery = Delivery {
            run,
            rx,
            writer,
            bus: None,
            backoff: self.cfg.backoff_min,
            next_connect: Instant::now(),
            changes: self.changes.subscribe(),
            next_write: Instant::now(),
            next_lag: Instant::now(),
            inbox: VecDeque::new(),
            failed: None,
        };
        info!(sink = %name, "sink started");
        loop {
            if stop.is_cancelled() {
                break;
            }
            if !delivery.turn(&stop).await {
                break;
            }
        }
        delivery.finish().await;
    }

    /// The sink's state before its first turn: nothing known of the archive
    /// yet but the cursor's positions.
    fn start(&self, tx: mpsc::UnboundedSender<Ack>, saved: HashMap<PathBuf, Pos>, dead: DeadLetters) -> Run<'_> {
        Run {
            sink: self,
            tx,
            segs: Following::default(),
            origins: Vec::new(),
            interned: HashMap::new(),
            saved,
            tokens: HashMap::new(),
            next_token: 0,
            dead,
            decoder: Some(FrameDecoder::new().expect("zstd decompressor")),
            in_flight_records: 0,
            in_flight_bytes: 0,
            shares: Shares::default(),
            rr: 0,
            dirty: false,
            careful: 0,
            session: 0,
            watchdog: Watchdog::new(self.cfg.stall_after, Instant::now()),
            heard: false,
            missing_topics: HashSet::new(),
            last_failure: String::new(),
            seen_streams: HashSet::new(),
        }
    }
}

/// The delivery loop around [`Run`]: the broker connection and its backoff,
/// the timers, and answers taken but not yet applied. Fields are declared in
/// the order they drop, which is the order the loop's locals dropped in when
/// they were locals: the connection before the [`Run`], the cursor writer last.
struct Delivery<'a> {
    /// A publish that failed: the session starts again at the next turn.
    failed: Option<Restart>,
    inbox: VecDeque<Ack>,
    next_lag: Instant,
    next_write: Instant,
    changes: Subscriber,
    next_connect: Instant,
    backoff: Duration,
    bus: Option<Bus>,
    run: Run<'a>,
    rx: mpsc::UnboundedReceiver<Ack>,
    writer: cursor::Writer,
}

impl Delivery<'_> {
    /// One turn of the loop; false when `stop` ended it while waiting.
    async fn turn(&mut self, stop: &CancellationToken) -> bool {
        // 1. What the broker said.
        let mut restart = self.take_answers();
        // 2. The archive: new segments, growth, seals, deletions, as the store tells.
        self.follow_archive().await;
        // 3. The watchdog, and what is shown each second.
        self.watch(&mut restart).await;
        if let Some(why) = restart {
            self.start_again(why);
        }
        // 4. Connect.
        self.connect().await;
        // The cursor follows the acknowledgements, written off this loop.
        self.run.offer_cursor(&self.writer, &mut self.next_write);
        // 5. The next frame, if the in-flight limits allow.
        let published = self.publish_next(stop).await;
        if published || self.failed.is_some() || !self.inbox.is_empty() {
            return true;
        }
        // 6. Nothing to do now: wait for an answer or the next timer.
        self.wait(stop).await
    }

    /// Apply the answers waiting, up to the first that ends the session
    /// (or the publish that failed last turn).
    fn take_answers(&mut self) -> Option<Restart> {
        let mut restart = self.failed.take();
        while restart.is_none() {
            let ack = match self.inbox.pop_front() {
                Some(a) => a,
                None => match self.rx.try_recv() {
                    Ok(a) => a,
                    Err(_) => break,
                },
            };
            if matches!(ack.outcome, Outcome::Ok) {
                self.backoff = self.run.sink.cfg.backoff_min;
            }
            restart = self.run.apply(ack);
        }
        restart
    }

    async fn follow_archive(&mut self) {
        if self.changes.has_changed() {
            let u = self.changes.take();
            if u.relist || self.run.grown(&u.lens) {
                self.run.scan(&u.lens).await;
            }
        }
    }

    /// Each second: the lag shown, and the watchdog's verdict; a stall while
    /// connected ends the session unless something already does.
    async fn watch(&mut self, restart: &mut Option<Restart>) {
        let now = Instant::now();
        if now >= self.next_lag {
            self.next_lag = now + LAG_EVERY;
            self.run.report_lag().await;
            // Answers since the last look are progress (noted here, not per record).
            if std::mem::take(&mut self.run.heard) {
                let verdict = self.run.watchdog.progress(now);
                self.run.judged(verdict, true);
            }
            let verdict = self.run.watchdog.check(self.run.pending(), now);
            if let Some(r) = self.run.judged(verdict, self.bus.is_some()) {
                restart.get_or_insert(r);
            }
        }
    }

    /// End the session for `why`: connect again after the backoff, from the
    /// acknowledged positions.
    fn start_again(&mut self, why: Restart) {
        let sink = self.run.sink;
        self.run.restart_noted(&why, self.backoff);
        // The old connection is let go off this loop: closing one the
        // broker reset can wait the whole `request_timeout` for an
        // answer that never comes (CI saw a RabbitMQ `stop_app` cost
        // 10 s of delivery that way), and the next session must not
        // wait for it.
        if let Some(b) = self.bus.take() {
            tokio::spawn(b.close());
        }
        sink.metrics.sink.sink_connected.with_label_values(&[&sink.cfg.name]).set(0);
        self.run.reset();
        // Reports of the old session may still be queued: they name
        // tokens that no longer exist and are ignored, but every
        // missing topic among them is named, not only the first.
        for a in self.inbox.drain(..).chain(std::iter::from_fn(|| self.rx.try_recv().ok())) {
            if let Outcome::UnknownTopic(t) = a.outcome {
                self.run.restart_noted(&Restart::UnknownTopic(t), self.backoff);
            }
        }
        self.next_connect = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(sink.cfg.backoff_max);
    }

    /// Open a session when there is none and the backoff has passed.
    async fn connect(&mut self) {
        if self.bus.is_some() || Instant::now() < self.next_connect {
            return;
        }
        let (sink, run) = (self.run.sink, &mut self.run);
        let (m, name) = (&sink.metrics, &sink.cfg.name);
        run.session = run.session.wrapping_add(1);
        match Bus::connect(&sink.cfg, run.tx.clone(), m, run.careful, run.session).await {
            Ok(b) => {
                m.sink.sink_connected.with_label_values(&[name]).set(1);
                self.bus = Some(b);
                // Handed to this connection; a later failure sets it anew.
                run.careful = 0;
            }
            Err(e) => {
                run.last_failure = e.to_string();
                m.sink.error(name, &e);
                warn!(sink = %name, reason = e.reason(), error = %e, retry_in = ?self.backoff, "cannot reach the broker");
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(sink.cfg.backoff_max);
            }
        }
    }

    /// Read the next frame and hand it to the broker, if connected and the
    /// in-flight limits allow. Answers are taken while it is handed over (a
    /// frame may take a while), so the cursor keeps following them. True
    /// when a frame was handed over or passed over: more may be ready.
    async fn publish_next(&mut self, stop: &CancellationToken) -> bool {
        let Delivery { run, rx, writer, bus, backoff, next_write, failed, .. } = self;
        let sink = run.sink;
        let Some(b) = bus.as_mut() else { return false };
        if !(run.in_flight_records < sink.cfg.max_in_flight && run.in_flight_bytes < sink.cfg.max_in_flight_bytes) {
            return false;
        }
        let (batch, token) = match run.next_flight().await {
            Ok(Next::Nothing) => return false,
            Ok(Next::Skipped) => return true,
            Ok(Next::Publish(batch, token)) => (batch, token),
            Err(e) => {
                *failed = Some(e);
                return false;
            }
        };
        let handed = {
            let publish = b.publish(batch, token);
            tokio::pin!(publish);
            loop {
                tokio::select! {
                    r = &mut publish => break Some(r),
                    // Checked at the top of the loop.
                    _ = stop.cancelled() => break None,
                    Some(a) = rx.recv() => {
                        // Every answer already there, then one look at the cursor.
                        if let Some(r) = apply_queued(run, rx, backoff, a) {
                            *failed = Some(r);
                        }
                        if failed.is_some() {
                            break None;
                        }
                        run.offer_cursor(writer, next_write);
                    }
                }
            }
        };
        match handed {
            Some(Ok(answers)) => {
                for (idx, outcome) in answers {
                    if let Some(r) = run.apply(Ack { token, idx, outcome }) {
                        failed.get_or_insert(r);
                        break;
                    }
                }
                if let Some(e) = b.take_broken() {
                    failed.get_or_insert(e.into());
                }
            }
            Some(Err(e)) => *failed = Some(e.into()),
            None => {}
        }
        true
    }

    /// Sleep until an answer, a change in the archive, or the next timer;
    /// false when `stop` came first.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let mut until = self.next_lag;
        if self.run.dirty {
            until = until.min(self.next_write);
        }
        if self.bus.is_none() {
            until = until.min(self.next_connect);
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            a = self.rx.recv() => if let Some(a) = a { self.inbox.push_back(a) },
            _ = self.changes.changed() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        true
    }

    /// The last cursor written, then the session closed.
    async fn finish(mut self) {
        let sink = self.run.sink;
        self.writer.offer(self.run.positions());
        self.writer.finish().await;
        if let Some(b) = self.bus.take() {
            b.close().await;
        }
        sink.metrics.sink.sink_connected.with_label_values(&[&sink.cfg.name]).set(0);
        info!(sink = %sink.cfg.name, "sink stopped");
    }
}

/// `first` and every answer already queued behind it, applied; `Some` at
/// the first that ends the session.
fn apply_queued(
    run: &mut Run<'_>,
    rx: &mut mpsc::UnboundedReceiver<Ack>,
    backoff: &mut Duration,
    first: Ack,
) -> Option<Restart> {
    let mut next = Some(first);
    while let Some(a) = next.take() {
        if matches!(a.outcome, Outcome::Ok) {
            *backoff = run.sink.cfg.backoff_min;
        }
        if let Some(r) = run.apply(a) {
            return Some(r);
        }
        next = rx.try_recv().ok();
    }
    None
}

impl Run<'_> {
    fn name(&self) -> &str {
        &self.sink.cfg.name
    }

    /// Apply one answer; `Some` when the session must start again.
    fn apply(&mut self, ack: Ack) -> Option<Restart> {
        if ack.token == BROKEN {
            if ack.idx != self.session {
                return None;
            }
            return match ack.outcome {
                Outcome::Retry(r, d) => Some(Restart::Answer(r, d)),
                other => Some(Restart::Answer("fatal", format!("{other:?}"))),
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
                self.dirty |= f.answer(ack.idx);
            }
            Outcome::Refused(reason) => {
                let b = f.batch.clone();
                let i = ack.idx as usize;
                if let Err(e) = self.dead.add(&b.origin, b.seq(i), b.last_ms, &b.rel, reason, b.record(i)) {
                    return Some(Restart::Answer(
                        "dead_letter_write",
                        format!("cannot write the dead-letter file: {e}"),
                    ));
                }
                let m = &self.sink.metrics;
                m.sink.sink_dead_letters.with_label_values(&[&self.sink.cfg.name, reason]).inc();
                warn!(sink = %self.sink.cfg.name, origin = %b.origin.key, seq = b.seq(i), bytes = b.record(i).len(), reason,
                    "broker refused a record for good; written to the dead-letter file");
                let f = seg.flights.iter_mut().find(|f| f.token == ack.token)?;
                f.outstanding = f.outstanding.saturating_sub(1);
                self.dirty |= f.answer(ack.idx);
            }
            Outcome::Retry(r, d) => return Some(Restart::Answer(r, d)),
            Outcome::RetryCarefully(d) => {
                self.careful = self.in_flight_records.max(1);
                return Some(Restart::Answer("refused_unknown_record", d));
            }
            Outcome::UnknownTopic(t) => return Some(Restart::UnknownTopic(t)),
        }
        self.heard = true;
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
            m.sink.sink_records.with_label_values(&[name, &o.site, &o.stream]).inc_by(f.ok);
            m.sink.sink_bytes.with_label_values(&[name, &o.site, &o.stream]).inc_by(f.ok_bytes);
            // Acknowledgements flow: the broker is there (librdkafka only
            // reports that it is gone, not that it is back).
            m.sink.sink_connected.with_label_values(&[name]).set(1);
            self.dirty = true;
            if f.ok > 0 && !self.missing_topics.is_empty() {
                if let BusConfig::Kafka(k) = &self.sink.cfg.bus {
                    let topic = o.render(&k.topic);
                    if self.missing_topics.remove(&topic) {
                        m.sink.sink_missing_topic.with_label_values(&[name, &topic]).set(0);
                        info!(sink = %name, %topic, "the topic exists now: delivering to it");
                    }
                }
            }
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
            self.sink.metrics.sink.error(self.name(), &Trouble::StateWrite);
            warn!(sink = %self.name(), error = %e, "cannot record a delivered segment");
            return;
        }
        self.sink.metrics.sink.sink_segments_delivered.with_label_values(&[self.name()]).inc();
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
        self.segs.grown(lens).1
    }

    async fn scan(&mut self, lens: &HashMap<PathBuf, u64>) {
        let s = self.sink;
        let (fs, a, st, d) = (s.fs.clone(), s.archive_dir.clone(), s.state_dir.clone(), s.delivered.clone());
        let (now, m, cfg) = (s.clock.now_ms(), s.metrics.clone(), s.cfg.clone());
        let sel = move |rel: &Path| follow::selects(&cfg.sites, &cfg.streams, rel);
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
        let mut origins: BTreeMap<Arc<Origin>, Vec<PathBuf>> = BTreeMap::new();
        for l in &found {
            origins.entry(intern(&mut self.interned, &l.name)).or_default().push(l.rel.clone());
        }
        let (interned, saved) = (&mut self.interned, &mut self.saved);
        let merged = self.segs.merge(found, lens, |l| {
            let origin = intern(interned, &l.name);
            let pos = saved.remove(&l.rel).unwrap_or_default();
            Seg { local: l, origin, acked: pos, read: pos, flights: VecDeque::new(), stalled_at: None, retry_at: None }
        });
        for (rel, s) in merged.removed {
            // Deleted under the sink (retention with on_full = "drop_oldest").
            for f in s.flights {
                self.tokens.remove(&f.token);
                self.in_flight_records -= f.batch.len();
                self.in_flight_bytes -= f.batch.bytes();
            }
            if s.local.seal.as_ref().is_none_or(|x| s.acked.offset < x.len) {
                self.sink.metrics.sink.error(self.name(), &Trouble::DeletedUndelivered);
                warn!(sink = %self.name(), path = %rel.display(), "segment deleted before the sink delivered it");
            }
            self.dirty = true;
        }
        self.origins = origins.into_iter().collect();
        for rel in merged.added.into_iter().chain(merged.sealed) {
            self.check_done(&rel);
        }
        self.segs.grown(lens);
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
            let backlog = Some(head).filter(|h| self.segs[*h].readable(now));
            let live = (share > 0.0)
                .then(|| list.last())
                .flatten()
                .filter(|l| *l != head)
                .filter(|l| self.segs.get(*l).is_some_and(|s| s.local.seal.is_none() && s.readable(now)));
            if let Some((rel, live)) = self.shares.choose(live, backlog, share) {
                self.rr = (i + 1) % n.max(1);
                return Some((rel.clone(), live));
            }
        }
        None
    }

    /// Read the next frame of the picked segment and make it a flight.
    async fn next_flight(&mut self) -> Result<Next, Restart> {
        let Some((rel, live)) = self.pick() else { return Ok(Next::Nothing) };
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
                return Ok(Next::Nothing);
            }
            Ok(Read::Damaged { at, next, error }) => {
                m.sink.error(&name, &Trouble::DamagedFrame);
                error!(sink = %name, path = %rel.display(), offset = at, resumes_at = next, %error,
                    "damaged frame in the archive: its records cannot be delivered (ferry verify tells more)");
                seg.read = Pos { offset: next, next_seq: 0 };
                if seg.flights.is_empty() {
                    seg.acked = seg.read;
                }
                return Ok(Next::Skipped);
            }
            Err(e) => {
                m.sink.error(&name, &Trouble::Read);
                warn!(sink = %name, path = %rel.display(), error = %e, "cannot read a segment; trying again later");
                seg.retry_at = Some(Instant::now() + READ_RETRY);
                return Ok(Next::Nothing);
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
        seg.flights.push_back(Flight::new(token, seg.read, outstanding, batch.clone()));
        self.tokens.insert(token, rel.clone());
        self.in_flight_records += n;
        self.in_flight_bytes += batch.bytes();
        self.shares.sent(n as u64, live);
        for (idx, outcome) in refused {
            if let Some(r) = self.apply(Ack { token, idx, outcome }) {
                return Err(r);
            }
        }
        if n > batch.skip.len() {
            Ok(Next::Publish(batch, token))
        } else {
            self.advance(&rel);
            Ok(Next::Skipped)
        }
    }

    /// Hand the positions to the cursor writer when they moved and the last
    /// offer is [`cursor::WRITE_EVERY`] old.
    fn offer_cursor(&mut self, writer: &cursor::Writer, next: &mut Instant) {
        let now = Instant::now();
        if self.dirty && now >= *next {
            *next = now + cursor::WRITE_EVERY;
            writer.offer(self.positions());
            self.dirty = false;
        }
    }

    /// Every segment in progress with its acknowledged position: what the
    /// cursor file holds.
    fn positions(&self) -> cursor::Positions {
        let at = |s: &Seg| match s.flights.front() {
            Some(f) if f.prefix > 0 => f.resume_at(),
            _ => s.acked,
        };
        Arc::new(self.segs.iter().map(|(r, s)| (r.clone(), at(s))).collect())
    }

    /// Records wait for the broker: published and unacknowledged, or on
    /// disk past the acknowledged position.
    fn pending(&self) -> bool {
        self.in_flight_records > 0 || self.segs.values().any(|s| s.acked.offset < s.local.len)
    }

    /// Act on the watchdog's verdict: a stall is said (every `stall_after`
    /// while it lasts, whatever the cause) and, when connected, ends the
    /// session.
    fn judged(&self, verdict: Verdict, connected: bool) -> Option<Restart> {
        let (m, name) = (&self.sink.metrics, self.name());
        match verdict {
            Verdict::Fine => None,
            Verdict::Recovered { after } => {
                m.sink.sink_stalled.with_label_values(&[name]).set(0);
                info!(sink = %name, stalled_for = ?after, "the sink delivers again");
                None
            }
            Verdict::Stalled { silent, .. } => {
                m.sink.sink_stalled.with_label_values(&[name]).set(1);
                m.sink.error(name, &Trouble::Stalled);
                if connected {
                    warn!(sink = %name, silent = ?silent, in_flight = self.in_flight_records,
                        "sink stalled: no acknowledgement from the broker while records wait; dropping the connection and starting again from the acknowledged positions");
                    Some(Restart::Stalled(silent))
                } else {
                    warn!(sink = %name, silent = ?silent, last_failure = %self.last_failure,
                        "sink stalled: no acknowledgement while records wait; no working broker connection");
                    None
                }
            }
        }
    }

    /// Count and log why the session starts again. A missing Kafka topic
    /// is named and counted once per topic, not at every retry.
    fn restart_noted(&mut self, why: &Restart, backoff: Duration) {
        if !matches!(why, Restart::Stalled(_)) {
            self.last_failure = why.to_string();
        }
        let (m, name) = (&self.sink.metrics, self.sink.cfg.name.as_str());
        if let Restart::UnknownTopic(t) = why {
            if self.missing_topics.insert(t.clone()) {
                m.sink.error(name, why);
                m.sink.sink_missing_topic.with_label_values(&[name, t]).set(1);
                error!(sink = %name, topic = %t, retry_in = ?backoff, "{why}");
            }
            return;
        }
        if !matches!(why, Restart::Stalled(_)) {
            m.sink.error(name, why);
        }
        warn!(sink = %name, reason = why.reason(), error = %why, retry_in = ?backoff,
            "broker failed; starting again from the acknowledged positions");
    }

    /// Lag per (site, stream): records, bytes and the age of the oldest
    /// record not yet acknowledged. Streams caught up report 0.
    async fn report_lag(&mut self) {
        for s in self.segs.values() {
            let key = (s.origin.site.clone(), s.origin.stream.clone());
            if self.seen_streams.insert(key.clone()) {
                // Every site/stream the sink carries has its series from the start.
                let m = &self.sink.metrics;
                m.sink.sink_records.with_label_values(&[&self.sink.cfg.name, &key.0, &key.1]);
                m.sink.sink_bytes.with_label_values(&[&self.sink.cfg.name, &key.0, &key.1]);
            }
        }
        let behind: Vec<follow::Behind> =
            self.segs.values().map(|s| follow::Behind::new(&s.local, s.acked.offset, s.acked.next_seq)).collect();
        let (archive, streams) = (self.sink.archive_dir.clone(), self.seen_streams.clone());
        let now = self.sink.clock.now_ms();
        let m = self.sink.metrics.clone();
        let name = self.sink.cfg.name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ((site, stream), lag) in follow::lag_by_stream(&archive, behind, &streams, true) {
                m.sink.sink_lag_records.with_label_values(&[&name, &site, &stream]).set(lag.records as i64);
                m.sink.sink_lag_bytes.with_label_values(&[&name, &site, &stream]).set(lag.bytes as i64);
                m.sink.sink_lag_seconds.with_label_values(&[&name, &site, &stream]).set(lag.seconds(now));
            }
        })
        .await;
    }
}
