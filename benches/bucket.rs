//! Upload throughput into object storage: a `ferry run` node with a
//! `[[bucket]]` puts an archive of sealed segments (2 GiB by default) into a
//! private SeaweedFS on loopback, from node start until the bucket confirmed
//! every segment; beside it boto3's `upload_file` puts the same files into
//! the same server with the same part size and concurrency. Wall time and
//! CPU seconds per GiB for both. See `benches/README.md`.
//!
//! `cargo bench --bench bucket` (needs the test command's tools: weed in
//! target/tools/bin, python3 with boto3). `FERRY_BENCH_BUCKET_MIB` sets the
//! total (2048), `FERRY_BENCH_SEGMENT_MIB` the segment size (128).
//!
//! The segments are one real segment of the e2e corpus repeated to the
//! segment size (whole frames, real zstd data), each with a seal record of
//! its length and SHA-256: the uploader reads them as it reads any sealed
//! segment; their records would not pass an audit (sequence numbers repeat),
//! which an upload never looks at.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest;

mod common;

use common::corpus::generate_corpus;
use common::util::seaweed;
use common::*;

fn main() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let total_mib = env("FERRY_BENCH_BUCKET_MIB", 2048);
    let seg_mib = env("FERRY_BENCH_SEGMENT_MIB", 128);
    let ferry = ferry_binary();
    println!(
        "ferry bucket bench: {total_mib} MiB in segments of {seg_mib} MiB, part 16 MiB, 4 parts in flight per segment"
    );
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let work = tempfile::Builder::new().prefix("ferry-bucket-bench-").tempdir().expect("temp dir");
    let seed = seed_segment(&ferry, work.path());
    let data = work.path().join("data");
    let files = fabricate(&seed, &data, total_mib, seg_mib);
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let weed = seaweed::Weed::start(work.path(), "bench");

    // SeaweedFS creates its volumes as the first writes come: whoever goes
    // first pays for that. A warm-up, so neither does.
    let warm = files.iter().take(4).map(|f| format!("{:?}", f.display().to_string())).collect::<Vec<_>>().join(", ");
    weed.py(&format!("for i, f in enumerate([{warm}]):\n    s3.upload_file(f, B, 'warmup/%d' % i)")).expect("warm-up");

    // ferry
    let admin = free_port();
    let cfg = work.path().join("bucket.toml");
    // One segment at a time: 4 parts in flight, as boto3's max_concurrency
    // (`FERRY_BENCH_IN_FLIGHT` for ferry's default, 2, or more).
    let in_flight = env("FERRY_BENCH_IN_FLIGHT", 1);
    let section =
        weed.ferry_section(work.path(), "s3", &format!("prefix = \"ferry\"\nsegments_in_flight = {in_flight}"));
    std::fs::write(&cfg, one_stream_node(&data, admin, free_port(), &section)).unwrap();
    let weed_cpu = || weed.pid().map_or(0.0, cpu_secs);
    let mut node = Node::start(&ferry, &cfg, &work.path().join("bucket.log"), admin);
    let t = Instant::now();
    let cpu0 = cpu_secs(node.pid);
    let wcpu0 = weed_cpu();
    loop {
        let m = http_get(admin, "/metrics").map(|(_, t)| t).unwrap_or_default();
        if metric_value(&m, "ferry_bucket_segments_total", &[("bucket", "s3")]) >= files.len() as f64 {
            break;
        }
        node.check_running("while uploading");
        assert!(t.elapsed() < Duration::from_secs(1800), "not uploaded in 30 min:\n{}", node.tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    let m = http_get(admin, "/metrics").map(|(_, t)| t).unwrap_or_default();
    for l in m.lines().filter(|l| l.starts_with("ferry_bucket_requests_total") && !l.ends_with(" 0")) {
        println!("  {l}");
    }
    let cpu = cpu_secs(node.pid) - cpu0;
    let wcpu = weed_cpu() - wcpu0;
    let rss = hwm_kib(node.pid);
    node.stop();
    println!(
        "ferry:  {:>8.1} MiB/s  {secs:>7.2} s  CPU {cpu:>6.2} s ({:.2} CPU s per GiB)  peak RSS {} MiB  SeaweedFS CPU {wcpu:.2} s",
        bytes as f64 / (1 << 20) as f64 / secs,
        cpu / gib,
        rss >> 10
    );

    // boto3, same files, same part size and concurrency.
    let list = work.path().join("files.txt");
    std::fs::write(&list, files.iter().map(|f| format!("{}\n", f.display())).collect::<String>()).unwrap();
    let script = format!(
        r#"
import time, resource
from boto3.s3.transfer import TransferConfig
cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=4, use_threads=True)
files = [l.strip() for l in open({list:?}) if l.strip()]
t = time.time()
extra = {{"ChecksumAlgorithm": "SHA256"}} if {{sha}} else None
for i, f in enumerate(files):
    s3.upload_file(f, B, "boto3{{sha}}/%d.log.zst" % i, Config=cfg, ExtraArgs=extra)
wall = time.time() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(wall, ru.ru_utime + ru.ru_stime)
"#,
        list = list.display().to_string()
    );
    // boto3 as it comes (a CRC32 trailer the server checks cheaply), then
    // asked for the SHA-256 checksum ferry sends: the like-for-like row.
    for (sha, what) in [("False", "boto3 (default, CRC32)"), ("True", "boto3 (SHA-256, as ferry)")] {
        let wcpu0 = weed_cpu();
        let out = weed.py(&script.replace("{sha}", sha)).expect("boto3 upload");
        let wcpu = weed_cpu() - wcpu0;
        let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let (bsecs, bcpu) = (v[0], v[1]);
        println!(
            "{what}:  {:>8.1} MiB/s  {bsecs:>7.2} s  CPU {bcpu:>6.2} s ({:.2} CPU s per GiB, interpreter start included)  SeaweedFS CPU {wcpu:.2} s",
            bytes as f64 / (1 << 20) as f64 / bsecs,
            bcpu / gib
        );
        println!("ferry / {what} throughput: {:.2}x", bsecs / secs);
    }

    if env("FERRY_BENCH_RANGE_MIB", 256) > 0 {
        range_read(&ferry, work.path(), &weed, &seed, env("FERRY_BENCH_RANGE_MIB", 256));
    }
    let mut weed = weed;
    if env("FERRY_BENCH_RSS_SECS", 60) > 0 {
        rss_with_bucket_down(&ferry, work.path(), &mut weed, env("FERRY_BENCH_RSS_SECS", 60));
    }
}

