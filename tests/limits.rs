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

/// RSS the node may reach during the source flood: the limiter tracks at
/// most `max_sources` (10,000 here, about 1 MB) whatever the flood.
const FLOOD_RSS_MAX: u64 = 64 << 20;

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb << 10
}

/// 200,000 distinct source addresses (across 127.0.0.0/8) flood an untrusted
/// UDP listener while a trusted TCP sender on the same node sends at a
/// steady rate: the trusted stream loses nothing and keeps its rate, the
/// node's memory stays bounded, sources beyond `max_sources` are charged to
/// shared buckets (counted), and every datagram is accounted for: sent =
/// committed + dropped (rate_limited, ...) + dropped by the kernel.
#[test]
fn a_flood_from_200000_source_addresses_costs_bounded_memory_and_spares_a_trusted_stream() {
    let dir = TestDir::new("flood");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let flood = free_port();
    let extra = format!(
        "\n[[stream]]\nname = \"flood\"\n\n[[listener]]\nname = \"flood\"\nkind = \"syslog\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:{flood}\"\nstream = \"flood\"\ntrust = \"untrusted\"\nsource_records_per_sec = 1\nmax_sources = 10000\n"
    );
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", &extra), ports.admin);
    let pid = node.pid();
    let before = rss(pid);
    const N: usize = 20_000;
    const RATE: f64 = 5_000.0;
    const SOURCES: u32 = 200_000;
    let body = (0..N).map(|i| format!("<13>trusted {i}\n")).collect::<String>().into_bytes();
    let trusted_port = ports.tcp;
    let t0 = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let trusted = std::thread::spawn(move || {
        ferry_send(&["--to", &format!("127.0.0.1:{trusted_port}"), "--rate", &RATE.to_string()], &body);
        d.store(true, std::sync::atomic::Ordering::Relaxed);
        t0.elapsed()
    });
    // Two senders walk 127.1.0.0 upwards, one datagram from each address,
    // round after round until the trusted sender is done.
    let senders: Vec<_> = (0..2u32)
        .map(|k| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut sent = 0u64;
                loop {
                    for i in (k..SOURCES).step_by(2) {
                        let a = 0x7f01_0000u32 + i;
                        let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(a), 0)).unwrap();
                        s.send_to(format!("<13>flood {i}").as_bytes(), ("127.0.0.1", flood)).unwrap();
                        sent += 1;
                    }
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        return sent;
                    }
                }
            })
        })
        .collect();
    let mut peak = before;
    while senders.iter().any(|s| !s.is_finished()) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    let flood_secs = t0.elapsed().as_secs_f64();
    let trusted_took = trusted.join().unwrap();
    assert!(sent >= u64::from(SOURCES) && sent % u64::from(SOURCES / 2) == 0, "{sent}");
    let fl = [("listener", "flood")];
    let accounted = |n: &Node| {
        let m = n.metrics();
        metric_value(&m, "ferry_committed_records_total", &[("stream", "flood")])
            + metric_value(&m, "ferry_dropped_records_total", &[("listener", "flood")])
            + metric_value(&m, "ferry_socket_dropped_datagrams_total", &[("listener", "flood")])
    };
    let t = Instant::now();
    while accounted(&node) < sent as f64 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(20), |v| {
        v >= N as f64
    });
    peak = peak.max(rss(pid));
    let m = node.metrics();
    let received = metric_value(&m, "ferry_received_records_total", &fl);
    let kernel = metric_value(&m, "ferry_socket_dropped_datagrams_total", &fl);
    let dropped = metric_value(&m, "ferry_dropped_records_total", &fl);
    let committed = metric_value(&m, "ferry_committed_records_total", &[("stream", "flood")]);
    let aggregate =
        metric_value(&m, "ferry_source_limit_shared_records_total", &[("listener", "flood"), ("bucket", "aggregate")]);
    let global =
        metric_value(&m, "ferry_source_limit_shared_records_total", &[("listener", "flood"), ("bucket", "global")]);
    let tracked = metric_value(&m, "ferry_source_limit_tracked_sources", &fl);
    eprintln!(
        "flood: {sent} datagrams from {SOURCES} addresses in {flood_secs:.1} s ({:.0}/s); received {received}, kernel-dropped {kernel}, \
         committed {committed}, dropped {dropped}; shared buckets: aggregate {aggregate}, global {global}; tracked {tracked}; \
         RSS {} -> peak {} MiB; trusted {N} records at {RATE}/s took {:.2} s",
        sent as f64 / flood_secs,
        before >> 20,
        peak >> 20,
        trusted_took.as_secs_f64()
    );
    assert_eq!(committed + dropped + kernel, sent as f64, "every datagram is committed or counted as dropped");
    assert_eq!(received, committed, "what passed the limits is committed");
    assert!(tracked <= 10_000.0 && tracked > 0.0, "{tracked}");
    assert!(aggregate > 0.0 && global > 0.0, "sources beyond max_sources share buckets: {aggregate} {global}");
    // One record per source per second at most, and the flood shares
    // buckets beyond max_sources: far fewer pass than were sent.
    let rounds = sent as f64 / f64::from(SOURCES);
    assert!(committed <= rounds * (10_000.0 + 1_000.0) + flood_secs + 1.0, "{committed}");
    assert!(peak <= FLOOD_RSS_MAX, "RSS peaked at {} MiB", peak >> 20);
    // The trusted stream: nothing lost, at its rate (the sender paces at 5,000/s).
    let nominal = N as f64 / RATE;
    assert!(
        trusted_took.as_secs_f64() <= nominal * 1.5 + 1.0,
        "trusted send took {trusted_took:?}, nominal {nominal} s"
    );
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines.iter().filter(|l| l.starts_with("<13>trusted ")).count(), N);
}
