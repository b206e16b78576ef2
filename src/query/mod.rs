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
//!
//! An archive is a directory (an edge's or a central's `archive/`) or a
//! bucket the nodes upload to (`s3://bucket/prefix`, [`bucket`]): the same
//! selection, the same walk, the bytes fetched by range.

pub mod audit;
pub mod bucket;
pub mod time;
pub mod watch;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use self::bucket::{BucketArchive, RemoteSegment};
use crate::store::frame::FrameHeader;
use crate::store::frame::{DataDecoder, DecodeError};
use crate::store::reader::{SegmentReader, Step};
use crate::store::segment::{is_segment_file, SegmentName};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Empty: every site.
    pub sites: Vec<String>,
    /// Empty: every stream.
    pub streams: Vec<String>,
    /// Receive times, `from` inclusive, `to` exclusive.
    pub from_ms: Option<i64>,
    /// End of the receive-time range (exclusive), ms since the Unix epoch; `None`: no end.
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

/// One origin (site, stream, node) and its segments in sequence order.
pub struct Origin {
    /// The origin's site.
    pub site: String,
    /// The origin's stream.
    pub stream: String,
    /// The origin's node.
    pub node: String,
    /// Its segments, in sequence order.
    pub segments: Vec<Segment>,
}

/// Where an archive is read from.
pub enum Archive {
    /// An `archive/` directory.
    Dir(PathBuf),
    /// An `s3://bucket/prefix` location.
    Bucket(BucketArchive),
}

impl Archive {
    /// A data_dir or its `archive/`, or an `s3://bucket/prefix` location
    /// (connected with the `[[bucket]]` of `config` that names the bucket,
    /// or the `AWS_*` environment).
    pub fn open(location: &str, config: Option<&Path>) -> io::Result<Archive> {
        if bucket::is_url(location) {
            return Ok(Archive::Bucket(BucketArchive::open(location, config)?));
        }
        let archive = archive_of(Path::new(location));
        if !archive.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not a directory (give a data_dir, its archive/, or s3://bucket/prefix)",
                    archive.display()
                ),
            ));
        }
        Ok(Archive::Dir(archive))
    }

    /// The `state/` beside a directory archive (seal records, tombstones).
    pub fn state_dir(&self) -> Option<PathBuf> {
        match self {
            Archive::Dir(a) => a.parent().map(|p| p.join("state")).filter(|s| s.is_dir()),
            Archive::Bucket(_) => None,
        }
    }
}

/// One segment: a file, or an object in a bucket.
#[derive(Clone)]
pub enum Segment {
    /// A segment file under a directory archive.
    File(PathBuf),
    /// A segment object in a bucket, with the spans of it a walk reads.
    Object(RemoteSegment),
}

impl Segment {
    /// Its path or `s3://` name, for messages and `grep -l`.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Segment::File(p) => p.to_string_lossy(),
            Segment::Object(o) => o.name().into(),
        }
    }

    /// A reader of the segment (an object: ranged GETs as it reads).
    pub fn open(&self) -> io::Result<SegmentReader> {
        match self {
            Segment::File(p) => SegmentReader::open(p),
            Segment::Object(o) => Ok(SegmentReader::new(Box::new(o.open()), o.len())),
        }
    }

    /// Its length as listed (a file being written: as it is now).
    pub fn len(&self) -> u64 {
        match self {
            Segment::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            Segment::Object(o) => o.len(),
        }
    }

    /// Zero bytes as listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes a walk covers: the whole file, or the spans of an object.
    pub fn walk_len(&self) -> u64 {
        match self {
            Segment::File(_) => self.len(),
            Segment::Object(o) => o.spans().iter().map(|(a, b)| b - a).sum(),
        }
    }
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
pub fn origins(archive: &Archive, sel: &Selection) -> io::Result<Vec<Origin>> {
    match archive {
        Archive::Dir(dir) => dir_origins(dir, sel),
        Archive::Bucket(b) => bucket_origins(b, sel),
    }
}

