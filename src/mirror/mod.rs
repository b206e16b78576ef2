//! The mirror: a receiving node's copy of other nodes' segments, at the same
//! relative path under its own `archive/`.
//!
//! Appends are positional: an append is accepted only at the mirror's
//! current length, so a retransmission after a reconnect is refused with the
//! right offset instead of being written twice. Only whole, checksummed
//! frames are written, each append is fsynced before it is acknowledged, and
//! a mirror segment left half-written by a crash is repaired by the same walk
//! that recovers local segments. The file is written by the store's own
//! segment writer ([`OpenSegment`]), at the origin's offsets, with the same
//! running SHA-256 and counts and the same cut rule after a failed write or
//! fsync. Sealing checks the origin's length and SHA-256 against those
//! (the file is not read again) and records the same seal record as the
//! origin; a mismatch is refused, logged and counted, never accepted.
//!
//! When the mirror's disk fails, an append is refused with what went wrong
//! ([`AppendError::Io`], a `NO_SPACE`, `READ_ONLY` or `IO_ERROR` code on the
//! wire) and nothing of it stays: the write is positional and its remains
//! are cut; after a failed fsync the file is cut back to its last
//! acknowledged length ([`OpenSegment::cut_to_durable`]). The uplink keeps
//! its backlog and offers the same bytes again later.

pub mod peers;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::store::changes::Changes;
use crate::store::clock::Clock;
use crate::store::frame::{FrameError, FrameHeader};
use crate::store::fs::{Fs, Trouble};
use crate::store::recover::{reseal, walk_and_repair};
use crate::store::segment::{
    gone_path, hex, seal_path, AppendError as SegmentAppendError, OpenSegment, SealRecord, SegmentName,
};

/// Why the mirror did not take an APPEND (each has its answer on the wire).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// An append at another offset than the mirror's length: nothing written.
    #[error("append at offset {offset} but the mirror holds {expected} bytes")]
    WrongOffset {
        /// Where the uplink appended.
        offset: u64,
        /// The mirror's length: where the uplink must resume.
        expected: u64,
    },
    /// The segment is sealed here: it never changes again.
    #[error("segment is already sealed")]
    Sealed,
    /// The chunk is not whole, valid frames: nothing of it written.
    #[error("invalid frame at chunk offset {at}: {error}")]
    InvalidFrame {
        /// Offset of the bad frame in the chunk.
        at: usize,
        /// What is wrong with it.
        error: FrameError,
    },
    /// The sealed segments the store must keep are over `max_bytes` with
    /// `on_full = "reject"`: a new mirror segment is refused like records are (a `NO_SPACE` on the
    /// wire; the origin keeps it), so the disk keeps room for state and for
    /// what retention may not delete yet (segments a bucket or a sink has
    /// not taken).
    #[error("the archive is over max_bytes and on_full = reject")]
    Full,
    /// The mirror's disk failed: nothing (more) was written.
    #[error("mirror write failed")]
    Io(#[from] io::Error),
}

/// Why the mirror did not seal a segment as the origin asked.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The mirror holds another length than the origin sealed at.
    #[error("origin sealed at {origin} bytes but the mirror holds {mirror}")]
    Length {
        /// The origin's sealed length.
        origin: u64,
        /// The mirror's length.
        mirror: u64,
    },
    /// Same length, other bytes: the mirror is not the origin's copy.
    #[error("SHA-256 differs: origin {origin}, mirror {mirror}")]
    Checksum {
        /// The origin's SHA-256, hex.
        origin: String,
        /// The mirror's SHA-256, hex.
        mirror: String,
    },
    /// The mirror's disk failed while sealing.
    #[error("mirror seal failed")]
    Io(#[from] io::Error),
}

struct Entry {
    rel: PathBuf,
    name: SegmentName,
    /// Sealed here: the file is not written again.
    seal: Option<SealRecord>,
    /// Unsealed and begun: the file being written, with its running
    /// SHA-256 and counts (the store's own segment writer).
    seg: Option<OpenSegment>,
}

