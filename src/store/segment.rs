//! Segments: one archive file of one stream, and the seal that closes it.
//!
//! ## On-disk layout
//! ```text
//! data_dir/archive/<site>/<stream>/<YYYY-MM-DD>/<stream>-<YYYY-MM-DD>T<HH>-<node>-<seq>.log.zst
//! data_dir/state/seals/<same relative path>.seal
//! ```
//! The date and hour are UTC at the segment's first commit; `seq` counts the
//! segments of one stream on one node (zero-padded, so names sort). The same
//! relative path is used on the central mirror.
//!
//! A segment is *open* while it has no seal record. Sealing fsyncs the file
//! and writes `state/seals/…seal` atomically (temp file, fsync, rename, fsync
//! of the directory) with its final length and SHA-256; from then on the file
//! never changes and can be proven byte-identical anywhere. A segment whose
//! fsync failed is sealed at its last durable length and never written again
//! (see [`OpenSegment`]).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::clock::utc_hour;
use super::frame::Codec;
use super::fs::{Fs, FsFile};

/// Suffix of zstd segment files (the default).
pub const SEGMENT_SUFFIX: &str = ".log.zst";
/// Suffix of gzip segment files (`compression = "gzip"`).
pub const GZIP_SEGMENT_SUFFIX: &str = ".log.gz";

/// Whether a file name is a segment's, of either codec.
pub fn is_segment_file(name: &str) -> bool {
    name.ends_with(SEGMENT_SUFFIX) || name.ends_with(GZIP_SEGMENT_SUFFIX)
}

/// The suffix of a codec's segment files.
pub fn suffix(codec: Codec) -> &'static str {
    match codec {
        Codec::Zstd => SEGMENT_SUFFIX,
        Codec::Gzip => GZIP_SEGMENT_SUFFIX,
    }
}
const SEAL_SUFFIX: &str = ".seal";

/// The parts of a segment file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentName {
    /// The datacenter whose records these are: the first path component.
    pub site: String,
    /// The stream: the second path component and the file name's start.
    pub stream: String,
    /// `YYYY-MM-DD`, UTC, of the segment's first commit: the third path component.
    pub date: String,
    /// The hour (0-23, UTC) of the segment's first commit.
    pub hour: u32,
    /// The node that wrote it.
    pub node: String,
    /// Counts the stream's segments on that node; zero-padded to 8 digits in the name, so names sort.
    pub seq: u64,
    /// How its frames are compressed; the suffix says it.
    pub codec: Codec,
}

impl SegmentName {
    /// The same name for a segment of `codec`.
    pub fn with_codec(mut self, codec: Codec) -> SegmentName {
        self.codec = codec;
        self
    }

    /// The name for a segment first written at `ms`.
    pub fn new(site: &str, stream: &str, node: &str, seq: u64, ms: i64) -> SegmentName {
        let (y, m, d, h) = utc_hour(ms);
        SegmentName {
            site: site.to_owned(),
            stream: stream.to_owned(),
            date: format!("{y:04}-{m:02}-{d:02}"),
            hour: h,
            node: node.to_owned(),
            seq,
            codec: Codec::Zstd,
        }
    }

    /// The name for a segment first written at `ms`, but never sorting
    /// before `floor` (the stream's previous segment): a clock set back keeps
    /// the previous segment's hour instead of going back in time.
    pub fn not_before(
        site: &str,
        stream: &str,
        node: &str,
        seq: u64,
        ms: i64,
        floor: Option<&SegmentName>,
    ) -> SegmentName {
        let mut n = SegmentName::new(site, stream, node, seq, ms);
        if let Some(f) = floor {
            if n.hour_key() < f.hour_key() {
                n.date = f.date.clone();
                n.hour = f.hour;
            }
        }
        n
    }

    /// `<stream>-<date>T<HH>-<node>-<seq>.log.zst` (or `.log.gz`).
    pub fn file_name(&self) -> String {
        format!("{}-{}T{:02}-{}-{:08}{}", self.stream, self.date, self.hour, self.node, self.seq, suffix(self.codec))
    }

