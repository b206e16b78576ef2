//! The command line as an operator meets it: `ferry check` on the shipped
//! configs and on broken ones, and the shutdown signals.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(FERRY).args(["check", "-c"]).arg(path).output().unwrap()
}

#[test]
fn shipped_edge_config_passes_check() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/edge.toml");
    let out = check(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (site sg1, node relay-1, 2 stream(s), 8 listener(s))"));
}

#[test]
fn shipped_central_config_passes_check() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/central.toml");
    let out = check(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 sink(s), 1 bucket(s))"));
}

#[test]
fn embedded_default_config_passes_check() {
    let dir = TestDir::new("default");
    let out = Command::new(FERRY).arg("default-config").output().unwrap();
    let path = dir.join("default.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    assert!(check(&path).status.success());
}

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let dir = TestDir::new("check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"[node]
site = "sg 1"
name = "relay-1"

[store]
commit_bytes = "1B"
fsync = "sometimes"

[[stream]]
name = "live"

[[listener]]
name = "tcp"
kind = "syslog"
transport = "tcp"
listen = "not-an-address"
stream = "nope"
"#,
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for want in [
        format!("{p}:2: node.site:"),
        format!("{p}:6: store.commit_bytes:"),
        format!("{p}:7: store.fsync:"),
        format!("{p}:16: listener[0].listen:"),
        format!("{p}:17: listener[0].stream:"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    std::fs::write(&path, "[node]\nsite = \"a\"\nname = \"b\"\ncolour = \"blue\"\n").unwrap();
    let err = String::from_utf8_lossy(&check(&path).stderr).into_owned();
    assert!(err.contains(&format!("{p}:4: node.colour: unknown field `colour`")), "{err}");
}

#[test]
fn sigterm_commits_everything_buffered_and_exits_0() {
    let dir = TestDir::new("signals");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    // A long commit interval: records sit pending until shutdown commits them.
    let cfg =
        node_config(&dir, &ports, "commit_interval = \"10s\"", "", "").replace("commit_interval = \"50ms\"\n", "");
    let mut node = Node::start(&dir, &cfg, ports.admin);
    let input: String = (0..1000).map(|i| format!("<13>pending {i}\n")).collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], input.as_bytes());
    node.wait_metric("ferry_received_records_total", &[("listener", "tcp")], Duration::from_secs(5), |v| v == 1000.0);
    assert_eq!(node.metric("ferry_committed_records_total", &[]), 0.0, "still pending");
    node.stop();
    assert_eq!(archive_lines(&node.data).len(), 1000, "SIGTERM committed what was buffered");
    assert_verify_ok(&node.data);
}

#[test]
fn a_second_signal_exits_at_once_while_the_first_is_still_committing() {
    let dir = TestDir::new("signal2");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    // ~20 MB pending at zstd level 19: the shutdown commit takes seconds.
    let cfg =
        node_config(&dir, &ports, "commit_bytes = \"64MiB\"\nzstd_level = 19\nsegment_max_bytes = \"1GiB\"", "", "")
            .replace("commit_interval = \"50ms\"", "commit_interval = \"10s\"");
    let mut node = Node::start(&dir, &cfg, ports.admin);
    let input: String = (0..100_000)
        .map(|i| format!("<13>pending {i} {:x}\n", (i as u64).wrapping_mul(0x9E3779B97F4A7C15).wrapping_pow(3)))
        .collect();
    ferry_send(&["--to", &format!("127.0.0.1:{}", ports.tcp)], input.as_bytes());
    node.wait_metric("ferry_received_records_total", &[("listener", "tcp")], Duration::from_secs(10), |v| {
        v == 100_000.0
    });
    let mut child = node.child.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The first signal is taken (logged), and the node is still committing.
    let t = Instant::now();
    while !node.log_text().contains("signal received: stopping") {
        assert!(t.elapsed() < Duration::from_secs(10), "the first signal was not taken:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "still committing after the first signal");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "second signal did not exit at once");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
}

/// A central node that only receives (a `kind = "ferry"` listener, no
/// ingest) needs no `[[stream]]` of its own: `ferry check` passes it and it
/// runs. Before, check refused it ("no [[stream]] defined").
#[test]
fn a_receive_only_central_needs_no_stream() {
    let dir = TestDir::new("central-only");
    let pki_dir = TestDir::new("pki");
    let pki = util::link::Pki::new(&pki_dir, "pki");
    let (admin, link) = (free_port(), free_port());
    let text = format!(
        "[node]\nsite = \"central\"\nname = \"c1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{link}\"\n\n{}",
        dir.join("data").display(),
        pki.tls_section("central")
    );
    let path = dir.join("central.toml");
    std::fs::write(&path, &text).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut node = Node::start(&dir, &text, admin);
    node.stop();
    // A syslog listener on it still needs a stream, and says so.
    let with_ingest = format!("{text}\n[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{}\"\nstream = \"live\"\n", free_port());
    std::fs::write(&path, with_ingest).unwrap();
    let out = check(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[stream]]"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `ferry status` shows rates over the last seconds (records/s, bytes/s per
/// listener and stream) and counts the open segment in "archive" (it used
/// to say `archive: 0 B in 0 segments` with one open segment, and totals only).
#[test]
fn status_shows_rates_and_counts_the_open_segment() {
    use std::io::Write;
    let dir = TestDir::new("status-rates");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let mut node = Node::start(&dir, &node_config(&dir, &ports, "", "", ""), ports.admin);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(3) {
        for _ in 0..20 {
            c.write_all(format!("<13>Nov 30 10:00:00 h app: rate-{n:06}\n").as_bytes()).unwrap();
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    node.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(10), |v| v >= n as f64);
    let out = Command::new(FERRY).args(["status", "--admin", &format!("127.0.0.1:{}", ports.admin)]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let archive = s.lines().find(|l| l.starts_with("archive: ")).unwrap_or_default();
    assert!(archive.contains("in 1 segments (1 open)") && !archive.starts_with("archive: 0 B"), "{s}");
    // About 200 records/s for 3 s, over the time since the first sample.
    let row = s.lines().find(|l| l.trim_start().starts_with("tcp ")).unwrap_or_else(|| panic!("{s}"));
    let per_sec: f64 = row
        .split_whitespace()
        .nth(3)
        .and_then(|r| r.strip_suffix("/s"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{row}\n{s}"));
    assert!((50.0..=400.0).contains(&per_sec), "tcp at {per_sec}/s:\n{s}");
    assert!(s.contains("RECORDS/S") && s.contains("RAW/S"), "{s}");
    assert!(s.contains("config: ") && s.contains("sha256"), "{s}");
    node.stop();
}
