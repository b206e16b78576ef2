//! `ferry grep` and `ferry cat --from/--to` against the standard tools
//! (issue 12), warm page cache, same files.
//!
//! - grep: an archive of the e2e corpus (default 10,000,000 lines, about
//!   2 GB uncompressed) written through the store in commits of 4 MiB, then a
//!   rare fixed string searched with `ferry grep -F` and with `zstdgrep -F`.
//! - cat: one hour of one stream, a 4 MiB commit every 5 s (about 700
//!   frames), and a 5-minute window printed with `ferry cat --from --to`
//!   against `zstdcat` of the whole hour (what a filter over it must read).
//!
//! ```text
//! cargo bench --bench grep
//! FERRY_BENCH_RECORDS=2000000 cargo bench --bench grep
//! ```

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use ferry::config::validate;
use ferry::metrics::Metrics;
use ferry::store::clock::ManualClock;
use ferry::store::{Batch, Store};

/// 2026-11-30T10:00:00Z
const T0: i64 = 1_796_032_800_000;

fn store_at(dir: &std::path::Path, clock: &ManualClock) -> Store {
    let text = format!(
        "[node]\nsite = \"s1\"\nname = \"n1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"\"\n[store]\nfsync = \"never\"\nsegment_max_bytes = \"1GiB\"\n[[stream]]\nname = \"live\"\n",
        dir.display()
    );
    Store::open(&validate(&text, "bench.toml").unwrap(), Arc::new(clock.clone()), Metrics::new()).unwrap()
}

/// Commit `corpus` (LF-terminated lines without special bytes) in 4 MiB
/// batches, the clock `step_ms` later for each.
async fn fill(store: &Store, clock: &ManualClock, corpus: &[u8], start_ms: i64, step_ms: i64) -> i64 {
    let h = store.stream("live").unwrap();
    let mut t = start_ms;
    let mut at = 0;
    while at < corpus.len() {
        let mut end = (at + (4 << 20)).min(corpus.len());
        while end < corpus.len() && corpus[end - 1] != b'\n' {
            end += 1;
        }
        let data = corpus[at..end].to_vec();
        let records = data.iter().filter(|b| **b == b'\n').count() as u32;
        clock.set(t);
        let b = Batch { listener: "bench".into(), data, records, truncated: 0, first_ms: t, last_ms: t, ack: None };
        h.submit(b).await.map_err(|e| e.0).unwrap();
        h.flush().await.unwrap();
        at = end;
        t += step_ms;
    }
    t
}

fn timed(cmd: &mut Command) -> (f64, Vec<u8>, Vec<u8>) {
    // Warm the page cache first, then measure.
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let t = Instant::now();
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    (t.elapsed().as_secs_f64(), out.stdout, out.stderr)
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir.join("archive"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .collect();
    v.sort();
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ferry = common::ferry_binary();
    let records: u64 = std::env::var("FERRY_BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // grep over ~2 GB.
    let dir = tempfile::Builder::new().prefix("ferry-grepbench-").tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut raw_total = 0u64;
    rt.block_on(async {
        let store = store_at(dir.path(), &clock);
        let mut t = T0;
        let mut done = 0;
        while done < records {
            let n = (records - done).min(2_000_000);
            let corpus = common::corpus::generate_corpus(n);
            raw_total += corpus.len() as u64;
            t = fill(&store, &clock, &corpus, t, 1_000).await;
            done += n;
        }
        store.close().await;
    });
    let files = segment_files(dir.path());
    let needle = "id=99999 HTTP";
    let data = dir.path().display().to_string();
    let (ft, fout, _) = timed(Command::new(&ferry).args(["grep", "-F", needle, &data, "--raw"]));
    let (zt, zout, _) = timed(Command::new("zstdgrep").arg("-F").arg(needle).args(&files));
    let zlines = String::from_utf8_lossy(&zout).lines().count();
    let flines = String::from_utf8_lossy(&fout).lines().count();
    println!(
        "grep: {records} lines, {:.2} GB uncompressed in {} segment(s); rare fixed string ({flines} matches, zstdgrep {zlines})",
        raw_total as f64 / 1e9,
        files.len()
    );
    println!(
        "  ferry grep -F: {ft:.2} s = {:.0} MB/s;  zstdgrep -F: {zt:.2} s = {:.0} MB/s;  ratio {:.2}x",
        raw_total as f64 / 1e6 / ft,
        raw_total as f64 / 1e6 / zt,
        zt / ft
    );
    drop(dir);

    // cat of a 5-minute window of a 1-hour segment.
    let dir = tempfile::Builder::new().prefix("ferry-catbench-").tempdir().unwrap();
    let clock = ManualClock::new(T0);
    rt.block_on(async {
        let store = store_at(dir.path(), &clock);
        let corpus = common::corpus::generate_corpus(2_000_000);
        // About 100 commits of 4 MiB over the hour, repeated to fill it.
        let mut t = T0;
        while t < T0 + 3_600_000 - 36_000 {
            t = fill(&store, &clock, &corpus, t, 36_000).await;
        }
        store.close().await;
    });
    let files = segment_files(dir.path());
    let data = dir.path().display().to_string();
    let (ct, _, cerr) = timed(Command::new(&ferry).args([
        "cat",
        &data,
        "--from",
        "2026-11-30T10:20",
        "--to",
        "2026-11-30T10:25",
        "--raw",
        "--stats",
    ]));
    let (zt, _, _) = timed(Command::new("zstdcat").args(&files));
    println!("cat: one hour in {} segment(s); a 5-minute window", files.len());
    println!(
        "  ferry cat --from/--to: {ct:.3} s ({}); zstdcat of the hour: {zt:.3} s; ratio {:.1}x",
        String::from_utf8_lossy(&cerr).trim(),
        zt / ct
    );
}
