//! Bad input: each case gets a clear log line and a counter, and never
//! affects other connections or the node.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::*;

/// True once the server has closed `s` (EOF or reset), within `limit`.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let t = Instant::now();
    let mut b = [0u8; 64];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

#[test]
fn malformed_frames_close_only_their_connection_with_a_log_line_and_a_counter() {
    let dir = TestDir::new("bad");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let cfg = node_config(&dir, &ports, "", "max_record_bytes = \"1KiB\"\nidle_timeout = \"700ms\"", "");
    let mut node = Node::start(&dir, &cfg, ports.admin);

    // A healthy neighbour, open through everything below.
    let mut good = connect(ports.tcp);
    good.write_all(b"<13>good before\n").unwrap();

    // 1. Octet count that is not a number.
    let mut c = connect(ports.tcp);
    c.write_all(b"12x <13>hello").unwrap();
    assert!(closed_by_server(&mut c, Duration::from_secs(5)));
    // 2. Absurdly large octet count.
    let mut c = connect(ports.tcp);
    c.write_all(b"99999999999999 <13>hello").unwrap();
    assert!(closed_by_server(&mut c, Duration::from_secs(5)));
    // 3. A record larger than max_record_bytes: cut, flagged, counted; the stream goes on.
    let mut c = connect(ports.tcp);
    let long = format!("<13>long {}\n<13>after long\n", "x".repeat(5000));
    c.write_all(long.as_bytes()).unwrap();
    // ... also with octet counting.
    let mut c2 = connect(ports.tcp);
    let body = format!("<13>long octet {}", "y".repeat(3000));
    c2.write_all(format!("{} {body}13 <13>after oct", body.len()).as_bytes()).unwrap();
    // 4. Invalid UTF-8 and NUL bytes: kept as received, flagged.
    let mut c3 = connect(ports.tcp);
    c3.write_all(b"<13>bad \xc3\x28 utf8\n<13>nul \x00 inside\n").unwrap();
    good.write_all(b"<13>good after\n").unwrap();
    drop(good);
    // 5. Half a frame, then silence: the idle timeout closes it.
    let mut stall = connect(ports.tcp);
    stall.write_all(b"<13>half a fra").unwrap();
    let t = Instant::now();
    assert!(closed_by_server(&mut stall, Duration::from_secs(5)), "stalled connection closed");
    assert!(t.elapsed() >= Duration::from_millis(500), "not before the idle timeout");
    drop((c, c2, c3));
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(10), |v| v >= 8.0);
    let m = node.metrics();
    let framing = |r: &str| metric_value(&m, "ferry_framing_errors_total", &[("listener", "tcp"), ("reason", r)]);
    assert_eq!(framing("bad_octet_count"), 1.0);
    assert_eq!(framing("octet_count_too_large"), 1.0);
    assert!(framing("idle_timeout") >= 1.0);
    assert_eq!(metric_value(&m, "ferry_truncated_records_total", &[("listener", "tcp")]), 2.0);
    assert_eq!(metric_value(&m, "ferry_flagged_records_total", &[("flag", "invalid_utf8")]), 1.0);
    assert_eq!(metric_value(&m, "ferry_flagged_records_total", &[("flag", "nul_byte")]), 1.0);
    assert_eq!(metric_value(&m, "ferry_dropped_records_total", &[("reason", "incomplete_frame")]), 1.0);

    let log = node.log_text();
    for needle in [
        "octet count is not a number",
        "exceeds the limit",
        "truncated",
        "flag=invalid_utf8",
        "flag=nul_byte",
        "idle timeout",
    ] {
        assert!(log.contains(needle), "log mentions {needle:?}:\n{log}");
    }
    let framing: Vec<&str> = log.lines().filter(|l| l.contains("framing error")).collect();
    assert!(!framing.is_empty(), "the framing errors are logged:\n{log}");
    assert!(framing.iter().all(|l| l.contains("peer=127.0.0.1:")), "peer on every connection error: {framing:?}");

    node.stop();
    assert_verify_ok(&node.data);
    let lines = archive_lines(&node.data);
    assert!(lines.contains(&"<13>good before".to_owned()) && lines.contains(&"<13>good after".to_owned()));
    assert!(lines.contains(&"<13>after long".to_owned()) && lines.contains(&"<13>after oct".to_owned()));
    let cut: Vec<_> = lines.iter().filter(|l| l.starts_with("<13>long")).collect();
    assert_eq!(cut.len(), 2);
    assert!(cut.iter().all(|l| l.len() == 1024), "truncated to max_record_bytes");
    assert!(lines.iter().any(|l| l.contains("nul \\0 inside")), "NUL escaped, record kept");
    assert!(!lines.iter().any(|l| l.contains("half a fra")), "the incomplete frame is not archived");
}

#[test]
fn a_connection_flood_above_max_connections_is_refused_and_counted_while_admitted_ones_work() {
    let dir = TestDir::new("flood");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let cfg = node_config(&dir, &ports, "", "max_connections = 5", "");
    let mut node = Node::start(&dir, &cfg, ports.admin);

    let mut admitted: Vec<TcpStream> = (0..5).map(|_| connect(ports.tcp)).collect();
    for (i, c) in admitted.iter_mut().enumerate() {
        c.write_all(format!("<13>admitted {i}\n").as_bytes()).unwrap();
    }
    node.wait_metric("ferry_connections_active", &[("listener", "tcp")], Duration::from_secs(5), |v| v == 5.0);
    let mut refused = 0;
    for _ in 0..200 {
        let mut c = connect(ports.tcp);
        let _ = c.write_all(b"<13>flood\n");
        if closed_by_server(&mut c, Duration::from_secs(5)) {
            refused += 1;
        }
    }
    assert_eq!(refused, 200, "every connection above the limit is closed");
    assert_eq!(node.metric("ferry_connections_refused_total", &[("reason", "max_connections")]), 200.0);
    // The admitted connections are unaffected.
    for (i, c) in admitted.iter_mut().enumerate() {
        c.write_all(format!("<13>still here {i}\n").as_bytes()).unwrap();
    }
    // A freed slot is usable again.
    admitted.pop();
    node.wait_metric("ferry_connections_active", &[("listener", "tcp")], Duration::from_secs(5), |v| v == 4.0);
    let mut late = connect(ports.tcp);
    late.write_all(b"<13>late\n").unwrap();
    drop(late);
    drop(admitted);
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(10), |v| v >= 10.0);
    assert!(node.log_text().contains("max_connections reached"));
    node.stop();
    let lines = archive_lines(&node.data);
    assert!(!lines.iter().any(|l| l.contains("flood")), "nothing from refused connections");
    assert_eq!(
        lines.iter().filter(|l| l.contains("still here")).count(),
        4 + usize::from(lines.iter().any(|l| l == "<13>still here 4"))
    );
    assert!(lines.contains(&"<13>late".to_owned()));
}