    /// Path relative to `archive/`: `<site>/<stream>/<date>/<file>`.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(&self.site).join(&self.stream).join(&self.date).join(self.file_name())
    }

    /// Parse `<site>/<stream>/<date>/<file>`; `None` if it is not a segment path.
    pub fn parse_rel(rel: &Path) -> Option<SegmentName> {
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let [site, stream, date, file] = parts.as_slice() else {
            return None;
        };
        let (rest, codec) = match file.strip_suffix(SEGMENT_SUFFIX) {
            Some(r) => (r, Codec::Zstd),
            None => (file.strip_suffix(GZIP_SEGMENT_SUFFIX)?, Codec::Gzip),
        };
        let rest = rest.strip_prefix(stream)?.strip_prefix('-')?;
        // rest = YYYY-MM-DDTHH-<node>-<seq>
        let (when, rest) = (rest.get(..13)?, rest.get(13..)?);
        let (node, seq) = rest.strip_prefix('-')?.rsplit_once('-')?;
        let (fdate, hour) = when.split_once('T')?;
        if fdate != *date || node.is_empty() || seq.len() < 8 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SegmentName {
            site: site.to_string(),
            stream: stream.to_string(),
            date: date.to_string(),
            hour: hour.parse().ok().filter(|h| *h < 24)?,
            node: node.to_owned(),
            seq: seq.parse().ok()?,
            codec,
        })
    }

    /// `YYYY-MM-DDTHH` of this segment (UTC), compared with [`hour_key`] to rotate.
    pub fn hour_key(&self) -> String {
        format!("{}T{:02}", self.date, self.hour)
    }
}

/// Hour key of a timestamp, comparable with [`SegmentName::hour_key`].
pub fn hour_key(ms: i64) -> String {
    let (y, m, d, h) = utc_hour(ms);
    format!("{y:04}-{m:02}-{d:02}T{h:02}")
}

/// Where the seal record of a segment lives.
pub fn seal_path(state_dir: &Path, rel: &Path) -> PathBuf {
    let mut p = state_dir.join("seals").join(rel).into_os_string();
    p.push(SEAL_SUFFIX);
    PathBuf::from(p)
}

/// Where the record of an undelivered segment deleted by `drop_oldest`
/// lives (its seal record, kept under another name): `ferry audit` names
/// the hole it leaves for what it is.
pub fn gone_path(state_dir: &Path, rel: &Path) -> PathBuf {
    let mut p = state_dir.join("gone").join(rel).into_os_string();
    p.push(".gone");
    PathBuf::from(p)
}

/// Every tombstone under `state/gone/`: the deleted segment's path
/// (relative to `archive/`), its name and its seal record. A damaged
/// record is skipped with the reason (`ferry audit` then calls the hole
/// `segment_missing`, and an uplink does not forward it).
pub fn list_tombstones(state_dir: &Path) -> Vec<(PathBuf, SegmentName, Result<SealRecord, io::Error>)> {
    let dir = state_dir.join("gone");
    let mut out = Vec::new();
    if !dir.is_dir() {
        return out;
    }
    for e in walkdir::WalkDir::new(&dir).into_iter().filter_map(Result::ok) {
        let Some(rel) = e.path().strip_prefix(&dir).ok().and_then(|r| r.to_str()?.strip_suffix(".gone")) else {
            continue;
        };
        let rel = PathBuf::from(rel);
        let Some(name) = SegmentName::parse_rel(&rel) else { continue };
        match SealRecord::load(e.path()) {
            Ok(Some(seal)) => out.push((rel, name, Ok(seal))),
            Ok(None) => {}
            Err(err) => out.push((rel, name, Err(err))),
        }
    }
    out
}

/// What is wrong with the text of a seal record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealParseError {
    /// The file is not UTF-8.
    #[error("not UTF-8 text")]
    NotText,
    /// A line (1-based) without `=`.
    #[error("line {0}: not key=value")]
    NotKeyValue(usize),
    /// A numeric key whose value does not parse.
    #[error("line {line}: {key} is not a number")]
    NotNumber {
        /// The line, 1-based.
        line: usize,
        /// The key.
        key: String,
    },
    /// The `sha256` line (1-based) is not 64 hex digits.
    #[error("line {0}: sha256 is not 64 hex digits")]
    Sha256(usize),
    /// Fewer than the 7 keys: a truncated record.
    #[error("only {0} of the 7 keys (truncated?)")]
    Missing(u32),
}

/// A seal record that does not parse, and where it is (a file, or an
/// object in a bucket).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: damaged seal record: {why}")]
pub struct DamagedSeal {
    /// The seal file's path, or the bucket object's key.
    pub place: String,
    /// What is wrong with its text.
    #[source]
    pub why: SealParseError,
}

