//! Group commit: one writer thread per stream.
//!
//! Batches arrive on a bounded channel. The writer gathers them until
//! `commit_bytes` is reached, `commit_interval` has passed since the first
//! pending record, or (when a sender waits for an acknowledgement) nothing
//! more is queued; then it compresses the pending lines into one frame,
//! writes it, fsyncs per policy and only then acknowledges. Records without
//! an acknowledgement (plain syslog) wait up to the interval, which buys
//! compression; records with one (RELP, HTTP) are committed as soon as the
//! queue is drained, which buys latency. The thread is a plain OS thread
//! because compression and fsync block; it reads its channel through the
//! runtime's handle.
//!
//! With `compress_threads = N` a large commit (at least [`PARALLEL_MIN`]) is
//! compressed as N frames at once, split at batch boundaries so each frame's
//! header stays exact, and the frames are written back to back as one
//! append: frame order, group commit and acknowledgement after the fsync are
//! as for one frame. The default is 1: on the development VM two zstd
//! streams at once run barely faster than one and cost a quarter more CPU
//! (benches/README.md); where cores do not share so much, more threads lift
//! the ceiling one commit thread puts on a single stream.
//!
//! ## When the disk fails
//! A commit that fails leaves nothing of its frame in the segment
//! ([`OpenSegment::append`] cuts it; a failed fsync abandons the segment at
//! its last durable length). Senders waiting for an acknowledgement are told
//! it failed and keep their records (RELP resends, HTTP answers 507/503);
//! records without one stay pending here and are written once the disk
//! takes them, so nothing is archived twice and plain syslog loses nothing
//! already read. The stream is then *unwritable* ([`Health`]): new batches
//! are refused at the handle (streams stop reading, datagrams drop and
//! count, RELP holds acks), `/readyz` answers 503, and the writer probes the
//! disk every [`PROBE_MIN`]..[`PROBE_MAX`] until a write and an fsync
//! succeed again, then takes batches by itself: no restart.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tracing::{error, info, warn};

use super::changes::Changes;
use super::clock::Clock;
use super::frame::{FrameEncoder, FrameMeta};
use super::fs::{Fs, Trouble};
use super::segment::{hour_key, AppendError, OpenSegment, SegmentName};
use super::{Batch, Committed, Error, Health};
use crate::config::{FsyncPolicy, OnFull, StoreConfig};
use crate::metrics::{DropReason, Metrics};

/// First retry after a disk fault; doubles up to [`PROBE_MAX`].
pub const PROBE_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two probes of a failing disk: space freed by an
/// operator is used within this.
pub const PROBE_MAX: Duration = Duration::from_millis(800);
/// Under `on_full = "drop_oldest"`, how often the writer checks free space.
const SPACE_CHECK: Duration = Duration::from_millis(500);

/// What the writer receives.
pub enum Msg {
    /// A batch, with its share of the stream's queue budget: released when
    /// the writer takes the batch into its pending commit.
    Batch(Batch, OwnedSemaphorePermit),
    /// Commit what is pending now and answer when it is durable.
    Flush(oneshot::Sender<()>),
    /// Commit what is pending, seal, and stop.
    Close,
}

/// Everything a writer thread owns.
pub struct Writer {
    pub stream: String,
    pub site: String,
    pub node: String,
    pub archive_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cfg: StoreConfig,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub fs: Fs,
    pub health: Arc<Health>,
    /// Tells retention to make room now (`on_full = "drop_oldest"`).
    pub room: Arc<Notify>,
    pub rx: mpsc::Receiver<Msg>,
    pub next_segment_seq: u64,
    pub next_record_seq: u64,
    /// The newest segment name of this stream: a new one never sorts before
    /// it, whatever the clock says.
    pub last_name: Option<SegmentName>,
    /// Segments being closed whose cut or seal record the disk refused:
    /// retried with every probe and after every good commit (and, if the
    /// process stops first, by recovery at the next start).
    pub closing: Vec<OpenSegment>,
    /// Told of every commit and every segment created or closed: it wakes
    /// the forwarders.
    pub changes: Arc<Changes>,
    /// Told of every byte written (`on_full = "reject"` between passes).
    pub fullness: Arc<super::retention::Fullness>,
    /// The stream's queue budget: closed when the writer stops, so a sender
    /// waiting for room is told the store closed.
    pub budget: Arc<tokio::sync::Semaphore>,
}

struct Part {
    listener: Arc<str>,
    records: u32,
    truncated: u32,
    /// Receive times of its first and last record (per frame when a commit
    /// is split into several).
    first_ms: i64,
    last_ms: i64,
    /// Length of this part's lines in `Pending::raw` (parts are in order).
    bytes: usize,
    ack: Option<oneshot::Sender<Result<Committed, Error>>>,
}

