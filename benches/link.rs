//! Link benchmark: an edge and a central node on loopback, over TLS and over
//! QUIC, fsync on every commit on both sides.
//!
//! For each transport it measures records/s from ingest at the edge to
//! committed at the central mirror, wire bytes per record, CPU seconds per
//! million records on each node, and the time from the link's return (the
//! central node restarted after a `kill -9`) to the first byte acknowledged
//! again. Run: `cargo bench --bench link` (FERRY_BENCH_RECORDS to change N).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_RECORDS: u64 = 2_000_000;

fn ferry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BENCH_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "ferry"])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(st.success());
    root.join("target/release/ferry")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    match ferry::admin::client::get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn metric(port: u16, name: &str, label: &str) -> f64 {
    let Some(text) = http_get(port, "/metrics") else { return 0.0 };
    text.lines()
        .filter(|l| l.starts_with(name) && (label.is_empty() || l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Node {
    child: Child,
}

impl Node {
    fn start(ferry: &Path, dir: &Path, name: &str, config: &str, admin: u16) -> Node {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child =
            Command::new(ferry).args(["run", "-c"]).arg(&cfg).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let t = Instant::now();
        while http_get(admin, "/readyz").is_none() {
            assert!(t.elapsed() < Duration::from_secs(30), "{name} not ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        Node { child }
    }
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let dir = tempfile::Builder::new().prefix("ferry-linkbench-").tempdir().unwrap();
    let d = dir.path();
    let certs = |args: &[&str]| assert!(Command::new(ferry).arg("certs").args(args).status().unwrap().success());
    let p = |s: &str| d.join(s).display().to_string();
    certs(&["ca", "--out", &p("ca")]);
    certs(&["issue", "--ca", &p("ca"), "--site", "edge1", "--node", "relay-1", "--out", &p("edge")]);
    certs(&[
        "issue",
        "--ca",
        &p("ca"),
        "--site",
        "central",
        "--node",
        "c1",
        "--ip",
        "127.0.0.1",
        "--out",
        &p("central"),
    ]);
    let tls =
        |who: &str| format!("[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/node.pem\"\nkey = \"{0}/node.key\"\n", p(who));
    let (ea, ca, ep, lp) = (free_port(), free_port(), free_port(), free_port());
    let (listener, uplink) = if via == "quic" { ("quic", "quic") } else { ("tls", "tcp") };
    let central_cfg = format!(
        "[node]\nsite = \"central\"\nname = \"c1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{ca}\"\n{}\n[[stream]]\nname = \"live\"\n[[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"{listener}\"\nlisten = \"127.0.0.1:{lp}\"\n",
        p("central-data"),
        tls("central")
    );
    let edge_cfg = format!(
        "[node]\nsite = \"edge1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{ea}\"\n{}\n[store]\nfsync = \"always\"\n[[stream]]\nname = \"live\"\n[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{ep}\"\n[[uplink]]\nname = \"central\"\ntransport = \"{uplink}\"\naddresses = [\"127.0.0.1:{lp}\"]\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
        p("edge-data"),
        tls("edge")
    );
    let mut central = Node::start(ferry, d, "central", &central_cfg, ca);
    let mut edge = Node::start(ferry, d, "edge", &edge_cfg, ea);
    while metric(ea, "ferry_uplink_connected", "") < 1.0 {
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
    while metric(ea, "ferry_committed_records_total", "") < records as f64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ingested = t0.elapsed();
    loop {
        let acked = metric(ea, "ferry_uplink_acked_bytes_total", "");
        let written = metric(ea, "ferry_written_bytes_total", "");
        if acked >= written && written > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let end_to_end = t0.elapsed();
    let wire = metric(ea, "ferry_uplink_wire_bytes_total", "").max(0.0);
    let (edge_cpu, central_cpu) = (edge.cpu_seconds(), central.cpu_seconds());
    let m = records as f64 / 1e6;

    // Resume: kill -9 central, keep ingesting, bring it back, time the first acknowledgement.
    central.kill9();
    let more = corpus(20_000);
    let mut s = TcpStream::connect(("127.0.0.1", ep)).unwrap();
    s.write_all(&more).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_secs(2));
    let before = metric(ea, "ferry_uplink_acked_bytes_total", "");
    let central2 = Node::start(ferry, d, "central2", &central_cfg, ca);
    let back = Instant::now();
    while metric(ea, "ferry_uplink_acked_bytes_total", "") <= before {
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
