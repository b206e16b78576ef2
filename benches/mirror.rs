//! The mirror's seal (issue 25): CPU per GB of mirrored segment at seal time.
//!
//! A receiver's mirror (the library's `Mirror`, as the link drives it) is
//! given `FERRY_BENCH_SEGMENTS` segments (default 16) of 64 MiB of zstd
//! frames each, appended in 1 MiB chunks as a link would, then each is sealed
//! against the origin's length and SHA-256. Reported: the time of the
//! appends and of the seals, per GB; and, on the same files, the work a seal
//! used to do before it kept a running SHA-256 (re-read and hash the whole
//! file, walk its frames again), so the two can be told apart on one
//! machine. Files on the disk of the working directory (page cache warm, as
//! at a seal right after the last append).
//!
//! `cargo bench --bench mirror`; figures in `benches/README.md`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::{cpu_model, env_or};
use ferry::metrics::Metrics;
use ferry::mirror::Mirror;
use ferry::store::changes::Changes;
use ferry::store::clock::SystemClock;
use ferry::store::frame::{FrameEncoder, FrameMeta};
use ferry::store::fs::Fs;
use ferry::store::recover::walk_and_repair;
use ferry::store::segment::sha256_file;

const SEGMENT_BYTES: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

fn main() {
    let segments = env_or("FERRY_BENCH_SEGMENTS", 16) as usize;
    println!("machine: {} ({} CPU)", cpu_model(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let work = tempfile::tempdir_in(std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| ".".into())).unwrap();
    let frames = segment_frames();
    let sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&frames).into()
    };
    let metrics = Metrics::new();
    let mirror = Mirror::new(
        work.path().join("archive"),
        work.path().join("state"),
        Fs::real(),
        Arc::new(SystemClock),
        metrics.clone(),
        Changes::new(),
        Arc::new(ferry::store::retention::Fullness::new(metrics.store.store_full.clone())),
    );
    let rels: Vec<PathBuf> = (0..segments)
        .map(|i| PathBuf::from(format!("edge1/live/2027-01-15/live-2027-01-15T08-relay-1-{i:08}.log.zst")))
        .collect();
    let gb = (frames.len() * segments) as f64 / 1e9;
    let t = Instant::now();
    for rel in &rels {
        let mut at = 0;
        while at < frames.len() {
            let end = chunk_end(&frames, at);
            mirror.append(rel, at as u64, &frames[at..end]).unwrap();
            at = end;
        }
    }
    let append = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for rel in &rels {
        mirror.seal(rel, frames.len() as u64, &sha).unwrap();
    }
    let seal = t.elapsed().as_secs_f64();
    // What a seal did before: hash the file again and walk its frames.
    let t = Instant::now();
    for rel in &rels {
        let path = work.path().join("archive").join(rel);
        sha256_file(&path).unwrap();
        walk_and_repair(&Fs::real(), &path, "live", &metrics).unwrap();
    }
    let reread = t.elapsed().as_secs_f64();
    // The hashing the appends now do, alone.
    let t = Instant::now();
    for _ in &rels {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for c in frames.chunks(CHUNK) {
            h.update(c);
        }
        std::hint::black_box(h.finalize());
    }
    let hashing = t.elapsed().as_secs_f64();
    println!("{segments} segments of {} MiB of frames ({gb:.2} GB), appended in 1 MiB chunks", frames.len() >> 20);
    println!("  appends (write + fsync + checks): {:>8.3} s per GB", append / gb);
    println!("  of which SHA-256 in memory:       {:>8.3} s per GB", hashing / gb);
    println!("  seals:                            {:>8.3} s per GB", seal / gb);
    println!(
        "  the re-read a seal used to do:    {:>8.3} s per GB (SHA-256 of the file and a walk of its frames)",
        reread / gb
    );
}

/// About [`SEGMENT_BYTES`] of frames of ~1 MiB raw each, of text that
/// compresses about 2:1 (so the frames are not trivially small).
fn segment_frames() -> Vec<u8> {
    let mut enc = FrameEncoder::new(1).unwrap();
    let mut out = Vec::with_capacity(SEGMENT_BYTES + (1 << 20));
    let mut frame = Vec::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut seq = 0u64;
    while out.len() < SEGMENT_BYTES {
        let mut raw = Vec::with_capacity(1 << 20);
        let mut records = 0u32;
        while raw.len() < (1 << 20) {
            use std::io::Write;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            writeln!(raw, "<13>Jan 15 08:00:00 host app[{}]: request id={x:016x} took {} ms", x % 100_000, x % 997)
                .unwrap();
            records += 1;
        }
        let meta = FrameMeta { stream: "live", records, truncated: 0, first_seq: seq, first_ms: 0, last_ms: 0 };
        enc.encode(&meta, &raw, &mut frame).unwrap();
        out.extend_from_slice(&frame);
        seq += u64::from(records);
    }
    out
}

/// The end of the chunk that starts at `at`: whole frames, about [`CHUNK`].
fn chunk_end(frames: &[u8], at: usize) -> usize {
    let mut end = at;
    while end < frames.len() && end - at < CHUNK {
        let h = ferry::store::frame::FrameHeader::decode(&frames[end..]).unwrap();
        end += h.encoded_len() + h.data_len as usize;
    }
    end
}
