//! Retention by age and by total bytes.
//!
//! Only sealed segments are ever deleted. A segment that a [`Hold`] claims
//! (an uplink that has not delivered it yet) is kept unless the operator chose
//! `on_full = "drop_oldest"`; with `on_full = "reject"` an archive that stays
//! over `max_bytes` makes the store refuse new records instead, and says so in
//! the log and in `ferry_store_full`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

use super::fs::Fs;
use super::recover::list_repaired;
use super::segment::{gone_path, list_segments, seal_path, SealRecord};
use super::Store;
use crate::config::{KeepLocal, OnFull, RetentionConfig};
use crate::metrics::Metrics;

/// Says whether a segment is still needed by someone (an uplink).
pub trait Hold: Send + Sync {
    /// `rel` is relative to `archive/`.
    fn holds(&self, rel: &Path) -> bool;

    /// Every bucket confirmed this segment (its local copy is a cache).
    fn offloaded(&self, _rel: &Path) -> bool {
        false
    }

    /// How much of what the buckets hold stays here too.
    fn keep_local(&self) -> Option<KeepLocal> {
        None
    }
}

/// Nothing holds anything (a node without uplinks).
pub struct NoHold;

impl Hold for NoHold {
    fn holds(&self, _: &Path) -> bool {
        false
    }
}

/// What a pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes of segment files after the pass.
    pub total_bytes: u64,
    /// Segment files after the pass.
    pub segments: u64,
    /// Segments deleted, relative to `archive/`.
    pub deleted: Vec<PathBuf>,
    /// The archive is over `max_bytes` and `on_full = "reject"`.
    pub full: bool,
    /// Bytes of the sealed segments kept (after deletions): over
    /// `max_bytes` the mirror takes no new segment ([`Fullness::sealed_full`]).
    pub sealed_bytes: u64,
}

struct Seg {
    rel: PathBuf,
    len: u64,
    seal: Option<SealRecord>,
    seq: u64,
}

