//! `kind = "file"`: application log files tailed into the store.
//!
//! One thread per listener owns every file: it learns of changes from
//! inotify (the `notify` crate) and, as a safety net, looks at every file each
//! `poll_interval`; it reads what is new into one batcher and hands batches to
//! the store with an acknowledgement, like RELP. A file's position is written
//! to its checkpoint only once the records up to it are committed, so a
//! `kill -9` at any moment loses nothing and repeats at most the records of the
//! commits in flight (counted at the next start as
//! `ferry_file_repeated_bytes_total`).
//!
//! Files are known by device and inode plus a fingerprint of their first
//! bytes ([`identity`]); a renamed or deleted file is read through its open
//! descriptor to its end (`rotate_wait` after its last growth); a file shorter
//! than what was read (copytruncate) is read again from its start.

pub mod checkpoint;
pub mod identity;
mod tail;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher;
use regex::bytes::Regex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::batcher::Batcher;
use super::ListenerCtx;
use crate::config::{FileConfig, StartAt};
use crate::metrics::DropReason;
use crate::store::{Committed, Error as StoreError};
use checkpoint::{Checkpoints, Entry};
use identity::{Fingerprint, Key};
use tail::{Emit, Tail};

/// A file listener ready to run: its checkpoints loaded (a bad state
/// directory fails the start, not the first commit).
pub struct Prepared {
    checkpoints: Checkpoints,
    /// The globs, for the log.
    pub paths: String,
}

impl Prepared {
    /// Load the listener's checkpoints from `state_dir/files/`.
    pub fn open(state_dir: &Path, cfg: &crate::config::ListenerConfig) -> std::io::Result<Prepared> {
        let checkpoints = Checkpoints::open(&state_dir.join("files"), &cfg.name)?;
        Ok(Prepared { checkpoints, paths: cfg.listen.to_string() })
    }
}

/// Run until `stop`, in a thread of its own (reads are blocking file I/O).
pub async fn serve(p: Prepared, ctx: Arc<ListenerCtx>, stop: CancellationToken) {
    let handle = tokio::runtime::Handle::current();
    let (done, finished) = oneshot::channel();
    let name = format!("ferry-file-{}", ctx.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        match Tailer::new(p, ctx.clone(), handle) {
            Ok(mut t) => t.run(&stop),
            Err(e) => error!(listener = %ctx.name, error = %e, "file listener cannot watch its files"),
        }
        let _ = done.send(());
    });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => error!(error = %e, "cannot start the file listener's thread"),
    }
}

/// Bytes read from one file before the others get their turn.
const READ_CHUNK: usize = 256 << 10;
const ROUND_BYTES: u64 = 4 << 20;
/// Batches handed to the store and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 64;
/// Records wait at most this long in the batcher for more.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// The loop's longest sleep: timeouts are checked this often.
const TICK: Duration = Duration::from_millis(100);
/// Rescans of the globs asked for by events, at most this often.
const RESCAN_GAP: Duration = Duration::from_millis(50);

/// A file's position as of one batch.
struct Pos {
    key: Key,
    gen: u32,
    done: u64,
    fp: Fingerprint,
}

struct InFlight {
    /// `None`: nothing to commit (only skipped lines); settled in turn.
    ack: Option<oneshot::Receiver<Result<Committed, StoreError>>>,
    positions: Vec<Pos>,
}

struct Tailer {
    cfg: FileConfig,
    ctx: Arc<ListenerCtx>,
    handle: tokio::runtime::Handle,
    batcher: Batcher,
    scratch: Vec<u8>,
    buf: Vec<u8>,
    rules: tail::Rules,
    includes: Vec<glob::Pattern>,
    excludes: Vec<glob::Pattern>,
    files: HashMap<Key, Tail>,
    by_path: HashMap<PathBuf, Key>,
    dirty: HashSet<Key>,
    /// Files with records in the batcher (or skipped lines) since the last hand-over.
    touched: HashSet<Key>,
    batch_since: Option<Instant>,
    in_flight: VecDeque<InFlight>,
    cp: Checkpoints,
    watcher: Option<notify::RecommendedWatcher>,
    watched_dirs: HashSet<PathBuf>,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    rescan_wanted: bool,
    last_rescan: Instant,
    last_poll: Instant,
    /// Files found by the first scan of a listener with no checkpoint yet.
    first_scan: bool,
    open_files: usize,
    /// The store is closed: nothing more is handed over.
    closed: bool,
}

