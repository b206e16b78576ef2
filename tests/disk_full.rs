//! A real full disk: `data_dir` on a small tmpfs (the tests run as root and
//! fail, never skip, when they cannot mount one), filled by real senders
//! (rsyslog over RELP, curl over HTTP, syslog over TCP and UDP, an uplink
//! into a central mirror), then freed. Nothing acknowledged is lost or doubled, no segment gets a
//! hole, and ingest resumes by itself.

mod util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::link::{assert_byte_identical, pair, wait_mirrored, Pki, Via};
use util::rsyslog::Rsyslog;
use util::tmpfs::Tmpfs;
use util::*;

/// A line that barely compresses, so a few MB of them fill a small disk.
fn noisy_line(tag: &str, i: usize) -> String {
    format!("{tag}-{i:07} {}", noise(i as u64 + 1, 160))
}

/// Send `batches` batches of `per` lines over HTTP, each retried until it
/// is answered 200 (as Fluent Bit or Vector would). Returns the count of
/// answers per status.
fn http_sender(
    port: u16,
    dir: PathBuf,
    batches: usize,
    per: usize,
    pause: Duration,
) -> std::thread::JoinHandle<HashMap<u16, usize>> {
    std::thread::spawn(move || {
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        for b in 0..batches {
            let body = dir.join(format!("batch-{b}.txt"));
            let text: String = (0..per).map(|i| noisy_line(&format!("http{b:04}"), i) + "\n").collect();
            std::fs::write(&body, text).unwrap();
            let t = Instant::now();
            loop {
                let s = post_status(port, &body);
                *statuses.entry(s).or_default() += 1;
                if s == 200 {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(120), "batch {b} never accepted (last status {s})");
                std::thread::sleep(Duration::from_millis(200));
            }
            std::fs::remove_file(&body).unwrap();
            std::thread::sleep(pause);
        }
        statuses
    })
}

/// Ids in the archive, also of a running node (a frame being written is
/// read again, not a failure).
fn ids(data: &Path, prefix: &str) -> HashMap<String, usize> {
    id_counts_running(data, prefix)
}

fn readyz(port: u16) -> u16 {
    http_get(port, "/readyz").map(|(s, _)| s).unwrap_or(0)
}

