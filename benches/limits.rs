//! Per-source limits under a flood of source addresses (issue 13).
//!
//! 1. **The limiter alone**: nanoseconds per record through
//!    `SourceLimits::take_one` with 1, 10,000 and 1,000,000 distinct sources
//!    taking turns, and the same through the previous limiter (one mutex, one
//!    map, a full `retain` per record beyond 100,000 sources; copied below as
//!    it was) for comparison.
//! 2. **An untrusted UDP listener** of a real node: datagrams handled per
//!    second (committed + counted as dropped) when a raw socket sends them as
//!    fast as it can from 1 source address, and from 200,000 (spread over
//!    127.1.0.0/14: the kernel delivers them as any datagram).
//! 3. **A trusted TCP listener** on the same node: `ferry send` of 3,000,000
//!    records, alone and while 200,000 sources flood the untrusted listener
//!    at `FERRY_BENCH_FLOOD_RATE` datagrams/s (default `10000,50000`); the
//!    median of 5 runs of each.
//!
//! `cargo bench --bench limits` (`FERRY_BENCH_PART=limiter`: part 1 only);
//! figures in `benches/README.md`. Needs root
//! (a raw socket to send from many source addresses).

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferry::ingest::limits::SourceLimits;

fn main() {
    println!("machine: {} CPU", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    limiter();
    if std::env::var("FERRY_BENCH_PART").is_ok_and(|p| p == "limiter") {
        return;
    }
    let ferry = ferry_binary();
    let rates: Vec<f64> = std::env::var("FERRY_BENCH_FLOOD_RATE")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000.0, 50_000.0]);
    let one = untrusted(&ferry, 1);
    let many = untrusted(&ferry, 200_000);
    println!(
        "untrusted UDP: {one:.0} datagrams/s handled from 1 source, {many:.0}/s from 200,000: ratio {:.2}",
        many / one
    );
    // Runs of well under a second: the median of 5 of each.
    let median = |flood: Option<f64>| {
        let mut v: Vec<f64> = (0..5).map(|_| trusted(&ferry, flood)).collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let alone = median(None);
    for flood_rate in rates {
        let flooded = median(Some(flood_rate));
        println!(
            "trusted TCP: {alone:.0} rec/s alone, {flooded:.0} rec/s during a {flood_rate:.0}/s flood from 200,000 sources: ratio {:.2}",
            flooded / alone
        );
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn limiter() {
    for sources in [1u32, 10_000, 1_000_000] {
        let l = SourceLimits::new(Some(1000.0), Some(1048576.0));
        let n = 5_000_000u32;
        let t = Instant::now();
        let mut passed = 0u64;
        for i in 0..n {
            passed += u64::from(l.take_one(ip(i % sources), 200, Instant::now()));
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("limiter: {sources} sources: {ns:.0} ns/record ({passed} of {n} passed, {} tracked)", l.tracked());
    }
    for sources in [1u32, 10_000, 1_000_000] {
        let l = Legacy::new(Some(1000.0), Some(1048576.0));
        // Beyond 100,000 sources each record scans the map: time 2,000 of those.
        let (warm, n) = if sources > 100_000 { (100_001u32, 2_000u32) } else { (0, 5_000_000) };
        for i in 0..warm {
            l.take_one(ip(i), 200, Instant::now());
        }
        let t = Instant::now();
        for i in warm..warm + n {
            l.take_one(ip(i % sources), 200, Instant::now());
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("limiter (previous): {sources} sources: {ns:.0} ns/record");
    }
}

/// The node: a trusted TCP listener ("tcp" → live) and an untrusted UDP one
/// ("flood" → flood) with the default per-source limits (1,000 records/s).
fn node(ferry: &std::path::Path) -> (Node, tempfile::TempDir, u16, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp, admin) = (free_port(), free_port(), free_port());
    let cfg = format!(
        r#"[node]
site = "bench"
name = "n1"
data_dir = "{data}"
[admin]
listen = "127.0.0.1:{admin}"
[store]
commit_interval = "100ms"
[[stream]]
name = "live"
[[stream]]
name = "flood"
[[listener]]
name = "tcp"
kind = "syslog"
transport = "tcp"
listen = "127.0.0.1:{tcp}"
stream = "live"
[[listener]]
name = "flood"
kind = "syslog"
transport = "udp"
listen = "127.0.0.1:{udp}"
stream = "flood"
trust = "untrusted"
"#,
        data = dir.path().join("data").display()
    );
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, cfg).unwrap();
    let n = Node::start(ferry, &path, &dir.path().join("ferry.log"), admin);
    (n, dir, tcp, udp, admin)
}

/// Datagrams from `sources` addresses, sent through a raw socket.
struct Raw {
    fd: i32,
    port: u16,
}

impl Raw {
    fn new(port: u16) -> Raw {
        // SAFETY: plain socket(2); the fd is owned by Raw and closed on drop.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "a raw socket needs root");
        Raw { fd, port }
    }

    fn send(&self, src: u32, payload: &[u8]) {
        let mut p = Vec::with_capacity(28 + payload.len());
        let total = (28 + payload.len()) as u16;
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.to_be_bytes());
        p.extend_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&(40000 + (src % 20000) as u16).to_be_bytes());
        p.extend_from_slice(&self.port.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and address outlive the call.
        let rc = unsafe {
            libc::sendto(
                self.fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// 127.1.0.0 onwards: the `i`-th of `sources` addresses.
fn source(i: u64, sources: u32) -> u32 {
    0x7f01_0000 + (i % u64::from(sources)) as u32
}

/// Flood for 5 s as fast as one sender can; datagrams handled per second.
fn untrusted(ferry: &std::path::Path, sources: u32) -> f64 {
    let (mut n, _dir, _tcp, udp, admin) = node(ferry);
    let raw = Raw::new(udp);
    let payload = b"<13>Nov 30 10:00:00 host app: a flood record of about eighty bytes, from anyone";
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed() < Duration::from_secs(5) {
        for _ in 0..1000 {
            raw.send(source(sent, sources), payload);
            sent += 1;
        }
    }
    let accounted = |m: &str| {
        let fl = [("listener", "flood")];
        (
            metric_value(m, "ferry_committed_records_total", &[("stream", "flood")])
                + metric_value(m, "ferry_dropped_records_total", &fl),
            metric_value(m, "ferry_socket_dropped_datagrams_total", &fl),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (handled, kernel) = loop {
        let (_, m) = http_get(admin, "/metrics").unwrap();
        let (h, k) = accounted(&m);
        if h + k >= sent as f64 || Instant::now() > deadline {
            break (h, k);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  untrusted, {sources} sources: sent {sent} in 5 s ({:.0}/s), handled {handled} ({:.0}/s), kernel-dropped {kernel}",
        sent as f64 / 5.0,
        handled / secs
    );
    n.stop();
    handled / secs
}

/// `ferry send` of 3,000,000 records into the trusted listener, during a
/// paced flood or not; records/s until the last is committed.
fn trusted(ferry: &std::path::Path, flood: Option<f64>) -> f64 {
    let (mut n, dir, tcp, udp, admin) = node(ferry);
    const N: u64 = 3_000_000;
    let input = dir.path().join("input");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..N {
        writeln!(f, "<13>Nov 30 10:00:00 web-01 nginx: trusted {i:07} GET /api/v1/orders?page=2 HTTP/1.1 200 5123")
            .unwrap();
    }
    drop(f);
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood.map(|rate| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let raw = Raw::new(udp);
            let t = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (t.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    raw.send(source(sent, 200_000), b"<13>flood");
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = Command::new(ferry)
        .args(["send", "--to", &format!("127.0.0.1:{tcp}")])
        .arg(&input)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        let (_, m) = http_get(admin, "/metrics").unwrap();
        if metric_value(&m, "ferry_committed_records_total", &[("stream", "live")]) >= N as f64 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "trusted records not committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.map(|h| h.join().unwrap());
    println!(
        "  trusted: {N} records in {secs:.2} s ({:.0}/s); flood datagrams sent meanwhile: {sent:?}",
        N as f64 / secs
    );
    n.stop();
    N as f64 / secs
}

/// The limiter before issue 13, as it was (for the comparison only).
struct Legacy {
    records: Option<f64>,
    bytes: Option<f64>,
    buckets: Mutex<HashMap<IpAddr, (f64, f64, Instant)>>,
}

impl Legacy {
    fn new(records: Option<f64>, bytes: Option<f64>) -> Legacy {
        Legacy { records, bytes, buckets: Mutex::new(HashMap::new()) }
    }

    fn take_one(&self, ip: IpAddr, bytes: usize, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap();
        if map.len() > 100_000 {
            map.retain(|_, b| now.duration_since(b.2) < Duration::from_secs(60));
        }
        let b = map.entry(ip).or_insert((self.records.unwrap_or(0.0), self.bytes.unwrap_or(0.0), now));
        let dt = now.saturating_duration_since(b.2).as_secs_f64();
        b.2 = now;
        if let Some(r) = self.records {
            b.0 = (b.0 + dt * r).min(r);
        }
        if let Some(r) = self.bytes {
            b.1 = (b.1 + dt * r).min(r);
        }
        let fits = b.0 >= 1.0 && b.1 >= bytes as f64;
        if fits {
            b.0 -= 1.0;
            b.1 -= bytes as f64;
        }
        fits
    }
}
