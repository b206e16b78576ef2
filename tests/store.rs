//! Store guarantees, driven through the library with an injected clock:
//! rotation by hour and size, retention by age and bytes, the `on_full`
//! policies, and what recovery and `ferry verify` make of damaged files.

mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry::config::Config;
use ferry::metrics::Metrics;
use ferry::store::clock::ManualClock;
use ferry::store::reader::{SegmentReader, Step};
use ferry::store::retention::NoHold;
use ferry::store::segment::{seal_path, SealRecord};
use ferry::store::{Error, Store};
use util::store::{batch, commit, HoldAll};

/// 2026-11-23T10:59:59Z
const T0: i64 = 1_795_431_599_000;
const HOUR: i64 = 3_600_000;

fn config(dir: &Path, store: &str) -> Config {
    util::store::config(dir, &format!("commit_interval = \"20ms\"\n{store}"))
}

async fn write(store: &Store, lines: &[Vec<u8>]) {
    commit(store, "live", batch(lines, 0)).await
}

fn text_lines(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix} line {i}").into_bytes()).collect()
}

/// Lines that do not compress: segment sizes then follow the bytes written.
fn noise_lines(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Printable, and never a backslash: the archive then holds the lines verbatim.
                    match b'!' + (x % 90) as u8 {
                        b'\\' => b'/',
                        c => c,
                    }
                })
                .collect()
        })
        .collect()
}