struct Pending {
    raw: Vec<u8>,
    records: u32,
    truncated: u32,
    first_ms: i64,
    last_ms: i64,
    /// Who sent the pending records, in order: acknowledged per part, or
    /// told of a failure per part.
    parts: Vec<Part>,
    flushes: Vec<oneshot::Sender<()>>,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.records == 0 && self.flushes.is_empty()
    }

    fn clear(&mut self) {
        self.raw.clear();
        self.records = 0;
        self.truncated = 0;
        self.since = None;
        self.last_ms = 0;
        self.first_ms = 0;
    }

    /// After a failed commit: tell every sender that waits for an answer and
    /// drop its lines; keep the rest (no acknowledgement to give, so the
    /// only way not to lose them is to write them later).
    fn keep_unacknowledged(&mut self, mut fail: impl FnMut(oneshot::Sender<Result<Committed, Error>>)) {
        let mut at = 0;
        let mut kept = 0;
        let (mut records, mut truncated) = (0, 0);
        for mut part in std::mem::take(&mut self.parts) {
            let range = at..at + part.bytes;
            at += part.bytes;
            match part.ack.take() {
                Some(ack) => fail(ack),
                None => {
                    self.raw.copy_within(range, kept);
                    kept += part.bytes;
                    records += part.records;
                    truncated += part.truncated;
                    self.parts.push(part);
                }
            }
        }
        self.raw.truncate(kept);
        self.records = records;
        self.truncated = truncated;
        if records == 0 {
            self.since = None;
        }
    }
}

/// Where a commit failed.
enum Fault {
    /// Compressing (never the disk's fault).
    Encode(std::io::Error),
    Create(std::io::Error),
    /// The frame did not land; the segment is as before.
    Write(std::io::Error),
    /// The frame may be partly or wholly in the file, and the file cannot be
    /// trusted: the segment was abandoned.
    Abandoned(&'static str, std::io::Error),
}

impl Fault {
    fn io(&self) -> &std::io::Error {
        match self {
            Fault::Encode(e) | Fault::Create(e) | Fault::Write(e) | Fault::Abandoned(_, e) => e,
        }
    }
    fn op(&self) -> &'static str {
        match self {
            Fault::Encode(_) => "encode",
            Fault::Create(_) => "create",
            Fault::Write(_) => "write",
            Fault::Abandoned(op, _) => op,
        }
    }
}

/// The stream cannot write: since when, and when to try again.
struct Down {
    trouble: Trouble,
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    /// Bytes the failed frame needed: the probe writes this much.
    need: usize,
}

/// What the writer works on between messages: the encoder, the pending
/// records, the frame buffer, the open segment, and whether the disk is down.
struct Work {
    /// One encoder per compression thread; a large commit is compressed as
    /// several frames at once ([`pieces`]).
    encs: Vec<FrameEncoder>,
    /// Each piece's frame, before they are joined into `frame`.
    scratch: Vec<Vec<u8>>,
    p: Pending,
    frame: Vec<u8>,
    seg: Option<OpenSegment>,
    down: Option<Down>,
}

impl Writer {
    /// Run until the channel closes; then commit what is pending and seal.
    pub fn run(mut self, handle: Handle) {
        let Some(mut w) = self.start() else { return };
        let mut last_sync = Instant::now();
        let mut last_space_check = Instant::now();
        let mut overflow: VecDeque<Msg> = VecDeque::new();
        let mut dirty = false;
        let idle = self.cfg.commit_interval.max(Duration::from_millis(500)).min(Duration::from_secs(1));
        loop {
            // Drain what is queued without waiting.
            let closed = self.drain_queued(&mut w.p, &mut overflow);
            if let Some(d) = &w.down {
                if closed || Instant::now() >= d.retry_at {
                    self.retry(&mut w);
                }
                self.refuse_overflow(&w, &mut overflow);
            } else {
                self.commit_if_due(&mut w, closed, &mut dirty);
            }
            if closed {
                break;
            }
            self.roll_idle_segment(&mut w);
            self.sync_on_interval(&mut w, &mut dirty, &mut last_sync);
            if self.cfg.retention.on_full == OnFull::DropOldest && last_space_check.elapsed() >= SPACE_CHECK {
                last_space_check = Instant::now();
                self.check_space();
            }
            if w.p.raw.len() >= self.cfg.commit_bytes && w.down.is_none() {
                continue;
            }
            let wait = match (&w.down, w.p.since) {
                (Some(d), _) => d.retry_at.saturating_duration_since(Instant::now()),
                (None, Some(s)) => self.cfg.commit_interval.saturating_sub(s.elapsed()),
                (None, None) => idle,
            };
            if wait.is_zero() {
                continue;
            }
            if !self.receive(&handle, &mut w, &mut overflow, wait) {
                break;
            }
        }
        self.stop(&mut w, &mut overflow);
    }

