//! What of the archive an uplink still has to deliver, read from disk: the
//! store's files are the only queue (no in-memory backlog), so memory stays
//! bounded however far behind a link is.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::config::KeepLocal;
use crate::metrics::Metrics;
use crate::store::frame::FrameHeader;
use crate::store::fs::Fs;
use crate::store::reader::{SegmentReader, Step};
use crate::store::recover::{list_repaired, read_state_lines};
use crate::store::retention::Hold;
use crate::store::segment::SegmentName;

/// Segments a forwarder has delivered: an uplink (sealed and verified at the
/// receiver, `state/uplinks/<name>.delivered`) or a sink (every record
/// acknowledged by the broker, `state/sinks/<name>.delivered`). One path per
/// line; losing the file, or a damaged line in it, only costs asking the
/// receiver again (an uplink) or delivering the segment again (a sink).
pub struct Delivered {
    set: RwLock<HashSet<PathBuf>>,
    file: PathBuf,
    fs: Fs,
}

impl Delivered {
    /// Read the list. Lines that are not segment paths (a torn last line,
    /// garbage, text that is not UTF-8) are skipped, logged with the file
    /// and line, and counted: those segments are simply offered again.
    pub fn load(fs: &Fs, file: PathBuf, metrics: &Metrics) -> io::Result<Delivered> {
        let mut set = HashSet::new();
        read_state_lines(&file, "delivered", "the delivered list", "that segment is offered again", metrics, |line| {
            match std::str::from_utf8(line).ok().map(PathBuf::from) {
                Some(p) if SegmentName::parse_rel(&p).is_some() => {
                    set.insert(p);
                    true
                }
                _ => false,
            }
        })?;
        Ok(Delivered { set: RwLock::new(set), file, fs: fs.clone() })
    }

    pub fn contains(&self, rel: &Path) -> bool {
        self.set.read().expect("not poisoned").contains(rel)
    }

    pub fn add(&self, rel: &Path) -> io::Result<()> {
        if !self.set.write().expect("not poisoned").insert(rel.to_owned()) {
            return Ok(());
        }
        self.fs.append_line(&self.file, &rel.to_string_lossy())
    }

    /// The receiver's state epoch, as WELCOME said (`<name>.epoch` next to
    /// the list). When it differs from the one stored, the receiver lost
    /// its seal records (or is another receiver): forget every delivery,
    /// so every segment still here is offered again and sealed there
    /// against this node's checksums. Returns whether it changed. The list
    /// is cleared before the new epoch is stored: a crash between clears
    /// it again, never keeps it.
    pub fn check_epoch(&self, epoch: u64) -> io::Result<bool> {
        let path = self.file.with_extension("epoch");
        let stored = std::fs::read_to_string(&path).ok().and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
        if stored == Some(epoch) {
            return Ok(false);
        }
        let changed = stored.is_some();
        if changed {
            self.set.write().expect("not poisoned").clear();
            self.fs.write_atomic(&self.file, b"")?;
        }
        self.fs.write_atomic(&path, format!("{epoch:016x}\n").as_bytes())?;
        Ok(changed)
    }

    /// Forget segments that no longer exist (deleted by retention).
    pub fn retain_existing(&self, archive_dir: &Path) {
        self.set.write().expect("not poisoned").retain(|r| archive_dir.join(r).exists());
    }
}

/// Retention must keep what any uplink, sink or bucket has not delivered.
#[derive(Default)]
pub struct DeliveryHold {
    all: std::sync::RwLock<Vec<std::sync::Arc<Delivered>>>,
    /// The buckets among them, with their `keep_local`.
    buckets: std::sync::RwLock<Vec<(std::sync::Arc<Delivered>, Option<KeepLocal>)>>,
}

impl DeliveryHold {
    /// An uplink or sink (started, or added by a reload) holds from now on.
    pub fn add(&self, d: std::sync::Arc<Delivered>) {
        self.all.write().expect("not poisoned").push(d);
    }