/// One retention pass over the whole archive.
#[allow(clippy::too_many_arguments)]
pub fn pass(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    cfg: &RetentionConfig,
    now_ms: i64,
    hold: &dyn Hold,
    metrics: &Metrics,
) -> io::Result<Outcome> {
    // Damaged seal records are re-derived on the way (mirror segments too).
    let mut segs: Vec<Seg> = list_repaired(fs, archive_dir, state_dir, |_| false, now_ms, metrics)?
        .into_iter()
        .map(|d| Seg { rel: d.rel, len: d.len, seal: d.seal, seq: d.name.seq })
        .collect();
    // Oldest first: by seal time, then by sequence.
    segs.sort_by_key(|s| (s.seal.as_ref().map(|r| r.sealed_ms).unwrap_or(i64::MAX), s.seq));
    let mut out =
        Outcome { total_bytes: segs.iter().map(|s| s.len).sum(), segments: segs.len() as u64, ..Outcome::default() };
    let deletable = |s: &Seg| s.seal.is_some() && (cfg.on_full == OnFull::DropOldest || !hold.holds(&s.rel));
    let delete = |s: &Seg, reason: &str, out: &mut Outcome| -> io::Result<()> {
        let undelivered = hold.holds(&s.rel);
        if undelivered {
            warn!(path = %s.rel.display(), reason, "deleting a segment an uplink has not delivered (on_full = drop_oldest)");
            metrics.store.retention_deleted_segments.with_label_values(&["undelivered"]).inc();
        }
        remove(fs, archive_dir, state_dir, &s.rel)?;
        if undelivered {
            tombstone(fs, state_dir, &s.rel, s.seal.as_ref());
        }
        metrics.store.retention_deleted_segments.with_label_values(&[reason]).inc();
        metrics.store.retention_deleted_bytes.with_label_values(&[reason]).inc_by(s.len);
        info!(path = %s.rel.display(), bytes = s.len, reason, "retention deleted segment");
        out.total_bytes -= s.len;
        out.segments -= 1;
        out.deleted.push(s.rel.clone());
        Ok(())
    };
    let mut kept = Vec::new();
    for s in segs {
        let old = match (cfg.max_age, &s.seal) {
            (Some(age), Some(seal)) => now_ms.saturating_sub(seal.sealed_ms) > age.as_millis() as i64,
            _ => false,
        };
        if old && deletable(&s) {
            delete(&s, "age", &mut out)?;
        } else {
            kept.push(s);
        }
    }
    // Local copies of what the buckets hold, beyond `keep_local`: never a
    // segment someone still needs, never a tombstone (it is in the bucket).
    if let Some(keep) = hold.keep_local() {
        let mut offloaded: u64 =
            kept.iter().filter(|s| s.seal.is_some() && hold.offloaded(&s.rel)).map(|s| s.len).sum();
        let mut rest = Vec::with_capacity(kept.len());
        for s in kept {
            let go = s.seal.is_some()
                && !hold.holds(&s.rel)
                && hold.offloaded(&s.rel)
                && match keep {
                    KeepLocal::Age(age) => {
                        now_ms.saturating_sub(s.seal.as_ref().map_or(now_ms, |x| x.sealed_ms)) > age.as_millis() as i64
                    }
                    KeepLocal::Bytes(max) => offloaded > max,
                };
            if go {
                offloaded -= s.len;
                delete(&s, "offloaded", &mut out)?;
            } else {
                rest.push(s);
            }
        }
        kept = rest;
    }
    if let Some(max) = cfg.max_bytes {
        let mut sealed_bytes: u64 = kept.iter().filter(|s| s.seal.is_some()).map(|s| s.len).sum();
        for s in &kept {
            if out.total_bytes <= max {
                break;
            }
            if deletable(s) {
                delete(s, "bytes", &mut out)?;
                sealed_bytes -= s.len;
            }
        }
        out.full = out.total_bytes > max && cfg.on_full == OnFull::Reject;
        out.sealed_bytes = sealed_bytes;
    }
    expire_tombstones(fs, state_dir, cfg, now_ms);
    metrics.store.archive_bytes.set(out.total_bytes as i64);
    metrics.store.archive_segments.set(out.segments as i64);
    metrics.store.store_full.set(i64::from(out.full));
    Ok(out)
}

/// Whether the archive is over `max_bytes` under `on_full = "reject"`,
/// between retention passes too. A pass sets what it counted; writers add
/// what they write; so a burst closes the door when it crosses the limit,
/// not at the next pass (`check_interval`, 60 s by default, in which a
/// relay can take gigabytes).
#[derive(Debug)]
pub struct Fullness {
    /// `ferry_store_full`, which `/readyz` and `ferry status` read: set as
    /// soon as writes cross the limit, not at the next pass.
    gauge: prometheus::IntGauge,
    /// `u64::MAX` without a limit or when `on_full` is not `reject`.
    max: AtomicU64,
    /// Archive bytes, and sealed bytes kept, at the last pass.
    total: AtomicU64,
    sealed: AtomicU64,
    /// Bytes written since the last pass (commits and mirror appends), and
    /// bytes of the segments sealed since.
    written: AtomicU64,
    sealed_since: AtomicU64,
}

impl Fullness {
    /// Not full; `gauge` is `ferry_store_full`.
    pub fn new(gauge: prometheus::IntGauge) -> Fullness {
        Fullness {
            gauge,
            max: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            sealed_since: AtomicU64::new(0),
        }
    }

