//! `kill -9` in the middle of a stream: what was committed survives, the
//! torn tail is cut and counted, and the archive stays readable by standard
//! tools.

mod util;

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use util::*;

fn line(i: usize) -> String {
    format!("<13>Nov 23 10:00:00 web-01 nginx[42]: crash-{i:07} 10.1.2.3 - - \"GET /index.html HTTP/1.1\" 200 5120 \"-\" \"curl/8\"\n")
}

#[test]
fn acked_records_survive_kill_9_and_torn_tail_is_truncated_and_counted() {
    kill9_case("crash", "", zstdcat);
}

/// The same with gzip segments, read back by the real `zcat`.
#[test]
fn gzip_segments_recover_from_kill_9_like_zstd_ones() {
    kill9_case("crash-gzip", "compression = \"gzip\"", zcat);
}

fn kill9_case(name: &str, store: &str, read: fn(&std::path::Path) -> Vec<u8>) {
    let dir = TestDir::new(name);
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let config = node_config(&dir, &ports, &format!("commit_bytes = \"256KiB\"\n{store}"), "", "");
    let mut node = Node::start(&dir, &config, ports.admin);

    // One connection streams 1,000,000 lines; the node dies partway through.
    let tcp = ports.tcp;
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        let mut sent = 0usize;
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..1_000_000 {
            buf.extend_from_slice(line(i).as_bytes());
            if buf.len() >= 64 << 10 {
                if s.write_all(&buf).is_err() {
                    return sent;
                }
                sent = i + 1;
                buf.clear();
            }
        }
        let _ = s.write_all(&buf);
        1_000_000
    });
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= 300_000.0
    });
    // Read again the instant before the kill: the bound below is what the
    // node had acknowledged then, not when the wait above returned.
    let committed = node.metric("ferry_committed_records_total", &[("stream", "live")]);
    node.kill9();
    let sent = sender.join().unwrap();
    assert!(sent < 1_000_000, "the node was killed mid-stream (sender wrote {sent} lines)");

    // Simulate the write a crash tore: half a frame at the end of the open segment.
    let segs = all_segments(&node.data);
    let open = segs
        .iter()
        .find(|p| {
            let rel = p.strip_prefix(node.data.join("archive")).unwrap();
            !node.data.join("state/seals").join(format!("{}.seal", rel.display())).exists()
        })
        .expect("an unsealed segment after kill -9");
    let whole = std::fs::read(open).unwrap();
    let torn = &whole[..whole.len().min(5000) / 2];
    OpenOptions::new().append(true).open(open).unwrap().write_all(torn).unwrap();

    let mut node = Node::start(&dir, &config, ports.admin);
    let cut = node.metric("ferry_recovery_truncated_bytes_total", &[("stream", "live")]);
    assert!(cut >= torn.len() as f64, "truncation counted in /metrics: {cut} < {}", torn.len());
    assert_eq!(node.metric("ferry_recovery_truncated_frames_total", &[("stream", "live")]), 1.0);
    assert!(node.log_text().contains("torn frame at segment tail"), "truncation logged");
    node.stop();

    assert_verify_ok(&node.data);
    let text = read(&node.data);
    let lines: Vec<String> = String::from_utf8_lossy(&text).lines().map(str::to_owned).collect();
    assert!(
        lines.len() as f64 >= committed,
        "{} lines in archive, {committed} were committed before the kill",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(format!("{l}\n"), line(i), "archive is a prefix of what the connection sent (line {i})");
    }
}
