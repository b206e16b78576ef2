//! Crash recovery: on start, every unsealed segment of this node is walked
//! frame by frame. A torn last frame (a write the crash cut short) is
//! truncated, logged and counted; no acknowledged record can be in it, since
//! acknowledgements follow the write and fsync of the whole frame. Damage
//! followed by whole frames is not a torn tail: the file is kept as it is,
//! logged and counted, and `ferry verify` points at it. Then the segment is
//! sealed, and the stream continues in a new one.
//!
//! A damaged seal record (truncated, garbage, a checksum that is not hex) is
//! re-derived from its segment, which never changes once sealed: logged with
//! the file and the problem, and counted in `ferry_state_repaired_total`.

use std::io;
use std::path::Path;

use tracing::{error, info, warn};
use walkdir::WalkDir;

use super::fs::Fs;
use super::reader::{SegmentReader, Step};
use super::segment::{list_segments, seal_path, sha256_file, OnDisk, SealRecord, SegmentName};
use crate::metrics::Metrics;

/// Where a stream continues after recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRecovery {
    /// File sequence number for the next segment.
    pub next_segment_seq: u64,
    /// Sequence number of the next record.
    pub next_record_seq: u64,
    /// Unsealed segments found and sealed.
    pub recovered: u64,
    /// Bytes of torn tails cut.
    pub truncated_bytes: u64,
    /// The newest segment's name: new ones never sort before it.
    pub last_name: Option<SegmentName>,
}

/// Recover and seal every unsealed segment this node wrote for `stream`.
#[allow(clippy::too_many_arguments)]
pub fn recover_stream(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    site: &str,
    stream: &str,
    node: &str,
    now_ms: i64,
    metrics: &Metrics,
) -> io::Result<StreamRecovery> {
    let dir = archive_dir.join(site).join(stream);
    let mut out = StreamRecovery::default();
    if !dir.exists() {
        return Ok(out);
    }
    let mut mine: Vec<(SegmentName, std::path::PathBuf)> = Vec::new();
    for entry in WalkDir::new(&dir).min_depth(2).max_depth(2) {
        let entry = entry.map_err(io::Error::from)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(archive_dir).expect("walk stays under archive_dir").to_owned();
        match SegmentName::parse_rel(&rel) {
            Some(n) if n.node == node => mine.push((n, rel)),
            Some(_) => {}
            None => {
                warn!(path = %entry.path().display(), "file under archive/ that is not a segment; left alone")
            }
        }
    }
    mine.sort_by_key(|(n, _)| n.seq);
    for (name, rel) in &mine {
        let seal = match SealRecord::load(&seal_path(state_dir, rel)) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                out.recovered += 1;
                let (rec, cut) = recover_segment(fs, &archive_dir.join(rel), rel, state_dir, now_ms, stream, metrics)?;
                out.truncated_bytes += cut;
                rec
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                reseal(fs, archive_dir, state_dir, rel, &e.to_string(), now_ms, metrics)?
            }
            Err(e) => return Err(e),
        };
        out.next_segment_seq = out.next_segment_seq.max(name.seq + 1);
        let Some(seal) = seal else { continue };
        out.next_record_seq = out.next_record_seq.max(seal.next_seq);
        if out.last_name.as_ref().is_none_or(|l| l.hour_key() <= name.hour_key()) {
            out.last_name = Some(name.clone());
        }
    }
    Ok(out)
}

/// [`list_segments`] with every damaged seal record re-derived on the way
/// (see [`reseal`]); an empty segment it finds is removed, not listed. A
/// record that cannot be re-derived now leaves its segment listed as open.
pub fn list_repaired(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    skip: impl Fn(&Path) -> bool,
    now_ms: i64,
    metrics: &Metrics,
) -> io::Result<Vec<OnDisk>> {
    let mut out = list_segments(archive_dir, state_dir, skip)?;
    let mut removed = Vec::new();
    for d in &mut out {
        let Some(why) = d.damaged_seal.take() else { continue };
        match reseal(fs, archive_dir, state_dir, &d.rel, &why, now_ms, metrics) {
            Ok(Some(rec)) => {
                d.len = rec.len;
                d.seal = Some(rec);
            }
            Ok(None) => removed.push(d.rel.clone()),
            Err(e) => warn!(path = %d.rel.display(), error = %e, "cannot re-derive a damaged seal record now"),
        }
    }
    out.retain(|d| !removed.contains(&d.rel));
    Ok(out)
}

/// Re-derive the seal record of a sealed segment whose record is damaged
/// (`why` says how): walk the file, hash it, write the record again
/// (`None`: the file was empty and is removed).
pub fn reseal(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    rel: &Path,
    why: &str,
    now_ms: i64,
    metrics: &Metrics,
) -> io::Result<Option<SealRecord>> {
    let path = archive_dir.join(rel);
    let stream = rel.iter().nth(1).and_then(|s| s.to_str()).unwrap_or("-").to_owned();
    warn!(seal = %seal_path(state_dir, rel).display(), problem = %why, "damaged seal record: re-deriving it from the segment");
    metrics.store.state_repaired.with_label_values(&["seal"]).inc();
    let (rec, _) = seal_from_file(fs, &path, rel, state_dir, now_ms, &stream, metrics)?;
    Ok(rec)
}

