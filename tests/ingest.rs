//! Syslog ingest end to end: real senders (`ferry send`, util-linux
//! `logger`) over every transport, read back with the real `zstdcat`.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::*;

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "<14>1 2026-11-23T10:00:00Z web-01 app - - - {tag}-{i:07} GET /api/v1/items?id={i} 200 {}",
                i * 7 % 1000
            )
        })
        .collect()
}

fn joined(v: &[String]) -> Vec<u8> {
    let mut b = v.join("\n").into_bytes();
    b.push(b'\n');
    b
}

fn logger(args: &[&str], input: &[String]) {
    let logger = require_tool("logger");
    let mut c = Command::new(logger).args(args).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(&joined(input)).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "logger {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The payload tag-index of an archive line (`logger` adds its own header).
fn payload_id(line: &str) -> Option<&str> {
    line.split(' ').find(|w| {
        w.len() > 8 && w.as_bytes()[w.len() - 8] == b'-' && w[w.len() - 7..].bytes().all(|b| b.is_ascii_digit())
    })
}

#[test]
fn two_hundred_thousand_lines_over_every_transport_arrive_exactly() {
    let dir = TestDir::new("ingest");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    let tcp = format!("127.0.0.1:{}", ports.tcp);
    let udp = format!("127.0.0.1:{}", ports.udp);
    let sock = dir.join("ferry.sock").display().to_string();

    // 200,000 distinct lines in all, split over senders, transports and framings.
    let sets: Vec<(&str, Vec<String>)> = vec![
        ("tcplf", lines("tcplf", 50_000)),
        ("tcpoct", lines("tcpoct", 50_000)),
        ("udp", lines("udp", 30_000)),
        ("unix", lines("unix", 30_000)),
        ("lgtcp", lines("lgtcp", 15_000)),
        ("lgoct", lines("lgoct", 10_000)),
        ("lgudp", lines("lgudp", 5_000)),
        ("lgunix", lines("lgunix", 10_000)),
    ];
    assert_eq!(sets.iter().map(|s| s.1.len()).sum::<usize>(), 200_000);
    let get = |t: &str| &sets.iter().find(|s| s.0 == t).unwrap().1;

    // Over a stream the report says the listener read everything (it
    // closed after ferry send's half-close), not just that a socket took it.
    let said = ferry_send(&["--to", &tcp], &joined(get("tcplf")));
    assert!(said.contains("read to the end by the listener"), "{said}");
    ferry_send(&["--to", &tcp, "--framing", "octet"], &joined(get("tcpoct")));
    // Datagrams are paced: they have no flow control, and under overload ferry drops and counts
    // them by design (reason "overload"); this test is about exact delivery.
    let said = ferry_send(&["--to", &udp, "--transport", "udp", "--rate", "40000"], &joined(get("udp")));
    assert!(said.contains("datagrams are not acknowledged"), "{said}");
    ferry_send(&["--to", &sock, "--transport", "unix", "--rate", "40000"], &joined(get("unix")));
    let port = ports.tcp.to_string();
    let uport = ports.udp.to_string();
    logger(&["-T", "-n", "127.0.0.1", "-P", &port, "-t", "lg"], get("lgtcp"));
    logger(&["-T", "--octet-count", "-n", "127.0.0.1", "-P", &port, "-t", "lg"], get("lgoct"));
    for chunk in get("lgudp").chunks(1000) {
        logger(&["-d", "-n", "127.0.0.1", "-P", &uport, "-t", "lg"], chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    logger(&["-u", &sock, "--socket-errors=on", "-t", "lg"], get("lgunix"));

    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(60), |v| {
        v >= 200_000.0
    });
    node.stop();
    assert_verify_ok(&node.data);

    let archive = archive_lines(&node.data);
    assert_eq!(archive.len(), 200_000, "exactly the lines sent, no more, no less");
    // ferry send delivers the lines verbatim, in order per connection.
    let want: HashSet<&str> =
        ["tcplf", "tcpoct", "udp", "unix"].iter().flat_map(|t| get(t).iter().map(String::as_str)).collect();
    let mut by_tag: HashMap<String, Vec<String>> = HashMap::new();
    for l in &archive {
        let id = payload_id(l).unwrap_or_else(|| panic!("unexpected line in archive: {l:?}"));
        let tag = id.rsplit_once('-').unwrap().0.to_owned();
        if !tag.starts_with("lg") {
            assert!(want.contains(l.as_str()), "line not sent verbatim: {l:?}");
        }
        by_tag.entry(tag).or_default().push(id.to_owned());
    }
    for (tag, sent) in &sets {
        let got = by_tag.get(*tag).map(Vec::len).unwrap_or(0);
        assert_eq!(got, sent.len(), "{tag}: {got} of {} arrived", sent.len());
        let ids: Vec<String> = sent.iter().map(|l| payload_id(l).unwrap().to_owned()).collect();
        let got_ids = &by_tag[*tag];
        if matches!(*tag, "tcplf" | "tcpoct" | "lgtcp" | "lgoct" | "unix") {
            assert_eq!(got_ids, &ids, "{tag}: order within one connection is kept");
        } else {
            let a: HashSet<_> = got_ids.iter().collect();
            assert_eq!(a.len(), ids.len(), "{tag}: no duplicates");
        }
    }
}

#[test]
fn records_with_special_bytes_round_trip_through_the_escaping() {
    let dir = TestDir::new("escape");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    // Octet counting carries LF, CR, NUL and backslash inside a record.
    let recs: Vec<&[u8]> =
        vec![b"multi\nline\r\nrecord", b"nul\0byte", b"back\\slash \\n literal", b"\xff\xfe not utf-8"];
    let mut wire = Vec::new();
    for r in &recs {
        wire.extend_from_slice(format!("{} ", r.len()).as_bytes());
        wire.extend_from_slice(r);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
    s.write_all(&wire).unwrap();
    drop(s);
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(10), |v| v >= 4.0);
    let m = node.metrics();
    assert_eq!(metric_value(&m, "ferry_flagged_records_total", &[("flag", "nul_byte")]), 1.0);
    assert_eq!(metric_value(&m, "ferry_flagged_records_total", &[("flag", "invalid_utf8")]), 1.0);
    node.stop();
    let raw = zstdcat(&node.data);
    let got: Vec<Vec<u8>> =
        raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(ferry::store::escape::unescape).collect();
    assert_eq!(got, recs.iter().map(|r| r.to_vec()).collect::<Vec<_>>());
    assert_eq!(raw.iter().filter(|b| **b == b'\n').count(), 4, "one line per record");
}

#[test]
fn routes_send_matching_records_to_their_stream_and_the_rest_to_the_listener_stream() {
    let dir = TestDir::new("route");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let routes = "\n[[listener.route]]\nfacility = \"authpriv\"\nstream = \"audit\"\n\n[[listener.route]]\napp_name = \"sudo\"\nstream = \"audit\"\n";
    let extra = format!(
        "\n[[stream]]\nname = \"audit\"\n\n[[listener]]\nname = \"unix-stream\"\nkind = \"syslog\"\ntransport = \"unix-stream\"\nlisten = \"{}\"\n",
        dir.join("stream.sock").display()
    );
    let cfg = node_config(&dir, &ports, "", routes, &extra);
    let mut node = Node::start(&dir, &cfg, ports.admin);
    let input = [
        "<86>Nov 23 10:00:00 host sshd[1]: authpriv goes to audit", // facility 10 = authpriv
        "<13>Nov 23 10:00:00 host sudo[2]: sudo goes to audit",
        "<13>1 2026-11-23T10:00:00Z host sudo 3 - - rfc5424 sudo goes to audit",
        "<13>Nov 23 10:00:00 host nginx[4]: nginx stays live",
        "not syslog at all stays live",
    ]
    .join("\n");
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], format!("{input}\n").as_bytes());
    let sock = dir.join("stream.sock").display().to_string();
    ferry_send(&["--to", &sock, "--transport", "unix-stream", "--framing", "octet"], b"<13>via unix stream\n");
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(10), |v| v >= 6.0);
    assert_eq!(node.metric("ferry_committed_records_total", &[("stream", "audit")]), 3.0);
    assert_eq!(node.metric("ferry_committed_records_total", &[("stream", "live")]), 3.0);
    node.stop();
    let out = Command::new(require_tool("zstdcat"))
        .args(segments(&node.data).iter().filter(|p| p.to_string_lossy().contains("/audit/")))
        .output()
        .unwrap();
    let audit = String::from_utf8(out.stdout).unwrap();
    assert_eq!(audit.lines().count(), 3);
    assert!(audit.lines().all(|l| l.ends_with("goes to audit")), "{audit}");
    let all = archive_lines(&node.data);
    assert!(all.contains(&"<13>via unix stream".to_owned()));
    assert!(all.contains(&"not syslog at all stays live".to_owned()));
}

