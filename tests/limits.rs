//! Untrusted sources are capped per source address; trusted ones are not
//! affected by them.

mod util;

use std::io::Read;
use std::time::{Duration, Instant};

use util::*;

#[test]
fn an_untrusted_source_at_10x_its_limit_gets_its_limit_and_a_trusted_one_loses_nothing() {
    let dir = TestDir::new("limits");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let untrusted = free_port();
    let extra = format!(
        "\n[[listener]]\nname = \"untrusted\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{untrusted}\"\nstream = \"live\"\ntrust = \"untrusted\"\nsource_records_per_sec = 500\nsource_bytes_per_sec = \"100MiB/s\"\nmax_connections_per_source = 2\n"
    );
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", &extra), ports.admin);
    const N: usize = 20_000;
    let body = |tag: &str| (0..N).map(|i| format!("<13>{tag} {i}\n")).collect::<String>().into_bytes();
    let (bu, bt) = (body("untrusted"), body("trusted"));
    let t0 = Instant::now();
    let a = std::thread::spawn(move || ferry_send(&["--to", &format!("127.0.0.1:{untrusted}"), "--rate", "5000"], &bu));
    let trusted_port = ports.tcp;
    let b =
        std::thread::spawn(move || ferry_send(&["--to", &format!("127.0.0.1:{trusted_port}"), "--rate", "5000"], &bt));
    a.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    b.join().unwrap();

    node.wait_metric("ferry_received_records_total", &[("listener", "tcp")], Duration::from_secs(20), |v| {
        v >= N as f64
    });
    let dropped = node.metric("ferry_dropped_records_total", &[("listener", "untrusted"), ("reason", "rate_limited")]);

    // Connections per source: the third one from the same address is refused.
    let c1 = std::net::TcpStream::connect(("127.0.0.1", untrusted)).unwrap();
    let c2 = std::net::TcpStream::connect(("127.0.0.1", untrusted)).unwrap();
    node.wait_metric("ferry_connections_active", &[("listener", "untrusted")], Duration::from_secs(5), |v| v == 2.0);
    let mut c3 = std::net::TcpStream::connect(("127.0.0.1", untrusted)).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(c3.read(&mut [0u8; 8]), Ok(0) | Err(_)), "third connection from one source closed");
    node.wait_metric(
        "ferry_connections_refused_total",
        &[("reason", "max_connections_per_source")],
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    drop((c1, c2));
    node.stop();

    let lines = archive_lines(&node.data);
    let passed = lines.iter().filter(|l| l.starts_with("<13>untrusted ")).count() as f64;
    let trusted = lines.iter().filter(|l| l.starts_with("<13>trusted ")).count();
    assert_eq!(trusted, N, "the trusted source on the same node loses nothing");
    // 500/s over the send, plus one second's burst.
    let expected = 500.0 * secs + 500.0;
    assert!(
        (passed - expected).abs() <= expected * 0.05 + 50.0,
        "{passed} passed in {secs:.2}s, expected about {expected:.0}"
    );
    assert_eq!(passed + dropped, N as f64, "every record is either archived or counted as dropped");
    eprintln!("untrusted: {passed} of {N} passed in {secs:.2}s (limit 500/s), {dropped} dropped as rate_limited");
}
