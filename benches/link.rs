//! Link benchmark: an edge and a central node on loopback, over TLS and over
//! QUIC, fsync on every commit on both sides.
//!
//! For each transport it measures records/s from ingest at the edge to
//! committed at the central mirror, wire bytes per record, CPU seconds per
//! million records on each node, and the time from the link's return (the
//! central node restarted after a `kill -9`) to the first byte acknowledged
//! again. Run: `cargo bench --bench link` (FERRY_BENCH_RECORDS to change N).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::pair::{pair, scrape};
use common::{cpu_secs, ferry_binary, Node};

const DEFAULT_RECORDS: u64 = 2_000_000;

/// Deterministic ~200-byte access-log lines.
fn corpus(n: u64) -> Vec<u8> {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let paths =
        ["/api/v1/orders", "/api/v1/users", "/static/app.js", "/login", "/api/v2/search", "/health", "/cart/checkout"];
    let agents = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "okhttp/4.12.0", "Go-http-client/2.0"];
    let mut out = Vec::with_capacity(n as usize * 210);
    for i in 0..n {
        let r = next();
        let _ = writeln!(
            out,
            "<134>Nov 23 10:{:02}:{:02} web-{:02} nginx[{}]: 10.{}.{}.{} - - \"GET {}?id={} HTTP/1.1\" {} {} \"-\" \"{}\" rt={}.{:03}",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            r % 32,
            1000 + r % 97,
            (r >> 8) % 256,
            (r >> 16) % 256,
            (r >> 24) % 256,
            paths[(r >> 32) as usize % paths.len()],
            (r >> 20) % 1_000_000,
            [200, 200, 200, 301, 404, 500][(r >> 40) as usize % 6],
            (r >> 44) % 50_000,
            agents[(r >> 50) as usize % agents.len()],
            (r >> 54) % 3,
            (r >> 4) % 1000
        );
    }
    out
}

fn run(ferry: &Path, via: &str, records: u64, data: &[u8]) {
    let uplink = if via == "quic" { "quic" } else { "tcp" };
    let p = pair(ferry, uplink, "fsync = \"always\"", "backoff_min = \"50ms\"\nbackoff_max = \"500ms\"");
    // 0 while the edge's admin listener does not answer.
    let metric = |name: &str| scrape(p.edge_admin, name, &[]).unwrap_or(0.0);
    let ep = p.edge_tcp;
    let central = p.central();
    let mut edge = p.edge();
    while metric("ferry_uplink_connected") < 1.0 {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Ingest over two connections; the clock stops when central has committed every byte.
    let half = data.len() / 2;
    let cut = half + data[half..].iter().position(|b| *b == b'\n').unwrap() + 1;
    let t0 = Instant::now();
    let senders: Vec<_> = [data[..cut].to_vec(), data[cut..].to_vec()]
        .into_iter()
        .map(|part| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", ep)).unwrap();
                for chunk in part.chunks(256 << 10) {
                    s.write_all(chunk).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    while metric("ferry_committed_records_total") < records as f64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ingested = t0.elapsed();
    loop {
        let acked = metric("ferry_uplink_acked_bytes_total");
        let written = metric("ferry_written_bytes_total");
        if acked >= written && written > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let end_to_end = t0.elapsed();
    let wire = metric("ferry_uplink_wire_bytes_total").max(0.0);
    let (edge_cpu, central_cpu) = (cpu_secs(edge.pid), cpu_secs(central.pid));
    let m = records as f64 / 1e6;

    // Resume: kill -9 central, keep ingesting, bring it back, time the first acknowledgement.
    drop(central); // SIGKILL
    let more = corpus(20_000);
    let mut s = TcpStream::connect(("127.0.0.1", ep)).unwrap();
    s.write_all(&more).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_secs(2));
    let before = metric("ferry_uplink_acked_bytes_total");
    let central2 = Node::start(&p.ferry, &p.central_cfg, &p.path("central2.log"), p.central_admin);
    let back = Instant::now();
    while metric("ferry_uplink_acked_bytes_total") <= before {
        assert!(back.elapsed() < Duration::from_secs(60), "no resume");
        std::thread::sleep(Duration::from_millis(2));
    }
    let resume = back.elapsed();
    drop(central2);
    edge.stop();

    println!(
        "{via:>4}: {records} records  ingest {:.2}s  end-to-end {:.2}s = {:.0} records/s  wire {:.1} B/record  CPU/M records: edge {:.2}s central {:.2}s  resume after link return {:.0} ms",
        ingested.as_secs_f64(),
        end_to_end.as_secs_f64(),
        records as f64 / end_to_end.as_secs_f64(),
        wire / records as f64,
        edge_cpu / m,
        central_cpu / m,
        resume.as_secs_f64() * 1000.0
    );
}

fn main() {
    let records: u64 =
        std::env::var("FERRY_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_RECORDS);
    let ferry = ferry_binary();
    let data = corpus(records);
    println!(
        "ferry link bench: {records} records of ~{} bytes, fsync always on both nodes",
        data.len() as u64 / records
    );
    for via in ["tls", "quic"] {
        run(&ferry, via, records, &data);
    }
}