/// The proof that a segment is closed: its final length and checksum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealRecord {
    /// The segment's final length in bytes.
    pub len: u64,
    /// SHA-256 of the whole segment, 64 lowercase hex digits.
    pub sha256: String,
    /// Frames in the segment.
    pub frames: u64,
    /// Records in the segment.
    pub records: u64,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Sequence number after its last record: the stream's next segment starts there.
    pub next_seq: u64,
    /// When it was sealed, ms since the Unix epoch.
    pub sealed_ms: i64,
}

impl SealRecord {
    /// The record as written to `…seal`: one `key=value` line per field.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "len={}", self.len);
        let _ = writeln!(s, "sha256={}", self.sha256);
        let _ = writeln!(s, "frames={}", self.frames);
        let _ = writeln!(s, "records={}", self.records);
        let _ = writeln!(s, "first_seq={}", self.first_seq);
        let _ = writeln!(s, "next_seq={}", self.next_seq);
        let _ = writeln!(s, "sealed_ms={}", self.sealed_ms);
        s
    }

    /// Parse a seal record; the error says what is wrong with it (for the
    /// log line that names the file).
    pub fn parse(text: &str) -> Result<SealRecord, SealParseError> {
        let mut r = SealRecord {
            len: 0,
            sha256: String::new(),
            frames: 0,
            records: 0,
            first_seq: 0,
            next_seq: 0,
            sealed_ms: 0,
        };
        // Each key once at least (a bit per key): a repeated key is not another.
        let mut seen = 0u8;
        for (i, line) in text.lines().enumerate() {
            let (k, v) = line.split_once('=').ok_or(SealParseError::NotKeyValue(i + 1))?;
            let num =
                |v: &str| v.parse::<u64>().map_err(|_| SealParseError::NotNumber { line: i + 1, key: k.to_owned() });
            let bit = match k {
                "len" => {
                    r.len = num(v)?;
                    0
                }
                "sha256" => {
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(SealParseError::Sha256(i + 1));
                    }
                    r.sha256 = v.to_ascii_lowercase();
                    1
                }
                "frames" => {
                    r.frames = num(v)?;
                    2
                }
                "records" => {
                    r.records = num(v)?;
                    3
                }
                "first_seq" => {
                    r.first_seq = num(v)?;
                    4
                }
                "next_seq" => {
                    r.next_seq = num(v)?;
                    5
                }
                "sealed_ms" => {
                    r.sealed_ms = v
                        .parse()
                        .map_err(|_| SealParseError::NotNumber { line: i + 1, key: "sealed_ms".to_owned() })?;
                    6
                }
                _ => continue,
            };
            seen |= 1 << bit;
        }
        if seen != 0x7f {
            return Err(SealParseError::Missing(seen.count_ones()));
        }
        Ok(r)
    }

    /// The seal record at `path`: `None` if there is none, `InvalidData`
    /// naming the file and the problem if it is damaged.
    pub fn load(path: &Path) -> io::Result<Option<SealRecord>> {
        match fs::read(path) {
            Ok(b) => {
                let parsed = std::str::from_utf8(&b).map_err(|_| SealParseError::NotText).and_then(SealRecord::parse);
                parsed.map(Some).map_err(|why| {
                    io::Error::new(io::ErrorKind::InvalidData, DamagedSeal { place: path.display().to_string(), why })
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The SHA-256 as bytes (validated hex by [`parse`](Self::parse)).
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        decode_hex(&self.sha256)
    }

    /// Write atomically: a crash leaves either no seal or a whole one.
    pub fn store(&self, fs: &Fs, path: &Path) -> io::Result<()> {
        fs.write_atomic(path, self.to_text().as_bytes())
    }
}

/// 64 hex digits as 32 bytes; `None` for anything else (never panics on
/// multibyte text).
pub fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A segment file found under `archive/`, with its seal record if sealed.
#[derive(Clone, Debug)]
pub struct OnDisk {
    /// Path relative to `archive/`.
    pub rel: PathBuf,
    /// Its parsed name.
    pub name: SegmentName,
    /// File length when listed.
    pub len: u64,
    /// The seal record, if the segment is sealed and the record reads.
    pub seal: Option<SealRecord>,
    /// The seal record exists but cannot be read: what is wrong with it.
    /// The segment was sealed (seal files appear only then), so it is safe
    /// to re-derive the seal from the file ([`super::recover::reseal`]).
    pub damaged_seal: Option<String>,
}

/// Every segment file under `archive/` (all sites), except those `skip`
/// names, oldest first (by date, hour, sequence). Files deleted during the
/// walk (retention, an operator) are skipped; other files are ignored.
pub fn list_segments(archive_dir: &Path, state_dir: &Path, skip: impl Fn(&Path) -> bool) -> io::Result<Vec<OnDisk>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(archive_dir).min_depth(4).max_depth(4) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.io_error().is_some_and(|i| i.kind() == io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(archive_dir).expect("walk stays under archive_dir").to_owned();
        let Some(name) = SegmentName::parse_rel(&rel) else { continue };
        if skip(&rel) {
            continue;
        }
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let (seal, damaged_seal) = match SealRecord::load(&seal_path(state_dir, &rel)) {
            Ok(s) => (s, None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(OnDisk { rel, name, len, seal, damaged_seal });
    }
    out.sort_by(|a, b| {
        (&a.name.date, a.name.hour, a.name.seq, &a.rel).cmp(&(&b.name.date, b.name.hour, b.name.seq, &b.rel))
    });
    Ok(out)
}

/// SHA-256 of a whole file, hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    Ok(hex(&sha256_of(File::open(path)?)?.finalize()))
}

/// The SHA-256 state after all of `r`'s bytes (to go on hashing, or finalize).
pub fn sha256_of(mut r: impl Read) -> io::Result<Sha256> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The segment a stream is appending to. The SHA-256 is kept as frames are
/// written so sealing does not re-read the file.
///
/// ## Faults
/// Frames are written at explicit offsets (`pwrite`), so a failed or short
/// write can never push the next frame behind a hole: [`append`](Self::append)
/// cuts whatever landed and the next frame goes exactly after the last whole
/// one. A failed fsync is different: the kernel may already have dropped the
/// dirty pages and will not report it twice ("fsyncgate"), so the segment is
/// never trusted again: [`finish`](Self::finish) cuts it back to its last
/// durable length and seals it there, and the stream continues in a new one.
pub struct OpenSegment {
    /// The segment's name.
    pub name: SegmentName,
    /// Path relative to `archive/`.
    pub rel: PathBuf,
    /// The file's full path.
    pub path: PathBuf,
    file: FsFile,
    hasher: Sha256,
    /// Bytes written so far (whole frames only).
    pub len: u64,
    /// Frames written so far.
    pub frames: u64,
    /// Records written so far.
    pub records: u64,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// Sequence number the next record appended gets.
    pub next_seq: u64,
    /// What an fsync last confirmed, with the checksum state there.
    durable: Durable,
}

#[derive(Clone)]
struct Durable {
    hasher: Sha256,
    len: u64,
    frames: u64,
    records: u64,
    next_seq: u64,
}

impl OpenSegment {
    /// Create a new, empty segment file (and its directories, fsynced).
    pub fn create(fs: &Fs, archive_dir: &Path, name: SegmentName, first_seq: u64) -> io::Result<OpenSegment> {
        let rel = name.rel_path();
        let path = archive_dir.join(&rel);
        let dir = path.parent().expect("segment paths have a parent");
        fs.create_dir_all(dir)?;
        let file = fs.create_new(&path)?;
        if let Err(e) = fs.sync_dir(dir) {
            // Not durable as a name: do not leave it behind to be found later.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let none = Durable { hasher: Sha256::new(), len: 0, frames: 0, records: 0, next_seq: first_seq };
        Ok(OpenSegment::at(name, path, file, none, first_seq))
    }

    /// A writer over `file` holding what `durable` says, all of it durable.
    fn at(name: SegmentName, path: PathBuf, file: FsFile, durable: Durable, first_seq: u64) -> OpenSegment {
        let d = durable.clone();
        OpenSegment {
            rel: name.rel_path(),
            name,
            path,
            file,
            hasher: d.hasher,
            len: d.len,
            frames: d.frames,
            records: d.records,
            first_seq,
            next_seq: d.next_seq,
            durable,
        }
    }

    /// Go on writing a segment file already there (a mirror segment after a
    /// restart) whose first `walk.len` bytes are whole frames, as
    /// [`walk_and_repair`](super::recover::walk_and_repair) found them: they
    /// are hashed once here, so the seal needs no read of the file.
    pub fn resume(
        fs: &Fs,
        archive_dir: &Path,
        name: SegmentName,
        walk: &super::recover::Walk,
    ) -> io::Result<OpenSegment> {
        use std::io::Read;
        let rel = name.rel_path();
        let path = archive_dir.join(&rel);
        let file = fs.open_write(&path)?;
        let hasher = sha256_of(std::fs::File::open(&path)?.take(walk.len))?;
        let first_seq = walk.first_seq.unwrap_or(walk.next_seq);
        let durable = Durable {
            hasher,
            len: walk.len,
            frames: walk.frames,
            records: walk.records,
            next_seq: walk.next_seq.max(first_seq),
        };
        Ok(OpenSegment::at(name, path, file, durable, first_seq))
    }

    /// Number a segment that has no frame yet from `first_seq`: a mirror
    /// learns it from the origin's first frame. No effect once it has one.
    pub fn start_at(&mut self, first_seq: u64) {
        if self.frames == 0 {
            (self.first_seq, self.next_seq, self.durable.next_seq) = (first_seq, first_seq, first_seq);
        }
    }

    /// Append one whole frame at the end. On error whatever part of it
    /// landed is cut, and the segment is as before; if even the cut fails
    /// the error says so ([`AppendError::Uncut`]) and the caller must
    /// [`finish`](Self::finish) the segment.
    pub fn append(&mut self, frame: &[u8], records: u32) -> Result<(), AppendError> {
        self.append_frames(frame, 1, u64::from(records))
    }

    /// Append `frames` whole frames, back to back in `bytes`, as one write:
    /// all of them land or none (as [`append`](Self::append)).
    pub fn append_frames(&mut self, bytes: &[u8], frames: u64, records: u64) -> Result<(), AppendError> {
        if let Err(e) = self.file.write_all_at(bytes, self.len) {
            return Err(match self.file.set_len(self.len) {
                Ok(()) => AppendError::Cut(e),
                Err(cut) => AppendError::Uncut { write: e, cut },
            });
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.frames += frames;
        self.records += records;
        self.next_seq += records;
        Ok(())
    }

    /// fsync the data. On success everything appended so far is durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.mark_durable();
        Ok(())
    }

    fn mark_durable(&mut self) {
        self.durable = Durable {
            hasher: self.hasher.clone(),
            len: self.len,
            frames: self.frames,
            records: self.records,
            next_seq: self.next_seq,
        };
    }

    /// Bytes an fsync has confirmed.
    pub fn durable_len(&self) -> u64 {
        self.durable.len
    }

    /// True when bytes past the last durable length are in the file (a
    /// failed fsync, or a failed write whose remains could not be cut).
    pub fn needs_cut(&self) -> bool {
        self.len != self.durable.len
    }

    /// Close the segment at its last durable length: cut anything after it
    /// (and fsync the cut), then write the seal record. Call after a
    /// successful [`sync`](Self::sync) to seal everything, or after a failed
    /// one to drop what the failed fsync may not have kept: the kernel may
    /// already have thrown those pages away and would not say so again
    /// ("fsyncgate"), and their senders were told the commit failed.
    ///
    /// Returns the seal (`None` when nothing durable is left: the empty file
    /// is removed, since an empty file is not a zstd file to `zstdcat`) and
    /// the acknowledged records the cut removed (only with `fsync =
    /// "interval"` or `"never"`). If the disk refuses the cut or the record,
    /// the segment comes back to be tried again later.
    pub fn finish(
        mut self,
        fs: &Fs,
        state_dir: &Path,
        now_ms: i64,
    ) -> Result<(Option<SealRecord>, u64), (Box<OpenSegment>, io::Error)> {
        let cut_records = match self.cut_to_durable() {
            Ok(n) => n,
            Err(e) => return Err((Box::new(self), e)),
        };
        if self.len == 0 {
            let dir = self.path.parent().expect("segment paths have a parent").to_owned();
            return match fs.remove_file(&self.path).and_then(|()| fs.sync_dir(&dir)) {
                Ok(()) => Ok((None, cut_records)),
                Err(e) => Err((Box::new(self), e)),
            };
        }
        let rec = self.seal_record(now_ms);
        match rec.store(fs, &seal_path(state_dir, &self.rel)) {
            Ok(()) => Ok((Some(rec), cut_records)),
            Err(e) => Err((Box::new(self), e)),
        }
    }

    /// The one cut rule, after a failed write or fsync: the file goes back
    /// to what the last fsync confirmed (the cut fsynced too), and so do
    /// its length, counts and checksum. Returns the records cut. On error
    /// the file may still hold bytes past that point: not to be written
    /// again (the commit writer retries [`finish`](Self::finish); the mirror
    /// walks the file again when next touched).
    pub fn cut_to_durable(&mut self) -> io::Result<u64> {
        if !self.needs_cut() {
            return Ok(0);
        }
        self.file.set_len(self.durable.len).and_then(|()| self.file.sync_all())?;
        let cut_records = self.records - self.durable.records;
        let d = self.durable.clone();
        (self.hasher, self.len, self.frames, self.records, self.next_seq) =
            (d.hasher, d.len, d.frames, d.records, d.next_seq);
        Ok(cut_records)
    }

    /// The seal record of what is durable now: length, SHA-256 and counts,
    /// from the running state (the file is not read).
    pub fn seal_record(&self, now_ms: i64) -> SealRecord {
        let d = &self.durable;
        SealRecord {
            len: d.len,
            sha256: hex(&d.hasher.clone().finalize()),
            frames: d.frames,
            records: d.records,
            first_seq: self.first_seq,
            next_seq: d.next_seq,
            sealed_ms: now_ms,
        }
    }
}

/// How an append failed.
#[derive(Debug)]
pub enum AppendError {
    /// Nothing of the frame is left in the file.
    Cut(io::Error),
    /// The write failed and so did cutting its remains: the segment holds a
    /// partial frame and must not be written again.
    Uncut {
        /// Why the write failed.
        write: io::Error,
        /// Why cutting its remains failed.
        cut: io::Error,
    },
}

impl AppendError {
    /// The write's own error.
    pub fn io(&self) -> &io::Error {
        match self {
            AppendError::Cut(e) | AppendError::Uncut { write: e, .. } => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = SegmentName::new("sg1", "live", "relay-1", 42, 1_795_454_138_000);
        assert_eq!(n.file_name(), "live-2026-11-23T17-relay-1-00000042.log.zst");
        assert_eq!(n.rel_path(), Path::new("sg1/live/2026-11-23/live-2026-11-23T17-relay-1-00000042.log.zst"));
        assert_eq!(SegmentName::parse_rel(&n.rel_path()), Some(n));
        assert_eq!(SegmentName::parse_rel(Path::new("sg1/live/2026-11-23/other.txt")), None);
        assert_eq!(
            SegmentName::parse_rel(Path::new("sg1/live/2026-11-24/live-2026-11-23T17-r-00000001.log.zst")),
            None
        );
    }

    /// Found by `cargo fuzz` (fuzz/artifacts, target seal_record): one key
    /// repeated seven times passed for all seven, with no sha256.
    #[test]
    fn a_repeated_key_does_not_stand_for_a_missing_one() {
        let text = "len=1234\nlen=1\nlen=2\nnext_seq=3\nnext_seq=3\nnext_seq=3\nnext_seq=3\n";
        assert_eq!(SealRecord::parse(text), Err(SealParseError::Missing(2)));
        assert_eq!(SealParseError::Missing(2).to_string(), "only 2 of the 7 keys (truncated?)");
    }

    #[test]
    fn seal_text_round_trip() {
        let r = SealRecord {
            len: 5,
            sha256: "a".repeat(64),
            frames: 1,
            records: 2,
            first_seq: 3,
            next_seq: 5,
            sealed_ms: 9,
        };
        assert_eq!(SealRecord::parse(&r.to_text()), Ok(r.clone()));
        assert!(SealRecord::parse("len=5\n").unwrap_err().to_string().contains("truncated"));
        // Multibyte text in the checksum: an error, never a panic on slicing.
        let bad = r.to_text().replace(&"a".repeat(64), &format!("{}é", "a".repeat(62)));
        assert!(SealRecord::parse(&bad).unwrap_err().to_string().contains("hex"));
        assert!(SealRecord::parse(&r.to_text().replace("len=5", "len=five")).is_err());
        assert_eq!(decode_hex(&"0f".repeat(32)), Some([15u8; 32]));
        assert_eq!(decode_hex(&format!("{}é", "a".repeat(62))), None);
        assert_eq!(decode_hex(&"zz".repeat(32)), None);
    }
}