fn group(found: Vec<(SegmentName, Segment)>) -> Vec<Origin> {
    let mut by: BTreeMap<(String, String, String), Vec<(u64, Segment)>> = BTreeMap::new();
    for (n, seg) in found {
        by.entry((n.site, n.stream, n.node)).or_default().push((n.seq, seg));
    }
    by.into_iter()
        .map(|((site, stream, node), mut segs)| {
            segs.sort_by_key(|(seq, _)| *seq);
            Origin { site, stream, node, segments: segs.into_iter().map(|(_, s)| s).collect() }
        })
        .collect()
}

/// With a time range, each segment's index says which of its bytes to walk
/// (one small GET each, in parallel); without one, or without an index, the
/// whole object.
fn bucket_origins(b: &BucketArchive, sel: &Selection) -> io::Result<Vec<Origin>> {
    let listing = b.list()?;
    let wanted: Vec<(SegmentName, String, u64)> = listing
        .segments
        .into_iter()
        .filter_map(|(rel, len)| {
            let n = SegmentName::parse_rel(Path::new(&rel))?;
            sel.wants(&n).then_some((n, rel, len))
        })
        .collect();
    let ranged = sel.from_ms.is_some() || sel.to_ms.is_some();
    let idx: Vec<String> = if ranged {
        wanted
            .iter()
            .filter(|(_, rel, _)| listing.indexes.contains(rel))
            .map(|(_, rel, _)| format!("{rel}.idx"))
            .collect()
    } else {
        Vec::new()
    };
    let mut indexes: BTreeMap<String, String> = BTreeMap::new();
    for (rel, text) in b.texts(idx) {
        match text {
            Ok(Some(t)) => {
                indexes.insert(rel.trim_end_matches(".idx").to_owned(), t);
            }
            Ok(None) => {}
            Err(e) => eprintln!("{e}; the segment is read whole"),
        }
    }
    let mut found = Vec::new();
    for (n, rel, len) in wanted {
        let spans = match indexes.get(&rel).map(|t| crate::bucket::index::parse(t, len)) {
            Some(Ok(blocks)) => crate::bucket::index::spans(&blocks, sel.from_ms, sel.to_ms),
            Some(Err(e)) => {
                eprintln!("{}.idx: {e}; the segment is read whole", b.name(&rel));
                vec![(0, len)]
            }
            None => vec![(0, len)],
        };
        if spans.is_empty() {
            continue;
        }
        found.push((n, Segment::Object(b.segment(&rel, len, spans))));
    }
    Ok(group(found))
}

fn dir_origins(archive: &Path, sel: &Selection) -> io::Result<Vec<Origin>> {
    let mut found = Vec::new();
    for e in walkdir::WalkDir::new(archive) {
        let e = e.map_err(io::Error::other)?;
        if !e.file_type().is_file() || !is_segment_file(&e.file_name().to_string_lossy()) {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(archive) else { continue };
        let Some(n) = SegmentName::parse_rel(rel) else { continue };
        if !sel.wants(&n) {
            continue;
        }
        found.push((n, Segment::File(e.into_path())));
    }
    Ok(group(found))
}

/// What a walk did: shown by `--stats`, and how the tests know frames
/// outside the range were not decompressed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Segments walked.
    pub segments: u64,
    /// Frames whose headers were read.
    pub frames: u64,
    /// Frames whose data was read and decompressed.
    pub frames_read: u64,
    /// Records in the frames read.
    pub records: u64,
    /// Bytes decompressed.
    pub raw_bytes: u64,
    /// Frames that failed their checksum or did not decompress (reported, skipped).
    pub damaged: u64,
}

/// One decompressed frame of a walk.
pub struct Frame<'a> {
    /// The segment it is in.
    pub segment: &'a Segment,
    /// Its header.
    pub header: &'a FrameHeader,
    /// Its lines, escaped, each LF-terminated.
    pub lines: &'a [u8],
}

/// Bytes of frames whose headers a walk of a bucket segment reads before
/// their data: both come from the same fetched chunks (a file is walked
/// whole: its headers cost no transfer).
const OBJECT_WINDOW: u64 = 4 << 20;

