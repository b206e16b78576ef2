//! `[[bucket]]`: central puts every sealed segment, its seal and the
//! tombstones into a real SeaweedFS over S3, read back with boto3.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::seaweed::Weed;
use util::world::*;
use util::*;

/// Every sealed segment of the selected sites under `data/archive`, by path
/// relative to `archive/`, with its bytes.
fn sealed_segments(data: &Path, sites: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let archive = data.join("archive");
    let mut out = BTreeMap::new();
    for p in segments(data) {
        let rel = p.strip_prefix(&archive).unwrap().to_string_lossy().into_owned();
        let seal = data.join("state/seals").join(format!("{rel}.seal"));
        if sites.iter().any(|s| rel.starts_with(&format!("{s}/"))) && seal.exists() {
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Stop both edges (their open segments are sealed on the way out and
/// their uplinks deliver them) so that every segment is sealed at central.
fn seal_everything(w: &mut World) {
    for (i, (edge, ..)) in w.edges.iter().enumerate() {
        let n = w.sent[i].load(std::sync::atomic::Ordering::SeqCst) as f64;
        edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(120), |v| v >= n);
    }
    for (edge, ..) in w.edges.iter_mut() {
        edge.stop();
    }
}

/// Wait until the bucket holds `want` segments uploaded or found there and
/// nothing is left to upload.
fn wait_uploaded(w: &World, bucket: &str, want: usize, limit: Duration) {
    let c = w.central();
    let t = Instant::now();
    loop {
        let m = c.metrics();
        let done = metric_value(&m, "ferry_bucket_segments_total", &[("bucket", bucket)])
            + metric_value(&m, "ferry_bucket_already_there_total", &[("bucket", bucket)]);
        let lag = metric_value(&m, "ferry_bucket_lag_segments", &[("bucket", bucket)]);
        if done as usize >= want && lag == 0.0 {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "bucket {bucket}: {done} of {want} segments after {limit:?} (lag {lag})\ncentral log:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until central holds, sealed, every segment the edges sealed;
/// returns (origin, mirror) by relative path.
type Segs = BTreeMap<String, Vec<u8>>;
fn mirror_complete(w: &World) -> (Segs, Segs) {
    let mut origin = BTreeMap::new();
    for (i, (_, edir, ..)) in w.edges.iter().enumerate() {
        origin.extend(sealed_segments(&edir.join("data"), &[&format!("edge{}", i + 1)]));
    }
    let t = Instant::now();
    loop {
        let m = sealed_segments(&central_data(w), &["edge1", "edge2"]);
        if m.len() >= origin.len() {
            return (origin, m);
        }
        assert!(t.elapsed() < Duration::from_secs(120), "central sealed {} of {} segments", m.len(), origin.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn central_data(w: &World) -> PathBuf {
    w.central_dir.join("data")
}

/// Two sites × two streams, 200,000 records: every sealed segment in the
/// bucket is byte-identical to the mirror and to its origin, with its seal
/// record beside it, and nothing of the site the bucket does not select.
#[test]
fn every_sealed_segment_of_two_sites_is_in_the_bucket_byte_identical_with_its_seal() {
    let name = "bucket-e2e";
    let dir = TestDir::new(name);
    let weed = Weed::start(&dir.path, "archive");
    let section = weed.ferry_section(&dir.path, "s3", "prefix = \"ferry/v1\"\nsites = [\"edge1\", \"edge2\"]");
    let mut w = World::start(name, &section, "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"");
    // Central's own site has records too; the bucket does not select it.
    ferry_send(&["--to", &format!("127.0.0.1:{}", w.central_ports.tcp)], b"<14>central own record\n");
    let sent = w.send_padded(50_000, "b", 100);
    assert_eq!(sent.len(), 200_000);
    seal_everything(&mut w);
    let (origin, mirror) = mirror_complete(&w);
    assert!(origin.len() >= 8, "{} segments: too few to mean anything", origin.len());
    let t = Instant::now();
    wait_uploaded(&w, "s3", mirror.len(), Duration::from_secs(180));
    let bytes: usize = mirror.values().map(Vec::len).sum();
    eprintln!("{} segments ({bytes} bytes) in the bucket {:?} after the last seal", mirror.len(), t.elapsed());

    let keys = weed.keys("ferry/v1/");
    let segs: Vec<&String> = keys.keys().filter(|k| k.ends_with(".log.zst")).collect();
    assert_eq!(segs.len(), mirror.len(), "one object per sealed segment: {keys:#?}");
    assert!(keys.keys().all(|k| !k.contains("/central/")), "a site the bucket does not select was uploaded");
    for (rel, bytes) in &mirror {
        let key = format!("ferry/v1/{rel}");
        assert_eq!(keys.get(&key), Some(&(bytes.len() as u64)), "{key}");
        let got = weed.get(&key);
        assert!(got == *bytes, "{key}: bucket bytes differ from the mirror");
        assert!(origin.get(rel) == Some(bytes), "{rel}: mirror differs from the origin");
        let seal = std::fs::read_to_string(central_data(&w).join("state/seals").join(format!("{rel}.seal"))).unwrap();
        assert_eq!(String::from_utf8(weed.get(&format!("{key}.seal"))).unwrap(), seal, "{key}.seal");
    }
    // Nothing left over: no staging objects, no open uploads.
    assert!(keys.keys().all(|k| !k.contains("/.ferry/")), "staging objects left: {keys:#?}");
    assert!(weed.open_uploads().is_empty());
    let c = w.central();
    assert_eq!(c.metric("ferry_bucket_conflicts_total", &[("bucket", "s3")]), 0.0);
    // Every record is in the bucket exactly once: decompressed with zstd.
    let mut lines: Vec<String> = Vec::new();
    for bytes in mirror.values() {
        let out = zstd_decompress(bytes);
        lines.extend(String::from_utf8(out).unwrap().lines().map(str::to_owned));
    }
    let mut want = sent.clone();
    want.sort();
    lines.sort();
    assert_eq!(lines.len(), want.len(), "records in the bucket");
    assert!(lines == want, "the bucket holds other records than were sent");
}

/// A key planted with other bytes before central uploads: a conflict,
/// counted and logged, the planted object untouched, the local copy kept
/// (not delivered), and every other segment uploaded.
#[test]
fn a_key_holding_other_bytes_is_a_conflict_never_overwritten() {
    let name = "bucket-conflict";
    let dir = TestDir::new(name);
    let weed = Weed::start(&dir.path, "archive");
    let mut w = World::start(name, "", "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"");
    w.send(5_000, "c");
    seal_everything(&mut w);
    let (_, mirror) = mirror_complete(&w);
    assert!(mirror.len() >= 4, "{} segments", mirror.len());
    let (victim, _) = mirror.iter().next().unwrap();
    let planted = b"not this segment".to_vec();
    weed.plant(victim, &planted);
    // Central restarted with the bucket.
    w.central_cfg.push_str(&weed.ferry_section(&dir.path, "s3", "sites = [\"edge1\", \"edge2\"]"));
    w.kill9_and_restart_central();
    let c = w.central();
    c.wait_metric("ferry_bucket_conflicts_total", &[("bucket", "s3")], Duration::from_secs(60), |v| v == 1.0);
    c.wait_metric("ferry_bucket_segments_total", &[("bucket", "s3")], Duration::from_secs(60), |v| {
        v as usize == mirror.len() - 1
    });
    assert_eq!(weed.get(victim), planted, "the planted object was overwritten");
    assert_eq!(c.metric("ferry_bucket_conflicted_segments", &[("bucket", "s3")]), 1.0);
    let log = c.log_text();
    assert!(log.contains("other bytes") && log.contains(victim.as_str()), "the conflict is named in the log:\n{log}");
    let delivered = std::fs::read_to_string(central_data(&w).join("state/buckets/s3.delivered")).unwrap();
    assert!(!delivered.contains(victim.as_str()), "a conflicted segment was marked delivered");
    assert!(central_data(&w).join("archive").join(victim).exists(), "the local copy of a conflicted segment is kept");
    // The seal of the conflicted segment is not put either.
    assert!(!weed.keys("").contains_key(&format!("{victim}.seal")));
}

fn zstd_decompress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new(require_tool("zstdcat"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "zstdcat on a bucket object");
    out.stdout
}