/// UDP has no flow control: while ferry cannot read (here: SIGSTOPped), the
/// kernel drops what its socket buffer cannot hold. Those drops are counted
/// too (`ferry_socket_dropped_datagrams_total`), so every datagram sent is
/// either in the archive or in a counter.
#[test]
fn udp_datagrams_the_kernel_drops_while_ferry_cannot_read_are_counted() {
    let dir = TestDir::new("udp-kernel-drops");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    let pid = node.pid() as libc::pid_t;
    // SAFETY: signals to our own child process, which is running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    const N: usize = 30_000;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let pad = "x".repeat(1000);
    let start = std::time::Instant::now();
    for i in 0..N {
        sock.send_to(format!("<13>Nov 26 10:00:00 h app: kdrop-{i:06} {pad}").as_bytes(), ("127.0.0.1", ports.udp))
            .unwrap();
        if i % 100 == 99 {
            // About 30,000 datagrams/s: the kernel keeps up, only the stopped reader does not.
            let due = Duration::from_micros(i as u64 * 33);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let accounted = |n: &Node| {
        let m = n.metrics();
        let committed = metric_value(&m, "ferry_committed_records_total", &[("stream", "live")]);
        let dropped = metric_value(&m, "ferry_dropped_records_total", &[("listener", "udp")]);
        let kernel = metric_value(&m, "ferry_socket_dropped_datagrams_total", &[("listener", "udp")]);
        (committed, dropped, kernel)
    };
    let t = std::time::Instant::now();
    let (committed, dropped, kernel) = loop {
        let (c, d, k) = accounted(&node);
        if c + d + k >= N as f64 || t.elapsed() > Duration::from_secs(20) {
            break (c, d, k);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{N} sent: {committed} committed, {dropped} dropped by ferry, {kernel} dropped by the kernel");
    assert!(kernel > 0.0, "the stopped reader's socket buffer overflowed");
    assert!(committed > 0.0, "what the buffer held was read after SIGCONT");
    assert_eq!(committed + dropped + kernel, N as f64, "every datagram is archived or counted");
    let status =
        Command::new(FERRY).args(["status", "--admin", &format!("127.0.0.1:{}", ports.admin)]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("kernel_socket_buffer={kernel}")),
        "ferry status shows the kernel's drops:\n{status}"
    );
    node.stop();
    assert_eq!(archive_lines(&node.data).len() as f64, committed);
}

/// Without CAP_NET_ADMIN (as under its systemd unit) ferry gets at most
/// `net.core.rmem_max` for a UDP socket's receive buffer; it says so at start
/// when that is below the 8 MiB it asks for, naming the sysctl to raise.
#[test]
fn an_unprivileged_node_warns_when_the_kernel_caps_its_udp_receive_buffer() {
    let setpriv = require_tool("setpriv");
    let dir = TestDir::new("rcvbuf");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let cfg = dir.join("ferry.toml");
    std::fs::write(&cfg, node_config(&dir, &ports, "", "", "")).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.join("ferry.log");
    // As root, drop to nobody without capabilities; otherwise the test already runs unprivileged.
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", FERRY]);
        c
    } else {
        Command::new(FERRY)
    };
    let mut child = cmd
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ferry ready") || t.elapsed() > Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("ferry ready"), "the unprivileged node started:\n{text}");
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
    let warned = text.lines().any(|l| {
        l.contains("capped this listener's receive buffer") && l.contains("udp") && l.contains("net.core.rmem_max")
    });
    assert_eq!(warned, rmem_max < 8 << 20, "rmem_max = {rmem_max}:\n{text}");
}
