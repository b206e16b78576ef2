//! Completeness of an archive, per origin (site, stream, node) and hour,
//! from what the files and seal records say.
//!
//! Record sequence numbers run on across an origin's segments with no gap
//! unless something was lost, and segment numbers (in the file names) with
//! no gap unless a segment is missing; a seal records each segment's length,
//! SHA-256 and sequence range. So, on an edge or on a central mirror alike:
//! - a break in the record sequence between consecutive segments is a gap:
//!   `segment_missing` when segment numbers are missing there too (deleted,
//!   never delivered), `records_missing` when not (records cut after a failed
//!   fsync keep their numbers, so the loss shows);
//! - a sealed segment whose file is not its sealed length is `seal_mismatch`;
//! - frames that fail their checksums are `damaged`;
//! - a segment that `drop_oldest` deleted before any uplink delivered it
//!   left a tombstone (`state/gone/`, its seal record): `deleted_undelivered`,
//!   at its own hour, with its sequence range.
//!
//! An hour is `complete` when every segment of it is sealed and nothing is
//! wrong with it or with the way into it; `open` while a segment of it is
//! still being written. It is also `closed` when the origin's next segment,
//! in a later hour, continues its sequence: nothing of it can still arrive
//! (central cannot otherwise tell a finished hour from one whose last
//! segments are still on their way).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::reader::{SegmentReader, Step};
use crate::store::segment::{seal_path, SealRecord, SegmentName};

/// What one segment holds, from its frame headers and its seal record.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The segment's path, as reports name it (a file, or a bucket key).
    pub path: PathBuf,
    /// Its parsed name: origin, hour and segment number.
    pub name: SegmentName,
    /// Its length: the file's, or the object's.
    pub len: u64,
    /// Its seal record, when sealed (or a tombstone's).
    pub seal: Option<SealRecord>,
    /// Whole frames read (or the seal's count, when not read).
    pub frames: u64,
    /// Records in those frames (or the seal's count).
    pub records: u64,
    /// Sequence number of the first record found; `None` when no frame is whole.
    pub first_seq: Option<u64>,
    /// Sequence number after the last record found.
    pub next_seq: Option<u64>,
    /// Frames that fail their checksums, with valid frames after them.
    pub damaged: u64,
    /// Deleted undelivered (a tombstone): only its seal is left.
    pub gone: bool,
}

impl Facts {
    /// A tombstone left by `drop_oldest` (`state/gone/<rel>.gone`): only
    /// its seal is left.
    pub fn gone(name: SegmentName, path: PathBuf, seal: SealRecord) -> Facts {
        Facts { gone: true, ..Facts::sealed(path, name, seal.len, seal) }
    }

    /// A sealed segment from its seal record alone (the metrics refresh:
    /// no file read; `len` is the file's length as listed).
    pub fn sealed(path: PathBuf, name: SegmentName, len: u64, seal: SealRecord) -> Facts {
        Facts {
            path,
            name,
            len,
            frames: seal.frames,
            records: seal.records,
            first_seq: Some(seal.first_seq),
            next_seq: Some(seal.next_seq),
            seal: Some(seal),
            damaged: 0,
            gone: false,
        }
    }

    /// Walk the headers of `path` (no data read).
    pub fn read(path: &Path, name: SegmentName, state: Option<&Path>, archive: &Path) -> io::Result<Facts> {
        let seal = match state {
            Some(st) => {
                let rel = path.strip_prefix(archive).unwrap_or(path);
                SealRecord::load(&seal_path(st, rel)).unwrap_or(None)
            }
            None => None,
        };
        Facts::walk(SegmentReader::open(path)?, path.to_owned(), name, seal)
    }

    /// Walk the headers of the segment `r` reads (a file, an object in a
    /// bucket), named `path` in reports.
    pub fn walk(mut r: SegmentReader, path: PathBuf, name: SegmentName, seal: Option<SealRecord>) -> io::Result<Facts> {
        let mut f = Facts {
            path,
            name,
            len: 0,
            seal,
            frames: 0,
            records: 0,
            first_seq: None,
            next_seq: None,
            damaged: 0,
            gone: false,
        };
        f.len = r.len();
        loop {
            match r.next_header()? {
                Step::Frame { header, .. } => {
                    f.frames += 1;
                    f.records += u64::from(header.records);
                    f.first_seq.get_or_insert(header.first_seq);
                    f.next_seq = Some(header.next_seq());
                }
                Step::Bad { offset, .. } => match r.next_valid_frame_after(offset)? {
                    Some(next) => {
                        f.damaged += 1;
                        r.seek(next);
                    }
                    None => break,
                },
                Step::End => break,
            }
        }
        Ok(f)
    }

