//! Acknowledged ingest benchmark: RELP and HTTP into a real `ferry run` node
//! with `fsync = "always"`. For each protocol, two runs:
//! - **fixed load**: 100,000 records/s offered (paced every millisecond over
//!   several connections) for `FERRY_BENCH_SECONDS`; the latency of every
//!   record from its send to its acknowledgement (RELP `rsp 200`, HTTP `200`
//!   for its batch) gives p50/p99/p99.9/max;
//! - **throughput**: as fast as the client windows allow; records/s from the
//!   first send to the last acknowledgement (every record is on disk then).
//!
//! `cargo bench --bench ack`; figures and method in `benches/README.md`.

mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const RATE: u64 = 100_000;
const CONNECTIONS: usize = 4;
/// A typical 200-byte syslog line (the record body; each gets a unique id).
const LINE: &str = "<134>1 2026-11-26T10:00:00.000Z web-01.dc1 nginx 4242 - - 10.1.2.3 - - \"GET /api/v1/orders?page=2 HTTP/1.1\" 200 5123 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" rt=0.012 uct=0.001";

fn main() {
    let seconds = std::env::var("FERRY_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10u64);
    let ferry = ferry_binary();
    println!("machine: {}", machine());
    for proto in ["relp", "http"] {
        let fixed = run(&ferry, proto, Mode::Fixed { seconds });
        let tput = run(&ferry, proto, Mode::Throughput { records: 2_000_000 });
        println!(
            "{proto}: fixed {RATE} rec/s offered for {seconds}s: achieved {:.0} rec/s, ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} commits ({:.0} records/commit)",
            fixed.rate, fixed.p50, fixed.p99, fixed.p999, fixed.max, fixed.commits, fixed.records as f64 / fixed.commits.max(1.0)
        );
        println!(
            "{proto}: throughput: {:.0} rec/s acknowledged ({} records, {} connections), ack latency p50 {:.2} ms, p99 {:.2} ms; {} commits",
            tput.rate, tput.records, CONNECTIONS, tput.p50, tput.p99, tput.commits
        );
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Fixed { seconds: u64 },
    Throughput { records: u64 },
}

struct Figures {
    records: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    commits: f64,
}

fn run(ferry: &Path, proto: &'static str, mode: Mode) -> Figures {
    let dir = tempfile::Builder::new().prefix("ferry-bench-ack-").tempdir().expect("tempdir");
    let (admin, port) = (free_port(), free_port());
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
site = "bench"
name = "n1"
data_dir = "{data}"
[admin]
listen = "127.0.0.1:{admin}"
[store]
fsync = "always"
[[stream]]
name = "live"
[[listener]]
name = "in"
kind = "{proto}"
transport = "tcp"
listen = "127.0.0.1:{port}"
stream = "live"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .expect("config");
    let mut node = Node::start(ferry, &config, &dir.path().join("ferry.log"), admin);
    let (per_conn, rate) = match mode {
        Mode::Fixed { seconds } => (RATE * seconds / CONNECTIONS as u64, Some(RATE / CONNECTIONS as u64)),
        Mode::Throughput { records } => (records / CONNECTIONS as u64, None),
    };
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || match proto {
                "relp" => relp_client(port, c, per_conn, rate),
                _ => http_client(port, c, per_conn, rate),
            })
        })
        .collect();
    let mut lat: Vec<u32> = Vec::new();
    for t in threads {
        lat.extend(t.join().expect("client thread"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let metrics = http_get(admin, "/metrics").expect("metrics").1;
    let committed = metric_value(&metrics, "ferry_committed_records_total", &[("stream", "live")]);
    let commits = metric_value(&metrics, "ferry_commits_total", &[("stream", "live")]);
    let records = per_conn * CONNECTIONS as u64;
    assert_eq!(committed as u64, records, "every acknowledged record is committed");
    node.stop();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Figures { records, rate: records as f64 / elapsed, p50: q(0.5), p99: q(0.99), p999: q(0.999), max: q(1.0), commits }
}

/// Wait until the next pacing tick: `sent` records of a connection that
/// offers `rate` records/s are due at `t0 + sent / rate`.
fn pace(t0: Instant, sent: u64, rate: Option<u64>) {
    if let Some(r) = rate {
        let due = t0 + Duration::from_nanos(sent * 1_000_000_000 / r);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// One RELP session: a writer sends `n` `syslog` transactions (window 1024,
/// as the shipped rsyslog config), a reader takes the `rsp`s. Latencies in µs.
fn relp_client(port: u16, conn: usize, n: u64, rate: Option<u64>) -> Vec<u32> {
    const WINDOW: u64 = 1024;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    let offer = "relp_version=0\nrelp_software=bench\ncommands=syslog";
    writeln!(sock, "1 open {} {offer}", offer.len()).expect("open");
    let mut rd = BufReader::new(sock.try_clone().expect("clone"));
    let mut line = Vec::new();
    // The open's rsp spans lines: read up to its trailer (a lone "\n" after the data).
    let mut head = String::new();
    rd.read_line(&mut head).expect("open rsp");
    let len: usize = head.split(' ').nth(2).and_then(|l| l.trim().parse().ok()).expect("rsp length");
    let prefix: usize = head.splitn(4, ' ').take(3).map(|f| f.len() + 1).sum();
    let mut rest = vec![0u8; (len + 1).saturating_sub(head.len() - prefix)];
    rd.read_exact(&mut rest).expect("open rsp data");
    let start = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (sent_at, acked) = (sent_at.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(n as usize);
            while (lat.len() as u64) < n {
                line.clear();
                if rd.read_until(b'\n', &mut line).expect("read rsp") == 0 {
                    panic!("relay closed the RELP session after {} acks", lat.len());
                }
                let mut f = line.split(|&b| b == b' ');
                let txnr: u64 = std::str::from_utf8(f.next().unwrap()).unwrap().parse().unwrap();
                assert_eq!(f.next(), Some(&b"rsp"[..]));
                let _len = f.next();
                assert_eq!(f.next(), Some(&b"200"[..]), "ack: {}", String::from_utf8_lossy(&line));
                let i = txnr - 2;
                let now = start.elapsed().as_nanos() as u64;
                lat.push(((now - sent_at[i as usize].load(Ordering::Relaxed)) / 1000) as u32);
                acked.fetch_add(1, Ordering::Release);
            }
            lat
        })
    };
    let mut out = Vec::with_capacity(64 << 10);
    let mut id = String::new();
    let mut i = 0u64;
    while i < n {
        pace(start, i, rate);
        // Everything due now (or up to the window), in one write.
        let due = match rate {
            Some(r) => ((start.elapsed().as_nanos() as u64 * r / 1_000_000_000) + 1).min(n),
            None => n,
        };
        while acked.load(Ordering::Acquire) + WINDOW <= i {
            std::thread::yield_now();
        }
        let limit = (acked.load(Ordering::Acquire) + WINDOW).min(due).max(i + 1);
        let now = start.elapsed().as_nanos() as u64;
        while i < limit {
            id.clear();
            write!(id, " id=c{conn}-{i}").unwrap();
            writeln!(out, "{} syslog {} {LINE}{id}", i + 2, LINE.len() + id.len()).unwrap();
            sent_at[i as usize].store(now, Ordering::Relaxed);
            i += 1;
        }
        sock.write_all(&out).expect("send");
        out.clear();
    }
    let lat = reader.join().expect("reader");
    let _ = writeln!(sock, "{} close 0", n + 2);
    lat
}

/// One keep-alive HTTP connection posting batches of LF-separated lines:
/// 100 lines per request at fixed load (1,000 requests/s in all), 2,000 per
/// request for throughput. Every record of a batch gets the batch's latency.
fn http_client(port: u16, conn: usize, n: u64, rate: Option<u64>) -> Vec<u32> {
    let batch: u64 = if rate.is_some() { 100 } else { 2000 };
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    let mut rd = BufReader::new(sock.try_clone().expect("clone"));
    let mut lat = Vec::with_capacity(n as usize);
    let mut body = Vec::with_capacity(batch as usize * 256);
    let mut req = Vec::with_capacity(batch as usize * 256 + 256);
    let start = Instant::now();
    let mut i = 0u64;
    let mut line = String::new();
    while i < n {
        pace(start, i, rate);
        let k = batch.min(n - i);
        body.clear();
        for j in i..i + k {
            writeln!(body, "{LINE} id=h{conn}-{j}").unwrap();
        }
        req.clear();
        write!(
            req,
            "POST /v1/streams/live HTTP/1.1\r\nHost: relay\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        req.extend_from_slice(&body);
        let t = Instant::now();
        sock.write_all(&req).expect("post");
        // Status line, headers, then the body by Content-Length.
        line.clear();
        rd.read_line(&mut line).expect("status");
        assert!(line.starts_with("HTTP/1.1 200"), "answer: {line}");
        let mut clen = 0usize;
        loop {
            line.clear();
            rd.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                clen = v.trim().parse().expect("content-length");
            }
        }
        let mut b = vec![0u8; clen];
        rd.read_exact(&mut b).expect("body");
        let us = t.elapsed().as_micros() as u32;
        lat.extend(std::iter::repeat_n(us, k as usize));
        i += k;
    }
    lat
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{n} CPU, {cpu}")
}