#[test]
fn a_full_disk_holds_relp_and_http_senders_and_everything_lands_once_when_space_returns() {
    require_tool("rsyslogd");
    let dir = TestDir::new("diskfull");
    let disk = Tmpfs::mount(&dir.join("data"), "32m");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let (relp, http) = (free_port(), free_port());
    let extra = format!(
        "\n[[listener]]\nname = \"relp\"\nkind = \"relp\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{relp}\"\nstream = \"live\"\n\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\n"
    );
    let store = "commit_bytes = \"256KiB\"\nsegment_max_bytes = \"2MiB\"";
    let mut node = Node::start(&dir, &node_config(&dir, &ports, store, "", &extra), ports.admin);
    let filler = disk.fill_leaving(3 << 20);

    // ~5 MB over RELP and ~5 MB over HTTP into 3 MB of free space.
    let input = free_port();
    let _rs = Rsyslog::shipped_relp(&dir, relp, input);
    const RELP_N: usize = 30_000;
    let relp_lines: String =
        (0..RELP_N).map(|i| format!("<13>Nov 30 10:00:00 h app: {}\n", noisy_line("relp", i))).collect();
    let feeder = std::thread::spawn(move || {
        ferry_send(&["--to", &format!("127.0.0.1:{input}"), "--rate", "20000"], relp_lines.as_bytes())
    });
    let bodies = dir.join("bodies");
    std::fs::create_dir_all(&bodies).unwrap();
    const BATCHES: usize = 60;
    let sender = http_sender(http, bodies, BATCHES, 500, Duration::from_millis(20));

    // The disk fills: not ready, and says why.
    let t = Instant::now();
    while readyz(ports.admin) != 503 {
        assert!(t.elapsed() < Duration::from_secs(60), "/readyz never went 503 while the disk was full");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, why) = http_get(ports.admin, "/readyz").unwrap();
    assert!(why.contains("disk_full"), "{why}");
    assert_eq!(node.metric("ferry_store_unwritable", &[("stream", "live"), ("reason", "disk_full")]), 1.0);
    // Meanwhile: plain syslog over TCP is held back (not read), UDP is dropped and counted.
    let tcp_lines: String =
        (0..2000).map(|i| format!("<13>Nov 30 10:00:00 h app: {}\n", noisy_line("tcp", i))).collect();
    let tcp = ports.tcp;
    let tcp_sender =
        std::thread::spawn(move || ferry_send(&["--to", &format!("127.0.0.1:{tcp}")], tcp_lines.as_bytes()));
    let udp_lines: String = (0..200).map(|i| format!("<13>Nov 30 10:00:00 h app: udp-{i:07}\n")).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.udp), "--transport", "udp"], udp_lines.as_bytes());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(readyz(ports.admin), 503, "still full: still not ready");
    node.wait_metric(
        "ferry_dropped_records_total",
        &[("listener", "udp"), ("reason", "disk_full")],
        Duration::from_secs(5),
        |v| v > 0.0,
    );

    // An operator frees space: ingest resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    while readyz(ports.admin) != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "/readyz not back to 200 within 5 s of space returning");
        std::thread::sleep(Duration::from_millis(50));
    }
    let statuses = sender.join().unwrap();
    feeder.join().unwrap();
    tcp_sender.join().unwrap();
    eprintln!("HTTP answers: {statuses:?}");
    assert!(
        statuses.get(&507).copied().unwrap_or(0) > 0,
        "some batches were refused with 507 while the disk was full: {statuses:?}"
    );
    assert_eq!(statuses.get(&200), Some(&BATCHES));

    // Every RELP line arrives (rsyslog's queue held them), and nothing twice.
    let t = Instant::now();
    loop {
        let relp_ids = ids(&node.data, "relp-");
        if relp_ids.len() == RELP_N {
            let dups: usize = relp_ids.values().map(|n| n - 1).sum();
            assert_eq!(dups, 0, "RELP lines archived twice");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{} of {RELP_N} RELP lines archived", relp_ids.len());
        std::thread::sleep(Duration::from_millis(500));
    }
    let tcp_ids = ids(&node.data, "tcp-");
    assert_each_once(&tcp_ids, 2000, "the TCP lines read while the disk was full, written once space returned");
    let udp = ids(&node.data, "udp-").len() as f64;
    let dropped = node.metric("ferry_dropped_records_total", &[("listener", "udp"), ("reason", "disk_full")]);
    assert_eq!(udp + dropped, 200.0, "every datagram archived or counted as dropped (disk_full)");
    let http_ids = ids(&node.data, "http");
    assert_each_once(&http_ids, BATCHES * 500, "the lines of every 200 batch");

    assert!(node.metric("ferry_disk_errors_total", &[("stream", "live"), ("trouble", "disk_full")]) > 0.0);
    assert!(node.metric("ferry_refused_records_total", &[("listener", "http"), ("reason", "disk_full")]) > 0.0);
    assert_eq!(node.metric("ferry_store_unwritable", &[("stream", "live"), ("reason", "disk_full")]), 0.0);
    let log = node.log_text();
    assert!(log.contains("disk full"), "the log says disk full:\n{log}");
    assert!(log.contains("the disk takes writes again"), "and says when it recovered");
    node.stop();
    assert_verify_ok(&node.data);
}