    /// The sequence range it should hold: its seal's when sealed (a damaged
    /// or cut file is reported once, as such, not again as a sequence gap).
    fn first(&self) -> Option<u64> {
        self.seal.as_ref().map(|s| s.first_seq).or(self.first_seq)
    }

    fn next(&self) -> Option<u64> {
        self.seal.as_ref().map(|s| s.next_seq).or(self.next_seq)
    }
}

/// One origin's hour: what it holds and whether it is whole.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hour {
    /// The origin's site.
    pub site: String,
    /// The origin's stream.
    pub stream: String,
    /// The origin's node.
    pub node: String,
    /// `YYYY-MM-DDTHH`, UTC.
    pub hour: String,
    /// Segments of this hour (tombstones included).
    pub segments: u64,
    /// Of them, sealed.
    pub sealed: u64,
    /// Of them, still being written.
    pub open: u64,
    /// Records in them.
    pub records: u64,
    /// Sequence number of the hour's first record, when known.
    pub first_seq: Option<u64>,
    /// Sequence number after the hour's last record, when known.
    pub next_seq: Option<u64>,
    /// `complete`, `open` or `gap`.
    pub status: &'static str,
    /// The origin's next segment, of a later hour, follows this hour's last
    /// without a break.
    pub closed: bool,
}

/// Something missing or wrong in one origin's hour.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    /// The origin's site.
    pub site: String,
    /// The origin's stream.
    pub stream: String,
    /// The origin's node.
    pub node: String,
    /// `YYYY-MM-DDTHH`, UTC, of the segment where it shows.
    pub hour: String,
    /// `segment_missing`, `records_missing`, `seal_mismatch`, `damaged`, `deleted_undelivered` (the `reason` label of
    /// `ferry_audit_gaps`).
    pub reason: &'static str,
    /// The records missing, `from_seq..to_seq`, when known.
    pub from_seq: Option<u64>,
    /// End (exclusive) of the missing records, when known.
    pub to_seq: Option<u64>,
    /// What was found, for people: the file and the numbers.
    pub detail: String,
}

/// What `ferry audit` prints (as text or JSON): every origin's hours, and the gaps.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Every origin's hours, by origin, in order.
    pub hours: Vec<Hour>,
    /// Everything missing or wrong, by origin, in order.
    pub gaps: Vec<Gap>,
    /// Origins here whose node's certificate is revoked: their segments
    /// were written before the revocation and are kept, marked.
    pub revoked: Vec<RevokedOrigin>,
}

/// A node whose certificate was revoked, and whose data this archive holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RevokedOrigin {
    /// The node's site.
    pub site: String,
    /// The node's name.
    pub node: String,
    /// The revoked certificate's serial, hex.
    pub serial: String,
    /// When, RFC 3339 UTC.
    pub revoked_at: String,
}

impl Report {
    /// Mark the origins of `peers` (from `state/revoked`) that have hours here.
    pub fn mark_revoked(&mut self, peers: &[crate::mirror::peers::Peer]) {
        for p in peers {
            if self.hours.iter().any(|h| h.site == p.site && h.node == p.node) {
                self.revoked.push(RevokedOrigin {
                    site: p.site.clone(),
                    node: p.node.clone(),
                    serial: p.serial.clone(),
                    revoked_at: crate::store::clock::rfc3339_secs(p.at_ms),
                });
            }
        }
    }
}

/// Audit segments of any number of origins (each origin's in segment order).
pub fn audit(segments: &[Facts]) -> Report {
    let mut by_origin: BTreeMap<(String, String, String), Vec<&Facts>> = BTreeMap::new();
    for f in segments {
        by_origin.entry((f.name.site.clone(), f.name.stream.clone(), f.name.node.clone())).or_default().push(f);
    }
    let mut report = Report::default();
    for ((site, stream, node), segs) in by_origin {
        let origin = OriginKey { site: &site, stream: &stream, node: &node };
        let (segs, partial) = merge_tombstones(segs);
        let mut found = find_gaps(&origin, &segs, &partial);
        report.hours.extend(hour_rows(&origin, &segs, &mut found));
        report.gaps.extend(found.gaps);
    }
    report
}

