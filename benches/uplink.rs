//! The link driven by the store (issue 11): an edge and a central node on
//! loopback, default configuration unless stated, measured as an operator
//! would see it.
//!
//! - `freshness`: one record at a time into an idle edge; time until the
//!   central mirror holds it (its file grew), p50/p99 over 100 samples.
//! - `outage`: central killed mid-transfer for 10 s and 60 s, then started;
//!   time from its start (and from its readiness) to the edge's first newly
//!   acknowledged byte.
//! - `fresh`: a backlog of 400,000 lines draining at `max_rate = 4Mbit/s`,
//!   `live_share = 0.5`, one fresh line a second: delay of each to the mirror.
//! - `idle`: CPU of an idle, connected edge over 30 s with 10 and 10,000
//!   delivered segments in its archive.
//! - `crash`: `kill -9` of an edge under one full-rate plain-TCP sender
//!   (1 MiB writes of 200-byte lines), 3 runs: lines lost, of which ferry had
//!   read and not committed; the edge's peak RSS at full rate.
//!
//! ```text
//! cargo bench --bench uplink                        # everything
//! FERRY_BENCH_ONLY=freshness,idle cargo bench --bench uplink
//! FERRY_BENCH_BIN=/path/to/old/ferry cargo bench --bench uplink   # an older build
//! ```

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pair::{dir_bytes, pair, Pair};
use common::{ferry_binary, http_get, metric_value};