fn segment_files(data: &Path) -> Vec<PathBuf> {
    util::segments(data)
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

fn sealed(data: &Path, seg: &Path) -> Option<SealRecord> {
    let rel = seg.strip_prefix(data.join("archive")).unwrap();
    SealRecord::load(&seal_path(&data.join("state"), rel)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_at_each_utc_hour_and_idle_ones_are_sealed_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(&config(dir.path(), ""), Arc::new(clock.clone()), Metrics::new()).unwrap();
    write(&store, &text_lines("ten", 10)).await;
    clock.set(T0 + 1_500); // 11:00:00.5
    write(&store, &text_lines("eleven", 10)).await;
    let files = segment_files(dir.path());
    assert_eq!(names(&files), ["live-2026-11-23T10-n1-00000000.log.zst", "live-2026-11-23T11-n1-00000001.log.zst"]);
    assert!(sealed(dir.path(), &files[0]).is_some(), "the 10:00 segment is sealed at rotation");
    assert!(sealed(dir.path(), &files[1]).is_none(), "the 11:00 segment is open");

    // No traffic at all across the next hour boundary: the open segment is still sealed.
    clock.set(T0 + HOUR + 2_000);
    let mut waited = Duration::ZERO;
    while sealed(dir.path(), &files[1]).is_none() {
        assert!(waited < Duration::from_secs(5), "idle segment not sealed after the hour");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let seal = sealed(dir.path(), &files[1]).unwrap();
    assert_eq!(
        (seal.first_seq, seal.next_seq, seal.records),
        (10, 20, 10),
        "record sequence continues across segments"
    );
    store.close().await;
    assert_eq!(util::zstdcat(dir.path()).iter().filter(|b| **b == b'\n').count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_at_segment_max_bytes_and_frames_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "commit_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"");
    let store = Store::open(&cfg, Arc::new(ManualClock::new(T0 - 1_000_000)), Metrics::new()).unwrap();
    let lines = noise_lines(7, 4096, 200); // ~800 KiB, incompressible
    for chunk in lines.chunks(64) {
        write(&store, chunk).await;
    }
    store.close().await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 10, "{} segments", files.len());
    let mut next_seq = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 64 << 10, "{} is {len} bytes, over segment_max_bytes", f.display());
        let seal = sealed(dir.path(), f).expect("every segment sealed after close");
        assert_eq!(seal.len, len);
        let mut r = SegmentReader::open(f).unwrap();
        loop {
            match r.next_frame().unwrap() {
                Step::Frame { header, .. } => {
                    assert_eq!(header.first_seq, next_seq, "sequence numbers are continuous");
                    next_seq = header.next_seq();
                }
                Step::End => break,
                Step::Bad { offset, error } => panic!("{}: {offset}: {error}", f.display()),
            }
        }
    }
    assert_eq!(next_seq, 4096);
    let mut want = Vec::new();
    for l in &lines {
        want.extend_from_slice(l);
        want.push(b'\n');
    }
    assert!(util::zstdcat(dir.path()) == want, "zstdcat over the segments gives back every line in order");
    util::assert_verify_ok(dir.path());
}

/// Write one segment per hour for `hours` hours (each sealed when the next begins).
async fn hourly_segments(store: &Store, clock: &ManualClock, hours: i64, lines_per: usize) {
    for h in 0..hours {
        clock.set(T0 + 1_000 + h * HOUR);
        write(store, &noise_lines(h as u64 + 1, lines_per, 200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_sealed_segments_older_than_max_age_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(
        &config(dir.path(), "[store.retention]\nmax_age = \"2h\""),
        Arc::new(clock.clone()),
        Metrics::new(),
    )
    .unwrap();
    hourly_segments(&store, &clock, 4, 10).await; // sealed at 12:00, 13:00, 14:00; 14:00 segment open
    let before = segment_files(dir.path());
    assert_eq!(before.len(), 4);
    clock.set(T0 + 1_000 + 4 * HOUR + 30 * 60_000); // 15:30: seals are 3.5h, 2.5h, 1.5h old
    let out = store.retention_pass(&NoHold).unwrap();
    assert_eq!(out.deleted.len(), 2, "{:?}", out.deleted);
    let after = segment_files(dir.path());
    assert_eq!(names(&after), names(&before[2..]));
    for gone in &before[..2] {
        assert!(sealed(dir.path(), gone).is_none(), "seal record removed with its segment");
    }
    assert!(!out.full);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_bytes_deletes_oldest_first_and_on_full_decides_for_undelivered_segments() {
    for on_full in ["reject", "drop_oldest"] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let cfg = config(dir.path(), &format!("[store.retention]\nmax_bytes = \"1MiB\"\non_full = \"{on_full}\""));
        let metrics = Metrics::new();
        let store = Store::open(&cfg, Arc::new(clock.clone()), metrics.clone()).unwrap();
        hourly_segments(&store, &clock, 5, 2000).await; // ~400 KiB per segment, ~2 MiB in all
        let before = segment_files(dir.path());
        let total: u64 = before.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert!(total > (1 << 20) + (300 << 10), "{total}");

        // An uplink still needs everything.
        let out = store.retention_pass(&HoldAll).unwrap();
        let h = store.stream("live").unwrap();
        if on_full == "reject" {
            assert!(out.deleted.is_empty(), "undelivered segments are kept with on_full = reject");
            assert!(out.full);
            assert_eq!(metrics.store.store_full.get(), 1);
            let refused = h.submit(batch(&text_lines("more", 1), 0)).await;
            assert!(matches!(refused, Err((Error::Full, _))), "the store pushes back on ingest");
        } else {
            assert!(!out.deleted.is_empty(), "drop_oldest deletes even undelivered segments");
            assert!(out.total_bytes <= 1 << 20);
            assert!(!out.full);
            assert!(
                metrics.store.retention_deleted_segments.with_label_values(&["undelivered"]).get() > 0,
                "and counts them"
            );
        }

        // Nothing held: oldest first until under max_bytes; the open segment stays.
        let out = store.retention_pass(&NoHold).unwrap();
        assert!(!out.full);
        assert!(out.total_bytes <= 1 << 20, "{}", out.total_bytes);
        let after = segment_files(dir.path());
        assert_eq!(names(&after), names(&before[before.len() - after.len()..]), "the newest are kept");
        assert!(after.iter().any(|f| sealed(dir.path(), f).is_none()), "the open segment is never deleted");
        h.submit(batch(&text_lines("accepted again", 1), 0)).await.map_err(|e| e.0).unwrap();
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_middle_of_a_segment_is_kept_counted_and_reported_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let store = Store::open(&cfg, Arc::new(ManualClock::new(T0 - 100_000)), Metrics::new()).unwrap();
    for i in 0..5 {
        write(&store, &text_lines(&format!("frame{i}"), 100)).await;
    }
    store.close().await;
    let seg = segment_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    // verify names the file and the offset of the damaged frame.
    let out = util::verify(dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains(&seg.display().to_string()) && text.contains("offset "), "{text}");
    assert!(text.contains("damaged frame"), "{text}");

    // Recovery of such a file (seal removed, as after a crash) keeps every byte.
    let rel = seg.strip_prefix(dir.path().join("archive")).unwrap().to_owned();
    std::fs::remove_file(seal_path(&dir.path().join("state"), &rel)).unwrap();
    let metrics = Metrics::new();
    let store = Store::open(&cfg, Arc::new(ManualClock::new(T0)), metrics.clone()).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64, "not truncated");
    assert_eq!(metrics.store.recovery_corrupt_segments.with_label_values(&["live"]).get(), 1);
    assert_eq!(metrics.store.recovery_truncated_bytes.with_label_values(&["live"]).get(), 0);
    store.close().await;
}

fn file_lens(files: &[PathBuf]) -> Vec<u64> {
    files.iter().map(|f| std::fs::metadata(f).unwrap().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_back_an_hour_never_names_a_segment_backwards_nor_reopens_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let clock = ManualClock::new(T0 + 30_000); // 11:00:29
    let store = Store::open(&cfg, Arc::new(clock.clone()), Metrics::new()).unwrap();
    write(&store, &text_lines("eleven", 10)).await;
    clock.set(T0 + 30_000 - HOUR); // back to 10:00:29
    write(&store, &text_lines("back at ten", 10)).await;
    let files = segment_files(dir.path());
    assert_eq!(names(&files), ["live-2026-11-23T11-n1-00000000.log.zst"], "no rotation back to 10:00");
    store.close().await;
    let sealed_lens = file_lens(&files);

    // A restart with the clock still an hour behind.
    let store = Store::open(&cfg, Arc::new(clock.clone()), Metrics::new()).unwrap();
    write(&store, &text_lines("restarted", 10)).await;
    store.close().await;
    let files = segment_files(dir.path());
    assert_eq!(
        names(&files),
        ["live-2026-11-23T11-n1-00000000.log.zst", "live-2026-11-23T11-n1-00000001.log.zst"],
        "the new segment keeps the newest hour and the next sequence number"
    );
    assert_eq!(file_lens(&files[..1]), sealed_lens, "the sealed segment was not reopened");
    let lines = util::archive_lines(dir.path());
    assert_eq!(lines.len(), 30);
    assert!(lines[10].starts_with("back at ten") && lines[20].starts_with("restarted"), "{lines:?}");
    util::assert_verify_ok(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_leaping_a_day_forward_makes_no_fresh_segment_look_expired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(dir.path(), "[store.retention]\nmax_age = \"6h\"");
    let store = Store::open(&cfg, Arc::new(clock.clone()), Metrics::new()).unwrap();
    for h in 0..3 {
        clock.advance(HOUR);
        write(&store, &text_lines(&format!("hour {h}"), 10)).await;
    }
    assert!(store.retention_pass(&NoHold).unwrap().deleted.is_empty());
    let before = segment_files(dir.path());
    assert_eq!(before.len(), 3);

    clock.set(T0 + 3 * HOUR + 24 * HOUR); // the wall clock leaps a day
    write(&store, &text_lines("after the leap", 10)).await;
    let after = segment_files(dir.path());
    assert_eq!(after.len(), 4, "rotated into the new day");
    assert!(names(&after)[3].contains("2026-11-24T"), "{:?}", names(&after));
    let out = store.retention_pass(&NoHold).unwrap();
    assert!(out.deleted.is_empty(), "a leap of the clock is not age: {:?}", out.deleted);

    // Time really passes: now the first two segments were sealed over 6 hours ago.
    clock.advance(6 * HOUR + 30 * 60_000);
    let out = store.retention_pass(&NoHold).unwrap();
    assert_eq!(out.deleted.len(), 2, "{:?}", out.deleted);
    store.close().await;
    util::assert_verify_ok(dir.path());
}
