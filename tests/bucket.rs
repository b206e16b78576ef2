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

    read_back_from_the_bucket(&w, &weed, &mirror);
}

fn ferry_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(FERRY).args(args).output().unwrap()
}

/// `ferry verify`, `ferry audit` and `ferry cat --from/--to` of the bucket
/// alone (its listing, seals, indexes, ranged GETs) say what they say of
/// central's mirror, and a time range fetches only part of the bucket.
fn read_back_from_the_bucket(w: &World, weed: &Weed, mirror: &Segs) {
    let cfg = w.central_dir.join("ferry.toml");
    let cfg = cfg.to_str().unwrap();
    let url = format!("s3://{}/ferry/v1", weed.bucket);
    let local = central_data(w);
    let local = local.to_str().unwrap();
    let sites = ["--site", "edge1", "--site", "edge2"];
    let keys = weed.keys("ferry/v1/");
    for rel in mirror.keys() {
        assert!(keys.contains_key(&format!("ferry/v1/{rel}.idx")), "{rel}: no time index beside it");
    }
    let total: u64 = mirror.values().map(|b| b.len() as u64).sum();

    let v = ferry_cli(&["verify", &url, "--config", cfg]);
    let text = String::from_utf8_lossy(&v.stdout);
    let n = mirror.len();
    assert!(v.status.success(), "verify {url}: {text}{}", String::from_utf8_lossy(&v.stderr));
    assert!(text.contains(&format!("verified {n} segment(s) ({n} sealed)")), "{text}");
    assert!(text.contains(": 0 problem(s)"), "{text}");

    let audit = |at: &str| {
        let o = ferry_cli(&[&["audit", at, "--config", cfg][..], &sites[..]].concat());
        (o.status.code(), String::from_utf8(o.stdout).unwrap(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, from_bucket, err) = audit(&url);
    assert_eq!(code, Some(0), "audit {url}:\n{from_bucket}{err}");
    assert!(from_bucket.contains("no gaps"), "{from_bucket}");
    let (_, from_mirror, _) = audit(local);
    assert_eq!(from_bucket, from_mirror, "the bucket's audit differs from the mirror's");

    // The middle third of the receive times.
    let all = ferry_cli(&[&["cat", local, "--json"][..], &sites[..]].concat());
    let times: Vec<i64> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["first_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(times.len(), 200_000);
    let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let (from, to) = (rfc3339(lo + (hi - lo) / 3), rfc3339(lo + 2 * (hi - lo) / 3));
    let cat = |at: &str| {
        let o = ferry_cli(
            &[&["cat", at, "--config", cfg, "--json", "--stats", "--from", &from, "--to", &to][..], &sites[..]]
                .concat(),
        );
        assert!(o.status.success(), "cat {at}: {}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
    };
    let (bucket_records, stats) = cat(&url);
    let (mirror_records, _) = cat(local);
    let got = bucket_records.lines().count();
    assert!(got > 0 && got < 200_000, "{got} records from {from} to {to}");
    assert!(bucket_records == mirror_records, "cat {url} --from {from} --to {to} differs from the mirror's");
    let fetched: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("fetched ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no fetched bytes in {stats}"));
    eprintln!("cat {from}..{to}: {got} records, fetched {fetched} of {total} bytes\n{stats}");
    assert!(fetched < total * 4 / 5, "a third of the time fetched {fetched} of {total} bytes");

    // Interleaved by receive time (`--merge`), the bucket reads as the mirror does.
    let merged = |at: &str| {
        let o = ferry_cli(
            &[&["cat", at, "--config", cfg, "--merge", "--raw", "--from", &from, "--to", &to][..], &sites[..]].concat(),
        );
        assert!(o.status.success(), "cat --merge {at}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let (from_bucket, from_mirror) = (merged(&url), merged(local));
    assert_eq!(from_bucket.iter().filter(|b| **b == b'\n').count(), got, "cat --merge of {url}: every record");
    assert!(from_bucket == from_mirror, "cat --merge of {url} differs from the mirror's");

    // grep of the bucket, on every core, finds what grep of the mirror finds.
    let grep = |at: &str| {
        let o = ferry_cli(
            &[&["grep", "99", at, "--config", cfg, "--json", "--from", &from, "--to", &to][..], &sites[..]].concat(),
        );
        assert!(o.status.success(), "grep {at}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (in_bucket, in_mirror) = (grep(&url), grep(local));
    assert!(in_bucket.lines().count() > 0, "grep found nothing");
    assert!(in_bucket == in_mirror, "grep of {url} differs from grep of the mirror");
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
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

/// One node with a bucket: what it archives itself (site `test`) is what
/// it uploads. `store` and `bucket` are extra keys of each section.
fn lone_node(dir: &TestDir, weed: &Weed, store: &str, bucket: &str) -> (Node, Ports, String) {
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let section = weed.ferry_section(&dir.path, "s3", bucket);
    let cfg = node_config(dir, &ports, store, "max_record_bytes = \"64KiB\"", &section);
    (Node::start(dir, &cfg, ports.admin), ports, cfg)
}

/// `n` records of `size` bytes of incompressible text into the node.
/// Send `n` noisy records and wait until `node` committed them (TCP syslog
/// has no acknowledgement: a stop right after the send could beat them).
fn send_noise(node: &Node, ports: &Ports, n: usize, size: usize, seed: u64) {
    let before = node.metric("ferry_committed_records_total", &[]);
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("<14>noise {i:06} {}\n", noise(seed + i as u64, size)));
    }
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], input.as_bytes());
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(60), |v| v >= before + n as f64);
}

/// Sealed segments of the lone node, by relative path.
fn lone_sealed(dir: &TestDir) -> Segs {
    sealed_segments(&dir.join("data"), &["test"])
}

/// The bucket server killed (SIGKILL) for 30 s while central uploads and
/// both edges keep sending: lag grows and shows, the bucket is reported
/// down, nothing local is deleted; after it returns every sealed segment
/// arrives once, byte-identical, with its seal.
#[test]
fn bucket_killed_for_30s_lag_shows_and_everything_arrives_once_after() {
    let name = "bucket-outage";
    let dir = TestDir::new(name);
    let mut weed = Weed::start(&dir.path, "archive");
    let section = weed.ferry_section(&dir.path, "s3", "backoff_max = \"2s\"\nsites = [\"edge1\", \"edge2\"]");
    let mut w = World::start(name, &section, "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"");
    let mut sent = w.send_padded(10_000, "before", 300);
    w.central().wait_metric("ferry_bucket_segments_total", &[("bucket", "s3")], Duration::from_secs(60), |v| v >= 2.0);
    weed.kill9();
    let down = Instant::now();
    sent.extend(w.send_padded(10_000, "during", 300));
    let c = w.central();
    c.wait_metric("ferry_bucket_lag_segments", &[("bucket", "s3")], Duration::from_secs(25), |v| v >= 2.0);
    c.wait_metric("ferry_bucket_up", &[("bucket", "s3")], Duration::from_secs(25), |v| v == 0.0);
    let lag_before = c.metric("ferry_bucket_lag_segments", &[("bucket", "s3")]);
    let status = http_get(w.central_ports.admin, "/status").unwrap().1;
    assert!(status.contains("buckets") && status.contains(" NO "), "the bucket shows as down:\n{status}");
    let local_during = sealed_segments(&central_data(&w), &["edge1", "edge2"]).len();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let c = w.central();
    assert!(c.metric("ferry_bucket_lag_seconds", &[("bucket", "s3")]) > 0.0, "lag in seconds shows");
    assert!(c.metric("ferry_bucket_lag_bytes", &[("bucket", "s3")]) > 0.0, "lag in bytes shows");
    let errors = metric_value(&c.metrics(), "ferry_bucket_errors_total", &[("bucket", "s3")]);
    // Backoff to 2 s over 30 s: a few attempts, never a spin.
    let attempts = metric_value(&c.metrics(), "ferry_bucket_requests_total", &[("bucket", "s3")]);
    eprintln!(
        "bucket down {:?}: {errors} errors, {attempts} requests in all, lag {lag_before} segments",
        down.elapsed()
    );
    assert!(errors >= 3.0, "errors counted while the bucket is down: {errors}");
    assert!(errors <= 40.0, "a retry storm: {errors} failed attempts in 30 s");
    let local_after = sealed_segments(&central_data(&w), &["edge1", "edge2"]).len();
    assert!(local_after >= local_during, "a segment not in the bucket was deleted locally");
    weed.boot();
    seal_everything(&mut w);
    let (_, mirror) = mirror_complete(&w);
    wait_uploaded(&w, "s3", mirror.len(), Duration::from_secs(120));
    let keys = weed.keys("");
    let objects: Vec<&String> = keys.keys().filter(|k| k.ends_with(".log.zst")).collect();
    assert_eq!(objects.len(), mirror.len(), "one object per segment");
    for (rel, bytes) in &mirror {
        assert!(weed.get(rel) == *bytes, "{rel}: differs in the bucket");
        assert!(keys.contains_key(&format!("{rel}.seal")), "{rel}.seal");
    }
    let mut lines: Vec<String> = Vec::new();
    for bytes in mirror.values() {
        lines.extend(String::from_utf8(zstd_decompress(bytes)).unwrap().lines().map(str::to_owned));
    }
    lines.sort();
    sent.sort();
    assert!(lines == sent, "{} records in the bucket for {} sent", lines.len(), sent.len());
    assert_eq!(w.central().metric("ferry_bucket_up", &[("bucket", "s3")]), 1.0);
}

/// A lone node (multipart above 5 MiB, 5 MiB parts, one at a time, 2 MiB/s)
/// stopped with one sealed segment of over 8 MiB that it has not uploaded
/// (the uploader stops with the node before it gets far): every sealed
/// segment, that one's path and bytes, the ports and config to start it.
fn one_large_segment(dir: &TestDir, weed: &Weed, seed: u64) -> (Segs, String, Vec<u8>, Ports, String) {
    let bucket = "multipart_above = \"5MiB\"\npart_size = \"5MiB\"\nconcurrency = 1\nmax_rate = \"2MiB/s\"";
    let (mut node, ports, cfg) = lone_node(dir, weed, "segment_max_bytes = \"64MiB\"", bucket);
    send_noise(&node, &ports, 20 * 1024, 1024, seed);
    node.stop();
    let segs = lone_sealed(dir);
    let sizes: Vec<usize> = segs.values().map(Vec::len).collect();
    let (rel, bytes) =
        segs.iter().find(|(_, b)| b.len() > 8 << 20).unwrap_or_else(|| panic!("no segment over 8 MiB: {sizes:?}"));
    let (rel, bytes) = (rel.clone(), bytes.clone());
    (segs, rel, bytes, ports, cfg)
}

/// kill -9 of the uploading node in the middle of a multipart upload (a
/// 12 MiB segment, 5 MiB parts, capped at 2 MiB/s): after the restart
/// the object is there once, complete and equal to the segment, and no
/// multipart upload is left open in the bucket.
#[test]
fn kill9_in_a_multipart_upload_leaves_one_whole_object_and_no_open_upload() {
    let dir = TestDir::new("bucket-multipart-kill");
    let weed = Weed::start(&dir.path, "archive");
    let (segs, rel, bytes, ports, cfg) = one_large_segment(&dir, &weed, 1);
    let mut node = Node::start(&dir, &cfg, ports.admin);
    let parts = &[("bucket", "s3"), ("op", "put_part")];
    node.wait_metric("ferry_bucket_requests_total", parts, Duration::from_secs(30), |v| v >= 2.0);
    node.kill9();
    let open = weed.open_uploads();
    assert!(!open.is_empty(), "the kill came after the upload was done: nothing was interrupted");
    let node = Node::start(&dir, &cfg, ports.admin);
    node.wait_metric("ferry_bucket_segments_total", &[("bucket", "s3")], Duration::from_secs(60), |v| {
        v as usize >= segs.len()
    });
    assert!(weed.open_uploads().is_empty(), "multipart uploads left open: {:?}", weed.open_uploads());
    assert!(node.metric("ferry_bucket_aborted_uploads_total", &[("bucket", "s3")]) >= 1.0);
    let keys = weed.keys("");
    assert_eq!(keys.get(rel.as_str()), Some(&(bytes.len() as u64)));
    assert!(weed.get(&rel) == bytes, "the object differs from the segment");
    assert!(keys.keys().all(|k| !k.contains(".ferry/")), "staging objects left: {keys:#?}");
    assert!(node.log_text().contains("aborted the multipart uploads a previous run left open"));
}

/// Another writer puts the key while this node's parts are going up: the
/// create-only completion is refused (412), the upload aborted, the key
/// compared: a conflict, the other object untouched, nothing left open.
#[test]
fn a_key_put_during_a_multipart_upload_is_never_overwritten_by_its_completion() {
    let dir = TestDir::new("bucket-multipart-race");
    let weed = Weed::start(&dir.path, "archive");
    let (_, rel, bytes, ports, cfg) = one_large_segment(&dir, &weed, 2);
    let node = Node::start(&dir, &cfg, ports.admin);
    let parts = &[("bucket", "s3"), ("op", "put_part")];
    node.wait_metric("ferry_bucket_requests_total", parts, Duration::from_secs(30), |v| v >= 1.0);
    assert!(!weed.open_uploads().is_empty(), "the upload was over before the key was planted");
    let planted = b"another writer's object".to_vec();
    weed.plant(&rel, &planted);
    node.wait_metric("ferry_bucket_conflicts_total", &[("bucket", "s3")], Duration::from_secs(60), |v| v == 1.0);
    assert_eq!(weed.get(&rel), planted, "the completion overwrote the key");
    assert_ne!(planted, bytes);
    assert!(weed.open_uploads().is_empty(), "multipart uploads left open: {:?}", weed.open_uploads());
    assert!(node.metric("ferry_bucket_aborted_uploads_total", &[("bucket", "s3")]) >= 1.0);
    let done = &[("bucket", "s3"), ("op", "complete_multipart")];
    assert!(node.metric("ferry_bucket_requests_total", done) >= 1.0, "no completion was tried");
    let delivered = std::fs::read_to_string(dir.join("data/state/buckets/s3.delivered")).unwrap_or_default();
    assert!(!delivered.contains(rel.as_str()), "a conflicted segment was marked delivered");
}

/// Wrong credentials: every attempt refused, counted as `auth`, named in
/// the log and in `ferry status`, retried with backoff (no storm), and
/// nothing marked delivered.
#[test]
fn wrong_credentials_are_refused_named_and_retried_without_a_storm() {
    let name = "bucket-auth";
    let dir = TestDir::new(name);
    let weed = Weed::start(&dir.path, "archive");
    // A secret that is not the bucket's, from the first start on.
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let section = weed.ferry_section(&dir.path, "s3", "backoff_min = \"500ms\"\nbackoff_max = \"8s\"");
    std::fs::write(
        dir.path.join("s3.credentials"),
        format!("[default]\naws_access_key_id = {}\naws_secret_access_key = wrong\n", util::seaweed::ACCESS_KEY),
    )
    .unwrap();
    let cfg = node_config(&dir, &ports, "", "", &section);
    let mut node = Node::start(&dir, &cfg, ports.admin);
    send_noise(&node, &ports, 100, 100, 7);
    // Stopped and started again: the segment is sealed, the uploader tries.
    node.stop();
    let node = Node::start(&dir, &cfg, ports.admin);
    let t = Instant::now();
    node.wait_metric(
        "ferry_bucket_errors_total",
        &[("bucket", "s3"), ("reason", "auth")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    std::thread::sleep(Duration::from_secs(20).saturating_sub(t.elapsed()));
    let m = node.metrics();
    let requests = metric_value(&m, "ferry_bucket_requests_total", &[("bucket", "s3")]);
    let auth = metric_value(&m, "ferry_bucket_errors_total", &[("bucket", "s3"), ("reason", "auth")]);
    eprintln!("wrong credentials for 20 s: {requests} requests, {auth} refused");
    // 0.5 s doubling to 8 s: attempts at about 0, 0.5, 1.5, 3.5, 7.5, 15.5 s.
    assert!(requests <= 10.0, "a retry storm: {requests} requests in 20 s");
    assert!(auth >= 3.0, "retried: {auth}");
    assert_eq!(metric_value(&m, "ferry_bucket_segments_total", &[("bucket", "s3")]), 0.0);
    let log = node.log_text();
    assert!(log.contains("bucket upload failed") && log.contains("reason=\"auth\""), "named in the log:\n{log}");
    let status = http_get(ports.admin, "/status").unwrap().1;
    assert!(status.contains("auth=") && status.contains(" NO "), "named in the status:\n{status}");
    assert!(weed.keys("").keys().all(|k| !k.ends_with(".log.zst")), "uploaded with a wrong secret?");
}

/// `keep_local` on a small real disk: central's data_dir is a 24 MiB tmpfs,
/// `max_bytes` 6 MiB with `on_full = "reject"`. With the bucket up central
/// keeps taking far more than its disk because uploaded copies are deleted;
/// with the bucket down it refuses the edges' bytes (they keep them, the
/// link says `no_space`) instead of deleting anything not uploaded, and
/// never runs its disk out; back up, everything the edges sealed arrives.
#[test]
fn keep_local_on_a_small_disk_deletes_only_what_the_bucket_confirmed() {
    let name = "bucket-keep-local";
    let dir = TestDir::new(name);
    let mut weed = Weed::start(&dir.path, "archive");
    let section = weed.ferry_section(&dir.path, "s3", "keep_local = \"2MiB\"\nbackoff_max = \"1s\"");
    let store = "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"\n\n[store.retention]\nmax_bytes = \"6MiB\"\n\
                 on_full = \"reject\"\ncheck_interval = \"200ms\"";
    let w = World::start_with_disk(name, &section, store, Some("24m"));
    let disk = w.central_disk.as_ref().unwrap().path.clone();
    let free = || ferry::store::fs::Fs::real().space(&disk).unwrap().free_bytes;
    let deleted =
        |w: &World, reason: &str| w.central().metric("ferry_retention_deleted_segments_total", &[("reason", reason)]);
    let edges_delivered = |w: &World| {
        for (i, (edge, ..)) in w.edges.iter().enumerate() {
            let n = w.sent[i].load(std::sync::atomic::Ordering::SeqCst) as f64;
            edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(120), |v| v >= n);
            edge.wait_metric("ferry_uplink_lag_bytes", &[], Duration::from_secs(120), |v| v == 0.0);
        }
    };
    // 1. Bucket up: everything is taken, uploaded copies are deleted here.
    w.send_padded(40_000, "up", 300);
    edges_delivered(&w);
    let c = w.central();
    c.wait_metric("ferry_bucket_lag_segments", &[("bucket", "s3")], Duration::from_secs(60), |v| v == 0.0);
    c.wait_metric("ferry_archive_bytes", &[], Duration::from_secs(30), |v| v <= (6 << 20) as f64);
    let uploaded = c.metric("ferry_bucket_segments_total", &[("bucket", "s3")]);
    let received = c.metric("ferry_link_received_bytes_total", &[]);
    eprintln!(
        "bucket up: {received} bytes received, {uploaded} segments uploaded, {} deleted as offloaded",
        deleted(&w, "offloaded")
    );
    assert!(received > (24 << 20) as f64, "central took more than its 24 MiB disk: {received} bytes");
    assert!(deleted(&w, "offloaded") >= 10.0, "uploaded copies deleted to make room");
    assert_eq!(c.metric("ferry_store_full", &[]), 0.0);
    // Every sealed segment still here is either in the bucket or the newest.
    let keys = weed.keys("");
    let here = sealed_segments(&central_data(&w), &["edge1", "edge2"]);
    assert!(here.keys().all(|r| keys.contains_key(r)), "a sealed segment is here and not in the bucket");

    // 2. Bucket down: nothing not uploaded is deleted; central is full and
    // refuses the edges' bytes, which they keep.
    weed.kill9();
    let offloaded_before = deleted(&w, "offloaded");
    w.send_padded(25_000, "down", 300);
    let c = w.central();
    c.wait_metric("ferry_store_full", &[], Duration::from_secs(60), |v| v == 1.0);
    c.wait_metric("ferry_mirror_errors_total", &[("trouble", "archive_full")], Duration::from_secs(60), |v| v > 0.0);
    std::thread::sleep(Duration::from_secs(2));
    let kept_at_edges: f64 = w.edges.iter().map(|(e, ..)| e.metric("ferry_uplink_lag_bytes", &[])).sum();
    let here = sealed_segments(&central_data(&w), &["edge1", "edge2"]);
    let not_up: Vec<&String> = here.keys().filter(|r| !keys.contains_key(*r)).collect();
    eprintln!(
        "bucket down: {} segments kept here not uploaded, {kept_at_edges} bytes kept at the edges, {} bytes free",
        not_up.len(),
        free()
    );
    assert!(not_up.len() >= 2, "segments sealed while the bucket was down are kept: {}", not_up.len());
    assert!(deleted(&w, "offloaded") - offloaded_before <= 2.0, "only copies uploaded before the outage may go");
    assert_eq!(deleted(&w, "undelivered"), 0.0, "a segment not in the bucket was deleted");
    assert!(!central_data(&w).join("state/gone").exists(), "tombstones: something was deleted undelivered");
    assert_eq!(c.metric("ferry_mirror_errors_total", &[("trouble", "disk_full")]), 0.0, "the disk itself ran out");
    assert!(free() > 2 << 20, "central's disk kept room: {} bytes free", free());

    // 3. Back up: uploaded, freed, and the edges' backlog taken.
    weed.boot();
    edges_delivered(&w);
    let c = w.central();
    c.wait_metric("ferry_bucket_lag_segments", &[("bucket", "s3")], Duration::from_secs(90), |v| v == 0.0);
    c.wait_metric("ferry_store_full", &[], Duration::from_secs(30), |v| v == 0.0);
    c.wait_metric("ferry_archive_bytes", &[], Duration::from_secs(30), |v| v <= (6 << 20) as f64);
    let keys = weed.keys("");
    assert!(not_up.iter().all(|r| keys.contains_key(*r)), "every segment kept during the outage is uploaded");
    let mut origin = BTreeMap::new();
    for (i, (_, edir, ..)) in w.edges.iter().enumerate() {
        origin.extend(sealed_segments(&edir.join("data"), &[&format!("edge{}", i + 1)]));
    }
    let missing: Vec<&String> = origin.keys().filter(|r| !keys.contains_key(*r)).collect();
    assert!(missing.is_empty(), "sealed at an edge, not in the bucket: {missing:?}");
    assert_eq!(c.metric("ferry_mirror_errors_total", &[("trouble", "disk_full")]), 0.0, "the disk itself ran out");
}

/// Two central nodes (c1, c2) mirror the same edge (one uplink to each)
/// and upload into one bucket at once: one object per segment, each
/// written by exactly one of them (the other finds it there), zero
/// conflicts, and both delivered lists complete.
#[test]
fn two_centrals_uploading_the_same_site_give_one_object_per_segment() {
    use util::link::Pki;
    let name = "bucket-two-centrals";
    let dir = TestDir::new(name);
    let weed = Weed::start(&dir.path, "archive");
    let pki = Pki::new(&dir, "pki");
    pki.issue("central", "c2", "central2", &["--ip", "127.0.0.1"]);
    let mut centrals = Vec::new();
    let mut links = Vec::new();
    for (node, certs) in [("c1", "central"), ("c2", "central2")] {
        let cdir = TestDir::new(&format!("{name}-{node}"));
        let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
        let link = free_port();
        let extra = format!(
            "{tls}\n[[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{link}\"\n{bucket}",
            tls = pki.tls_section(certs),
            bucket = weed.ferry_section(&cdir.path, "s3", "prefix = \"shared\"\nsites = [\"edge1\"]"),
        );
        let cfg = node_config(&cdir, &ports, "", "", &extra)
            .replace("site = \"test\"", "site = \"central\"")
            .replace("name = \"n1\"", &format!("name = \"{node}\""));
        centrals.push((Node::start(&cdir, &cfg, ports.admin), cdir));
        links.push(link);
    }
    let edir = TestDir::new(&format!("{name}-edge"));
    let eports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut extra = pki.tls_section("edge");
    for (up, link) in ["a", "b"].iter().zip(&links) {
        extra.push_str(&format!(
            "\n[[uplink]]\nname = \"{up}\"\ntransport = \"tls\"\naddresses = [\"127.0.0.1:{link}\"]\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n"
        ));
    }
    let ecfg = node_config(&edir, &eports, "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"1MiB\"", "", &extra)
        .replace("site = \"test\"", "site = \"edge1\"")
        .replace("name = \"n1\"", "name = \"relay-1\"");
    let mut edge = Node::start(&edir, &ecfg, eports.admin);
    let mut input = String::new();
    for i in 0..40_000 {
        input.push_str(&format!("<14>two centrals {i:06} {}\n", noise(i, 300)));
    }
    ferry_send(&["--to", &format!("127.0.0.1:{}", eports.tcp)], input.as_bytes());
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(60), |v| v >= 40_000.0);
    edge.stop();
    let origin = sealed_segments(&edir.join("data"), &["edge1"]);
    assert!(origin.len() >= 8, "{} segments", origin.len());
    let t = Instant::now();
    for (c, cdir) in &centrals {
        loop {
            let m = sealed_segments(&cdir.join("data"), &["edge1"]);
            if m.len() >= origin.len() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "{} of {} sealed at a central", m.len(), origin.len());
            std::thread::sleep(Duration::from_millis(200));
        }
        let n = origin.len() as f64;
        let b = &[("bucket", "s3")];
        let t = Instant::now();
        while c.metric("ferry_bucket_segments_total", b) + c.metric("ferry_bucket_already_there_total", b) < n {
            assert!(t.elapsed() < Duration::from_secs(120), "uploads did not finish:\n{}", c.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let b = &[("bucket", "s3")];
    let written: Vec<f64> = centrals.iter().map(|(c, _)| c.metric("ferry_bucket_segments_total", b)).collect();
    let there: Vec<f64> = centrals.iter().map(|(c, _)| c.metric("ferry_bucket_already_there_total", b)).collect();
    eprintln!(
        "{} segments: written by c1 {}, c2 {}; found there by c1 {}, c2 {}",
        origin.len(),
        written[0],
        written[1],
        there[0],
        there[1]
    );
    assert_eq!(written[0] + written[1], origin.len() as f64, "each object written by exactly one central");
    for (c, cdir) in &centrals {
        assert_eq!(c.metric("ferry_bucket_conflicts_total", b), 0.0);
        let delivered = std::fs::read_to_string(cdir.join("data/state/buckets/s3.delivered")).unwrap();
        for rel in origin.keys() {
            assert!(delivered.lines().any(|l| l == rel), "{rel} missing from a central's delivered list");
        }
    }
    let keys = weed.keys("shared/");
    assert_eq!(keys.keys().filter(|k| k.ends_with(".log.zst")).count(), origin.len(), "{keys:#?}");
    for (rel, bytes) in &origin {
        assert!(weed.get(&format!("shared/{rel}")) == *bytes, "{rel}");
    }
}

/// An S3 endpoint that misbehaves, played by a small Python server on
/// loopback: `mode` is `503` (SlowDown to everything), `garbage` (200 with
/// random bytes and no S3 headers) or `truncated` (a Content-Length it
/// never sends in full). Killed on drop.
struct BadS3 {
    child: std::process::Child,
    port: u16,
}

impl BadS3 {
    fn start(mode: &str) -> BadS3 {
        let port = free_port();
        let script = format!(
            r#"
import http.server, os, socketserver
MODE = {mode:?}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n: self.rfile.read(n)
        if MODE == "503":
            body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        elif MODE == "garbage":
            body = os.urandom(300)
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            if self.command != "HEAD": self.wfile.write(body)
        else:
            self.send_response(200); self.send_header("Content-Length", "100000"); self.end_headers()
            if self.command != "HEAD": self.wfile.write(b"x" * 1000)
            self.close_connection = True
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = answer
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", {port}), H).serve_forever()
"#
        );
        let child = std::process::Command::new(require_tool("python3"))
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "the fake S3 did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        BadS3 { child, port }
    }
}

impl Drop for BadS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 503 SlowDown, garbage and truncated answers: each retried with backoff,
/// counted by reason, and nothing marked delivered (the segment stays).
#[test]
fn a_bucket_answering_503_garbage_or_truncated_bodies_never_gets_a_segment_delivered() {
    for (mode, reason) in [("503", "throttled"), ("garbage", "bad_response"), ("truncated", "")] {
        let name = format!("bucket-bad-{mode}");
        let dir = TestDir::new(&name);
        let bad = BadS3::start(mode);
        let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
        let cred = dir.join("s3.credentials");
        std::fs::write(&cred, "aws_access_key_id = AK\naws_secret_access_key = s\n").unwrap();
        let section = format!(
            "\n[[bucket]]\nname = \"s3\"\nbucket = \"archive\"\nendpoint = \"http://127.0.0.1:{}\"\ncredentials_file = \"{}\"\n\
             backoff_min = \"200ms\"\nbackoff_max = \"2s\"\nrequest_timeout = \"3s\"\n",
            bad.port,
            cred.display()
        );
        let cfg = node_config(&dir, &ports, "", "", &section);
        let mut node = Node::start(&dir, &cfg, ports.admin);
        send_noise(&node, &ports, 200, 100, 3);
        node.stop();
        let sealed = lone_sealed(&dir);
        assert!(!sealed.is_empty());
        let node = Node::start(&dir, &cfg, ports.admin);
        let b = &[("bucket", "s3")];
        node.wait_metric("ferry_bucket_errors_total", b, Duration::from_secs(20), |v| v >= 3.0);
        std::thread::sleep(Duration::from_secs(3));
        let m = node.metrics();
        let errors = metric_value(&m, "ferry_bucket_errors_total", b);
        let requests = metric_value(&m, "ferry_bucket_requests_total", b);
        let reasons: Vec<&str> = m.lines().filter(|l| l.starts_with("ferry_bucket_errors_total{")).collect();
        eprintln!("{mode}: {errors} errors, {requests} requests: {reasons:?}");
        if !reason.is_empty() {
            let by = metric_value(&m, "ferry_bucket_errors_total", &[("bucket", "s3"), ("reason", reason)]);
            assert!(by >= 1.0, "{mode}: counted as {reason}:\n{m}\n{}", node.log_text());
        }
        assert!(requests <= 40.0, "{mode}: a retry storm: {requests} requests");
        assert_eq!(metric_value(&m, "ferry_bucket_segments_total", b), 0.0, "{mode}: delivered?");
        assert_eq!(metric_value(&m, "ferry_bucket_up", b), 0.0);
        let delivered = std::fs::read_to_string(dir.join("data/state/buckets/s3.delivered")).unwrap_or_default();
        assert!(delivered.trim().is_empty(), "{mode}: marked delivered: {delivered}");
        assert_eq!(lone_sealed(&dir).len(), sealed.len(), "{mode}: a segment went missing locally");
    }
}

/// A bucket added by SIGHUP starts uploading what is already sealed; one
/// removed by SIGHUP stops, and retention no longer keeps segments for it.
#[test]
fn a_bucket_added_and_removed_by_reload() {
    let name = "bucket-reload";
    let dir = TestDir::new(name);
    let weed = Weed::start(&dir.path, "archive");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let plain = node_config(&dir, &ports, "", "", "");
    let mut node = Node::start(&dir, &plain, ports.admin);
    send_noise(&node, &ports, 500, 200, 11);
    node.stop();
    let node = Node::start(&dir, &plain, ports.admin);
    let sealed = lone_sealed(&dir);
    assert!(!sealed.is_empty());
    let reload = |cfg: &str| {
        let before = node.metric("ferry_config_reloads_total", &[("result", "applied")]);
        std::fs::write(&node.config, cfg).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
        node.wait_metric("ferry_config_reloads_total", &[("result", "applied")], Duration::from_secs(30), |v| {
            v > before
        });
    };
    let with_bucket = format!("{plain}{}", weed.ferry_section(&dir.path, "s3", ""));
    reload(&with_bucket);
    let b = &[("bucket", "s3")];
    node.wait_metric("ferry_bucket_segments_total", b, Duration::from_secs(30), |v| v as usize >= sealed.len());
    let keys = weed.keys("");
    for (rel, bytes) in &sealed {
        assert_eq!(keys.get(rel.as_str()), Some(&(bytes.len() as u64)), "{rel}");
    }
    reload(&plain);
    let t = Instant::now();
    while !node.log_text().contains("bucket uploader stopped") {
        assert!(t.elapsed() < Duration::from_secs(15), "the removed bucket did not stop:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}