    /// `bytes` were written since the last pass (a commit, a mirror append).
    pub fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
        if self.gauge.get() == 0 && self.is_full() {
            self.gauge.set(1);
            warn!("archive reached max_bytes and on_full = reject: refusing new records until retention frees room");
        }
    }

    /// A segment of `bytes` was sealed (local or mirrored).
    pub fn sealed(&self, bytes: u64) {
        self.sealed_since.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A pass counted the archive: the count starts again from it.
    pub fn passed(&self, cfg: &RetentionConfig, out: &Outcome) {
        let max = match (cfg.max_bytes, cfg.on_full) {
            (Some(m), OnFull::Reject) => m,
            _ => u64::MAX,
        };
        self.total.store(out.total_bytes, Ordering::Relaxed);
        self.sealed.store(out.sealed_bytes, Ordering::Relaxed);
        self.written.store(0, Ordering::Relaxed);
        self.sealed_since.store(0, Ordering::Relaxed);
        self.max.store(max, Ordering::Relaxed);
    }

    /// Ingest stops: the archive as last counted plus what came since is
    /// over `max_bytes`.
    pub fn is_full(&self) -> bool {
        let since = self.written.load(Ordering::Relaxed);
        self.total.load(Ordering::Relaxed).saturating_add(since) > self.max.load(Ordering::Relaxed)
    }

    /// The mirror takes no new segment: the sealed segments retention must
    /// keep, plus those sealed since, are over `max_bytes`. Open segments
    /// never close it: they cannot be deleted before their origin seals
    /// them, so counting them shut the door until the edges rotated.
    pub fn sealed_full(&self) -> bool {
        let since = self.sealed_since.load(Ordering::Relaxed);
        self.sealed.load(Ordering::Relaxed).saturating_add(since) > self.max.load(Ordering::Relaxed)
    }
}

/// Keep the seal record of an undelivered segment just deleted as its
/// tombstone (`state/gone/`), written after the deletion freed the space:
/// `ferry audit` then reports the hole as `deleted_undelivered`, not as a
/// segment gone missing. Failing to write it is logged; the deletion stands.
fn tombstone(fs: &Fs, state_dir: &Path, rel: &Path, seal: Option<&SealRecord>) {
    let Some(seal) = seal else { return };
    let path = gone_path(state_dir, rel);
    let written = path.parent().map_or(Ok(()), |d| fs.create_dir_all(d)).and_then(|()| seal.store(fs, &path));
    if let Err(e) = written {
        warn!(path = %rel.display(), error = %e, "cannot record the deletion of an undelivered segment");
    }
}

/// How long a tombstone is kept without `max_age`.
pub const TOMBSTONE_KEEP: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A tombstone is kept `max_age` (or [`TOMBSTONE_KEEP`]) from when it was
/// written (its file's time): a segment deleted for its age would
/// otherwise take its tombstone with it at once. A damaged one is left for
/// the operator (`ferry audit` names it).
fn expire_tombstones(fs: &Fs, state_dir: &Path, cfg: &RetentionConfig, now_ms: i64) {
    let keep = cfg.max_age.unwrap_or(TOMBSTONE_KEEP).as_millis() as i64;
    for (rel, _, seal) in super::segment::list_tombstones(state_dir) {
        if seal.is_err() {
            continue;
        }
        let path = gone_path(state_dir, &rel);
        let written_ms = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        let Some(written_ms) = written_ms else { continue };
        if now_ms.saturating_sub(written_ms) > keep {
            match fs.remove_file(&path) {
                Ok(()) => {
                    info!(path = %rel.display(), "tombstone expired");
                    if let Some(day) = path.parent() {
                        fs.remove_dir_if_empty(day);
                    }
                }
                Err(e) => warn!(path = %rel.display(), error = %e, "cannot remove an expired tombstone"),
            }
        }
    }
}

fn remove(fs: &Fs, archive_dir: &Path, state_dir: &Path, rel: &Path) -> io::Result<()> {
    let path = archive_dir.join(rel);
    fs.remove_file(&path)?;
    let _ = fs.remove_file(&seal_path(state_dir, rel));
    // Drop the day directory once its last segment is gone (fails harmlessly if not empty).
    if let Some(day) = path.parent() {
        fs.remove_dir_if_empty(day);
    }
    if let Some(day) = seal_path(state_dir, rel).parent() {
        fs.remove_dir_if_empty(day);
    }
    Ok(())
}

