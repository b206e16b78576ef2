//! What each forwarder (an uplink, a sink, a bucket) has delivered, and
//! the hold that keeps retention from deleting what one still needs. A
//! store concept, shared by every follower of the archive.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::fs::Fs;
use super::recover::read_state_lines;
use super::retention::Hold;
use super::segment::SegmentName;
use crate::config::KeepLocal;
use crate::metrics::Metrics;

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

    /// The segment (relative to `archive/`) is delivered.
    pub fn contains(&self, rel: &Path) -> bool {
        self.set.read().expect("not poisoned").contains(rel)
    }

    /// Note a segment delivered (one line appended, fsynced).
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