/// Why a file listener cannot start watching (validation checks these
/// first: a reload's or an API's config that skipped it).
#[derive(Debug, thiserror::Error)]
enum TailerError {
    #[error("a file listener needs its file keys")]
    NoFiles,
    #[error("multiline_start: {0}")]
    Multiline(#[source] regex::Error),
    #[error("{pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
}

impl Tailer {
    fn new(p: Prepared, ctx: Arc<ListenerCtx>, handle: tokio::runtime::Handle) -> Result<Tailer, TailerError> {
        let cfg = ctx.cfg.files.clone().ok_or(TailerError::NoFiles)?;
        let (tx, events) = mpsc::channel();
        let watcher = match notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(listener = %ctx.name, error = %e, "inotify unavailable: files are looked at every poll_interval only");
                ctx.metrics.files.errors.with_label_values(&[&ctx.name, "watch"]).inc();
                None
            }
        };
        let multiline = match &cfg.multiline_start {
            Some(m) => Some(Regex::new(m).map_err(TailerError::Multiline)?),
            None => None,
        };
        let pattern =
            |p: &String| glob::Pattern::new(p).map_err(|source| TailerError::Pattern { pattern: p.clone(), source });
        let includes = cfg.paths.iter().map(pattern).collect::<Result<_, _>>()?;
        let excludes = cfg.exclude.iter().map(pattern).collect::<Result<_, _>>()?;
        let m = &ctx.metrics;
        for r in ["open", "read", "checkpoint", "watch"] {
            m.files.errors.with_label_values(&[&ctx.name, r]);
        }
        m.files.finished.with_label_values(&[&ctx.name]);
        m.files.truncations.with_label_values(&[&ctx.name]);
        m.files.quota_bytes.with_label_values(&[&ctx.name]);
        m.files.repeated_bytes.with_label_values(&[&ctx.name]);
        m.ingest.dropped_records.with_label_values(&[&ctx.name, DropReason::FileQuota.as_str()]);
        if p.checkpoints.skipped_lines > 0 {
            warn!(listener = %ctx.name, lines = p.checkpoints.skipped_lines,
                "checkpoint lines torn or corrupt were skipped (an older position of those files is used: lines may repeat, none are lost)");
        }
        let rules = tail::Rules { max_record: ctx.cfg.max_record_bytes, multiline, quota: cfg.quota };
        let now = Instant::now();
        Ok(Tailer {
            batcher: Batcher::new(&ctx, format!("files {}", cfg.paths.join(", "))),
            first_scan: p.checkpoints.fresh,
            cp: p.checkpoints,
            cfg,
            handle,
            scratch: Vec::with_capacity(8 << 10),
            buf: vec![0; READ_CHUNK],
            rules,
            includes,
            excludes,
            files: HashMap::new(),
            by_path: HashMap::new(),
            dirty: HashSet::new(),
            touched: HashSet::new(),
            batch_since: None,
            in_flight: VecDeque::new(),
            watcher,
            watched_dirs: HashSet::new(),
            events,
            rescan_wanted: true,
            last_rescan: now,
            last_poll: now,
            open_files: 0,
            closed: false,
            ctx,
        })
    }

    fn run(&mut self, stop: &CancellationToken) {
        info!(listener = %self.ctx.name, paths = %self.cfg.paths.join(", "), "tailing files");
        self.rescan(Instant::now());
        self.first_scan = false;
        // Positions of files no glob finds any more (deleted, or renamed out
        // of the globs while stopped) can never be used again.
        let stale: Vec<Key> = self.cp.keys().filter(|k| !self.files.contains_key(k)).collect();
        for k in stale {
            self.cp.forget(k);
        }
        self.save();
        while !stop.is_cancelled() && !self.closed {
            let wait = match self.batch_since {
                // Files with more to read go on at once.
                _ if !self.dirty.is_empty() => Duration::ZERO,
                Some(s) => BATCH_WAIT.saturating_sub(s.elapsed()),
                None => TICK,
            };
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    self.on_event(ev);
                    // Take what arrives with it: one read per file for a burst of writes.
                    let until = Instant::now() + Duration::from_millis(2);
                    while let Ok(ev) = self.events.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        self.on_event(ev);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // No inotify (it failed to start, or its thread ended): the
                    // channel answers at once from now on, so wait here instead.
                    self.watcher = None;
                    std::thread::sleep(wait);
                }
            }
            let now = Instant::now();
            if now.duration_since(self.last_poll) >= self.cfg.poll_interval {
                self.last_poll = now;
                self.rescan_wanted = true;
                self.dirty.extend(self.files.keys().copied());
            }
            if self.rescan_wanted && now.duration_since(self.last_rescan) >= RESCAN_GAP {
                self.rescan(now);
            }
            self.read_dirty();
            self.finish_files();
            if self.batch_since.is_some_and(|s| s.elapsed() >= BATCH_WAIT) {
                self.hand_over();
            }
            self.settle(false);
            self.save();
        }
        // Stopping: hand over what was read, wait for its commits, save.
        self.hand_over();
        self.settle(true);
        self.save();
        if let Err(e) = self.cp.compact() {
            self.checkpoint_failed(&e);
        }
        info!(listener = %self.ctx.name, files = self.files.len(), "file listener stopped; positions saved");
    }

    fn on_event(&mut self, ev: notify::Result<notify::Event>) {
        use notify::EventKind;
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                debug!(listener = %self.ctx.name, error = %e, "inotify error: looking at every file");
                self.rescan_wanted = true;
                self.dirty.extend(self.files.keys().copied());
                return;
            }
        };
        if matches!(ev.kind, EventKind::Access(_)) {
            // Our own reads and opens: nothing changed.
            return;
        }
        if ev.need_rescan() {
            // The kernel's queue overflowed: events were lost.
            self.rescan_wanted = true;
            self.dirty.extend(self.files.keys().copied());
            return;
        }
        let data =
            matches!(ev.kind, EventKind::Modify(notify::event::ModifyKind::Data(_) | notify::event::ModifyKind::Any));
        for p in &ev.paths {
            match self.by_path.get(p) {
                Some(k) => {
                    self.dirty.insert(*k);
                    if !data {
                        self.rescan_wanted = true;
                    }
                }
                None if data => {
                    // Possibly a file that was renamed away and is still written.
                    let gone = self.files.values().filter(|t| t.gone_since.is_some()).map(|t| t.key);
                    self.dirty.extend(gone.collect::<Vec<_>>());
                    if self.wanted(p) {
                        self.rescan_wanted = true;
                    }
                }
                None => self.rescan_wanted = true,
            }
        }
    }

    fn wanted(&self, p: &Path) -> bool {
        self.includes.iter().any(|g| g.matches_path(p)) && !self.excludes.iter().any(|g| g.matches_path(p))
    }

    /// Find the files the globs match now: new ones are added, ones no
    /// longer matched are read to their end.
    fn rescan(&mut self, now: Instant) {
        self.rescan_wanted = false;
        self.last_rescan = now;
        self.watch_dirs();
        let mut seen = HashSet::with_capacity(self.files.len());
        let mut by_path = HashMap::with_capacity(self.by_path.len());
        for i in 0..self.includes.len() {
            let Ok(paths) = glob::glob(self.includes[i].as_str()) else { continue };
            for path in paths.flatten() {
                if self.excludes.iter().any(|g| g.matches_path(&path)) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if !meta.is_file() {
                    continue;
                }
                let key = Key::of(&meta);
                if !seen.insert(key) {
                    continue;
                }
                by_path.insert(path.clone(), key);
                match self.files.get_mut(&key) {
                    Some(t) => {
                        if t.gone_since.take().is_some() {
                            debug!(listener = %self.ctx.name, file = %path.display(), "file is back under a watched name");
                        }
                    }
                    None => {
                        if self.add(path, key, meta.len(), now) {
                            self.dirty.insert(key);
                        }
                    }
                }
            }
        }
        for t in self.files.values_mut() {
            if !seen.contains(&t.key) && t.gone_since.is_none() {
                debug!(listener = %self.ctx.name, file = %t.path.display(), "renamed or deleted: reading it to its end");
                t.gone_since = Some(now);
                self.dirty.insert(t.key);
            }
        }
        self.by_path = by_path;
        self.ctx.metrics.files.watched.with_label_values(&[&self.ctx.name]).set(self.files.len() as i64);
    }

    /// inotify watches on the directories the globs can match in (the
    /// deepest directory without a wildcard; recursively when a directory
    /// component has one).
    fn watch_dirs(&mut self) {
        let Some(w) = self.watcher.as_mut() else { return };
        for pat in &self.cfg.paths {
            let p = Path::new(pat);
            let mut base = PathBuf::new();
            let mut recursive = false;
            let comps: Vec<_> = p.components().collect();
            for (i, c) in comps.iter().enumerate() {
                let s = c.as_os_str().to_string_lossy();
                if s.contains(['*', '?', '[']) {
                    recursive = i + 1 < comps.len();
                    break;
                }
                if i + 1 < comps.len() {
                    base.push(c);
                }
            }
            if self.watched_dirs.contains(&base) || !base.is_dir() {
                continue;
            }
            let mode = if recursive { notify::RecursiveMode::Recursive } else { notify::RecursiveMode::NonRecursive };
            match w.watch(&base, mode) {
                Ok(()) => {
                    self.watched_dirs.insert(base);
                }
                Err(e) => {
                    if self.ctx.may_warn() {
                        warn!(listener = %self.ctx.name, dir = %base.display(), error = %e,
                            "cannot watch the directory: its files are looked at every poll_interval");
                    }
                    self.ctx.metrics.files.errors.with_label_values(&[&self.ctx.name, "watch"]).inc();
                }
            }
        }
    }

    /// Start tailing a file; where depends on its checkpoint.
    fn add(&mut self, path: PathBuf, key: Key, size: u64, now: Instant) -> bool {
        self.make_room(now);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                if self.ctx.may_warn() {
                    warn!(listener = %self.ctx.name, file = %path.display(), error = %e, "cannot open file (tried again at the next poll)");
                }
                self.ctx.metrics.files.errors.with_label_values(&[&self.ctx.name, "open"]).inc();
                return false;
            }
        };
        let start = match self.cp.get(&key) {
            Some(e) => match e.fp.matches(&file, size) {
                Ok(true) if e.offset <= size => {
                    if e.sent > e.offset {
                        let again = e.sent.min(size) - e.offset;
                        self.ctx.metrics.files.repeated_bytes.with_label_values(&[&self.ctx.name]).inc_by(again);
                        info!(listener = %self.ctx.name, file = %path.display(), bytes = again,
                            "reading again what was in commits in flight at the last stop (some may be archived twice)");
                    }
                    e.offset
                }
                Ok(true) => {
                    info!(listener = %self.ctx.name, file = %path.display(), was = e.offset, now = size,
                        "file is shorter than its checkpoint (truncated while stopped): reading it from its start");
                    self.ctx.metrics.files.truncations.with_label_values(&[&self.ctx.name]).inc();
                    0
                }
                _ => {
                    info!(listener = %self.ctx.name, file = %path.display(),
                        "same device and inode as a file read before, other first bytes: a new file, read from its start");
                    0
                }
            },
            None if self.first_scan && self.cfg.start_at == StartAt::End => size,
            None => 0,
        };
        let fp = Fingerprint::of(&file, size).unwrap_or_default();
        if self.cp.get(&key).is_none_or(|e| e.offset != start) {
            // Where it starts, saved now: a restart before its first commit
            // starts there again (not at 0 for a file begun at its end).
            self.cp.set(key, Entry { fp, offset: start, sent: start, path: path.clone() });
        }
        debug!(listener = %self.ctx.name, file = %path.display(), offset = start, "tailing");
        self.files.insert(key, Tail::new(key, path, file, fp, start, &self.cfg.host, now));
        self.open_files += 1;
        self.ctx.metrics.files.open.with_label_values(&[&self.ctx.name]).set(self.open_files as i64);
        true
    }

    /// Keep at most `max_open_files` open: close the one read least recently
    /// that holds nothing and is still at its name (it is opened again by
    /// name when it changes).
    fn make_room(&mut self, now: Instant) {
        while self.open_files >= self.cfg.max_open_files {
            let victim = self
                .files
                .values()
                .filter(|t| t.file.is_some() && t.gone_since.is_none() && !t.holds() && t.done == t.committed)
                .min_by_key(|t| t.last_used)
                .map(|t| t.key);
            let Some(k) = victim else {
                if self.ctx.may_warn() {
                    warn!(listener = %self.ctx.name, max_open_files = self.cfg.max_open_files,
                        "max_open_files reached and every open file is busy: new files wait");
                }
                return;
            };
            if let Some(t) = self.files.get_mut(&k) {
                t.file = None;
                t.last_used = now;
            }
            self.open_files -= 1;
        }
    }

    /// Open a file closed by the cap again, by its name, if it is still the same file.
    fn reopen(&mut self, k: Key, now: Instant) -> bool {
        let Some(path) = self.files.get(&k).map(|t| t.path.clone()) else { return false };
        self.make_room(now);
        if self.open_files >= self.cfg.max_open_files {
            return false;
        }
        let Ok(f) = File::open(&path) else { return false };
        match f.metadata() {
            Ok(m) if Key::of(&m) == k => {}
            _ => {
                // Its name holds another file now: the rescan finds that one.
                self.rescan_wanted = true;
                return false;
            }
        }
        if let Some(t) = self.files.get_mut(&k) {
            t.file = Some(f);
            self.open_files += 1;
        }
        true
    }

    fn read_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let now_ms = {
            use crate::store::clock::Clock;
            crate::store::clock::SystemClock.now_ms()
        };
        let stamp = stamp(now_ms);
        let dirty: Vec<Key> = self.dirty.drain().collect();
        for k in dirty {
            if self.files.get(&k).is_some_and(|t| t.file.is_none()) && !self.reopen(k, now) {
                continue;
            }
            self.read_one(k, &stamp, now, now_ms);
        }
        self.ctx.metrics.files.open.with_label_values(&[&self.ctx.name]).set(self.open_files as i64);
    }

    /// Read what is new in one file (up to a round's share; it stays dirty
    /// if there is more).
    fn read_one(&mut self, k: Key, stamp: &[u8], now: Instant, now_ms: i64) {
        let Some(t) = self.files.get_mut(&k) else { return };
        let Some(f) = t.file.take() else { return };
        t.last_used = now;
        let size = match f.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.ctx.metrics.files.errors.with_label_values(&[&self.ctx.name, "read"]).inc();
                warn!(listener = %self.ctx.name, file = %t.path.display(), error = %e, "cannot stat file");
                t.file = Some(f);
                return;
            }
        };
        if size < t.read_at {
            warn!(listener = %self.ctx.name, file = %t.path.display(), read_to = t.read_at, size,
                "file truncated (copytruncate?): reading it again from its start; lines written after the last read and before the truncation are lost by that rotation's design");
            self.ctx.metrics.files.truncations.with_label_values(&[&self.ctx.name]).inc();
            t.restart_at(0);
            t.committed = 0;
            t.fp = Fingerprint::default();
        }
        if t.fp.is_short() && size > u64::from(t.fp.len) {
            if let Ok(fp) = Fingerprint::of(&f, size) {
                t.fp = fp;
            }
        }
        let mut emit = Emit::new(&mut self.batcher, &mut self.scratch, &self.rules, stamp, now, now_ms);
        let mut round = 0u64;
        let before = t.done;
        let mut more = false;
        loop {
            if round >= ROUND_BYTES || emit.batcher.buffered() >= crate::store::BATCH_BYTES {
                more = true;
                break;
            }
            match f.read_at(&mut self.buf, t.read_at) {
                Ok(0) => break,
                Ok(n) => {
                    t.feed(&self.buf[..n], &mut emit);
                    round += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ctx.metrics.files.errors.with_label_values(&[&self.ctx.name, "read"]).inc();
                    if self.ctx.may_warn() {
                        warn!(listener = %self.ctx.name, file = %t.path.display(), error = %e, "cannot read file (tried again)");
                    }
                    break;
                }
            }
        }
        let (qr, qb, over) = (emit.quota_records, emit.quota_bytes, std::mem::take(&mut emit.over_quota));
        drop(emit);
        t.lag = size.saturating_sub(t.read_at);
        t.file = Some(f);
        if t.done != before {
            self.touched.insert(k);
        }
        let name = &self.ctx.name;
        if qr > 0 {
            self.ctx.metrics.drop_records(name, DropReason::FileQuota, qr);
            self.ctx.metrics.files.quota_bytes.with_label_values(&[name]).inc_by(qb);
        }
        for p in over {
            if self.ctx.may_warn() {
                warn!(listener = %name, file = %p.display(), quota = ?self.cfg.quota,
                    "file over its quota: the rest of this period is skipped (counted as dropped, reason file_quota)");
            }
        }
        if self.batcher.buffered() > 0 || !self.touched.is_empty() {
            self.batch_since.get_or_insert(now);
        }
        if self.batcher.buffered() >= crate::store::BATCH_BYTES {
            self.hand_over();
        }
        if more {
            self.dirty.insert(k);
        }
    }

    /// Held lines past their timeout, and renamed or deleted files read to
    /// their end and quiet for `rotate_wait`: their last line taken, closed,
    /// forgotten once committed.
    fn finish_files(&mut self) {
        let now = Instant::now();
        let now_ms = {
            use crate::store::clock::Clock;
            crate::store::clock::SystemClock.now_ms()
        };
        let stamp = stamp(now_ms);
        let mut closing = Vec::new();
        for t in self.files.values_mut() {
            let finished = t.gone_since.is_some() && now.duration_since(t.last_growth) >= self.cfg.rotate_wait;
            if !(finished || t.holds()) {
                continue;
            }
            let before = t.done;
            let mut emit = Emit::new(&mut self.batcher, &mut self.scratch, &self.rules, &stamp, now, now_ms);
            t.flush_held(self.cfg.partial_timeout, finished, &mut emit);
            let qr = emit.quota_records;
            drop(emit);
            if qr > 0 {
                self.ctx.metrics.drop_records(&self.ctx.name, DropReason::FileQuota, qr);
            }
            if t.done != before {
                self.touched.insert(t.key);
                self.batch_since.get_or_insert(now);
            }
            let at_end = t.file.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| m.len() <= t.read_at);
            if finished && at_end && t.done == t.committed && !self.touched.contains(&t.key) {
                closing.push(t.key);
            }
        }
        for k in closing {
            if let Some(t) = self.files.remove(&k) {
                info!(listener = %self.ctx.name, file = %t.path.display(), bytes = t.done, "renamed or deleted file read to its end: closed");
                if t.file.is_some() {
                    self.open_files -= 1;
                }
                self.cp.forget(k);
                self.ctx.metrics.files.finished.with_label_values(&[&self.ctx.name]).inc();
            }
        }
        self.ctx.metrics.files.watched.with_label_values(&[&self.ctx.name]).set(self.files.len() as i64);
    }

    /// Hand the batch to the store with the positions it brings each file to;
    /// their `sent` mark is saved first (what a stop now may repeat).
    fn hand_over(&mut self) {
        self.batch_since = None;
        if self.touched.is_empty() && self.batcher.buffered() == 0 {
            return;
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT && !self.closed {
            self.settle_one(true);
        }
        let mut positions = Vec::with_capacity(self.touched.len());
        for k in self.touched.drain() {
            let Some(t) = self.files.get(&k) else { continue };
            positions.push(Pos { key: k, gen: t.gen, done: t.done, fp: t.fp });
            if let Some(e) = self.cp.get(&k) {
                let e = Entry { sent: t.done, ..e.clone() };
                self.cp.set(k, e);
            } else {
                self.cp.set(k, Entry { fp: t.fp, offset: t.committed, sent: t.done, path: t.path.clone() });
            }
        }
        if let Err(e) = self.cp.flush() {
            self.checkpoint_failed(&e);
        }
        let ack = if self.batcher.has_buffered() {
            match self.handle.block_on(self.batcher.flush_acked()) {
                Some(rx) => Some(rx),
                None => {
                    // The store is closed (stopping): these records are read again at the next start.
                    self.closed = true;
                    return;
                }
            }
        } else {
            None
        };
        self.in_flight.push_back(InFlight { ack, positions });
    }

    /// Settle acknowledged batches in order: their positions become checkpoints.
    fn settle(&mut self, block: bool) {
        while !self.in_flight.is_empty() {
            if !self.settle_one(block) {
                return;
            }
        }
    }

    /// The oldest batch: true if it settled.
    fn settle_one(&mut self, block: bool) -> bool {
        let Some(front) = self.in_flight.front_mut() else { return false };
        let result = match front.ack.as_mut() {
            None => Ok(()),
            Some(rx) if block => match self.handle.block_on(rx) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the store closed before committing".into()),
            },
            Some(rx) => match rx.try_recv() {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => Err("the store closed before committing".into()),
            },
        };
        let done = self.in_flight.pop_front().expect("front exists");
        match result {
            Ok(()) => {
                for p in done.positions {
                    let Some(t) = self.files.get_mut(&p.key) else { continue };
                    if t.gen != p.gen {
                        continue;
                    }
                    t.committed = p.done;
                    let sent = self.cp.get(&p.key).map_or(p.done, |e| e.sent.max(p.done));
                    self.cp.set(p.key, Entry { fp: p.fp, offset: p.done, sent, path: t.path.clone() });
                }
            }
            Err(e) => self.rewind(&e),
        }
        true
    }

    /// A commit failed: nothing after the last committed position counts.
    /// Every file is read again from there (what later commits did hold is
    /// archived twice: duplicates, never a hole).
    fn rewind(&mut self, why: &str) {
        error!(listener = %self.ctx.name, error = %why, "a commit of file records failed: reading every file again from its last committed position");
        let rest: Vec<InFlight> = self.in_flight.drain(..).collect();
        for f in rest {
            if let Some(rx) = f.ack {
                let _ = self.handle.block_on(rx);
            }
        }
        self.batcher.discard();
        self.touched.clear();
        self.batch_since = None;
        for t in self.files.values_mut() {
            let at = t.committed;
            t.restart_at(at);
            self.dirty.insert(t.key);
        }
    }

    fn save(&mut self) {
        let lag: u64 = self.files.values().map(|t| t.lag).sum();
        self.ctx.metrics.files.lag_bytes.with_label_values(&[&self.ctx.name]).set(lag as i64);
        if let Err(e) = self.cp.flush() {
            self.checkpoint_failed(&e);
        }
    }

    fn checkpoint_failed(&self, e: &std::io::Error) {
        self.ctx.metrics.files.errors.with_label_values(&[&self.ctx.name, "checkpoint"]).inc();
        if self.ctx.may_warn() {
            warn!(listener = %self.ctx.name, error = %e,
                "cannot save file positions (lines committed since the last save are read again after a restart)");
        }
    }
}

/// `<133>1 2026-12-04T21:43:45.123Z`: local0.notice, as rsyslog's imfile
/// defaults to, and the time the line was read.
fn stamp(ms: i64) -> Vec<u8> {
    let (y, mo, d, h) = crate::store::clock::utc_hour(ms);
    let in_hour = ms.rem_euclid(3_600_000);
    format!(
        "<133>1 {y:04}-{mo:02}-{d:02}T{h:02}:{:02}:{:02}.{:03}Z",
        in_hour / 60_000,
        (in_hour / 1000) % 60,
        in_hour % 1000
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_is_rfc3339_utc() {
        assert_eq!(super::stamp(1_764_884_625_123), b"<133>1 2025-12-04T21:43:45.123Z".to_vec());
    }
}
