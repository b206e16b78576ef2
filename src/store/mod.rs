//! The stream store: the only hand-off between ingest and forwarding.
//!
//! Listeners hand [`Batch`]es of escaped, LF-terminated lines to a
//! [`StreamHandle`]; one writer thread per stream group-commits them into
//! frames (`frame.rs`) appended to hourly, size-capped segments
//! (`segment.rs`), acknowledging after the fsync. On open, unsealed segments
//! are recovered (`recover.rs`); retention (`retention.rs`) deletes by age and
//! total size. Commits and new or closed segments are told to the forwarders
//! (`changes.rs`).
//!
//! ## Bounded backlog
//! Between the sockets and the disk a stream holds at most one pending
//! commit and `commit_bytes` of queued batches (the queue *budget*): beyond
//! that, stream listeners stop reading (the sender is slowed by TCP, its
//! records wait in its own socket buffers) and datagram listeners drop and
//! count. So memory is bounded whatever the input rate, and a crash loses
//! at most about two commits of records that plain syslog had no way to see
//! acknowledged. The disk is the buffer.

pub mod changes;
pub mod clock;
mod commit;
pub mod delivered;
pub mod escape;
pub mod follow;
pub mod frame;
pub mod fs;
pub mod reader;
pub mod recover;
pub mod retention;
pub mod segment;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use changes::Changes;
use clock::Clock;
use commit::{Msg, Writer};
use fs::{Fs, Trouble};

/// Messages a stream's channel holds; batches are bounded by bytes (the
/// budget, `commit_bytes`) well before this.
pub const CHANNEL_BATCHES: usize = 256;
/// Listeners hand over a batch when it reaches this size (or input pauses).
pub const BATCH_BYTES: usize = 64 << 10;

/// Records from one listener, escaped and LF-terminated, for one stream.
pub struct Batch {
    /// The listener they came from, for drop accounting.
    pub listener: Arc<str>,
    /// The records, escaped, each LF-terminated.
    pub data: Vec<u8>,
    /// Records in `data`.
    pub records: u32,
    /// How many of `records` were cut to `max_record_bytes`.
    pub truncated: u32,
    /// Receive time of the first record, ms since the Unix epoch.
    pub first_ms: i64,
    /// Receive time of the last record, ms since the Unix epoch.
    pub last_ms: i64,
    /// Answered after the commit that holds these records is durable.
    pub ack: Option<oneshot::Sender<Result<Committed, Error>>>,
}

/// Where a committed batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Sequence number of the batch's first record in its stream.
    pub first_seq: u64,
    /// Records committed: the batch's.
    pub records: u32,
}

/// Why the store did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The commit holding the batch failed on disk; nothing of it was written.
    #[error("stream {stream}: commit failed ({})", trouble.as_str())]
    Io {
        /// The stream.
        stream: String,
        /// What the disk's error means.
        trouble: Trouble,
        /// The disk's error.
        #[source]
        source: io::Error,
    },
    /// The stream's disk refuses writes (full, read-only, failing): nothing
    /// is accepted until a probe write succeeds.
    #[error("stream {stream}: not accepting records: {}", match trouble {
        Trouble::DiskFull => "disk full",
        Trouble::ReadOnly => "filesystem is read-only",
        Trouble::Io => "disk I/O errors",
    })]
    Unwritable {
        /// The stream.
        stream: String,
        /// Why its disk refuses.
        trouble: Trouble,
    },
    /// The store's directories or a stream's segment could not be opened at start.
    #[error("cannot open store at {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: io::Error,
    },
    /// The archive is over `max_bytes` and `on_full = "reject"`: retry once retention or an operator makes room.
    #[error("store is full and on_full = \"reject\": refusing new records")]
    Full,
    /// The node is shutting down: the writer is gone.
    #[error("store is closed")]
    Closed,
    /// [`StreamHandle::try_submit`] found the stream's queue full: datagram listeners drop and count the batch.
    #[error("queue for stream {0} is full")]
    Overloaded(String),
}

impl Error {
    /// The store refuses for now and will take the batch later: hold the
    /// sender back (streams, RELP) or tell it to retry (HTTP), never lose.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Full | Error::Unwritable { .. })
    }

    /// The disk is full (HTTP answers 507 rather than 503).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Error::Unwritable { trouble: Trouble::DiskFull, .. } | Error::Io { trouble: Trouble::DiskFull, .. }
        )
    }
}

/// Whether a stream's disk takes writes; set by its writer, read by every
/// sender and by `/readyz`.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    /// The disk's trouble as last seen by the writer; `None` when it takes writes.
    pub fn get(&self) -> Option<Trouble> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Trouble::DiskFull),
            2 => Some(Trouble::ReadOnly),
            3 => Some(Trouble::Io),
            _ => None,
        }
    }

    /// Set by the writer when a write fails, and cleared when a probe succeeds.
    pub fn set(&self, t: Option<Trouble>) {
        let v = match t {
            None => 0,
            Some(Trouble::DiskFull) => 1,
            Some(Trouble::ReadOnly) => 2,
            Some(Trouble::Io) => 3,
        };
        self.0.store(v, Ordering::Relaxed)
    }
}