/// The frames of one segment that overlap the selection, window by window:
/// the headers of a window (no data read), then, through [`reader`](Walk::reader),
/// the data of the frames chosen. Damage is reported through `damaged` and
/// skipped to the next whole frame; a frame still being written at the end
/// of the file ends the walk. An object in a bucket is walked only within
/// the spans its index chose.
pub struct Walk<'a> {
    seg: &'a Segment,
    r: SegmentReader,
    spans: Vec<(u64, u64)>,
    span: usize,
    window: u64,
    ended: bool,
}

impl<'a> Walk<'a> {
    /// Counts the segment in `stats`.
    pub fn open(seg: &'a Segment, stats: &mut Stats) -> io::Result<Walk<'a>> {
        stats.segments += 1;
        let r = seg.open()?;
        let (spans, window) = match seg {
            Segment::Object(o) => (o.spans().to_vec(), OBJECT_WINDOW),
            Segment::File(_) => (vec![(0, r.len())], u64::MAX),
        };
        Ok(Walk { seg, r, spans, span: 0, window, ended: false })
    }

    /// The segment's reader, to read the data of the frames chosen.
    pub fn reader(&mut self) -> &mut SegmentReader {
        &mut self.r
    }

    /// The segment walked.
    pub fn segment(&self) -> &'a Segment {
        self.seg
    }

    /// The frames of the next window that overlap the selection (possibly
    /// none); `None` at the end. Counts frames in `stats`.
    pub fn next_window(
        &mut self,
        sel: &Selection,
        stats: &mut Stats,
        damaged: &mut dyn FnMut(&Segment, u64, DecodeError),
    ) -> io::Result<Option<Vec<(u64, FrameHeader)>>> {
        let r = &mut self.r;
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(&(start, end)) = self.spans.get(self.span) else { return Ok(None) };
            if r.offset() < start {
                r.seek(start);
            }
            if r.offset() >= end {
                self.span += 1;
                continue;
            }
            let limit = r.offset().saturating_add(self.window).min(end);
            let mut out = Vec::new();
            while r.offset() < limit {
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
                            damaged(self.seg, offset, error.into());
                            r.seek(next);
                        }
                        // A frame being written, or a torn tail: the end for now.
                        None => {
                            self.ended = true;
                            break;
                        }
                    },
                    Step::End => {
                        self.ended = true;
                        break;
                    }
                }
            }
            return Ok(Some(out));
        }
    }
}

/// Every frame of `seg` that overlaps the selection, from headers alone:
/// (offset, header).
pub fn frames(
    seg: &Segment,
    sel: &Selection,
    stats: &mut Stats,
    damaged: &mut dyn FnMut(&Segment, u64, DecodeError),
) -> io::Result<Vec<(u64, FrameHeader)>> {
    let mut w = Walk::open(seg, stats)?;
    let mut out = Vec::new();
    while let Some(list) = w.next_window(sel, stats, damaged)? {
        out.extend(list);
    }
    Ok(out)
}