/// The origin a gap or an hour row is of.
struct OriginKey<'a> {
    site: &'a str,
    stream: &'a str,
    node: &'a str,
}

impl OriginKey<'_> {
    fn gap(&self, f: &Facts, reason: &'static str, from_seq: Option<u64>, to_seq: Option<u64>, detail: String) -> Gap {
        Gap {
            site: self.site.to_owned(),
            stream: self.stream.to_owned(),
            node: self.node.to_owned(),
            hour: f.name.hour_key(),
            reason,
            from_seq,
            to_seq,
            detail,
        }
    }

    /// A row with nothing counted yet; its status is set from the gaps.
    fn row(&self, hour: String) -> Hour {
        Hour {
            site: self.site.to_owned(),
            stream: self.stream.to_owned(),
            node: self.node.to_owned(),
            hour,
            segments: 0,
            sealed: 0,
            open: 0,
            records: 0,
            first_seq: None,
            next_seq: None,
            status: "complete",
            closed: false,
        }
    }
}

/// One entry per segment number. A segment's file before its tombstone, if
/// both are here. Both: a sealed file means it arrived after all (by
/// another uplink), otherwise the tombstone stands for it and the part that
/// arrived before the origin deleted it is said (returned: records per
/// segment number).
fn merge_tombstones(mut segs: Vec<&Facts>) -> (Vec<&Facts>, BTreeMap<u64, u64>) {
    segs.sort_by_key(|f| (f.name.seq, f.gone));
    let mut partial: BTreeMap<u64, u64> = BTreeMap::new();
    let mut merged: Vec<&Facts> = Vec::with_capacity(segs.len());
    for f in segs {
        match merged.last_mut() {
            Some(prev) if prev.name.seq == f.name.seq => {
                if f.gone && prev.seal.is_none() {
                    partial.insert(f.name.seq, prev.records);
                    *prev = f;
                }
            }
            _ => merged.push(f),
        }
    }
    (merged, partial)
}

/// What the walk over one origin's segments found.
#[derive(Default)]
struct Found {
    gaps: Vec<Gap>,
    /// Hours with no segment at all between two that have one.
    empty_hours: Vec<String>,
    /// Hours that missing segments may belong to, besides the gap's own
    /// (every hour with no segment between two that have one, too).
    suspect: Vec<String>,
    /// Hours whose last segment the origin's next hour continues.
    closed: Vec<String>,
}

fn find_gaps(origin: &OriginKey<'_>, segs: &[&Facts], partial: &BTreeMap<u64, u64>) -> Found {
    let mut found = Found::default();
    for (i, f) in segs.iter().enumerate() {
        let file = f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        segment_gaps(origin, f, &file, partial, &mut found.gaps);
        let Some(prev) = i.checked_sub(1).map(|p| segs[p]) else { continue };
        sequence_gaps(origin, prev, f, &file, &mut found);
    }
    found
}

/// What one segment shows by itself: deleted undelivered, a file that is
/// not what its seal says, damaged frames.
fn segment_gaps(origin: &OriginKey<'_>, f: &Facts, file: &str, partial: &BTreeMap<u64, u64>, gaps: &mut Vec<Gap>) {
    if f.gone {
        let mut detail = format!(
            "{file} deleted before delivery (on_full = drop_oldest), records {}..{}",
            f.first().unwrap_or(0),
            f.next().unwrap_or(0)
        );
        if let Some(n) = partial.get(&f.name.seq) {
            detail.push_str(&format!(" ({n} of them arrived here before)"));
        }
        gaps.push(origin.gap(f, "deleted_undelivered", f.first(), f.next(), detail));
    } else if let Some(s) = &f.seal {
        if s.len != f.len {
            gaps.push(origin.gap(
                f,
                "seal_mismatch",
                None,
                None,
                format!("{file}: sealed at {} bytes, the file holds {}", s.len, f.len),
            ));
        } else if f.first_seq.is_some() && (f.first_seq != Some(s.first_seq) || f.next_seq != Some(s.next_seq)) {
            gaps.push(origin.gap(
                f,
                "seal_mismatch",
                None,
                None,
                format!("{file}: sequence range differs from its seal"),
            ));
        }
    }
    if f.damaged > 0 {
        gaps.push(origin.gap(f, "damaged", None, None, format!("{file}: {} damaged frame(s)", f.damaged)));
    }
}