impl Entry {
    fn len(&self) -> u64 {
        match (&self.seal, &self.seg) {
            (Some(s), _) => s.len,
            (None, Some(seg)) => seg.len,
            (None, None) => 0,
        }
    }
}

/// Mirror segments being written, by relative path.
pub struct Mirror {
    archive_dir: PathBuf,
    state_dir: PathBuf,
    fs: Fs,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<PathBuf, Arc<Mutex<Entry>>>>,
    /// Whether the store is full under `on_full = "reject"`: told of every
    /// append and seal here, asked before a new segment.
    full: Arc<crate::store::retention::Fullness>,
    /// Told of every append and seal: uplinks of a regional hop forward
    /// mirror segments as they grow.
    changes: Arc<Changes>,
    /// The certificates that wrote here (`state/peers`).
    peers: peers::PeerBook,
}

/// Check that `rel` is a segment path (no `..`, no absolute path, the
/// segment naming scheme) and return its parts.
pub fn parse_path(rel: &str) -> Option<SegmentName> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return None;
    }
    SegmentName::parse_rel(p)
}

/// Check that `frames` is a sequence of whole, checksummed frames.
pub fn check_frames(frames: &[u8]) -> Result<(), (usize, FrameError)> {
    count_frames(frames).map(|_| ())
}

/// [`check_frames`], and how many frames and records they hold.
fn count_frames(frames: &[u8]) -> Result<Counts, (usize, FrameError)> {
    let mut c = Counts::default();
    let mut at = 0;
    while at < frames.len() {
        let h = FrameHeader::decode(&frames[at..]).map_err(|e| (at, e))?;
        let data = at + h.encoded_len();
        h.check_data(&frames[data.min(frames.len())..]).map_err(|e| (at, e))?;
        at = data + h.data_len as usize;
        c.frames += 1;
        c.records += u64::from(h.records);
        c.first_seq.get_or_insert(h.first_seq);
    }
    Ok(c)
}

/// Frames, records and the first sequence number of a run of frames.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    frames: u64,
    records: u64,
    first_seq: Option<u64>,
}

impl Mirror {
    /// Note a peer authenticated on a link (its first time: one line in
    /// `state/peers`), so a later revocation can name the data it wrote.
    pub fn saw_peer(&self, site: &str, node: &str, serial: &str) -> io::Result<()> {
        self.peers.saw(site, node, serial, self.clock.now_ms())
    }

    /// A mirror of `archive_dir` with its state (seals, tombstones, peers) under `state_dir`; `full` is retention's
    /// view of `max_bytes`.
    pub fn new(
        archive_dir: PathBuf,
        state_dir: PathBuf,
        fs: Fs,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        changes: Arc<Changes>,
        full: Arc<crate::store::retention::Fullness>,
    ) -> Mirror {
        let peers = peers::PeerBook::open(&state_dir);
        Mirror { archive_dir, state_dir, fs, metrics, clock, entries: Mutex::new(HashMap::new()), full, changes, peers }
    }

    fn stream_of(rel: &Path) -> String {
        rel.iter().nth(1).and_then(|s| s.to_str()).unwrap_or("-").to_owned()
    }