/// The disk is (nearly) full and `on_full = "drop_oldest"`: delete sealed
/// segments, delivered ones first, then the oldest undelivered, until
/// `target` bytes are free. Each deletion is logged and counted with the
/// reason `disk_full`. Returns what was deleted.
pub fn make_room(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    target: u64,
    hold: &dyn Hold,
    metrics: &Metrics,
) -> io::Result<Vec<PathBuf>> {
    let mut deleted = Vec::new();
    if fs.space(archive_dir)?.free_bytes >= target {
        return Ok(deleted);
    }
    let mut segs: Vec<_> =
        list_segments(archive_dir, state_dir, |_| false)?.into_iter().filter(|d| d.seal.is_some()).collect();
    // Delivered before undelivered; oldest first within each.
    segs.sort_by_key(|d| (hold.holds(&d.rel), d.seal.as_ref().map(|r| r.sealed_ms).unwrap_or(i64::MAX), d.name.seq));
    for d in segs {
        if fs.space(archive_dir)?.free_bytes >= target {
            break;
        }
        let undelivered = hold.holds(&d.rel);
        remove(fs, archive_dir, state_dir, &d.rel)?;
        if undelivered {
            tombstone(fs, state_dir, &d.rel, d.seal.as_ref());
        }
        metrics.store.retention_deleted_segments.with_label_values(&["disk_full"]).inc();
        metrics.store.retention_deleted_bytes.with_label_values(&["disk_full"]).inc_by(d.len);
        if undelivered {
            metrics.store.retention_deleted_segments.with_label_values(&["undelivered"]).inc();
        }
        warn!(path = %d.rel.display(), bytes = d.len, undelivered, "disk full and on_full = drop_oldest: deleted a sealed segment to make room");
        deleted.push(d.rel);
    }
    if fs.space(archive_dir)?.free_bytes < target {
        warn!(target, "disk full and on_full = drop_oldest, but no sealed segment is left to delete");
    }
    Ok(deleted)
}

/// Under `on_full = "reject"` with `max_bytes`, a pass at most this soon
/// after a segment came, was sealed or went.
const RELOOK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Run retention every `check_interval` (as in force: a reload changes it
/// from the next wait on) until `stop` is cancelled. Under `on_full =
/// "reject"` with `max_bytes`, also when segments come, are sealed or go
/// (at most every [`RELOOK_AFTER`]): "full" is decided by passes, and with
/// only one every `check_interval` (60 s by default) what arrived between
/// two passes overshot `max_bytes` by a whole interval's intake.
pub async fn run(store: Arc<Store>, hold: Arc<dyn Hold>, stop: tokio_util::sync::CancellationToken) {
    let mut was_full = false;
    let mut changes = store.changes().subscribe();
    loop {
        let s = store.clone();
        let h = hold.clone();
        match tokio::task::spawn_blocking(move || s.retention_pass(&*h)).await {
            Ok(Ok(out)) => {
                if out.full != was_full {
                    if out.full {
                        warn!(
                            bytes = out.total_bytes,
                            "archive is over max_bytes and on_full = reject: refusing new records"
                        );
                    } else {
                        info!(bytes = out.total_bytes, "archive is back under max_bytes: accepting records");
                    }
                    was_full = out.full;
                }
            }
            Ok(Err(e)) => warn!(error = %e, "retention pass failed"),
            Err(e) => warn!(error = %e, "retention task failed"),
        }
        let passed = tokio::time::Instant::now();
        let mut relook = false;
        loop {
            let r = store.retention();
            let watch = r.max_bytes.is_some() && r.on_full == OnFull::Reject;
            let due = passed + if relook { RELOOK_AFTER.min(r.check_interval) } else { r.check_interval };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(due) => break,
                // Growth wakes this too (every commit); only a new, sealed
                // or deleted segment calls for a pass.
                _ = changes.changed(), if watch && !relook => relook = changes.take().relist,
                _ = store.room_wanted() => {
                    let (s, h) = (store.clone(), hold.clone());
                    match tokio::task::spawn_blocking(move || s.make_room(&*h)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "cannot make room on a full disk"),
                        Err(e) => warn!(error = %e, "retention task failed"),
                    }
                }
            }
        }
    }
}
