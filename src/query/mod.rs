//! Reading the archive for people: which segments and frames a selection
//! (sites, streams, receive-time range) needs, and their records in order.
//!
//! Frame headers carry the first and last receive time of their records, so
//! a frame outside the range is skipped from its header alone: its data is
//! neither read nor decompressed. A record's time is its frame's: a frame
//! that overlaps the range is shown whole (a frame spans at most about
//! `commit_interval`, 100 ms by default). Segments are read as they are on
//! disk, sealed or being written (a frame still being written is simply not
//! there yet), read-only: the writer is never disturbed.

pub mod audit;
pub mod time;
pub mod watch;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::store::frame::FrameHeader;
use crate::store::reader::{SegmentReader, Step};
use crate::store::segment::{SegmentName, SEGMENT_SUFFIX};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Empty: every site.
    pub sites: Vec<String>,
    /// Empty: every stream.
    pub streams: Vec<String>,
    /// Receive times, `from` inclusive, `to` exclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// Slack around a segment's hour when pruning by name: a clock set back
/// writes into a segment named for a later hour (names never go backwards).
const NAME_SLACK_MS: i64 = 3_600_000;
const HOUR_MS: i64 = 3_600_000;

impl Selection {
    /// Whether a segment of this name may hold records of the selection.
    pub fn wants(&self, n: &SegmentName) -> bool {
        self.wants_origin(n) && self.may_overlap_hour(n)
    }

    fn wants_origin(&self, n: &SegmentName) -> bool {
        (self.sites.is_empty() || self.sites.contains(&n.site))
            && (self.streams.is_empty() || self.streams.contains(&n.stream))
    }

    /// Whether a segment named for hour `n` may hold records of the range.
    fn may_overlap_hour(&self, n: &SegmentName) -> bool {
        let Some(start) = hour_start_ms(n) else { return true };
        let before = self.to_ms.is_some_and(|to| start - NAME_SLACK_MS >= to);
        let after = self.from_ms.is_some_and(|from| start + HOUR_MS + NAME_SLACK_MS <= from);
        !before && !after
    }

    /// Whether a frame's records fall (at least partly) in the range.
    pub fn overlaps(&self, h: &FrameHeader) -> bool {
        self.from_ms.is_none_or(|from| h.last_ms >= from) && self.to_ms.is_none_or(|to| h.first_ms < to)
    }
}

fn hour_start_ms(n: &SegmentName) -> Option<i64> {
    time::parse_time(&format!("{}T{:02}", n.date, n.hour), 0).ok()
}

/// One origin (site, stream, node) and its segment files in sequence order.
#[derive(Debug)]
pub struct Origin {
    pub site: String,
    pub stream: String,
    pub node: String,
    pub segments: Vec<PathBuf>,
}

/// The archive directory of `dir`: a data_dir (with `archive/`) or an
/// `archive/` itself.
pub fn archive_of(dir: &Path) -> PathBuf {
    if dir.join("archive").is_dir() {
        dir.join("archive")
    } else {
        dir.to_owned()
    }
}

/// The origins the selection wants, sorted by site, stream, node; each with
/// the segments that may hold records of the range, in sequence order.
pub fn origins(archive: &Path, sel: &Selection) -> io::Result<Vec<Origin>> {
    let mut by: BTreeMap<(String, String, String), Vec<(u64, PathBuf)>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(archive) {
        let e = e.map_err(io::Error::other)?;
        if !e.file_type().is_file() || !e.file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(archive) else { continue };
        let Some(n) = SegmentName::parse_rel(rel) else { continue };
        if !sel.wants_origin(&n) || !sel.may_overlap_hour(&n) {
            continue;
        }
        by.entry((n.site.clone(), n.stream.clone(), n.node.clone())).or_default().push((n.seq, e.into_path()));
    }
    Ok(by
        .into_iter()
        .map(|((site, stream, node), mut segs)| {
            segs.sort();
            Origin { site, stream, node, segments: segs.into_iter().map(|(_, p)| p).collect() }
        })
        .collect())
}