/// A node taking records as fast as a TCP sender gives them (the e2e
/// corpus, over and over) while its bucket is up for `secs`, down (SIGKILL)
/// for `secs`, then up again until it caught up: its resident set sampled
/// every 250 ms in each phase. The backlog is on disk; memory must not
/// follow it.
fn rss_with_bucket_down(ferry: &Path, work: &Path, weed: &mut seaweed::Weed, secs: u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = work.join("rss-data");
    let (admin, tcp) = (free_port(), free_port());
    let cfg = work.join("rss.toml");
    let section = weed.ferry_section(work, "s3", "prefix = \"rss\"\nkeep_local = \"256MiB\"");
    let extra = format!("[store]\nsegment_max_bytes = \"16MiB\"\n{section}");
    std::fs::write(&cfg, one_stream_node(&data, admin, tcp, &extra)).unwrap();
    let mut node = Node::start(ferry, &cfg, &work.join("rss.log"), admin);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let corpus = generate_corpus(200_000);
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                for chunk in corpus.chunks(1 << 20) {
                    if s.write_all(chunk).is_err() {
                        return;
                    }
                }
            }
        })
    };
    let metrics = || http_get(admin, "/metrics").map(|(_, t)| t).unwrap_or_default();
    let records = || metric_value(&metrics(), "ferry_committed_records_total", &[]);
    let phase = |node: &mut Node, name: &str, until: &dyn Fn(Duration) -> bool| {
        let (t, r0) = (Instant::now(), records());
        let (mut max, mut sum, mut n) = (0u64, 0u64, 0u64);
        while !until(t.elapsed()) {
            node.check_running(name);
            let r = rss_kib(node.pid);
            (max, sum, n) = (max.max(r), sum + r, n + 1);
            std::thread::sleep(Duration::from_millis(250));
        }
        let m = metrics();
        println!(
            "rss: {name:<26} {:>6.1} s  {:>9.0} records/s  RSS mean {:>4} MiB, max {:>4} MiB  bucket lag {} segments ({} MiB)",
            t.elapsed().as_secs_f64(),
            (records() - r0) / t.elapsed().as_secs_f64(),
            (sum / n.max(1)) >> 10,
            max >> 10,
            metric_value(&m, "ferry_bucket_lag_segments", &[("bucket", "s3")]),
            metric_value(&m, "ferry_bucket_lag_bytes", &[("bucket", "s3")]) as u64 >> 20,
        );
        max
    };
    let d = Duration::from_secs(secs);
    let up = phase(&mut node, "bucket up", &|e| e >= d);
    weed.kill9();
    let down = phase(&mut node, "bucket down (SIGKILL)", &|e| e >= d);
    weed.boot();
    let lag = || metric_value(&metrics(), "ferry_bucket_lag_segments", &[("bucket", "s3")]);
    let back =
        phase(&mut node, "bucket back, catching up", &|e| e >= Duration::from_secs(5) && (lag() <= 1.0 || e >= 4 * d));
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    node.stop();
    println!(
        "rss: max with the bucket down {} MiB vs up {} MiB ({:+} MiB), catching up {} MiB",
        down >> 10,
        up >> 10,
        (down as i64 - up as i64) >> 10,
        back >> 10
    );
}

