//! `ferry verify DIR`: every frame header and checksum of every segment, the
//! data frames decompressed and their lines counted, and, where a `state/`
//! directory sits beside the archive, every seal's length and SHA-256.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::progress::Progress;
use crate::store::reader::{SegmentReader, Step};
use crate::store::segment::{seal_path, sha256_file, SealRecord, SEGMENT_SUFFIX};

#[derive(Default)]
struct Totals {
    segments: u64,
    sealed: u64,
    frames: u64,
    records: u64,
    bytes: u64,
    problems: u64,
}

pub fn verify(dir: &Path, verbose: bool) -> anyhow::Result<i32> {
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
        anyhow::bail!("{} is not a directory", archive.display());
    }
    let mut t = Totals::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for e in WalkDir::new(&archive).sort_by_file_name() {
        let e = e?;
        if e.file_type().is_file() {
            if e.file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX) {
                files.push(e.into_path());
            } else {
                println!("{}: not a segment file (nothing but segments belongs under archive/)", e.path().display());
                t.problems += 1;
            }
        }
    }
    let mut dec = zstd::bulk::Decompressor::new()?;
    let mut raw = Vec::new();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let progress = Progress::bytes(files.iter().map(|p| size(p)).sum(), "verify");
    for path in &files {
        progress.inc(size(path));
        t.segments += 1;
        let before = t.problems;
        let mut r = SegmentReader::open(path)?;
        let (mut frames, mut records) = (0u64, 0u64);
        loop {
            match r.next_frame()? {
                Step::Frame { offset, header } => {
                    frames += 1;
                    records += u64::from(header.records);
                    raw.clear();
                    raw.reserve(header.raw_len as usize);
                    match dec.decompress_to_buffer(r.data(), &mut raw) {
                        Ok(n) if n == header.raw_len as usize => {
                            let lines = memchr::memchr_iter(b'\n', &raw).count() as u64;
                            if lines != u64::from(header.records) || raw.last() != Some(&b'\n') {
                                println!(
                                    "{}: offset {offset}: frame says {} records, data has {lines} lines",
                                    path.display(),
                                    header.records
                                );
                                t.problems += 1;
                            }
                        }
                        Ok(n) => {
                            println!(
                                "{}: offset {offset}: frame says {} bytes uncompressed, data has {n}",
                                path.display(),
                                header.raw_len
                            );
                            t.problems += 1;
                        }
                        Err(e) => {
                            println!("{}: offset {offset}: data frame does not decompress: {e}", path.display());
                            t.problems += 1;
                        }
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
                    println!("{}: offset {offset}: {what}: {error}", path.display());
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
        if let Some(state) = &state {
            let rel = path.strip_prefix(&archive).expect("walked under archive");
            match SealRecord::load(&seal_path(state, rel)) {
                Ok(Some(seal)) => {
                    t.sealed += 1;
                    if seal.len != r.len() {
                        println!("{}: sealed at {} bytes but is {} bytes", path.display(), seal.len, r.len());
                        t.problems += 1;
                    } else if sha256_file(path)? != seal.sha256 {
                        println!("{}: SHA-256 differs from its seal record", path.display());
                        t.problems += 1;
                    } else if seal.records != records {
                        println!("{}: seal says {} records, frames hold {records}", path.display(), seal.records);
                        t.problems += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    println!("{}: {e}", path.display());
                    t.problems += 1;
                }
            }
        }
        if verbose {
            let status = if t.problems == before { "ok" } else { "PROBLEMS" };
            println!("{}: {status}: {frames} frames, {records} records, {} bytes", path.display(), r.len());
        }
    }
    progress.finish();
    println!(
        "verified {} segment(s) ({} sealed), {} frames, {} records, {} bytes: {} problem(s)",
        t.segments, t.sealed, t.frames, t.records, t.bytes, t.problems
    );
    Ok(if t.problems == 0 { 0 } else { 1 })
}