    /// A bucket holds what it has not uploaded, and releases the rest past `keep`.
    pub fn add_bucket(&self, d: std::sync::Arc<Delivered>, keep: Option<KeepLocal>) {
        self.add(d.clone());
        self.buckets.write().expect("not poisoned").push((d, keep));
    }

    /// An uplink, sink or bucket removed by a reload no longer holds anything.
    pub fn remove(&self, d: &std::sync::Arc<Delivered>) {
        self.all.write().expect("not poisoned").retain(|x| !std::sync::Arc::ptr_eq(x, d));
        self.buckets.write().expect("not poisoned").retain(|(x, _)| !std::sync::Arc::ptr_eq(x, d));
    }
}

impl Hold for DeliveryHold {
    fn holds(&self, rel: &Path) -> bool {
        self.all.read().expect("not poisoned").iter().any(|d| !d.contains(rel))
    }

    fn offloaded(&self, rel: &Path) -> bool {
        let b = self.buckets.read().expect("not poisoned");
        !b.is_empty() && b.iter().all(|(d, _)| d.contains(rel))
    }

    /// The most a bucket asks to keep: none at all if one keeps everything.
    fn keep_local(&self) -> Option<KeepLocal> {
        let b = self.buckets.read().expect("not poisoned");
        let mut keep: Option<KeepLocal> = None;
        for (_, k) in b.iter() {
            keep = match (keep, (*k)?) {
                (None, k) => Some(k),
                (Some(KeepLocal::Age(a)), KeepLocal::Age(b)) => Some(KeepLocal::Age(a.max(b))),
                (Some(KeepLocal::Bytes(a)), KeepLocal::Bytes(b)) => Some(KeepLocal::Bytes(a.max(b))),
                // An age and a size: keep by the age (the size may be far smaller).
                (Some(KeepLocal::Age(a)), KeepLocal::Bytes(_)) | (Some(KeepLocal::Bytes(_)), KeepLocal::Age(a)) => {
                    Some(KeepLocal::Age(a))
                }
            };
        }
        keep
    }
}

/// A segment on disk that is not yet delivered.
pub use crate::store::segment::OnDisk as Local;

/// Every undelivered segment under `archive/`, oldest first. A damaged
/// seal record is re-derived from its segment on the way (logged, counted).
pub fn scan(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    delivered: &Delivered,
    now_ms: i64,
    metrics: &Metrics,
) -> io::Result<Vec<Local>> {
    list_repaired(fs, archive_dir, state_dir, |rel| delivered.contains(rel), now_ms, metrics)
}

/// Whole frames of `path` from `from`, up to about `max` bytes (at least one
/// frame). Returns the bytes, and the first record time of the chunk.
pub fn read_chunk(path: &Path, from: u64, max: usize) -> io::Result<(Vec<u8>, i64)> {
    let mut r = SegmentReader::open(path)?;
    r.seek(from);
    let mut end = from;
    let mut first_ms = 0;
    while let Step::Frame { offset, header } = r.next_frame()? {
        let next = offset + header.frame_len();
        if end > from && next - from > max as u64 {
            break;
        }
        if end == from {
            first_ms = header.first_ms;
        }
        end = next;
        if end - from >= max as u64 {
            break;
        }
    }
    let mut buf = vec![0u8; (end - from) as usize];
    File::open(path)?.read_exact_at(&mut buf, from)?;
    Ok((buf, first_ms))
}

/// Receive time of the first record of the frame at `offset` (lag in seconds).
pub fn first_ms_at(path: &Path, offset: u64) -> Option<i64> {
    let f = File::open(path).ok()?;
    let mut head = vec![0u8; 8 + crate::store::frame::MAX_HEADER_LEN];
    let n = f.read_at(&mut head, offset).ok()?;
    FrameHeader::decode(&head[..n]).ok().map(|h| h.first_ms)
}