#[test]
fn with_on_full_drop_oldest_ingest_goes_on_and_deleted_segments_are_counted() {
    let dir = TestDir::new("diskfull-drop");
    let _disk = Tmpfs::mount(&dir.join("data"), "16m");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let http = free_port();
    let extra = format!(
        "\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\n"
    );
    let store = "commit_bytes = \"128KiB\"\nsegment_max_bytes = \"1MiB\"\n[store.retention]\non_full = \"drop_oldest\"";
    let mut node = Node::start(&dir, &node_config(&dir, &ports, store, "", &extra), ports.admin);
    let bodies = dir.join("bodies");
    std::fs::create_dir_all(&bodies).unwrap();
    // ~40 MB through a 16 MB disk.
    const BATCHES: usize = 250;
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        let admin = ports.admin;
        std::thread::spawn(move || {
            let (mut not_ready, mut samples) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                samples += 1;
                if readyz(admin) != 200 {
                    not_ready += 1;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (not_ready, samples)
        })
    };
    let statuses = http_sender(http, bodies, BATCHES, 1000, Duration::ZERO).join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (not_ready, samples) = watch.join().unwrap();
    eprintln!("HTTP answers: {statuses:?}; /readyz not 200 in {not_ready} of {samples} samples");
    assert!(samples > 0, "/readyz was watched");
    // Deleting the oldest keeps the node ready: at most the moments a
    // full disk was met before retention freed it (12 of 191 samples here;
    // with on_full = "reject" it stays 503 until space is freed).
    assert!(
        not_ready * 4 <= samples,
        "/readyz stayed 200 while the oldest segments made room: {not_ready} of {samples} not"
    );
    assert_eq!(statuses.get(&200), Some(&BATCHES));
    let refused: usize = statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
    assert!(refused <= BATCHES / 10, "ingest kept going: only a few retries, not {refused}");

    let deleted = node.metric("ferry_retention_deleted_segments_total", &[("reason", "disk_full")]);
    assert!(deleted >= 5.0, "old segments deleted to make room: {deleted}");
    assert!(node.log_text().contains("deleted a sealed segment to make room"));
    // The newest batches are all there, each line once.
    let ids = ids(&node.data, "http");
    assert!(ids.values().all(|n| *n == 1), "no line twice");
    for b in BATCHES - 20..BATCHES {
        for i in [0, 999] {
            assert!(ids.contains_key(&format!("http{b:04}-{i:07}")), "recent batch {b} line {i} kept");
        }
    }
    node.stop();
    assert_verify_ok(&node.data);
}

#[test]
fn a_central_mirror_on_a_full_disk_refuses_with_a_reason_and_catches_up_byte_identical() {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p =
        pair("mirrorfull", &pki, Via::Tls, port, port, "commit_bytes = \"128KiB\"\nsegment_max_bytes = \"1MiB\"", "");
    let disk = Tmpfs::mount(&p.central_dir.join("data"), "24m");
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let filler = disk.fill_leaving(2 << 20);
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);

    // ~8 MB of barely compressible lines into the edge.
    const N: usize = 45_000;
    let lines: String = (0..N).map(|i| format!("<13>Nov 30 10:00:00 h app: {}\n", noisy_line("mirror", i))).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], lines.as_bytes());
    edge.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(30), |v| {
        v >= N as f64
    });

    // Central refuses with NO_SPACE; the edge keeps its backlog and says why.
    edge.wait_metric("ferry_uplink_blocked_segments", &[("reason", "no_space")], Duration::from_secs(30), |v| v >= 1.0);
    let status =
        Command::new(FERRY).args(["status", "--admin", &format!("127.0.0.1:{}", p.edge_ports.admin)]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("no_space"), "ferry status shows why the receiver refuses:\n{status}");
    assert!(central.metric("ferry_mirror_errors_total", &[("trouble", "disk_full")]) > 0.0);
    let mut edge = edge;
    let reconnects = edge.metric("ferry_uplink_reconnects_total", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(edge.metric("ferry_uplink_reconnects_total", &[]), reconnects, "no session dropped in a loop");

    // Space returns: the mirror catches up and is byte-identical.
    std::fs::remove_file(&filler).unwrap();
    edge.stop(); // seals the open segment; the backlog stays on disk
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);
    let mut central = central;
    central.stop();
    assert_verify_ok(&central.data);
    drop(edge);
}