/// A cheap, cloneable sender into one stream.
#[derive(Clone)]
pub struct StreamHandle {
    name: Arc<str>,
    tx: mpsc::Sender<Msg>,
    full: Arc<retention::Fullness>,
    health: Arc<Health>,
    /// Bytes of queued batches not yet taken by the writer ([`Self::submit`]).
    budget: Arc<Semaphore>,
    budget_max: u32,
}

impl StreamHandle {
    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while the archive is over `max_bytes` and `on_full = "reject"`
    /// (as retention last counted it, plus what was written since).
    pub fn is_full(&self) -> bool {
        self.full.is_full()
    }

    /// Why the stream's disk refuses writes now, if it does.
    pub fn trouble(&self) -> Option<Trouble> {
        self.health.get()
    }

    fn refusal(&self) -> Option<Error> {
        if self.is_full() {
            return Some(Error::Full);
        }
        self.health.get().map(|trouble| Error::Unwritable { stream: self.name.to_string(), trouble })
    }

    /// Queue a batch, waiting for room: stream listeners stop reading while
    /// the store is behind, which is TCP's own backpressure.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may or may not have queued the batch.
    pub async fn submit(&self, batch: Batch) -> Result<(), (Error, Batch)> {
        if let Some(e) = self.refusal() {
            return Err((e, batch));
        }
        // Wait for room, but not past the stream going down meanwhile: a
        // sender waiting then is refused like one that comes later (its
        // records stay with it), not held until the disk recovers.
        let acquire = self.budget.clone().acquire_many_owned(self.cost(&batch));
        tokio::pin!(acquire);
        let permit = loop {
            tokio::select! {
                p = &mut acquire => match p {
                    Ok(p) => break p,
                    Err(_) => return Err((Error::Closed, batch)),
                },
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    if let Some(e) = self.refusal() {
                        return Err((e, batch));
                    }
                }
            }
        };
        self.tx.send(Msg::Batch(batch, permit)).await.map_err(|e| match e.0 {
            Msg::Batch(b, _) => (Error::Closed, b),
            Msg::Flush(_) | Msg::Close => unreachable!("sent a batch"),
        })
    }

    /// A batch's share of the budget: its bytes (at least one, at most all).
    fn cost(&self, batch: &Batch) -> u32 {
        (batch.data.len() as u64).clamp(1, u64::from(self.budget_max)) as u32
    }

    /// Queue a batch only if there is room now (datagram listeners: drop and
    /// count rather than block).
    pub fn try_submit(&self, batch: Batch) -> Result<(), (Error, Batch)> {
        if let Some(e) = self.refusal() {
            return Err((e, batch));
        }
        let permit = match self.budget.clone().try_acquire_many_owned(self.cost(&batch)) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err((Error::Overloaded(self.name.to_string()), batch))
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err((Error::Closed, batch)),
        };
        self.tx.try_send(Msg::Batch(batch, permit)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(Msg::Batch(b, _)) => (Error::Overloaded(self.name.to_string()), b),
            mpsc::error::TrySendError::Closed(Msg::Batch(b, _)) => (Error::Closed, b),
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
    full: Arc<retention::Fullness>,
    cfg: StoreConfig,
    /// `cfg.retention` as reloaded (ages, sizes, interval; `on_full` stays).
    retention: std::sync::RwLock<crate::config::RetentionConfig>,
    archive_dir: PathBuf,
    state_dir: PathBuf,
    site: String,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    fs: Fs,
    age_clock: clock::AgeClock,
    /// Writers ask retention for room here (`on_full = "drop_oldest"`).
    room: Arc<Notify>,
    changes: Arc<Changes>,
}

impl Store {
    /// Recover every stream and start its writer. Must be called inside a
    /// tokio runtime; writers use its timer.
    pub fn open(config: &Config, clock: Arc<dyn Clock>, metrics: Metrics) -> Result<Store, Error> {
        Store::open_with(config, clock, metrics, Fs::real())
    }

