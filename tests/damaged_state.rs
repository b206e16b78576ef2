//! Damaged state files (seal records truncated, garbage, not hex, multibyte,
//! missing; a delivered list with garbage lines) met by real nodes: never a
//! panic, never a silent stall; a log line naming the file and what is wrong,
//! a counter, a safe fallback (re-derive the seal from its segment, ask the
//! receiver again), and correct delivery afterwards. `ferry verify` reports
//! each damaged seal before it is repaired.

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use util::link::{assert_byte_identical, pair, segment_files, wait_mirrored, Pki, Via};
use util::*;

fn seal_file(data: &Path, rel: &Path) -> PathBuf {
    data.join("state/seals").join(format!("{}.seal", rel.display()))
}

/// Rewrites a seal record's text into damaged bytes.
type Damage = Box<dyn Fn(&str) -> Vec<u8>>;

/// Five ways a seal record goes bad; `None` removes it.
fn damages() -> Vec<(&'static str, Option<Damage>)> {
    vec![
        ("truncated", Some(Box::new(|t: &str| t.as_bytes()[..t.len() / 2].to_vec()))),
        ("garbage", Some(Box::new(|_: &str| b"\x00\x01\xffnot a seal at all\n".to_vec()))),
        (
            "non-hex",
            Some(Box::new(|t: &str| {
                let sha = t.lines().find(|l| l.starts_with("sha256=")).unwrap();
                t.replace(sha, &format!("sha256={}", "zz".repeat(32))).into_bytes()
            })),
        ),
        (
            "multibyte",
            Some(Box::new(|t: &str| {
                let sha = t.lines().find(|l| l.starts_with("sha256=")).unwrap();
                // 64 bytes, but not 64 characters: slicing by byte index would panic.
                t.replace(sha, &format!("sha256={}é{}", "a".repeat(31), "b".repeat(31))).into_bytes()
            })),
        ),
        ("missing", None),
    ]
}

fn damage(data: &Path, rels: &[PathBuf]) {
    for (rel, (_, how)) in rels.iter().zip(damages()) {
        let f = seal_file(data, rel);
        match how {
            Some(how) => {
                let text = std::fs::read_to_string(&f).unwrap();
                std::fs::write(&f, how(&text)).unwrap();
            }
            None => std::fs::remove_file(&f).unwrap(),
        }
    }
}

/// `n` barely compressible lines: segments of 64 KiB fill and rotate.
fn write_segments(node: &Node, port: u16, tag: &str, n: usize) {
    let text: String =
        (0..n).map(|i| format!("<13>Nov 30 10:00:00 h app: {tag}-{i:06} {}\n", noise(i as u64, 320))).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{port}")], text.as_bytes());
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(30), |v| {
        v >= n as f64
    });
}

#[test]
fn damaged_seal_records_are_reported_then_re_derived_from_their_segments_at_start() {
    let dir = TestDir::new("damaged-seals");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let cfg = node_config(&dir, &ports, "commit_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"", "", "");
    let mut node = Node::start(&dir, &cfg, ports.admin);
    write_segments(&node, ports.tcp, "s", 2000);
    node.stop();
    let rels = segment_files(&node.data, "test");
    assert!(rels.len() >= 6, "{} segments", rels.len());
    damage(&node.data, &rels[..5]);

    // verify names each damaged record and what is wrong with it.
    let out = verify(&node.data);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for rel in &rels[..4] {
        assert!(text.contains(&rel.display().to_string()), "verify names {}:\n{text}", rel.display());
    }
    assert!(text.contains("damaged seal record") && text.contains("not 64 hex digits"), "{text}");

    let node = Node::start(&dir, &cfg, ports.admin);
    let log = node.log_text();
    assert!(!log.contains("panicked"), "{log}");
    for rel in &rels[..4] {
        assert!(
            log.contains(&format!("{}.seal", rel.display())) && log.contains("damaged seal record"),
            "the log names {} and the problem:\n{log}",
            rel.display()
        );
    }
    assert_eq!(node.metric("ferry_state_repaired_total", &[("kind", "seal")]), 4.0);
    assert_eq!(node.metric("ferry_recovered_segments_total", &[("stream", "live")]), 1.0, "the missing one");
    write_segments(&node, ports.tcp, "t", 100);
    let mut node = node;
    node.stop();
    assert_verify_ok(&node.data);
    assert_eq!(archive_lines(&node.data).len(), 2100);
}

#[test]
fn an_uplink_meeting_damaged_seals_and_a_damaged_delivered_list_still_delivers_everything() {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let port = free_port();
    let p =
        pair("damaged-link", &pki, Via::Tls, port, port, "commit_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"", "");
    // Central is down while the edge archives and its seals get damaged under it.
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    write_segments(&edge, p.edge_ports.tcp, "a", 2000);
    let rels = segment_files(&edge.data, "edge1");
    assert!(rels.len() >= 6);
    let sealed: Vec<PathBuf> = rels.iter().filter(|r| seal_file(&edge.data, r).exists()).cloned().collect();
    // All but "missing": a sealed segment's record cannot vanish while it runs
    // without a restart in between (recovery covers that case).
    damage(&edge.data, &sealed[..4]);
    let mut central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = edge;
    edge.stop(); // seals the open segment
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);
    edge.stop();
    let log = std::fs::read_dir(&p.edge_dir.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ferry.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(log.contains("damaged seal record"), "the edge names the damaged records:\n{log}");
    assert!(!log.contains("panicked"), "{log}");

    // The delivered list gets garbage, a non-UTF-8 line and a torn last line.
    let list = edge.data.join("state/uplinks/central.delivered");
    let mut text = std::fs::read(&list).unwrap();
    assert!(!text.is_empty());
    text.extend_from_slice(b"garbage line\n\xff\xfe\nedge1/live/2026-11-3");
    std::fs::write(&list, text).unwrap();
    // And a mirror seal at central is damaged too.
    central.stop();
    let mrel = &segment_files(&central.data, "edge1")[0];
    std::fs::write(seal_file(&central.data, mrel), "len=12\nsha256=nothex\n").unwrap();
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    assert_eq!(edge.metric("ferry_state_repaired_total", &[("kind", "delivered")]), 3.0);
    assert!(edge.log_text().contains("damaged line in the delivered list"), "{}", edge.log_text());
    write_segments(&edge, p.edge_ports.tcp, "b", 300);
    edge.stop();
    let edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);
    // Central re-derived its damaged mirror seal at start (retention's first pass).
    let mut central = central;
    central.stop();
    assert!(central.log_text().contains("damaged seal record"), "{}", central.log_text());
    assert_verify_ok(&central.data);
    drop(edge);
}
