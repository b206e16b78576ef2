//! `compression = "gzip"`: segments that `zcat`, `zgrep` and `gzip -t` read,
//! sealed or open; a central mirror byte for byte; ferry's own readers on
//! both; a node switching codec at a restart.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::link::{assert_byte_identical, is_sealed, pair, wait_mirrored, Pki, Via};
use util::*;

fn gz_segments(data: &Path) -> Vec<PathBuf> {
    all_segments(data).into_iter().filter(|p| p.to_string_lossy().ends_with(".log.gz")).collect()
}

fn run(tool: &str, args: &[&str], files: &[PathBuf]) -> std::process::Output {
    Command::new(require_tool(tool)).args(args).args(files).output().unwrap()
}

fn ferry(args: &[&str]) -> (i32, String) {
    let out = Command::new(FERRY).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn input(n: usize, tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.extend_from_slice(
            format!("<13>Dec  4 10:00:00 web-1 app: {tag}-{i:06} {}\n", noise(i as u64, 40)).as_bytes(),
        );
    }
    v
}

/// An edge writing gzip segments uplinks to a central: while it runs, the
/// open segment passes `gzip -t` and `zcat`; after, every segment on both
/// sides does, `zgrep` finds a record, central's mirror is byte-identical,
/// and verify, cat, grep and audit read both archives.
#[test]
fn gzip_segments_are_read_by_zcat_zgrep_and_gzip_t_and_mirrored_byte_for_byte() {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p = pair(
        "gzip",
        &pki,
        Via::Quic,
        port,
        port,
        "compression = \"gzip\"\ncommit_bytes = \"64KiB\"\nsegment_max_bytes = \"256KiB\"",
        "",
    );
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    const N: usize = 30_000;
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], &input(N, "gz"));
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(30), |v| v >= N as f64);

    // The open segment, while the node runs: whole gzip members, read by the tools.
    let open: Vec<PathBuf> = gz_segments(&edge.data)
        .into_iter()
        .filter(|s| !is_sealed(&edge.data, s.strip_prefix(edge.data.join("archive")).unwrap()))
        .collect();
    assert_eq!(open.len(), 1, "one open segment: {open:?}");
    let t = run("gzip", &["-t"], &open);
    assert!(t.status.success(), "gzip -t on the open segment: {}", String::from_utf8_lossy(&t.stderr));
    let z = run("zcat", &[], &open);
    assert!(z.status.success() && !z.stdout.is_empty(), "zcat on the open segment");

    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(30));
    central.stop();
    assert_byte_identical(&edge.data, &central.data);
    for data in [&edge.data, &central.data] {
        let segs = gz_segments(data);
        assert!(segs.len() >= 3, "several segments: {segs:?}");
        assert!(all_segments(data).len() == segs.len(), "no zstd segment in a gzip archive");
        let t = run("gzip", &["-t"], &segs);
        assert!(t.status.success(), "gzip -t: {}", String::from_utf8_lossy(&t.stderr));
        let text = String::from_utf8(zcat(data)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), N);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.contains(&format!("gz-{i:06} ")), "line {i} in order: {l}");
        }
        let g = run("zgrep", &["-h", "gz-012345 "], &segs);
        assert!(g.status.success(), "zgrep");
        assert_eq!(String::from_utf8_lossy(&g.stdout).lines().count(), 1);

        let d = data.display().to_string();
        let (code, out) = ferry(&["verify", &d]);
        assert_eq!(code, 0, "verify: {out}");
        let (code, out) = ferry(&["cat", &d, "--site", "edge1"]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), N, "ferry cat");
        let (code, out) = ferry(&["grep", "gz-02999[0-9] ", &d, "--site", "edge1"]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), 10, "ferry grep: {out}");
        let (code, out) = ferry(&["audit", &d, "--json"]);
        assert_eq!(code, 0, "audit: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let hours = v["hours"].as_array().unwrap();
        let records: u64 = hours.iter().map(|h| h["records"].as_u64().unwrap()).sum();
        assert_eq!(records, N as u64);
        assert!(hours.iter().all(|h| h["status"] == "complete"), "{out}");
    }
}

/// A node restarted with `compression = "gzip"` after zstd writes new
/// segments as `.log.gz` and keeps the `.log.zst` ones: record numbers run
/// on across the switch, cat reads both in order, audit sees no gap; and
/// back again.
#[test]
fn a_node_switches_codec_at_a_restart_for_new_segments_only() {
    let dir = TestDir::new("gzip-switch");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut total = 0;
    for (round, store) in ["", "compression = \"gzip\"", ""].iter().enumerate() {
        let cfg = node_config(&dir, &ports, store, "", "");
        let mut node = Node::start(&dir, &cfg, ports.admin);
        ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], &input(5000, &format!("r{round}")));
        total += 5000;
        node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(30), |v| v >= 5000.0);
        node.stop();
    }
    let data = dir.join("data");
    let segs = all_segments(&data);
    let kinds: Vec<bool> = segs.iter().map(|s| s.to_string_lossy().ends_with(".gz")).collect();
    assert_eq!(kinds, [false, true, false], "{segs:?}");
    assert_verify_ok(&data);
    let d = data.display().to_string();
    let (code, out) = ferry(&["cat", &d]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), total);
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!("r{}-{:06} ", i / 5000, i % 5000)), "line {i}: {l}");
    }
    let (code, out) = ferry(&["audit", &d]);
    assert_eq!(code, 0, "audit: {out}");
    // Each codec's tool reads its own segments.
    assert_eq!(String::from_utf8_lossy(&zcat(&data)).lines().count(), 5000);
    assert_eq!(String::from_utf8_lossy(&zstdcat(&data)).lines().count(), 10_000);
}