/// `ferry cat s3://… --from/--to` of a 5-minute window in the middle of a
/// 1-hour segment of `mib` MiB (receive times spread evenly over the hour,
/// as a steady site writes them): bytes fetched and wall time, against
/// downloading the object whole (boto3, in-process, to /dev/null).
fn range_read(ferry: &Path, work: &Path, weed: &seaweed::Weed, seed: &Path, mib: u64) {
    use ferry::store::reader::{SegmentReader, Step};
    let mut frames = Vec::new();
    let mut r = SegmentReader::open(seed).unwrap();
    while let Step::Frame { header, .. } = r.next_frame().unwrap() {
        frames.push((header, r.data().to_vec()));
    }
    let t0: i64 = 1_764_583_200_000; // 2025-12-01T10:00Z
    let hour = 3_600_000i64;
    let total = mib << 20;
    let (mut body, mut seq) = (Vec::with_capacity(total as usize + (1 << 20)), 0u64);
    let mut window_bytes = 0u64;
    let (from, to) = (t0 + hour / 2, t0 + hour / 2 + 300_000);
    for (h, data) in frames.iter().cycle() {
        if body.len() as u64 >= total {
            break;
        }
        let mut h = h.clone();
        let at = t0 + (body.len() as u128 * hour as u128 / total as u128) as i64;
        (h.first_seq, h.first_ms, h.last_ms) = (seq, at, at + 99);
        seq += u64::from(h.records);
        let before = body.len();
        h.encode_into(&mut body);
        body.extend_from_slice(data);
        if h.last_ms >= from && h.first_ms < to {
            window_bytes += (body.len() - before) as u64;
        }
    }
    let sha: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let data = work.join("range-data");
    let rel = "sg1/live/2025-12-01/live-2025-12-01T10-relay-1-00000000.log.zst";
    let seal = format!(
        "len={}\nsha256={sha}\nframes=0\nrecords={seq}\nfirst_seq=0\nnext_seq={seq}\nsealed_ms={}\n",
        body.len(),
        t0 + hour
    );
    put_sealed(&data, rel, &body, &seal);
    let admin = free_port();
    let cfg = work.join("range.toml");
    let section = weed.ferry_section(work, "s3", "prefix = \"range\"");
    std::fs::write(&cfg, one_stream_node(&data, admin, free_port(), &section)).unwrap();
    let mut node = Node::start(ferry, &cfg, &work.join("range.log"), admin);
    let t = Instant::now();
    while metric_value(
        &http_get(admin, "/metrics").map(|(_, t)| t).unwrap_or_default(),
        "ferry_bucket_segments_total",
        &[("bucket", "s3")],
    ) < 1.0
    {
        node.check_running("while uploading the range segment");
        assert!(t.elapsed() < Duration::from_secs(600), "not uploaded:\n{}", node.tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    node.stop();
    let fmt = |ms: i64| {
        let s = ms / 1000 - t0 / 1000;
        format!("2025-12-01T{:02}:{:02}:{:02}Z", 10 + s / 3600, s / 60 % 60, s % 60)
    };
    let url = format!("s3://{}/range", weed.bucket);
    let idx = weed.get(&format!("range/{rel}.idx"));
    let idx = String::from_utf8_lossy(&idx);
    let avg = frames.iter().map(|(h, _)| h.frame_len()).sum::<u64>() / frames.len().max(1) as u64;
    println!(
        "range segment: {} frames of {} KiB on average, {} index blocks",
        seq / frames.iter().map(|(h, _)| u64::from(h.records)).sum::<u64>().max(1) * frames.len() as u64,
        avg >> 10,
        idx.lines().count() - 1
    );
    if std::env::var("FERRY_BENCH_SHOW_INDEX").is_ok() {
        println!("{idx}");
    }
    if let Ok(secs) = std::env::var("FERRY_BENCH_RANGE_HOLD") {
        // To look at the read with other tools: the bucket stays up a while.
        println!(
            "holding {secs} s: {} cat {url} --config {} --raw --stats --from {} --to {}",
            ferry.display(),
            cfg.display(),
            fmt(from),
            fmt(to)
        );
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(300)));
    }
    let mut times = Vec::new();
    let mut fetched = 0u64;
    let mut waited = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new(ferry)
            .args(["cat", &url, "--config"])
            .arg(&cfg)
            .args(["--raw", "--stats", "--from", &fmt(from), "--to", &fmt(to)])
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        times.push(t.elapsed().as_secs_f64());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ferry cat: {err}");
        if std::env::var("FERRY_BENCH_SHOW_INDEX").is_ok() {
            eprintln!("{err}");
        }
        let line = err.lines().find(|l| l.starts_with("fetched ")).expect("--stats prints what was fetched");
        fetched = line["fetched ".len()..].split(' ').next().unwrap().parse().unwrap();
        let w: f64 = line.rsplit_once('(').unwrap().1.split(' ').next().unwrap().parse().unwrap();
        waited.push(w);
    }
    let script = format!(
        r#"
import time
best = None
for _ in range(3):
    t = time.time()
    s3.download_file(B, "range/{rel}", "/dev/null")
    d = time.time() - t
    best = d if best is None or d < best else best
print(best)
"#
    );
    let whole: f64 = weed.py(&script).expect("boto3 download").trim().parse().unwrap();
    let best = times.iter().cloned().fold(f64::MAX, f64::min);
    let wait = waited.iter().cloned().fold(f64::MAX, f64::min);
    let len = body.len() as u64;
    println!(
        "range: 5 min of a 1 h {} MiB segment: fetched {:.1} MiB = {:.1}% of the object (the window's own frames are {:.1} MiB = {:.1}%), \
         ferry cat {best:.3} s (best of 3, output to /dev/null; {wait:.3} s of it waiting for GETs) vs whole download {whole:.3} s \
         (boto3, best of 3): {:.2}x in all, {:.2}x of the transfer",
        len >> 20,
        fetched as f64 / (1 << 20) as f64,
        100.0 * fetched as f64 / len as f64,
        window_bytes as f64 / (1 << 20) as f64,
        100.0 * window_bytes as f64 / len as f64,
        best / whole,
        wait / whole
    );
    // Without ferry, the window's records come from the whole object
    // decompressed: zstdcat of the local copy, best of 3, beside the download.
    let local = data.join("archive").join(rel);
    let zcat = (0..3)
        .map(|_| {
            let t = Instant::now();
            let st = std::process::Command::new("zstdcat")
                .arg(&local)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("zstdcat");
            assert!(st.success());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    println!(
        "range: download + zstdcat of the whole object {:.3} s (zstdcat alone {zcat:.3} s): ferry cat is {:.2}x of it",
        whole + zcat,
        best / (whole + zcat)
    );
}

/// One real sealed segment of the e2e corpus (the largest the ingest made).
fn seed_segment(ferry: &Path, work: &Path) -> PathBuf {
    let records = 400_000;
    let data = build_archive(ferry, work, &generate_corpus(records), records);
    walkdir::WalkDir::new(data.join("archive"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a segment")
        .into_path()
}

/// Segments of about `seg_mib` made of the seed repeated, `total_mib` in
/// all, with their seal records, under `data`.
fn fabricate(seed: &Path, data: &Path, total_mib: u64, seg_mib: u64) -> Vec<PathBuf> {
    let one = std::fs::read(seed).unwrap();
    let reps = ((seg_mib << 20) as usize).div_ceil(one.len()).max(1);
    let body: Vec<u8> = one.iter().copied().cycle().take(one.len() * reps).collect();
    let sha: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let n = ((total_mib << 20) as usize).div_ceil(body.len());
    let date = "2026-12-01";
    let mut out = Vec::new();
    for i in 0..n {
        let rel = format!("sg1/live/{date}/live-{date}T10-relay-1-{i:08}.log.zst");
        let seal = format!(
            "len={}\nsha256={sha}\nframes=1\nrecords=1\nfirst_seq={i}\nnext_seq={}\nsealed_ms=1764583200000\n",
            body.len(),
            i + 1
        );
        let path = put_sealed(data, &rel, &body, &seal);
        out.push(path);
    }
    out
}

/// A sealed segment under `data/archive/<rel>` with its seal record; its path.
fn put_sealed(data: &Path, rel: &str, body: &[u8], seal: &str) -> PathBuf {
    let path = data.join("archive").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    let seal_path = data.join("state/seals").join(format!("{rel}.seal"));
    std::fs::create_dir_all(seal_path.parent().unwrap()).unwrap();
    std::fs::write(&seal_path, seal).unwrap();
    path
}