/// What a walk did: shown by `--stats`, and how the tests know frames
/// outside the range were not decompressed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub segments: u64,
    pub frames: u64,
    /// Frames whose data was read and decompressed.
    pub frames_read: u64,
    pub records: u64,
    /// Bytes decompressed.
    pub raw_bytes: u64,
    /// Frames that failed their checksum or did not decompress (reported, skipped).
    pub damaged: u64,
}

/// One decompressed frame of a walk.
pub struct Frame<'a> {
    pub path: &'a Path,
    pub header: &'a FrameHeader,
    /// Its lines, escaped, each LF-terminated.
    pub lines: &'a [u8],
}

/// The frames of `path` that overlap the selection, from their headers
/// alone: (offset, header). Damage is reported through `damaged` and skipped
/// to the next whole frame; a frame still being written at the end of the
/// file ends the list. Counts the segment and its frames in `stats`.
pub fn frames(
    path: &Path,
    sel: &Selection,
    stats: &mut Stats,
    damaged: &mut dyn FnMut(&Path, u64, String),
) -> io::Result<Vec<(u64, FrameHeader)>> {
    stats.segments += 1;
    let mut r = SegmentReader::open(path)?;
    let mut out = Vec::new();
    loop {
        match r.next_header()? {
            Step::Frame { offset, header } => {
                stats.frames += 1;
                if sel.overlaps(&header) {
                    out.push((offset, header));
                }
            }
            Step::Bad { offset, error } => match r.next_valid_frame_after(offset)? {
                Some(next) => {
                    stats.damaged += 1;
                    damaged(path, offset, error.to_string());
                    r.seek(next);
                }
                // A frame being written, or a torn tail: the end for now.
                None => return Ok(out),
            },
            Step::End => return Ok(out),
        }
    }
}

/// Read, check and decompress the frame at `offset` into `raw`; counts it
/// in `stats`. `Err` describes a damaged frame (counted, for the caller to
/// report).
pub fn decompress(
    r: &mut SegmentReader,
    offset: u64,
    header: &FrameHeader,
    dec: &mut zstd::bulk::Decompressor<'static>,
    raw: &mut Vec<u8>,
    stats: &mut Stats,
) -> io::Result<Result<(), String>> {
    let checked = match r.read_data(offset, header)? {
        Ok(()) => {
            raw.clear();
            raw.reserve(header.raw_len as usize);
            dec.decompress_to_buffer(r.data(), raw).map(|_| ()).map_err(|e| format!("does not decompress: {e}"))
        }
        Err(e) => Err(e.to_string()),
    };
    match &checked {
        Ok(()) => {
            stats.frames_read += 1;
            stats.raw_bytes += raw.len() as u64;
            stats.records += u64::from(header.records);
        }
        Err(_) => stats.damaged += 1,
    }
    Ok(checked)
}

/// Walk the frames of `path` that overlap the selection, decompressing only
/// those, and hand each to `f`; `f` returns false to stop everything (the
/// reader of the output went away). Returns whether to go on.
pub fn walk_segment(
    path: &Path,
    sel: &Selection,
    stats: &mut Stats,
    dec: &mut zstd::bulk::Decompressor<'static>,
    raw: &mut Vec<u8>,
    damaged: &mut dyn FnMut(&Path, u64, String),
    f: &mut dyn FnMut(Frame<'_>) -> bool,
) -> io::Result<bool> {
    let list = frames(path, sel, stats, damaged)?;
    let mut r = SegmentReader::open(path)?;
    for (offset, header) in &list {
        match decompress(&mut r, *offset, header, dec, raw, stats)? {
            Ok(()) => {}
            Err(e) => {
                damaged(path, *offset, e);
                continue;
            }
        }
        if !f(Frame { path, header, lines: raw }) {
            return Ok(false);
        }
    }
    Ok(true)
}
