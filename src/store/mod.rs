//! The stream store: the only hand-off between ingest and forwarding.
//!
//! Listeners hand [`Batch`]es of escaped, LF-terminated lines to a
//! [`StreamHandle`]; one writer thread per stream group-commits them into
//! frames (`frame.rs`) appended to hourly, size-capped segments
//! (`segment.rs`), acknowledging after the fsync. On open, unsealed segments
//! are recovered (`recover.rs`); retention (`retention.rs`) deletes by age and
//! total size. Memory is bounded by the per-stream channel and one pending
//! commit: the disk is the buffer.

pub mod clock;
mod commit;
pub mod escape;
pub mod frame;
pub mod reader;
pub mod recover;
pub mod retention;
pub mod segment;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use clock::Clock;
use commit::{Msg, Writer};

/// Batches a stream's channel holds before senders wait (or datagrams drop).
/// With listeners flushing at [`BATCH_BYTES`], this bounds queued memory per
/// stream to about 16 MiB.
pub const CHANNEL_BATCHES: usize = 256;
/// Listeners hand over a batch when it reaches this size (or input pauses).
pub const BATCH_BYTES: usize = 64 << 10;

/// Records from one listener, escaped and LF-terminated, for one stream.
pub struct Batch {
    /// The listener they came from, for drop accounting.
    pub listener: Arc<str>,
    pub data: Vec<u8>,
    pub records: u32,
    /// How many of `records` were cut to `max_record_bytes`.
    pub truncated: u32,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Answered after the commit that holds these records is durable.
    pub ack: Option<oneshot::Sender<Result<Committed, Error>>>,
}

/// Where a committed batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub first_seq: u64,
    pub records: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream {stream}: write failed")]
    Io {
        stream: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store is full and on_full = \"reject\": refusing new records")]
    Full,
    #[error("store is closed")]
    Closed,
    #[error("queue for stream {0} is full")]
    Overloaded(String),
}

/// A cheap, cloneable sender into one stream.
#[derive(Clone)]
pub struct StreamHandle {
    name: Arc<str>,
    tx: mpsc::Sender<Msg>,
    full: Arc<AtomicBool>,
}

impl StreamHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while retention says the archive is full and `on_full = "reject"`.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Queue a batch, waiting for room: stream listeners stop reading while
    /// the store is behind, which is TCP's own backpressure.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may or may not have queued the batch.
    pub async fn submit(&self, batch: Batch) -> Result<(), (Error, Batch)> {
        if self.is_full() {
            return Err((Error::Full, batch));
        }
        self.tx.send(Msg::Batch(batch)).await.map_err(|e| match e.0 {
            Msg::Batch(b) => (Error::Closed, b),
            Msg::Flush(_) | Msg::Close => unreachable!("sent a batch"),
        })
    }

    /// Queue a batch only if there is room now (datagram listeners: drop and
    /// count rather than block).
    pub fn try_submit(&self, batch: Batch) -> Result<(), (Error, Batch)> {
        if self.is_full() {
            return Err((Error::Full, batch));
        }
        self.tx.try_send(Msg::Batch(batch)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(Msg::Batch(b)) => (Error::Overloaded(self.name.to_string()), b),
            mpsc::error::TrySendError::Closed(Msg::Batch(b)) => (Error::Closed, b),
            _ => unreachable!("sent a batch"),
        })
    }

    /// Commit everything queued so far; returns when it is durable.
    pub async fn flush(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

/// The open store: one writer thread per stream.
pub struct Store {
    streams: Vec<StreamHandle>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    full: Arc<AtomicBool>,
    cfg: StoreConfig,
    archive_dir: PathBuf,
    state_dir: PathBuf,
    site: String,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

impl Store {
    /// Recover every stream and start its writer. Must be called inside a
    /// tokio runtime; writers use its timer.
    pub fn open(config: &Config, clock: Arc<dyn Clock>, metrics: Metrics) -> Result<Store, Error> {
        let archive_dir = config.archive_dir();
        let state_dir = config.state_dir();
        for d in [&archive_dir, &state_dir] {
            std::fs::create_dir_all(d).map_err(|source| Error::Open { path: d.clone(), source })?;
        }
        let handle = tokio::runtime::Handle::current();
        let full = Arc::new(AtomicBool::new(false));
        let mut streams = Vec::new();
        let mut threads = Vec::new();
        for name in &config.streams {
            let rec = recover::recover_stream(
                &archive_dir,
                &state_dir,
                &config.node.site,
                name,
                &config.node.name,
                clock.now_ms(),
                &metrics,
            )
            .map_err(|source| Error::Open { path: archive_dir.join(&config.node.site).join(name), source })?;
            metrics.segments_open.with_label_values(&[name]).set(0);
            let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
            let w = Writer {
                stream: name.clone(),
                site: config.node.site.clone(),
                node: config.node.name.clone(),
                archive_dir: archive_dir.clone(),
                state_dir: state_dir.clone(),
                cfg: config.store.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                rx,
                next_segment_seq: rec.next_segment_seq,
                next_record_seq: rec.next_record_seq,
            };
            let h = handle.clone();
            let t = std::thread::Builder::new()
                .name(format!("commit-{name}"))
                .spawn(move || w.run(h))
                .map_err(|source| Error::Open { path: archive_dir.clone(), source })?;
            threads.push(t);
            streams.push(StreamHandle { name: name.as_str().into(), tx, full: full.clone() });
        }
        Ok(Store {
            streams,
            threads: Mutex::new(threads),
            full,
            cfg: config.store.clone(),
            archive_dir,
            state_dir,
            site: config.node.site.clone(),
            clock,
            metrics,
        })
    }

    /// The handle of a stream by name.
    pub fn stream(&self, name: &str) -> Option<StreamHandle> {
        self.streams.iter().find(|s| &*s.name == name).cloned()
    }

    pub fn streams(&self) -> &[StreamHandle] {
        &self.streams
    }

    /// Commit everything queued in every stream.
    pub async fn flush(&self) -> Result<(), Error> {
        for s in &self.streams {
            s.flush().await?;
        }
        Ok(())
    }

    /// One retention pass now (also run periodically by [`retention::run`]).
    pub fn retention_pass(&self, hold: &dyn retention::Hold) -> io::Result<retention::Outcome> {
        let out = retention::pass(
            &self.archive_dir,
            &self.state_dir,
            &self.cfg.retention,
            self.clock.now_ms(),
            hold,
            &self.metrics,
        )?;
        self.full.store(out.full, Ordering::Relaxed);
        Ok(out)
    }

    /// This node's site (the archive subdirectory it writes).
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Commit what is pending, seal open segments, stop the writers. Blocks:
    /// call from a blocking context.
    pub async fn close(&self) {
        for s in &self.streams {
            let _ = s.tx.send(Msg::Close).await;
        }
        let threads: Vec<_> = self.threads.lock().expect("not poisoned").drain(..).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
