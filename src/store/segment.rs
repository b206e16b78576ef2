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
//! never changes and can be proven byte-identical anywhere.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::clock::utc_hour;

/// Suffix of every segment file.
pub const SEGMENT_SUFFIX: &str = ".log.zst";
const SEAL_SUFFIX: &str = ".seal";

/// The parts of a segment file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentName {
    pub site: String,
    pub stream: String,
    pub date: String,
    pub hour: u32,
    pub node: String,
    pub seq: u64,
}

impl SegmentName {
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
        }
    }

    pub fn file_name(&self) -> String {
        format!("{}-{}T{:02}-{}-{:08}{}", self.stream, self.date, self.hour, self.node, self.seq, SEGMENT_SUFFIX)
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
        let rest = file.strip_suffix(SEGMENT_SUFFIX)?.strip_prefix(stream)?.strip_prefix('-')?;
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

/// The proof that a segment is closed: its final length and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealRecord {
    pub len: u64,
    pub sha256: String,
    pub frames: u64,
    pub records: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    pub sealed_ms: i64,
}

impl SealRecord {
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

    pub fn parse(text: &str) -> Option<SealRecord> {
        let mut r = SealRecord {
            len: 0,
            sha256: String::new(),
            frames: 0,
            records: 0,
            first_seq: 0,
            next_seq: 0,
            sealed_ms: 0,
        };
        let mut seen = 0;
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k {
                "len" => r.len = v.parse().ok()?,
                "sha256" => r.sha256 = v.to_owned(),
                "frames" => r.frames = v.parse().ok()?,
                "records" => r.records = v.parse().ok()?,
                "first_seq" => r.first_seq = v.parse().ok()?,
                "next_seq" => r.next_seq = v.parse().ok()?,
                "sealed_ms" => r.sealed_ms = v.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        (seen >= 7 && r.sha256.len() == 64).then_some(r)
    }

    pub fn load(path: &Path) -> io::Result<Option<SealRecord>> {
        match fs::read_to_string(path) {
            Ok(t) => SealRecord::parse(&t).map(Some).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: malformed seal record", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write atomically: a crash leaves either no seal or a whole one.
    pub fn store(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().expect("seal paths have a parent");
        fs::create_dir_all(dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    }
}

/// A segment file found under `archive/`, with its seal record if sealed.
#[derive(Clone, Debug)]
pub struct OnDisk {
    /// Path relative to `archive/`.
    pub rel: PathBuf,
    pub name: SegmentName,
    /// File length when listed.
    pub len: u64,
    pub seal: Option<SealRecord>,
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
        let seal = SealRecord::load(&seal_path(state_dir, &rel)).unwrap_or(None);
        out.push(OnDisk { rel, name, len, seal });
    }
    out.sort_by(|a, b| {
        (&a.name.date, a.name.hour, a.name.seq, &a.rel).cmp(&(&b.name.date, b.name.hour, b.name.seq, &b.rel))
    });
    Ok(out)
}

/// fsync a directory so a file created or renamed in it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 of a whole file, hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The segment a stream is appending to. The SHA-256 is kept as frames are
/// written so sealing does not re-read the file.
pub struct OpenSegment {
    pub name: SegmentName,
    pub rel: PathBuf,
    pub path: PathBuf,
    file: File,
    hasher: Sha256,
    pub len: u64,
    pub frames: u64,
    pub records: u64,
    pub first_seq: u64,
    pub next_seq: u64,
}

impl OpenSegment {
    /// Create a new, empty segment file (and its directories, fsynced).
    pub fn create(archive_dir: &Path, name: SegmentName, first_seq: u64) -> io::Result<OpenSegment> {
        let rel = name.rel_path();
        let path = archive_dir.join(&rel);
        let dir = path.parent().expect("segment paths have a parent");
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            // Make the new date directory itself durable.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        sync_dir(dir)?;
        Ok(OpenSegment {
            name,
            rel,
            path,
            file,
            hasher: Sha256::new(),
            len: 0,
            frames: 0,
            records: 0,
            first_seq,
            next_seq: first_seq,
        })
    }

    /// Append one whole frame. On error the file is cut back to its previous
    /// length so no partial frame stays behind.
    pub fn append(&mut self, frame: &[u8], records: u32) -> io::Result<()> {
        if let Err(e) = self.file.write_all(frame) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.hasher.update(frame);
        self.len += frame.len() as u64;
        self.frames += 1;
        self.records += u64::from(records);
        self.next_seq += u64::from(records);
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// fsync, then write the seal record.
    pub fn seal(self, state_dir: &Path, now_ms: i64) -> io::Result<SealRecord> {
        self.file.sync_all()?;
        let rec = SealRecord {
            len: self.len,
            sha256: hex(&self.hasher.finalize()),
            frames: self.frames,
            records: self.records,
            first_seq: self.first_seq,
            next_seq: self.next_seq,
            sealed_ms: now_ms,
        };
        rec.store(&seal_path(state_dir, &self.rel))?;
        Ok(rec)
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
        assert_eq!(SealRecord::parse(&r.to_text()), Some(r));
        assert_eq!(SealRecord::parse("len=5\n"), None);
    }
}
