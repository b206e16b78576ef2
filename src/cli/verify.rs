//! `ferry verify DIR`: every frame header and checksum of every segment, the
//! data frames decompressed and their lines counted, and, where a `state/`
//! directory sits beside the archive, every seal's length and SHA-256.

use std::path::Path;

use walkdir::WalkDir;

use super::progress::Progress;
use crate::query::bucket::{self, BucketArchive};
use crate::query::Segment;
use crate::store::reader::{SegmentReader, Step};
use crate::store::segment::{is_segment_file, seal_path, sha256_file, SealRecord};

#[derive(Default)]
struct Totals {
    segments: u64,
    sealed: u64,
    frames: u64,
    records: u64,
    bytes: u64,
    problems: u64,
}

pub fn verify(location: &str, config: Option<&Path>, verbose: bool) -> anyhow::Result<i32> {
    let mut t = Totals::default();
    let (files, seals) = if bucket::is_url(location) {
        from_bucket(&BucketArchive::open(location, config)?)?
    } else {
        from_dir(Path::new(location), &mut t)?
    };
    let mut dec = crate::store::frame::DataDecoder::new()?;
    let mut raw = Vec::new();
    let progress = Progress::bytes(files.iter().map(Segment::len).sum(), "verify");
    for (seg, seal) in files.iter().zip(seals) {
        progress.inc(seg.len());
        t.segments += 1;
        let before = t.problems;
        let path = seg.name();
        let object = match seg {
            Segment::Object(o) => Some(o.open()),
            Segment::File(_) => None,
        };
        let mut r = match &object {
            Some(o) => SegmentReader::new(Box::new(o.clone()), seg.len()),
            None => seg.open()?,
        };
        let (mut frames, mut records) = (0u64, 0u64);
        loop {
            match r.next_frame()? {
                Step::Frame { offset, header } => {
                    frames += 1;
                    records += u64::from(header.records);
                    if let Err(e) = r.records(&header, &mut dec, &mut raw) {
                        println!("{}: offset {offset}: data frame: {e}", path);
                        t.problems += 1;
                    }
                }
                Step::End => break,
                Step::Bad { offset, error } => {
                    let what = match r.next_valid_frame_after(offset)? {
                        Some(next) => {
                            r.seek(next);
                            format!("damaged frame (whole frames resume at offset {next})")
                        }
                        None => format!("torn or corrupt tail ({} bytes)", r.len() - offset),
                    };
                    println!("{}: offset {offset}: {what}: {error}", path);
                    t.problems += 1;
                    if r.offset() == offset {
                        break;
                    }
                }
            }
        }
        t.frames += frames;
        t.records += records;
        t.bytes += r.len();
        match seal {
            Some(Ok(seal)) => {
                t.sealed += 1;
                let sha = || match (&object, seg) {
                    (Some(o), _) => o.sha256(),
                    (None, Segment::File(p)) => sha256_file(p),
                    (None, Segment::Object(o)) => o.open().sha256(),
                };
                if seal.len != r.len() {
                    println!("{path}: sealed at {} bytes but is {} bytes", seal.len, r.len());
                    t.problems += 1;
                } else if sha()? != seal.sha256 {
                    println!("{path}: SHA-256 differs from its seal record");
                    t.problems += 1;
                } else if seal.records != records {
                    println!("{path}: seal says {} records, frames hold {records}", seal.records);
                    t.problems += 1;
                }
            }
            None => {}
            Some(Err(e)) => {
                println!("{path}: {e}");
                t.problems += 1;
            }
        }
        if verbose {
            let status = if t.problems == before { "ok" } else { "PROBLEMS" };
            println!("{}: {status}: {frames} frames, {records} records, {} bytes", path, r.len());
        }
    }
    progress.finish();
    println!(
        "verified {} segment(s) ({} sealed), {} frames, {} records, {} bytes: {} problem(s)",
        t.segments, t.sealed, t.frames, t.records, t.bytes, t.problems
    );
    Ok(if t.problems == 0 { 0 } else { 1 })
}

/// Every file under the archive, each with its seal record where a
/// `state/` sits beside it; anything that is not a segment is a problem.
#[allow(clippy::type_complexity)]
fn from_dir(dir: &Path, t: &mut Totals) -> anyhow::Result<(Vec<Segment>, Vec<Option<Result<SealRecord, String>>>)> {
    // Accept a data_dir (archive/ + state/) or an archive/ directory.
    let (archive, state) = if dir.join("archive").is_dir() {
        (dir.join("archive"), Some(dir.join("state")))
    } else {
        let state = dir
            .parent()
            .map(|p| p.join("state"))
            .filter(|s| s.is_dir() && dir.file_name().is_some_and(|n| n == "archive"));
        (dir.to_owned(), state)
    };
    if !archive.is_dir() {
        anyhow::bail!(
            "{} is not a directory (give a data_dir, its archive/, or s3://bucket/prefix)",
            archive.display()
        );
    }
    let (mut files, mut seals) = (Vec::new(), Vec::new());
    for e in WalkDir::new(&archive).sort_by_file_name() {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        if !is_segment_file(&e.file_name().to_string_lossy()) {
            println!("{}: not a segment file (nothing but segments belongs under archive/)", e.path().display());
            t.problems += 1;
            continue;
        }
        let seal = state.as_ref().and_then(|st| {
            let rel = e.path().strip_prefix(&archive).expect("walked under archive");
            SealRecord::load(&seal_path(st, rel)).map_err(|e| e.to_string()).transpose()
        });
        seals.push(seal);
        files.push(Segment::File(e.into_path()));
    }
    Ok((files, seals))
}

/// Every segment object under the prefix, each with its `.seal` object.
#[allow(clippy::type_complexity)]
fn from_bucket(b: &BucketArchive) -> anyhow::Result<(Vec<Segment>, Vec<Option<Result<SealRecord, String>>>)> {
    let mut listing = b.list()?;
    listing.segments.sort();
    let sealed: Vec<&str> =
        listing.segments.iter().filter(|(rel, _)| listing.seals.contains(rel)).map(|(rel, _)| rel.as_str()).collect();
    let mut seal_of = b.records(&sealed, "seal")?;
    let (mut files, mut seals) = (Vec::new(), Vec::new());
    for (rel, len) in &listing.segments {
        seals.push(seal_of.remove(rel).map(|s| s.map_err(|e| e.to_string())));
        files.push(Segment::Object(b.segment(rel, *len, vec![(0, *len)])));
    }
    Ok((files, seals))
}