/// Whether `f` continues `prev`: records or whole segments missing between
/// them, or an overlap; an hour continued in the next is closed.
fn sequence_gaps(origin: &OriginKey<'_>, prev: &Facts, f: &Facts, file: &str, found: &mut Found) {
    let (Some(want), Some(got)) = (prev.next(), f.first()) else { return };
    let later = f.name.hour_key() > prev.name.hour_key();
    if got == want && later && f.name.seq == prev.name.seq + 1 && !prev.gone && !f.gone {
        found.closed.push(prev.name.hour_key());
    }
    if got > want {
        let missing_segments = f.name.seq > prev.name.seq + 1;
        let (reason, detail) = if missing_segments {
            ("segment_missing", format!("segments {}..{} are not here", prev.name.seq + 1, f.name.seq))
        } else {
            ("records_missing", format!("records {want}..{got} are missing before {file}"))
        };
        let mut g = origin.gap(f, reason, Some(want), Some(got), detail);
        // Segments rotate every hour: hours with no segment at all
        // between the two are the missing ones (shown as rows too).
        let between = hours_between(&prev.name.hour_key(), &f.name.hour_key());
        if let (true, Some(first)) = (missing_segments, between.first()) {
            g.hour = first.clone();
            found.suspect.extend(between.iter().cloned());
            found.empty_hours.extend(between);
        } else if missing_segments && later {
            // The missing segments follow `prev`: of its hour or of `f`'s.
            found.suspect.push(prev.name.hour_key());
        }
        found.gaps.push(g);
    } else if got < want {
        found.gaps.push(origin.gap(
            f,
            "sequence_overlap",
            Some(got),
            Some(want),
            format!("{file} starts at {got}, before {want}"),
        ));
    }
}

/// One row per hour with a segment or missing between two, counted, with
/// its status from what `found` says of it.
fn hour_rows(origin: &OriginKey<'_>, segs: &[&Facts], found: &mut Found) -> impl Iterator<Item = Hour> {
    let mut hours: BTreeMap<String, Hour> = BTreeMap::new();
    for f in segs {
        let h = hours.entry(f.name.hour_key()).or_insert_with(|| origin.row(f.name.hour_key()));
        if f.gone {
            continue;
        }
        h.segments += 1;
        if f.seal.is_some() {
            h.sealed += 1;
        } else {
            h.open += 1;
        }
        h.records += f.records;
        if h.first_seq.is_none() {
            h.first_seq = f.first();
        }
        if f.next().is_some() {
            h.next_seq = f.next();
        }
    }
    for hour in std::mem::take(&mut found.empty_hours) {
        hours.entry(hour.clone()).or_insert_with(|| origin.row(hour));
    }
    for h in hours.values_mut() {
        h.closed = found.closed.contains(&h.hour);
        h.status = if found.gaps.iter().any(|g| g.hour == h.hour) || found.suspect.contains(&h.hour) {
            "gap"
        } else if h.open > 0 {
            "open"
        } else {
            "complete"
        };
    }
    hours.into_values()
}

impl Report {
    /// Per origin (site, stream, node), the newest hour that is complete and
    /// closed: the hour key.
    pub fn newest_complete(&self) -> BTreeMap<(String, String, String), String> {
        let mut out: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for h in self.hours.iter().filter(|h| h.status == "complete" && h.closed) {
            let key = (h.site.clone(), h.stream.clone(), h.node.clone());
            let e = out.entry(key).or_default();
            if h.hour > *e {
                e.clone_from(&h.hour);
            }
        }
        out
    }
}

/// Hour keys strictly between two hour keys (`2026-11-30T10`), at most a week.
fn hours_between(a: &str, b: &str) -> Vec<String> {
    let ms = |k: &str| super::time::parse_time(k, 0).ok();
    let (Some(a), Some(b)) = (ms(a), ms(b)) else { return Vec::new() };
    let mut out = Vec::new();
    let mut t = a + 3_600_000;
    while t < b && out.len() < 24 * 7 {
        out.push(crate::store::segment::hour_key(t));
        t += 3_600_000;
    }
    out
}