    /// [`open`](Self::open) on a given file layer (tests inject faults).
    pub fn open_with(config: &Config, clock: Arc<dyn Clock>, metrics: Metrics, fs: Fs) -> Result<Store, Error> {
        let archive_dir = config.archive_dir();
        let state_dir = config.state_dir();
        for d in [&archive_dir, &state_dir] {
            fs.create_dir_all(d).map_err(|source| Error::Open { path: d.clone(), source })?;
        }
        let room = Arc::new(Notify::new());
        let changes = Changes::new();
        let handle = tokio::runtime::Handle::current();
        let full = Arc::new(retention::Fullness::new(metrics.store.store_full.clone()));
        let mut streams = Vec::new();
        let mut threads = Vec::new();
        for name in &config.streams {
            let rec = recover::recover_stream(
                &fs,
                &archive_dir,
                &state_dir,
                &config.node.site,
                name,
                &config.node.name,
                clock.now_ms(),
                &metrics,
            )
            .map_err(|source| Error::Open { path: archive_dir.join(&config.node.site).join(name), source })?;
            metrics.store.segments_open.with_label_values(&[name]).set(0);
            let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
            let health = Arc::new(Health::default());
            for t in [Trouble::DiskFull, Trouble::ReadOnly, Trouble::Io] {
                metrics.store.store_unwritable.with_label_values(&[name, t.as_str()]).set(0);
            }
            let budget_max = config.store.commit_bytes.min(u32::MAX as usize) as u32;
            let budget = Arc::new(Semaphore::new(budget_max as usize));
            let w = Writer {
                stream: name.clone(),
                site: config.node.site.clone(),
                node: config.node.name.clone(),
                archive_dir: archive_dir.clone(),
                state_dir: state_dir.clone(),
                cfg: config.store.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                fs: fs.clone(),
                health: health.clone(),
                room: room.clone(),
                rx,
                next_segment_seq: rec.next_segment_seq,
                next_record_seq: rec.next_record_seq,
                last_name: rec.last_name,
                closing: Vec::new(),
                changes: changes.clone(),
                fullness: full.clone(),
                budget: budget.clone(),
            };
            let h = handle.clone();
            let t = std::thread::Builder::new()
                .name(format!("commit-{name}"))
                .spawn(move || w.run(h))
                .map_err(|source| Error::Open { path: archive_dir.clone(), source })?;
            threads.push(t);
            streams.push(StreamHandle {
                name: name.as_str().into(),
                tx,
                full: full.clone(),
                health,
                budget,
                budget_max,
            });
        }
        Ok(Store {
            streams,
            threads: Mutex::new(threads),
            full,
            cfg: config.store.clone(),
            retention: std::sync::RwLock::new(config.store.retention.clone()),
            archive_dir,
            state_dir,
            site: config.node.site.clone(),
            clock,
            metrics,
            fs,
            age_clock: clock::AgeClock::default(),
            room,
            changes,
        })
    }

    /// Where commits, new and closed segments are told (the mirror and
    /// retention report here too): forwarders subscribe to it.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// The file layer every writer uses.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    /// Streams whose disk refuses writes now, with the reason.
    pub fn unwritable(&self) -> Vec<(String, Trouble)> {
        self.streams.iter().filter_map(|s| s.trouble().map(|t| (s.name.to_string(), t))).collect()
    }

    /// The handle of a stream by name.
    pub fn stream(&self, name: &str) -> Option<StreamHandle> {
        self.streams.iter().find(|s| &*s.name == name).cloned()
    }

    /// Every stream, in config order.
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

    /// `data_dir/archive`.
    pub fn archive_dir(&self) -> &std::path::Path {
        &self.archive_dir
    }

    /// The retention settings in force.
    pub fn retention(&self) -> crate::config::RetentionConfig {
        self.retention.read().expect("not poisoned").clone()
    }

    /// Whether the archive is full under `on_full = "reject"`, for the
    /// mirror ([`retention::Fullness::sealed_full`]) and what it writes.
    pub fn fullness(&self) -> Arc<retention::Fullness> {
        self.full.clone()
    }

    /// Reload: new ages, sizes and interval, used from the next pass on.
    /// `on_full` is fixed at start (the writers act on it).
    pub fn set_retention(&self, r: crate::config::RetentionConfig) {
        debug_assert_eq!(r.on_full, self.cfg.retention.on_full);
        *self.retention.write().expect("not poisoned") = r;
    }

    /// One retention pass now (also run periodically by [`retention::run`]).
    pub fn retention_pass(&self, hold: &dyn retention::Hold) -> io::Result<retention::Outcome> {
        let out = retention::pass(
            &self.fs,
            &self.archive_dir,
            &self.state_dir,
            &self.retention(),
            self.age_clock.now_ms(&*self.clock),
            hold,
            &self.metrics,
        )?;
        self.full.passed(&self.retention(), &out);
        if !out.deleted.is_empty() {
            self.changes.layout_changed(None);
        }
        Ok(out)
    }

    /// Under `on_full = "drop_oldest"`: delete sealed segments until the
    /// writers have room again ([`retention::make_room`]).
    pub fn make_room(&self, hold: &dyn retention::Hold) -> io::Result<Vec<PathBuf>> {
        if self.cfg.retention.on_full != crate::config::OnFull::DropOldest {
            return Ok(Vec::new());
        }
        let target = commit::room_target(&self.cfg);
        let deleted = retention::make_room(&self.fs, &self.archive_dir, &self.state_dir, target, hold, &self.metrics)?;
        if !deleted.is_empty() {
            self.changes.layout_changed(None);
        }
        Ok(deleted)
    }

    /// Resolves when a writer asks for room (disk full, `drop_oldest`).
    pub async fn room_wanted(&self) {
        self.room.notified().await
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