/// What a walk over one segment found (after any truncation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// File length after the walk (torn tail removed).
    pub len: u64,
    /// Whole frames.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// Sequence number of the first record; `None` without a whole frame.
    pub first_seq: Option<u64>,
    /// Sequence number after the last record.
    pub next_seq: u64,
    /// Bytes of torn tail cut.
    pub cut: u64,
    /// A damaged frame with whole frames after it was found (and kept).
    pub damaged: bool,
}

/// Walk a segment frame by frame and cut a torn tail (logged and counted
/// under `stream`). Used for local segments at start and for mirror segments
/// when a receiver first touches them.
pub fn walk_and_repair(fs: &Fs, path: &Path, stream: &str, metrics: &Metrics) -> io::Result<Walk> {
    let mut r = SegmentReader::open(path)?;
    let mut w = Walk::default();
    loop {
        match r.next_frame()? {
            Step::Frame { header, .. } => {
                w.frames += 1;
                w.records += u64::from(header.records);
                w.first_seq.get_or_insert(header.first_seq);
                w.next_seq = w.next_seq.max(header.next_seq());
            }
            Step::End => break,
            Step::Bad { offset, error } => match r.next_valid_frame_after(offset)? {
                Some(next) => {
                    w.damaged = true;
                    error!(path = %path.display(), offset, next_frame = next, %error,
                        "damaged frame in the middle of a segment; kept as is (run ferry verify)");
                    r.seek(next);
                }
                None => {
                    w.cut = r.len() - offset;
                    warn!(path = %path.display(), offset, bytes = w.cut, %error, "torn frame at segment tail; truncating");
                    let f = fs.open_write(path)?;
                    f.set_len(offset)?;
                    f.sync_all()?;
                    metrics.store.recovery_truncated_bytes.with_label_values(&[stream]).inc_by(w.cut);
                    metrics.store.recovery_truncated_frames.with_label_values(&[stream]).inc();
                    break;
                }
            },
        }
    }
    if w.damaged {
        metrics.store.recovery_corrupt_segments.with_label_values(&[stream]).inc();
    }
    w.len = r.len() - w.cut;
    Ok(w)
}

/// Walk one unsealed segment, truncate a torn tail, seal it. Returns the seal
/// and the number of bytes cut. A segment with no whole frame (a crash right
/// after it was created) is removed instead: an empty file is not a zstd
/// file, and `zstdcat` over the archive would stop at it.
pub fn recover_segment(
    fs: &Fs,
    path: &Path,
    rel: &Path,
    state_dir: &Path,
    now_ms: i64,
    stream: &str,
    metrics: &Metrics,
) -> io::Result<(Option<SealRecord>, u64)> {
    let (rec, w) = seal_from_file(fs, path, rel, state_dir, now_ms, stream, metrics)?;
    metrics.store.recovered_segments.with_label_values(&[stream]).inc();
    info!(path = %path.display(), len = w.len, frames = w.frames, records = w.records, truncated_bytes = w.cut, "recovered and sealed unsealed segment");
    Ok((rec, w.cut))
}

/// Walk, cut a torn tail, and write the seal record from what the file holds
/// (or remove the file if no whole frame is left).
fn seal_from_file(
    fs: &Fs,
    path: &Path,
    rel: &Path,
    state_dir: &Path,
    now_ms: i64,
    stream: &str,
    metrics: &Metrics,
) -> io::Result<(Option<SealRecord>, Walk)> {
    let w = walk_and_repair(fs, path, stream, metrics)?;
    if w.len == 0 {
        fs.remove_file(path)?;
        let _ = fs.remove_file(&seal_path(state_dir, rel));
        if let Some(dir) = path.parent() {
            fs.sync_dir(dir)?;
        }
        info!(path = %path.display(), truncated_bytes = w.cut, "removed a segment with no whole frame");
        return Ok((None, w));
    }
    let rec = SealRecord {
        len: w.len,
        sha256: sha256_file(path)?,
        frames: w.frames,
        records: w.records,
        first_seq: w.first_seq.unwrap_or(0),
        next_seq: w.next_seq,
        sealed_ms: now_ms,
    };
    rec.store(fs, &seal_path(state_dir, rel))?;
    Ok((Some(rec), w))
}

/// Read a line-based state file (a delivered list, a sink cursor, a
/// dead-letter file), giving each non-empty line to `take`. A line it
/// refuses (torn, garbage, not UTF-8) is skipped, logged with the file and
/// line (the first three), and counted in `ferry_state_repaired_total{kind}`;
/// `what` names the file for people, `consequence` says what skipping a line
/// costs. A missing file is empty.
pub fn read_state_lines(
    file: &Path,
    kind: &str,
    what: &str,
    consequence: &str,
    metrics: &Metrics,
    mut take: impl FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut bad = 0u64;
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() || take(line) {
            continue;
        }
        bad += 1;
        if bad <= 3 {
            warn!(file = %file.display(), line = i + 1, "damaged line in {what}: ignored ({consequence})");
        }
    }
    if bad > 0 {
        metrics.store.state_repaired.with_label_values(&[kind]).inc_by(bad);
    }
    Ok(())
}