fn files(p: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(p) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn freshness(ferry: &Path, transport: &str) {
    let p = pair(ferry, transport, "", "");
    let _central = p.central();
    let _edge = p.edge();
    wait("the uplink", Duration::from_secs(20), || {
        p.edge_metric("ferry_uplink_connected", &[("uplink", "central")]) == 1.0
    });
    let mut s = TcpStream::connect(("127.0.0.1", p.edge_tcp)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut delays = Vec::new();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for i in 0..101 {
        let before = p.mirrored();
        let sent = Instant::now();
        s.write_all(format!("<13>fresh-{i:05} one record on an idle link\n").as_bytes()).unwrap();
        while p.mirrored() == before {
            assert!(sent.elapsed() < Duration::from_secs(10), "record {i} never reached the mirror");
            std::thread::sleep(Duration::from_micros(500));
        }
        if i > 0 {
            delays.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        // Idle a little, at no fixed phase to the commit timer.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(50 + x % 150));
    }
    let (p50, p99, max) = (percentile(&mut delays, 0.5), percentile(&mut delays, 0.99), percentile(&mut delays, 1.0));
    println!("freshness {transport}: record -> central mirror over {} samples: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms", delays.len());
}

fn outage(ferry: &Path, transport: &str, secs: u64) {
    let p = pair(ferry, transport, "", "");
    let mut central = p.central();
    let edge = p.edge();
    let stop = Arc::new(AtomicBool::new(false));
    // About 20,000 lines/s throughout.
    let sender = {
        let (port, stop) = (p.edge_tcp, stop.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut b = Vec::with_capacity(200 * 200);
                for _ in 0..200 {
                    let _ = writeln!(b, "<13>outage-{i:09} a line of a steady stream across a central outage");
                    i += 1;
                }
                s.write_all(&b).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait("the uplink", Duration::from_secs(20), || {
        p.edge_metric("ferry_uplink_acked_bytes_total", &[("uplink", "central")]) > 0.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let _ = central.child.kill();
    let _ = central.child.wait();
    std::thread::sleep(Duration::from_secs(secs));
    let acked = p.edge_metric("ferry_uplink_acked_bytes_total", &[("uplink", "central")]);
    let started = Instant::now();
    let central = p.central();
    let ready = started.elapsed();
    while p.edge_metric("ferry_uplink_acked_bytes_total", &[("uplink", "central")]) <= acked {
        assert!(started.elapsed() < Duration::from_secs(120), "the link did not come back");
        std::thread::sleep(Duration::from_millis(5));
    }
    let back = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    println!(
        "outage {transport} {secs:>3} s: first acknowledged append {:.2} s after central's start ({:.2} s after it was ready)",
        back.as_secs_f64(),
        (back - ready).as_secs_f64()
    );
    drop((edge, central));
}

/// Every marker `fresh-K` found in the mirror so far, and when first seen.
fn scan_markers(p: &Pair, found: &mut std::collections::HashMap<u64, Instant>) {
    let mut fs = Vec::new();
    files(&p.path("central-data/archive/edge1"), &mut fs);
    for f in fs {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let mut out = Vec::new();
        if let Ok(mut d) = zstd::stream::Decoder::new(&bytes[..]) {
            let _ = d.read_to_end(&mut out);
        }
        for line in out.split(|b| *b == b'\n') {
            if let Some(at) = line.windows(9).position(|w| w == b"freshmark") {
                let k: String = line[at + 10..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
                if let Ok(k) = k.parse() {
                    found.entry(k).or_insert_with(Instant::now);
                }
            }
        }
    }
}

fn fresh_first(ferry: &Path, transport: &str) {
    let p = pair(ferry, transport, "", "max_rate = \"4Mbit/s\"\nlive_share = 0.5");
    let mut edge = p.edge();
    // The backlog: 400,000 lines while central is away.
    let mut s = TcpStream::connect(("127.0.0.1", p.edge_tcp)).unwrap();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut b = Vec::new();
    for i in 0..400_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(
            b,
            "<134>Nov 30 10:00:00 web-{:02} nginx[{}]: 10.{}.{}.{} \"GET /api/v1/items?id={} HTTP/1.1\" {} {} backlog-{i}",
            x % 32,
            1000 + x % 97,
            (x >> 8) % 256,
            (x >> 16) % 256,
            (x >> 24) % 256,
            (x >> 20) % 1_000_000,
            [200, 200, 404, 500][(x >> 40) as usize % 4],
            (x >> 44) % 50_000
        );
    }
    s.write_all(&b).unwrap();
    wait("the backlog committed", Duration::from_secs(60), || {
        p.edge_metric("ferry_committed_records_total", &[]) >= 400_000.0
    });
    let backlog = dir_bytes(&p.path("edge-data/archive"));
    let central = p.central();
    let drain_start = Instant::now();
    let mut sent: Vec<Instant> = Vec::new();
    let mut found = std::collections::HashMap::new();
    let mut k = 0u64;
    loop {
        if drain_start.elapsed() >= Duration::from_secs(k) {
            s.write_all(format!("<13>freshmark {k} a fresh line while the backlog drains\n").as_bytes()).unwrap();
            sent.push(Instant::now());
            k += 1;
        }
        scan_markers(&p, &mut found);
        let drained = p.edge_metric("ferry_uplink_lag_bytes", &[("uplink", "central")]) == 0.0;
        if (drained && found.len() as u64 == k && k > 3) || drain_start.elapsed() > Duration::from_secs(180) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain = drain_start.elapsed().as_secs_f64();
    let mut delays: Vec<f64> = (0..k)
        .map(|i| found.get(&i).map_or(f64::INFINITY, |t| t.duration_since(sent[i as usize]).as_secs_f64()))
        .collect();
    let all = delays.clone();
    let after_first: Vec<f64> = delays.iter().skip(1).copied().collect();
    let max_after_first = after_first.iter().cloned().fold(0.0, f64::max);
    println!(
        "fresh {transport}: backlog {:.1} MB at 4 Mbit/s, live_share 0.5, drained in {drain:.1} s; {} fresh lines: p50 {:.2} s, max {:.2} s, max from the drain's second second {max_after_first:.2} s; first five {:?}",
        backlog as f64 / 1e6,
        k,
        percentile(&mut delays, 0.5),
        percentile(&mut delays, 1.0),
        all.iter().take(5).map(|d| (d * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    edge.stop();
    drop(central);
}

fn idle(ferry: &Path, segments: usize) {
    let p = pair(ferry, "tcp", "", "");
    let central = p.central();
    let mut edge = p.edge();
    let mut s = TcpStream::connect(("127.0.0.1", p.edge_tcp)).unwrap();
    s.write_all(b"<13>one line to make one segment\n").unwrap();
    drop(s);
    wait("a commit", Duration::from_secs(10), || p.edge_metric("ferry_committed_records_total", &[]) >= 1.0);
    edge.stop();
    wait("the segment delivered", Duration::from_secs(20), || {
        std::fs::read_to_string(p.path("edge-data/state/uplinks/central.delivered")).is_ok_and(|t| !t.is_empty())
    });
    // Copies of the delivered segment, with their seal records, listed as delivered.
    let delivered = p.path("edge-data/state/uplinks/central.delivered");
    let rel = std::fs::read_to_string(&delivered).unwrap().lines().next().unwrap().to_owned();
    let archive = p.path("edge-data/archive");
    let seals = p.path("edge-data/state/seals");
    let seg = std::fs::read(archive.join(&rel)).unwrap();
    let seal = std::fs::read(seals.join(format!("{rel}.seal"))).unwrap_or_default();
    let (dir, name) = rel.rsplit_once('/').unwrap();
    let stem = name.trim_end_matches(".log.zst");
    let (prefix, _) = stem.rsplit_once('-').unwrap();
    let mut list = String::new();
    for i in 1..segments {
        let r = format!("{dir}/{prefix}-{:08}.log.zst", 100_000 + i);
        std::fs::write(archive.join(&r), &seg).unwrap();
        if !seal.is_empty() {
            std::fs::write(seals.join(format!("{r}.seal")), &seal).unwrap();
        }
        list.push_str(&r);
        list.push('\n');
    }
    std::fs::OpenOptions::new().append(true).open(&delivered).unwrap().write_all(list.as_bytes()).unwrap();
    let edge = p.edge();
    wait("the uplink", Duration::from_secs(20), || {
        p.edge_metric("ferry_uplink_connected", &[("uplink", "central")]) == 1.0
    });
    std::thread::sleep(Duration::from_secs(5));
    let (c0, t0) = (cpu_seconds(edge.pid), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let cpu = (cpu_seconds(edge.pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let mut n = Vec::new();
    files(&archive, &mut n);
    println!("idle: {} delivered segments in the archive: {cpu:.2}% of a core over 30 s", n.len());
    drop((edge, central));
}

fn crash(ferry: &Path, run: usize) {
    const LINE: usize = 200;
    let p = pair(ferry, "tcp", "", "");
    let mut edge = p.edge();
    let written = Arc::new(AtomicU64::new(0));
    let sender = {
        let (port, written) = (p.edge_tcp, written.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut chunk = Vec::with_capacity(1 << 20);
            let mut n = 0u64;
            let mut x: u64 = 0x2545F4914F6CDD1D;
            loop {
                chunk.clear();
                while chunk.len() + LINE <= 1 << 20 {
                    // Access-log-like lines, as compressible as real ones (about 8x):
                    // the commit thread, not the sender, is the bottleneck.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let head = format!(
                        "<134>crash-{n:012} web-{:02} 10.{}.{}.{} GET /api/v1/items?id={} {} {} rt=0.{:03} ",
                        x % 32,
                        (x >> 8) % 256,
                        (x >> 16) % 256,
                        (x >> 24) % 256,
                        (x >> 20) % 1_000_000,
                        [200, 200, 404, 500][(x >> 40) as usize % 4],
                        (x >> 44) % 50_000,
                        (x >> 4) % 1000
                    );
                    let pad = LINE - 1 - head.len();
                    chunk.extend_from_slice(head.as_bytes());
                    chunk.extend_from_slice(&b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36 okhttp/4.12.0 curl/8.5.0 Go-http-client/2.0 python-requests/2.32"[..pad]);
                    chunk.push(b'\n');
                    n += 1;
                }
                if s.write_all(&chunk).is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    let text = http_get(p.edge_admin, "/metrics").map(|x| x.1).unwrap_or_default();
    let received = metric_value(&text, "ferry_received_records_total", &[]);
    let committed = metric_value(&text, "ferry_committed_records_total", &[]);
    let rss = peak_rss_mib(edge.pid);
    let _ = edge.child.kill();
    let _ = edge.child.wait();
    let _ = sender.join();
    let sent = written.load(Ordering::Relaxed) / LINE as u64;
    // Recovery at the next start cuts any torn tail and seals; then count.
    let mut edge = p.edge();
    edge.stop();
    let mut fs = Vec::new();
    files(&p.path("edge-data/archive"), &mut fs);
    let mut archived = 0u64;
    for f in fs {
        let mut out = Vec::new();
        if let Ok(mut d) = zstd::stream::Decoder::new(std::fs::File::open(&f).unwrap()) {
            let _ = d.read_to_end(&mut out);
        }
        archived += out.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let lost = sent.saturating_sub(archived);
    let held = (received - committed).max(0.0) as u64;
    println!(
        "crash run {run}: sender wrote {sent} lines (fully), archive holds {archived}: {lost} lost ({:.1} MB); ferry held {held} read-not-committed lines ({:.1} MB) just before the kill, the rest were in socket buffers; peak RSS {rss:.1} MiB",
        lost as f64 * LINE as f64 / 1e6,
        held as f64 * LINE as f64 / 1e6
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ferry = ferry_binary();
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    println!("binary: {}", ferry.display());
    if want("freshness") {
        freshness(&ferry, "tcp");
        freshness(&ferry, "quic");
    }
    if want("outage") {
        for secs in [10, 60] {
            outage(&ferry, "tcp", secs);
            outage(&ferry, "quic", secs);
        }
    }
    if want("fresh") {
        fresh_first(&ferry, "tcp");
    }
    if want("idle") {
        idle(&ferry, 10);
        idle(&ferry, 10_000);
    }
    if want("crash") {
        for run in 1..=3 {
            crash(&ferry, run);
        }
    }
}