/// Read, check and decompress the frame at `offset` into `raw`; counts it
/// in `stats`. `Err` describes a damaged frame (counted, for the caller to
/// report).
pub fn decompress(
    r: &mut SegmentReader,
    offset: u64,
    header: &FrameHeader,
    dec: &mut DataDecoder,
    raw: &mut Vec<u8>,
    stats: &mut Stats,
) -> io::Result<Result<(), DecodeError>> {
    let checked = r.read_records(offset, header, dec, raw)?;
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

/// Decompressed bytes per worker that [`walk_segment`] hands the pool at
/// once (at least two frames each): bounds memory, and small frames go
/// many to a batch instead of paying a thread start per few frames.
const RAW_PER_WORKER: u64 = 8 << 20;

/// Walk the frames of `seg` that overlap the selection, decompressing only
/// those (on the pool's workers, a few at a time), and hand each to `f` in
/// order; `f` returns false to stop everything (the reader of the output
/// went away). Returns whether to go on.
pub fn walk_segment(
    seg: &Segment,
    sel: &Selection,
    stats: &mut Stats,
    pool: &mut Pool,
    damaged: &mut dyn FnMut(&Segment, u64, DecodeError),
    f: &mut dyn FnMut(Frame<'_>) -> bool,
) -> io::Result<bool> {
    let mut w = Walk::open(seg, stats)?;
    let (budget, min_frames) = (pool.len() as u64 * RAW_PER_WORKER, pool.len() * 2);
    while let Some(list) = w.next_window(sel, stats, damaged)? {
        let mut rest = &list[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut raw = 0u64;
            while n < rest.len() && (n < min_frames || raw + u64::from(rest[n].1.raw_len) <= budget) {
                raw += u64::from(rest[n].1.raw_len);
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let lines = pool.run(seg, chunk, &|_, raw| std::mem::take(raw));
            for ((offset, header), lines) in chunk.iter().zip(lines) {
                match lines? {
                    Ok(lines) => {
                        stats.frames_read += 1;
                        stats.raw_bytes += lines.len() as u64;
                        stats.records += u64::from(header.records);
                        if !f(Frame { segment: seg, header, lines: &lines }) {
                            return Ok(false);
                        }
                    }
                    Err(e) => {
                        stats.damaged += 1;
                        damaged(seg, *offset, e);
                    }
                }
            }
        }
    }
    pool.done();
    Ok(true)
}

/// Threads that read, check and decompress frames of a segment in
/// parallel (`cat` and `grep`), each with its own zstd context, buffer and
/// reader: a bucket segment's readers share its fetched chunks, so two
/// workers fetch two ranges at once.
pub struct Pool {
    workers: Vec<Worker>,
}

struct Worker {
    dec: DataDecoder,
    raw: Vec<u8>,
    /// The segment it reads (its name) and its reader.
    reader: Option<(String, SegmentReader)>,
}

impl Pool {
    /// One worker per core.
    pub fn new() -> io::Result<Pool> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = (0..n)
            .map(|_| Ok(Worker { dec: DataDecoder::new()?, raw: Vec::new(), reader: None }))
            .collect::<io::Result<_>>()?;
        Ok(Pool { workers })
    }

    /// Workers: one per core.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// No workers (never, from [`Pool::new`]).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The segment is done: its readers go (a bucket segment's cache with them).
    pub fn done(&mut self) {
        for w in &mut self.workers {
            w.reader = None;
        }
    }

    /// Decompress `frames` of `seg` and hand each frame's lines to `work`
    /// on the worker that decompressed it (it may take the buffer); results
    /// in the order of `frames`. The inner `Err` describes a damaged frame,
    /// the outer one a segment that cannot be read (a bucket not answering).
    pub fn run<T: Send>(
        &mut self,
        seg: &Segment,
        frames: &[(u64, FrameHeader)],
        work: &(dyn Fn(&FrameHeader, &mut Vec<u8>) -> T + Sync),
    ) -> Vec<io::Result<Result<T, DecodeError>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        type Slot<T> = std::sync::Mutex<Option<io::Result<Result<T, DecodeError>>>>;
        let slots: Vec<Slot<T>> = frames.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let name = seg.name();
        std::thread::scope(|sc| {
            for w in self.workers.iter_mut().take(frames.len()) {
                let (next, slots, name) = (&next, &slots, &name);
                sc.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((offset, header)) = frames.get(i) else { return };
                    let r = w.decompress(seg, name, *offset, header).map(|d| d.map(|()| work(header, &mut w.raw)));
                    *slots[i].lock().expect("not poisoned") = Some(r);
                });
            }
        });
        slots
            .into_iter()
            .map(|s| s.into_inner().expect("not poisoned").unwrap_or_else(|| Err(io::Error::other("not read"))))
            .collect()
    }
}

impl Worker {
    fn decompress(
        &mut self,
        seg: &Segment,
        name: &str,
        offset: u64,
        header: &FrameHeader,
    ) -> io::Result<Result<(), DecodeError>> {
        if self.reader.as_ref().is_none_or(|(n, _)| n != name) {
            self.reader = None; // a bucket segment's cache goes before the next one's
            self.reader = Some((name.to_owned(), seg.open()?));
        }
        let r = &mut self.reader.as_mut().expect("opened above").1;
        r.read_records(offset, header, &mut self.dec, &mut self.raw)
    }
}
