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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::clock::Clock;
use super::frame::{FrameEncoder, FrameMeta};
use super::segment::{hour_key, OpenSegment, SegmentName};
use super::{Batch, Committed, Error};
use crate::config::{FsyncPolicy, StoreConfig};
use crate::metrics::{DropReason, Metrics};

/// What the writer receives.
pub enum Msg {
    Batch(Batch),
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
    pub rx: mpsc::Receiver<Msg>,
    pub next_segment_seq: u64,
    pub next_record_seq: u64,
}

struct Part {
    listener: Arc<str>,
    records: u32,
    ack: Option<oneshot::Sender<Result<Committed, Error>>>,
}

struct Pending {
    raw: Vec<u8>,
    records: u32,
    truncated: u32,
    first_ms: i64,
    last_ms: i64,
    /// Who sent the pending records, in order: acknowledged per part, or
    /// counted as dropped per listener if the commit fails.
    parts: Vec<Part>,
    flushes: Vec<oneshot::Sender<()>>,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.records == 0 && self.flushes.is_empty()
    }
}

impl Writer {
    /// Run until the channel closes; then commit what is pending and seal.
    pub fn run(mut self, handle: Handle) {
        let mut enc = match FrameEncoder::new(self.cfg.zstd_level) {
            Ok(e) => e,
            Err(e) => {
                error!(stream = %self.stream, error = %e, "cannot create zstd encoder; stream writer stops");
                return;
            }
        };
        let mut p = Pending {
            raw: Vec::with_capacity(self.cfg.commit_bytes + (64 << 10)),
            records: 0,
            truncated: 0,
            first_ms: 0,
            last_ms: 0,
            parts: Vec::new(),
            flushes: Vec::new(),
            since: None,
        };
        let mut frame = Vec::new();
        let mut seg: Option<OpenSegment> = None;
        let mut last_sync = Instant::now();
        let mut dirty = false;
        let idle = self.cfg.commit_interval.max(Duration::from_millis(500)).min(Duration::from_secs(1));
        loop {
            // Drain what is queued without waiting.
            let mut closed = false;
            while p.raw.len() < self.cfg.commit_bytes {
                match self.rx.try_recv() {
                    Ok(Msg::Close) => {
                        closed = true;
                        break;
                    }
                    Ok(m) => self.take(m, &mut p),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let waited_out = p.since.is_some_and(|s| s.elapsed() >= self.cfg.commit_interval);
            let someone_waits = p.parts.iter().any(|x| x.ack.is_some()) || !p.flushes.is_empty();
            let queue_empty = self.rx.is_empty();
            if !p.is_empty()
                && (closed || p.raw.len() >= self.cfg.commit_bytes || waited_out || (someone_waits && queue_empty))
            {
                self.commit(&mut enc, &mut p, &mut frame, &mut seg);
                dirty = !matches!(self.cfg.fsync, FsyncPolicy::Always);
            }
            if closed {
                break;
            }
            // Roll an idle segment at the hour so the last hour is sealed on time.
            if p.is_empty() {
                if let Some(s) = &seg {
                    if s.name.hour_key() != hour_key(self.clock.now_ms()) {
                        self.seal(seg.take());
                    }
                }
            }
            if let FsyncPolicy::Interval(iv) = self.cfg.fsync {
                if dirty && last_sync.elapsed() >= iv {
                    if let Some(s) = &seg {
                        self.sync(s);
                    }
                    last_sync = Instant::now();
                    dirty = false;
                }
            }
            if p.raw.len() >= self.cfg.commit_bytes {
                continue;
            }
            let wait = match p.since {
                Some(s) => self.cfg.commit_interval.saturating_sub(s.elapsed()),
                None => idle,
            };
            if wait.is_zero() {
                continue;
            }
            match handle.block_on(async { tokio::time::timeout(wait, self.rx.recv()).await }) {
                Ok(Some(Msg::Close)) | Ok(None) => {
                    if !p.is_empty() {
                        self.commit(&mut enc, &mut p, &mut frame, &mut seg);
                    }
                    break;
                }
                Ok(Some(m)) => self.take(m, &mut p),
                Err(_) => {}
            }
        }
        if let Some(s) = &seg {
            self.sync(s);
        }
        self.seal(seg.take());
        info!(stream = %self.stream, "stream writer stopped");
    }

    fn take(&self, m: Msg, p: &mut Pending) {
        match m {
            Msg::Batch(b) => {
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
                    Some(last) if b.ack.is_none() && last.ack.is_none() && Arc::ptr_eq(&last.listener, &b.listener) => {
                        last.records += b.records
                    }
                    _ => p.parts.push(Part { listener: b.listener, records: b.records, ack: b.ack }),
                }
            }
            Msg::Flush(tx) => {
                p.flushes.push(tx);
                p.since.get_or_insert_with(Instant::now);
            }
            Msg::Close => unreachable!("handled by the loop"),
        }
    }

    fn commit(&mut self, enc: &mut FrameEncoder, p: &mut Pending, frame: &mut Vec<u8>, seg: &mut Option<OpenSegment>) {
        let started = Instant::now();
        let result = if p.records > 0 { self.write_frame(enc, p, frame, seg) } else { Ok(()) };
        let records = p.records;
        let first_seq = self.next_record_seq;
        match result {
            Ok(()) => {
                self.next_record_seq += u64::from(records);
                let s = self.stream.as_str();
                self.metrics.committed_records.with_label_values(&[s]).inc_by(u64::from(records));
                self.metrics.committed_bytes.with_label_values(&[s]).inc_by(p.raw.len() as u64);
                self.metrics.written_bytes.with_label_values(&[s]).inc_by(frame.len() as u64);
                self.metrics.commits.with_label_values(&[s]).inc();
                self.metrics.commit_seconds.with_label_values(&[s]).observe(started.elapsed().as_secs_f64());
                let mut seq = first_seq;
                for part in p.parts.drain(..) {
                    if let Some(ack) = part.ack {
                        let _ = ack.send(Ok(Committed { first_seq: seq, records: part.records }));
                    }
                    seq += u64::from(part.records);
                }
            }
            Err(e) => {
                error!(stream = %self.stream, records, error = %e, "commit failed; records not written");
                self.metrics.commit_errors.with_label_values(&[&self.stream]).inc();
                for part in p.parts.drain(..) {
                    match part.ack {
                        // The sender learns of the failure and keeps the records.
                        Some(ack) => {
                            let _ = ack.send(Err(Error::Io {
                                stream: self.stream.clone(),
                                source: std::io::Error::new(e.kind(), e.to_string()),
                            }));
                        }
                        None => {
                            self.metrics.drop_records(&part.listener, DropReason::StoreError, u64::from(part.records))
                        }
                    }
                }
            }
        }
        for f in p.flushes.drain(..) {
            let _ = f.send(());
        }
        p.raw.clear();
        p.records = 0;
        p.truncated = 0;
        p.since = None;
        p.last_ms = 0;
    }

    fn write_frame(
        &mut self,
        enc: &mut FrameEncoder,
        p: &Pending,
        frame: &mut Vec<u8>,
        seg: &mut Option<OpenSegment>,
    ) -> std::io::Result<()> {
        let meta = FrameMeta {
            stream: &self.stream,
            records: p.records,
            truncated: p.truncated,
            first_seq: self.next_record_seq,
            first_ms: p.first_ms,
            last_ms: p.last_ms,
        };
        enc.encode(&meta, &p.raw, frame)?;
        let now = self.clock.now_ms();
        let rotate = match seg.as_ref() {
            Some(s) => {
                s.name.hour_key() != hour_key(now)
                    || (s.len > 0 && s.len + frame.len() as u64 > self.cfg.segment_max_bytes)
            }
            None => false,
        };
        if rotate {
            self.seal(seg.take());
        }
        if seg.is_none() {
            let name = SegmentName::new(&self.site, &self.stream, &self.node, self.next_segment_seq, now);
            let s = OpenSegment::create(&self.archive_dir, name, self.next_record_seq)?;
            self.next_segment_seq += 1;
            self.metrics.segments_open.with_label_values(&[&self.stream]).set(1);
            *seg = Some(s);
        }
        let s = seg.as_mut().expect("opened above");
        s.append(frame, p.records)?;
        if matches!(self.cfg.fsync, FsyncPolicy::Always) {
            let t = Instant::now();
            s.sync()?;
            self.metrics.fsync_seconds.observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn sync(&self, s: &OpenSegment) {
        let t = Instant::now();
        if let Err(e) = s.sync() {
            error!(stream = %self.stream, path = %s.path.display(), error = %e, "fsync failed");
            self.metrics.commit_errors.with_label_values(&[&self.stream]).inc();
        }
        self.metrics.fsync_seconds.observe(t.elapsed().as_secs_f64());
    }

    fn seal(&self, seg: Option<OpenSegment>) {
        let Some(s) = seg else { return };
        let path = s.path.clone();
        self.metrics.segments_open.with_label_values(&[&self.stream]).set(0);
        match s.seal(&self.state_dir, self.clock.now_ms()) {
            Ok(rec) => {
                self.metrics.segments_sealed.with_label_values(&[&self.stream]).inc();
                info!(stream = %self.stream, path = %path.display(), len = rec.len, records = rec.records, "segment sealed");
            }
            Err(e) => {
                // The file is whole; recovery at the next start will seal it.
                warn!(stream = %self.stream, path = %path.display(), error = %e, "cannot write seal record; recovery will retry at next start");
            }
        }
    }
}