    /// The encoders and an empty commit; `None` (said) when no compressor can
    /// be made.
    fn start(&self) -> Option<Work> {
        let workers = self.cfg.compress_threads.max(1);
        let (codec, level) = codec_of(&self.cfg);
        let encs: Result<Vec<FrameEncoder>, _> = (0..workers).map(|_| FrameEncoder::with(codec, level)).collect();
        let encs = match encs {
            Ok(e) => e,
            Err(e) => {
                error!(stream = %self.stream, error = %e, "cannot create the compressor; stream writer stops");
                return None;
            }
        };
        let p = Pending {
            raw: Vec::with_capacity(self.cfg.commit_bytes + (64 << 10)),
            records: 0,
            truncated: 0,
            first_ms: 0,
            last_ms: 0,
            parts: Vec::new(),
            flushes: Vec::new(),
            since: None,
        };
        let scratch = vec![Vec::new(); encs.len()];
        Some(Work { encs, scratch, p, frame: Vec::new(), seg: None, down: None })
    }

    /// Take what is queued, held messages first, without waiting and up to a
    /// full commit. True when the stream is closing.
    fn drain_queued(&mut self, p: &mut Pending, overflow: &mut VecDeque<Msg>) -> bool {
        while p.raw.len() < self.cfg.commit_bytes {
            let next = match overflow.pop_front() {
                Some(m) => Ok(m),
                None => self.rx.try_recv(),
            };
            match next {
                Ok(Msg::Close) => return true,
                Ok(m) => self.take(m, p),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Senders waiting behind a full pending commit while the disk refuses
    /// writes are told now (nothing of theirs is written), not left hanging.
    fn refuse_overflow(&self, w: &Work, overflow: &mut VecDeque<Msg>) {
        if let Some(d) = &w.down {
            let trouble = d.trouble;
            overflow.retain_mut(|m| match m {
                Msg::Batch(b, _) if b.ack.is_some() => {
                    let ack = b.ack.take().expect("checked");
                    let _ = ack.send(Err(Error::Unwritable { stream: self.stream.clone(), trouble }));
                    false
                }
                _ => true,
            });
        }
    }

    /// Commit when it is time: closing, a full commit, the interval passed
    /// since the first pending record, or someone waits and nothing more is
    /// queued (see the module docs).
    fn commit_if_due(&mut self, w: &mut Work, closed: bool, dirty: &mut bool) {
        let waited_out = w.p.since.is_some_and(|s| s.elapsed() >= self.cfg.commit_interval);
        let someone_waits = w.p.parts.iter().any(|x| x.ack.is_some()) || !w.p.flushes.is_empty();
        let queue_empty = self.rx.is_empty();
        if !w.p.is_empty()
            && (closed || w.p.raw.len() >= self.cfg.commit_bytes || waited_out || (someone_waits && queue_empty))
        {
            self.commit(w);
            if w.down.is_none() {
                *dirty = !matches!(self.cfg.fsync, FsyncPolicy::Always);
                if !self.closing.is_empty() {
                    self.close_segments();
                }
            }
        }
    }

    /// Roll an idle segment at the hour so the last hour is sealed on time.
    fn roll_idle_segment(&mut self, w: &mut Work) {
        if w.p.is_empty() && w.down.is_none() {
            if let Some(s) = &w.seg {
                if s.name.hour_key() < hour_key(self.clock.now_ms()) {
                    self.seal(w.seg.take());
                }
            }
        }
    }

    /// `fsync = "interval"`: sync what was written since the last one.
    fn sync_on_interval(&mut self, w: &mut Work, dirty: &mut bool, last_sync: &mut Instant) {
        if let FsyncPolicy::Interval(iv) = self.cfg.fsync {
            if *dirty && last_sync.elapsed() >= iv {
                if let Some(s) = &mut w.seg {
                    if let Err(e) = s.sync() {
                        self.fsync_failed(w, e);
                    }
                }
                *last_sync = Instant::now();
                *dirty = false;
            }
        }
    }

    /// Wait up to `wait` for one message. False when the stream is closing,
    /// once what is pending was committed (or retried, the disk down).
    fn receive(&mut self, handle: &Handle, w: &mut Work, overflow: &mut VecDeque<Msg>, wait: Duration) -> bool {
        match handle.block_on(async { tokio::time::timeout(wait, self.rx.recv()).await }) {
            Ok(Some(Msg::Close)) | Ok(None) => {
                if !w.p.is_empty() {
                    if w.down.is_some() {
                        self.retry(w);
                    } else {
                        self.commit(w);
                    }
                }
                return false;
            }
            // Down with a full commit pending: later batches wait in order
            // (bounded: the stream refuses new ones while down), while
            // Flush and Close are still heard.
            Ok(Some(m @ Msg::Batch(..))) if w.p.raw.len() >= self.cfg.commit_bytes => overflow.push_back(m),
            Ok(Some(m)) => self.take(m, &mut w.p),
            Err(_) => {}
        }
        true
    }

    /// After the loop: everyone answered or counted, the segment synced and
    /// sealed, the queue budget closed.
    fn stop(&mut self, w: &mut Work, overflow: &mut VecDeque<Msg>) {
        self.drop_unwritten(w);
        self.answer_queued(w, overflow);
        if let Some(s) = &mut w.seg {
            if let Err(e) = s.sync() {
                self.fsync_failed(w, e);
            }
        }
        self.seal(w.seg.take());
        self.budget.close();
        info!(stream = %self.stream, "stream writer stopped");
    }

    /// Stopping: what could not be written is dropped now, counted; waiting
    /// senders are told the store closed, flushes are answered.
    fn drop_unwritten(&mut self, w: &mut Work) {
        if w.p.records > 0 {
            let reason = match w.down.as_ref().map(|d| d.trouble) {
                Some(Trouble::DiskFull) => DropReason::DiskFull,
                _ => DropReason::StoreError,
            };
            error!(stream = %self.stream, records = w.p.records, reason = reason.as_str(),
                "stopping while the disk refuses writes: pending records without acknowledgement are dropped");
            w.p.keep_unacknowledged(|ack| {
                let _ = ack.send(Err(Error::Closed));
            });
            for part in w.p.parts.drain(..) {
                self.metrics.drop_records(&part.listener, reason, u64::from(part.records));
            }
        }
        for f in w.p.flushes.drain(..) {
            let _ = f.send(());
        }
    }

    /// What is still queued at the stop (sent after Close, or held while
    /// the disk refused writes) is answered or counted, never lost silently.
    fn answer_queued(&mut self, w: &Work, overflow: &mut VecDeque<Msg>) {
        let reason = if w.down.as_ref().is_some_and(|d| d.trouble == Trouble::DiskFull) {
            DropReason::DiskFull
        } else {
            DropReason::StoreError
        };
        while let Some(m) = overflow.pop_front().or_else(|| self.rx.try_recv().ok()) {
            match m {
                Msg::Batch(b, _) => match b.ack {
                    Some(ack) => {
                        let _ = ack.send(Err(Error::Closed));
                    }
                    None => self.metrics.drop_records(&b.listener, reason, u64::from(b.records)),
                },
                Msg::Flush(f) => {
                    let _ = f.send(());
                }
                Msg::Close => {}
            }
        }
    }

    fn take(&self, m: Msg, p: &mut Pending) {
        match m {
            Msg::Batch(b, _budget) => {
                if b.records == 0 {
                    if let Some(ack) = b.ack {
                        let _ = ack.send(Ok(Committed { first_seq: self.next_record_seq, records: 0 }));
                    }
                    return;
                }
                if p.records == 0 {
                    p.first_ms = b.first_ms;
                    p.since = Some(Instant::now());
                }
                p.last_ms = b.last_ms.max(p.last_ms);
                p.raw.extend_from_slice(&b.data);
                p.records += b.records;
                p.truncated += b.truncated;
                match p.parts.last_mut() {
                    Some(last)
                        if b.ack.is_none()
                            && last.ack.is_none()
                            && last.bytes < PART_MAX
                            && Arc::ptr_eq(&last.listener, &b.listener) =>
                    {
                        last.records += b.records;
                        last.truncated += b.truncated;
                        last.bytes += b.data.len();
                        last.first_ms = last.first_ms.min(b.first_ms);
                        last.last_ms = last.last_ms.max(b.last_ms);
                    }
                    _ => p.parts.push(Part {
                        listener: b.listener,
                        records: b.records,
                        truncated: b.truncated,
                        first_ms: b.first_ms,
                        last_ms: b.last_ms,
                        bytes: b.data.len(),
                        ack: b.ack,
                    }),
                }
            }
            Msg::Flush(tx) => {
                p.flushes.push(tx);
                p.since.get_or_insert_with(Instant::now);
            }
            Msg::Close => unreachable!("handled by the loop"),
        }
    }

    /// Write what is pending as one frame. On success everyone is answered;
    /// on failure the stream goes down (see the module docs).
    fn commit(&mut self, w: &mut Work) {
        let started = Instant::now();
        let result = if w.p.records > 0 { self.write_frame(w) } else { Ok(()) };
        let Work { p, frame, down, seg, .. } = w;
        let records = p.records;
        let first_seq = self.next_record_seq;
        match result {
            Ok(()) => {
                self.next_record_seq += u64::from(records);
                let s = self.stream.as_str();
                self.metrics.store.committed_records.with_label_values(&[s]).inc_by(u64::from(records));
                self.metrics.store.committed_bytes.with_label_values(&[s]).inc_by(p.raw.len() as u64);
                self.metrics.store.written_bytes.with_label_values(&[s]).inc_by(frame.len() as u64);
                self.fullness.wrote(frame.len() as u64);
                self.metrics.store.commits.with_label_values(&[s]).inc();
                self.metrics.store.commit_seconds.with_label_values(&[s]).observe(started.elapsed().as_secs_f64());
                let mut seq = first_seq;
                for part in p.parts.drain(..) {
                    if let Some(ack) = part.ack {
                        let _ = ack.send(Ok(Committed { first_seq: seq, records: part.records }));
                    }
                    seq += u64::from(part.records);
                }
                p.clear();
                if let (Some(s), true) = (seg.as_ref(), records > 0) {
                    self.changes.grown(&s.name.rel_path(), s.len);
                }
                if let Some(d) = down.take() {
                    self.up(d);
                }
            }
            Err(fault) => {
                let trouble = Trouble::of(fault.io());
                let s = self.stream.as_str();
                self.metrics.store.commit_errors.with_label_values(&[s]).inc();
                self.metrics.store.disk_errors.with_label_values(&[s, fault.op(), trouble.as_str()]).inc();
                let e = fault.io();
                if down.is_none() {
                    error!(stream = s, records, op = fault.op(), trouble = trouble.as_str(), error = %e,
                        "{}: commit failed, nothing of it was written; stream stops accepting until the disk takes writes again",
                        describe(trouble));
                }
                let stream = self.stream.clone();
                p.keep_unacknowledged(|ack| {
                    let _ = ack.send(Err(Error::Io {
                        stream: stream.clone(),
                        trouble,
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }));
                });
                self.go_down(down, trouble, frame.len().max(64 << 10));
            }
        }
        for f in p.flushes.drain(..) {
            let _ = f.send(());
        }
        if p.records == 0 {
            p.clear();
        }
    }

    fn write_frame(&mut self, w: &mut Work) -> Result<(), Fault> {
        let frames = self.encode(w)?;
        let Work { p, frame, seg, .. } = w;
        let now = self.clock.now_ms();
        if self.rotation_due(seg.as_ref(), frame.len(), now) {
            self.seal(seg.take());
        }
        if seg.is_none() {
            self.open_segment(seg, now)?;
        }
        self.append(seg, frame, frames, p.records)
    }

    /// Compress what is pending into `w.frame`: one frame, or one per piece
    /// compressed at once when the commit is large. Returns the frame count.
    fn encode(&self, w: &mut Work) -> Result<u64, Fault> {
        let Work { encs, scratch, p, frame, .. } = w;
        let pieces = pieces(&p.parts, p.raw.len(), encs.len());
        let mut seq = self.next_record_seq;
        let metas: Vec<FrameMeta<'_>> = pieces
            .iter()
            .map(|pc| {
                let m = FrameMeta {
                    stream: &self.stream,
                    records: pc.records,
                    truncated: pc.truncated,
                    first_seq: seq,
                    first_ms: pc.first_ms,
                    last_ms: pc.last_ms,
                };
                seq += u64::from(pc.records);
                m
            })
            .collect();
        if pieces.len() == 1 {
            encs[0].encode(&metas[0], &p.raw, frame).map_err(Fault::Encode)?;
        } else {
            // The pieces compress at once, one per thread (this one included);
            // the frames are then written in order, as one append.
            let raw = &p.raw;
            let results: Vec<std::io::Result<()>> = std::thread::scope(|sc| {
                let mut jobs = encs.iter_mut().zip(scratch.iter_mut()).zip(metas.iter().zip(&pieces));
                let ((enc0, out0), (meta0, pc0)) = jobs.next().expect("at least one piece");
                let handles: Vec<_> = jobs
                    .map(|((enc, out), (meta, pc))| {
                        sc.spawn(move || enc.encode(meta, &raw[pc.range.clone()], out).map(|_| ()))
                    })
                    .collect();
                let mut r = vec![enc0.encode(meta0, &raw[pc0.range.clone()], out0).map(|_| ())];
                r.extend(handles.into_iter().map(|h| h.join().expect("compression thread")));
                r
            });
            for r in results {
                r.map_err(Fault::Encode)?;
            }
            frame.clear();
            for out in &scratch[..pieces.len()] {
                frame.extend_from_slice(out);
            }
        }
        Ok(pieces.len() as u64)
    }

    /// Whether the open segment is sealed before a frame of `frame_len`
    /// bytes: a new hour, no room left, or an uplink behind on it.
    fn rotation_due(&self, seg: Option<&OpenSegment>, frame_len: usize, now: i64) -> bool {
        match seg {
            // Only forward in time: a clock set back never reopens an earlier hour.
            Some(s) => {
                s.name.hour_key() < hour_key(now)
                    || (s.len > 0 && s.len + frame_len as u64 > self.cfg.segment_max_bytes)
                    || (s.len > 0 && self.changes.take_rotation(&self.stream) && {
                        info!(stream = %self.stream, path = %s.path.display(),
                            "segment sealed early: an uplink is behind on it, fresh records go to a new one");
                        true
                    })
            }
            None => false,
        }
    }

    fn open_segment(&mut self, seg: &mut Option<OpenSegment>, now: i64) -> Result<(), Fault> {
        let name = SegmentName::not_before(
            &self.site,
            &self.stream,
            &self.node,
            self.next_segment_seq,
            now,
            self.last_name.as_ref(),
        )
        .with_codec(codec_of(&self.cfg).0);
        // The sequence number is used up even if the create fails: names never repeat.
        self.next_segment_seq += 1;
        let s = OpenSegment::create(&self.fs, &self.archive_dir, name, self.next_record_seq).map_err(Fault::Create)?;
        self.last_name = Some(s.name.clone());
        self.metrics.store.segments_open.with_label_values(&[&self.stream]).set(1);
        *seg = Some(s);
        self.changes.layout_changed(None);
        Ok(())
    }

    /// Append the frame(s) to the open segment, then fsync when the policy
    /// is `always`; a segment the disk failed is abandoned (see [`Fault`]).
    fn append(&mut self, seg: &mut Option<OpenSegment>, frame: &[u8], frames: u64, records: u32) -> Result<(), Fault> {
        let s = seg.as_mut().expect("opened above");
        match s.append_frames(frame, frames, u64::from(records)) {
            Ok(()) => {}
            Err(AppendError::Cut(e)) => {
                // A segment whose first frame failed is empty: remove it rather
                // than leave a file that is no zstd file to readers meanwhile.
                if s.len == 0 {
                    self.abandon(seg);
                }
                return Err(Fault::Write(e));
            }
            Err(AppendError::Uncut { write, cut }) => {
                error!(stream = %self.stream, path = %s.path.display(), error = %cut,
                    "cannot cut a failed write back out of the segment; abandoning it");
                self.abandon(seg);
                return Err(Fault::Abandoned("write", write));
            }
        }
        if matches!(self.cfg.fsync, FsyncPolicy::Always) {
            let t = Instant::now();
            if let Err(e) = s.sync() {
                error!(stream = %self.stream, path = %s.path.display(), error = %e,
                    "fsync failed: the segment is cut back to its last durable length, sealed, and not written again");
                self.abandon(seg);
                return Err(Fault::Abandoned("fsync", e));
            }
            self.metrics.store.fsync_seconds.observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// A periodic fsync (`fsync = "interval"`) failed: frames written since
    /// the last good one were acknowledged but may not be on disk. They are
    /// cut with the segment's untrusted tail, logged and counted.
    fn fsync_failed(&mut self, w: &mut Work, e: std::io::Error) {
        let Work { seg, down, .. } = w;
        let trouble = Trouble::of(&e);
        self.metrics.store.disk_errors.with_label_values(&[&self.stream, "fsync", trouble.as_str()]).inc();
        error!(stream = %self.stream, error = %e, "fsync failed: the segment is cut back to its last durable length and sealed");
        self.abandon(seg);
        self.go_down(down, trouble, 64 << 10);
    }

    /// Give up on the open segment after a disk fault: it is cut back to
    /// its last durable length and sealed ([`OpenSegment::finish`]); the
    /// stream continues in a new one.
    fn abandon(&mut self, seg: &mut Option<OpenSegment>) {
        let Some(s) = seg.take() else { return };
        self.metrics.store.segments_open.with_label_values(&[&self.stream]).set(0);
        self.metrics.store.abandoned_segments.with_label_values(&[&self.stream]).inc();
        warn!(stream = %self.stream, path = %s.path.display(), durable_len = s.durable_len(),
            "segment closed at its last durable length after a disk fault; writing continues in a new one");
        self.closing.push(s);
        self.close_segments();
    }

    fn go_down(&mut self, down: &mut Option<Down>, trouble: Trouble, need: usize) {
        let now = Instant::now();
        match down {
            Some(d) => {
                d.trouble = trouble;
                d.backoff = (d.backoff * 2).min(PROBE_MAX);
                d.retry_at = now + d.backoff;
                d.need = need;
            }
            None => {
                *down = Some(Down { trouble, since: now, retry_at: now + PROBE_MIN, backoff: PROBE_MIN, need });
            }
        }
        self.health.set(Some(trouble));
        for t in [Trouble::DiskFull, Trouble::ReadOnly, Trouble::Io] {
            self.metrics
                .store
                .store_unwritable
                .with_label_values(&[&self.stream, t.as_str()])
                .set(i64::from(t == trouble));
        }
        if trouble == Trouble::DiskFull && self.cfg.retention.on_full == OnFull::DropOldest {
            self.room.notify_one();
        }
    }

    fn up(&mut self, d: Down) {
        self.health.set(None);
        for t in [Trouble::DiskFull, Trouble::ReadOnly, Trouble::Io] {
            self.metrics.store.store_unwritable.with_label_values(&[&self.stream, t.as_str()]).set(0);
        }
        info!(stream = %self.stream, was = d.trouble.as_str(), after = ?d.since.elapsed(),
            "the disk takes writes again: stream accepting records");
    }

    /// While down: write what is pending, or else probe the disk with as
    /// many bytes as the failed frame needed.
    fn retry(&mut self, w: &mut Work) {
        if let Some(e) = self.close_segments() {
            let trouble = Trouble::of(&e);
            // Senders waiting for an answer get one now: still failing.
            let stream = self.stream.clone();
            w.p.keep_unacknowledged(|ack| {
                let _ = ack.send(Err(Error::Io {
                    stream: stream.clone(),
                    trouble,
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }));
            });
            let need = w.down.as_ref().map_or(64 << 10, |d| d.need);
            self.go_down(&mut w.down, trouble, need);
            for f in w.p.flushes.drain(..) {
                let _ = f.send(());
            }
            return;
        }
        if w.p.records > 0 {
            self.commit(w);
        } else {
            let need = w.down.as_ref().map_or(64 << 10, |d| d.need);
            match self.probe(need) {
                Ok(()) => {
                    if let Some(d) = w.down.take() {
                        self.up(d);
                    }
                }
                Err(e) => {
                    let trouble = Trouble::of(&e);
                    self.metrics.store.disk_errors.with_label_values(&[&self.stream, "probe", trouble.as_str()]).inc();
                    self.go_down(&mut w.down, trouble, need);
                }
            }
            for f in w.p.flushes.drain(..) {
                let _ = f.send(());
            }
        }
    }

    /// Create, write, fsync and remove a scratch file under `state/`.
    fn probe(&self, need: usize) -> std::io::Result<()> {
        let path = self.state_dir.join(format!("probe-{}.tmp", self.stream));
        let _ = std::fs::remove_file(&path);
        let r = (|| {
            let mut f = self.fs.create_new(&path)?;
            f.write_all_at(&vec![0u8; need.clamp(4096, 4 << 20)], 0)?;
            f.sync_data()
        })();
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Under `drop_oldest`, ask retention for room before the disk is full.
    fn check_space(&self) {
        if let Ok(space) = self.fs.space(&self.archive_dir) {
            if space.free_bytes < room_target(&self.cfg) {
                self.room.notify_one();
            }
        }
    }

    /// fsync and seal. A failed fsync abandons the segment; a seal record
    /// the disk refuses (it is full) is retried later ([`Self::closing`]).
    fn seal(&mut self, seg: Option<OpenSegment>) {
        let Some(mut s) = seg else { return };
        self.metrics.store.segments_open.with_label_values(&[&self.stream]).set(0);
        if let Err(e) = s.sync() {
            let trouble = Trouble::of(&e);
            self.metrics.store.disk_errors.with_label_values(&[&self.stream, "fsync", trouble.as_str()]).inc();
            error!(stream = %self.stream, path = %s.path.display(), error = %e,
                "fsync failed while sealing: the segment is cut back to its last durable length");
            self.abandon(&mut Some(s));
            return;
        }
        self.closing.push(s);
        self.close_segments();
    }

    /// Cut and seal what is closing. Returns the error of a segment that
    /// still holds bytes after its durable length: until that cut is made,
    /// the stream must not take records (a retry of what the cut removes
    /// would be archived twice).
    fn close_segments(&mut self) -> Option<std::io::Error> {
        let mut uncut = None;
        for s in std::mem::take(&mut self.closing) {
            let path = s.path.clone();
            let rel = s.name.rel_path();
            match s.finish(&self.fs, &self.state_dir, self.clock.now_ms()) {
                Ok((None, _)) => {
                    self.changes.layout_changed(Some(&rel));
                    info!(stream = %self.stream, path = %path.display(), "empty segment removed (nothing of it was durable)");
                }
                Ok((Some(rec), cut_records)) => {
                    // With fsync = "always" what a cut removes was never acknowledged.
                    let acked_cut = if matches!(self.cfg.fsync, FsyncPolicy::Always) { 0 } else { cut_records };
                    if let Some(n) = (acked_cut > 0).then_some(acked_cut) {
                        self.metrics.store.cut_records.with_label_values(&[&self.stream]).inc_by(n);
                        error!(stream = %self.stream, path = %path.display(), records = n,
                            "acknowledged records were cut with the untrusted tail after a failed fsync (fsync is not \"always\")");
                    }
                    self.changes.layout_changed(Some(&rel));
                    // Cut records keep their sequence numbers: the gap shows the loss.
                    self.metrics.store.segments_sealed.with_label_values(&[&self.stream]).inc();
                    self.fullness.sealed(rec.len);
                    info!(stream = %self.stream, path = %path.display(), len = rec.len, records = rec.records, "segment sealed");
                }
                Err((s, e)) => {
                    let trouble = Trouble::of(&e);
                    let op = if s.needs_cut() { "cut" } else { "seal" };
                    self.metrics.store.disk_errors.with_label_values(&[&self.stream, op, trouble.as_str()]).inc();
                    warn!(stream = %self.stream, path = %path.display(), op, error = %e,
                        "cannot close the segment now; retried while the disk recovers (or by recovery at the next start)");
                    if s.needs_cut() {
                        uncut = Some(e);
                    }
                    self.closing.push(*s);
                }
            }
        }
        uncut
    }
}

/// A commit at least this large is compressed as several frames at once.
const PARALLEL_MIN: usize = 256 << 10;
/// Consecutive batches of one listener merge into one part up to this
/// size: parts are where a large commit may be split into frames.
const PART_MAX: usize = 128 << 10;

/// A slice of a commit's pending lines that becomes one frame.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    range: std::ops::Range<usize>,
    records: u32,
    truncated: u32,
    first_ms: i64,
    last_ms: i64,
}

/// Split a commit into about `workers` pieces of similar size at part
/// boundaries, so each frame's header (records, truncated, times) is exact.
/// Small commits stay one piece.
fn pieces(parts: &[Part], raw_len: usize, workers: usize) -> Vec<Piece> {
    let n = if raw_len >= PARALLEL_MIN { workers.min(parts.len()).max(1) } else { 1 };
    let mut out: Vec<Piece> = Vec::with_capacity(n);
    let mut at = 0;
    for part in parts {
        let target = raw_len * (out.len().max(1)) / n;
        let full = out.len() == n;
        match out.last_mut() {
            // A part joins the current piece if most of it lies before the target.
            Some(pc) if full || pc.range.end + part.bytes / 2 <= target || pc.range.is_empty() => {
                pc.range.end += part.bytes;
                pc.records += part.records;
                pc.truncated += part.truncated;
                pc.first_ms = pc.first_ms.min(part.first_ms);
                pc.last_ms = pc.last_ms.max(part.last_ms);
            }
            _ => out.push(Piece {
                range: at..at + part.bytes,
                records: part.records,
                truncated: part.truncated,
                first_ms: part.first_ms,
                last_ms: part.last_ms,
            }),
        }
        at += part.bytes;
    }
    if out.is_empty() {
        out.push(Piece { range: 0..raw_len, records: 0, truncated: 0, first_ms: 0, last_ms: 0 });
    }
    out
}

/// Free space `drop_oldest` keeps: room for two commits and some.
/// The codec and level new segments are written with.
pub fn codec_of(cfg: &StoreConfig) -> (super::frame::Codec, i32) {
    match cfg.compression {
        crate::config::Compression::Zstd => (super::frame::Codec::Zstd, cfg.zstd_level),
        crate::config::Compression::Gzip => (super::frame::Codec::Gzip, cfg.gzip_level),
    }
}

pub fn room_target(cfg: &StoreConfig) -> u64 {
    2 * cfg.commit_bytes as u64 + (1 << 20)
}

fn describe(t: Trouble) -> &'static str {
    match t {
        Trouble::DiskFull => "disk full",
        Trouble::ReadOnly => "read-only filesystem",
        Trouble::Io => "disk I/O error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: usize, records: u32, ms: i64) -> Part {
        Part { listener: "l".into(), records, truncated: records / 10, first_ms: ms, last_ms: ms + 1, bytes, ack: None }
    }

    #[test]
    fn pieces_split_large_commits_at_part_boundaries_with_exact_headers() {
        let parts: Vec<Part> = (0..10).map(|i| part(100 << 10, 500, i * 10)).collect();
        let total = 1000 << 10;
        let p = pieces(&parts, total, 2);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].range, 0..(500 << 10));
        assert_eq!(p[1].range, (500 << 10)..total);
        assert_eq!((p[0].records, p[1].records), (2500, 2500));
        assert_eq!((p[0].truncated, p[1].truncated), (250, 250));
        assert_eq!((p[0].first_ms, p[0].last_ms, p[1].first_ms, p[1].last_ms), (0, 41, 50, 91));
        // Three workers, uneven parts: every byte in exactly one piece, in order.
        let parts: Vec<Part> = [300usize, 10, 10, 200, 5, 400].iter().map(|k| part(k << 10, 7, 0)).collect();
        let total: usize = parts.iter().map(|p| p.bytes).sum();
        let p = pieces(&parts, total, 3);
        assert_eq!(p.len(), 3);
        assert_eq!(p.first().unwrap().range.start, 0);
        assert_eq!(p.last().unwrap().range.end, total);
        assert!(p.windows(2).all(|w| w[0].range.end == w[1].range.start));
        assert_eq!(p.iter().map(|x| x.records).sum::<u32>(), 42);
        // Small commits, or one part: one frame.
        assert_eq!(pieces(&parts[..1], 300 << 10, 4).len(), 1);
        assert_eq!(pieces(&[part(10, 1, 0), part(10, 1, 0)], 20, 4).len(), 1);
    }
}