    fn entry(&self, rel: &Path) -> io::Result<Arc<Mutex<Entry>>> {
        if let Some(e) = self.entries.lock().expect("not poisoned").get(rel) {
            return Ok(e.clone());
        }
        let name = SegmentName::parse_rel(rel).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a segment path", rel.display()))
        })?;
        let path = self.archive_dir.join(rel);
        let seal = match SealRecord::load(&seal_path(&self.state_dir, rel)) {
            Ok(s) => s,
            // The mirror file was checked against the origin when it was sealed
            // and never changes after: re-derive its record from it.
            Err(e) if e.kind() == io::ErrorKind::InvalidData && path.exists() => reseal(
                &self.fs,
                &self.archive_dir,
                &self.state_dir,
                rel,
                &e.to_string(),
                self.clock.now_ms(),
                &self.metrics,
            )?,
            Err(e) => return Err(e),
        };
        let mut e = Entry { rel: rel.to_owned(), name, seal, seg: None };
        self.resume(&mut e)?;
        let e = Arc::new(Mutex::new(e));
        Ok(self.entries.lock().expect("not poisoned").entry(rel.to_owned()).or_insert(e).clone())
    }

    /// An unsealed entry without a writer whose file is there (after a
    /// restart, or after a failed append that could not be cut back) gets
    /// one: the file walked, a torn tail cut, its frames hashed once.
    fn resume(&self, e: &mut Entry) -> io::Result<()> {
        let path = self.archive_dir.join(&e.rel);
        if e.seal.is_some() || e.seg.is_some() || !path.exists() {
            return Ok(());
        }
        let w = walk_and_repair(&self.fs, &path, &Self::stream_of(&e.rel), &self.metrics)?;
        e.seg = Some(OpenSegment::resume(&self.fs, &self.archive_dir, e.name.clone(), &w)?);
        Ok(())
    }

    /// Bytes held and whether the segment is sealed here.
    pub fn have(&self, rel: &Path) -> io::Result<(u64, bool)> {
        let e = self.entry(rel)?;
        let mut e = e.lock().expect("not poisoned");
        self.resume(&mut e)?;
        Ok((e.len(), e.seal.is_some()))
    }

    /// Append whole frames at `offset`; durable when this returns. Returns
    /// the new length.
    pub fn append(&self, rel: &Path, offset: u64, frames: &[u8]) -> Result<u64, AppendError> {
        let e = self.entry(rel)?;
        let mut e = e.lock().expect("not poisoned");
        self.resume(&mut e)?;
        let len = e.len();
        if e.seal.is_some() {
            return if offset + frames.len() as u64 <= len { Ok(len) } else { Err(AppendError::Sealed) };
        }
        if offset != len {
            return Err(AppendError::WrongOffset { offset, expected: len });
        }
        // Only new segments are refused, and only while the *sealed*
        // segments kept are over max_bytes (as of the last retention pass
        // plus those sealed since): one already begun may complete and be
        // sealed, and open segments (which cannot be deleted before their
        // origin seals them) never hold the door shut.
        if len == 0 && self.full.sealed_full() {
            self.metrics.link.mirror_errors.with_label_values(&["archive_full"]).inc();
            return Err(AppendError::Full);
        }
        let counts = count_frames(frames).map_err(|(at, error)| AppendError::InvalidFrame { at, error })?;
        if let Err(err) = self.write(&mut e, frames, counts) {
            let trouble = Trouble::of(&err);
            self.metrics.link.mirror_errors.with_label_values(&[trouble.as_str()]).inc();
            return Err(AppendError::Io(err));
        }
        self.full.wrote(frames.len() as u64);
        Ok(e.len())
    }

    /// Write `frames` at the segment's end through the store's segment
    /// writer and fsync. A failed write or fsync is cut back out by the
    /// writer's one rule ([`OpenSegment::cut_to_durable`]); if even the cut
    /// fails the writer is dropped, and the next touch walks the file again
    /// and cuts a torn tail (whole frames that stayed are the origin's bytes
    /// at their own offsets).
    fn write(&self, e: &mut Entry, frames: &[u8], counts: Counts) -> io::Result<()> {
        let created = e.seg.is_none();
        if created {
            let first_seq = counts.first_seq.unwrap_or(0);
            e.seg = Some(OpenSegment::create(&self.fs, &self.archive_dir, e.name.clone(), first_seq)?);
        }
        let seg = e.seg.as_mut().expect("created above");
        if let Some(first) = counts.first_seq {
            seg.start_at(first);
        }
        let written = match seg.append_frames(frames, counts.frames, counts.records) {
            Ok(()) => seg.sync(),
            Err(SegmentAppendError::Cut(err)) => Err(err),
            Err(SegmentAppendError::Uncut { write, cut }) => Err(self.drop_writer(e, write, cut)),
        };
        let Err(err) = written else {
            if created {
                self.changes.layout_changed(None);
            }
            self.changes.grown(&e.rel, e.len());
            return Ok(());
        };
        if let Some(seg) = e.seg.as_mut() {
            if let Err(cut) = seg.cut_to_durable() {
                return Err(self.drop_writer(e, err, cut));
            }
        }
        Err(err)
    }

    /// After a cut that failed: the writer goes; `resume` walks the file again.
    fn drop_writer(&self, e: &mut Entry, err: io::Error, cut: io::Error) -> io::Error {
        warn!(path = %e.rel.display(), error = %cut, "cannot cut a failed mirror append back out");
        e.seg = None;
        err
    }

    /// This receiver's state epoch (`state/mirror.epoch`), drawn when the
    /// file is first needed: seal records and tombstones live next to it,
    /// so a state directory lost or replaced comes back with a new epoch,
    /// and uplinks that see it change offer their segments again
    /// (`link::proto`). A damaged file is replaced (that costs a re-offer).
    pub fn epoch(&self) -> io::Result<u64> {
        let path = self.state_dir.join("mirror.epoch");
        match std::fs::read_to_string(&path) {
            Ok(t) => match u64::from_str_radix(t.trim(), 16) {
                Ok(e) if e != 0 => return Ok(e),
                _ => {
                    warn!(path = %path.display(), "damaged mirror epoch; drawing a new one (uplinks will offer their segments again)")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let epoch = rand::random::<u64>().max(1);
        self.fs.create_dir_all(&self.state_dir)?;
        self.fs.write_atomic(&path, format!("{epoch:016x}\n").as_bytes())?;
        Ok(epoch)
    }

    /// The origin deleted `rel` before delivering it (`drop_oldest`): keep
    /// its seal record as a tombstone (`state/gone/`) so `ferry audit` here
    /// names the hole, unless the segment is sealed here anyway (another
    /// uplink of the origin had not delivered it). Any part of it already
    /// mirrored stays: those records are real. A regional hop forwards the
    /// tombstone on like a segment.
    pub fn note_gone(&self, rel: &Path, seal: &SealRecord) -> io::Result<()> {
        if matches!(SealRecord::load(&seal_path(&self.state_dir, rel)), Ok(Some(_))) {
            return Ok(());
        }
        let path = gone_path(&self.state_dir, rel);
        if matches!(SealRecord::load(&path), Ok(Some(s)) if s == *seal) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            self.fs.create_dir_all(dir)?;
        }
        seal.store(&self.fs, &path)?;
        self.changes.layout_changed(None);
        Ok(())
    }

    /// Seal a mirror segment after checking the origin's length and
    /// checksum against the running ones (the file is not read again).
    pub fn seal(&self, rel: &Path, len: u64, sha256: &[u8; 32]) -> Result<(), SealError> {
        let e = self.entry(rel)?;
        let mut e = e.lock().expect("not poisoned");
        self.resume(&mut e)?;
        let origin = hex(sha256);
        if let Some(s) = &e.seal {
            return if s.len == len && s.sha256 == origin {
                Ok(())
            } else {
                Err(SealError::Checksum { origin, mirror: s.sha256.clone() })
            };
        }
        let Some(seg) = e.seg.as_mut().filter(|s| s.len == len) else {
            return Err(SealError::Length { origin: len, mirror: e.len() });
        };
        seg.sync()?;
        let rec = seg.seal_record(self.clock.now_ms());
        if rec.sha256 != origin {
            error!(path = %e.rel.display(), %origin, mirror = %rec.sha256, "mirror segment differs from its origin; not sealed");
            return Err(SealError::Checksum { origin, mirror: rec.sha256 });
        }
        rec.store(&self.fs, &seal_path(&self.state_dir, &e.rel))?;
        info!(path = %e.rel.display(), len, records = rec.records, "mirror segment sealed, byte-identical to origin");
        self.full.sealed(len);
        e.seg = None;
        e.seal = Some(rec);
        let rel = e.rel.clone();
        drop(e);
        self.entries.lock().expect("not poisoned").remove(&rel);
        self.changes.layout_changed(Some(&rel));
        Ok(())
    }
}
