//! HTTP batch ingest with the real curl: 200 only after commit, gzip and
//! zstd bodies, and every refusal (400, 413, 429, 503) leaves nothing of the
//! refused batch in the archive while earlier batches stay intact.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

/// POST `body` with curl; returns (status, response headers + body).
fn post(port: u16, path: &str, body: &[u8], headers: &[&str], dir: &TestDir) -> (u16, String) {
    let curl = require_tool("curl");
    let file = dir.join("body.bin");
    std::fs::write(&file, body).unwrap();
    let mut c = Command::new(curl);
    c.args(["-sS", "-i", "--max-time", "20", "-X", "POST", "--data-binary"]).arg(format!("@{}", file.display()));
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = c.output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn compress(tool: &str, data: &[u8], dir: &TestDir) -> Vec<u8> {
    let f = dir.join("plain.txt");
    std::fs::write(&f, data).unwrap();
    let out = Command::new(require_tool(tool)).arg("-c").arg(&f).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn batch(tag: &str, n: usize) -> Vec<u8> {
    (0..n).map(|i| format!("{tag} line {i}\n")).collect::<String>().into_bytes()
}

fn http_node(dir: &TestDir, ports: &Ports, store: &str) -> (Node, u16, u16) {
    let (http, limited) = (free_port(), free_port());
    let extra = format!(
        "\n[[stream]]\nname = \"audit\"\n\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\nmax_body_bytes = \"64KiB\"\n\n[[listener]]\nname = \"http-untrusted\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{limited}\"\nstream = \"live\"\ntrust = \"untrusted\"\nsource_records_per_sec = 10\n"
    );
    let cfg = node_config(dir, ports, store, "", &extra);
    (Node::start(dir, &cfg, ports.admin), http, limited)
}

#[test]
fn http_batches_are_acknowledged_after_commit_and_refusals_write_nothing() {
    let dir = TestDir::new("http");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let (mut node, http, limited) = http_node(&dir, &ports, "");

    let (s, r) = post(http, "/v1/streams/live", &batch("plain", 3), &[], &dir);
    assert_eq!(s, 200, "{r}");
    assert!(r.contains("{\"accepted\":3}"), "{r}");
    let (s, r) = post(
        http,
        "/v1/streams/live",
        &compress("gzip", &batch("gzipped", 5), &dir),
        &["Content-Encoding: gzip"],
        &dir,
    );
    assert_eq!((s, r.contains("{\"accepted\":5}")), (200, true), "{r}");
    let (s, r) = post(
        http,
        "/v1/streams/audit",
        &compress("zstd", &batch("zstded", 7), &dir),
        &["Content-Encoding: zstd"],
        &dir,
    );
    assert_eq!((s, r.contains("{\"accepted\":7}")), (200, true), "{r}");
    let ndjson = b"{\"msg\":\"ok one\"}\n{\"msg\": broken}\n{\"msg\":\"ok three\"}\n";
    let (s, r) = post(http, "/v1/streams/live", ndjson, &["Content-Type: application/x-ndjson"], &dir);
    assert_eq!(s, 400, "{r}");
    assert!(r.contains("line 2"), "names the line: {r}");
    let (s, r) = post(http, "/v1/streams/live", &batch("oversized", 5000), &[], &dir);
    assert_eq!(s, 413, "{r}");
    let (s, r) = post(
        http,
        "/v1/streams/live",
        &compress("gzip", &vec![b'a'; 200_000], &dir),
        &["Content-Encoding: gzip"],
        &dir,
    );
    assert_eq!(s, 413, "a decompression bomb is refused too: {r}");
    let (s, _) = post(http, "/v1/streams/nope", &batch("nowhere", 1), &[], &dir);
    assert_eq!(s, 404);
    let (s, r) = post(http, "/v1/streams/live", b"x\n", &["Content-Encoding: br"], &dir);
    assert_eq!(s, 415, "{r}");

    // An untrusted source: its own stream only, and at most its rate.
    let (s, _) = post(limited, "/v1/streams/audit", &batch("elsewhere", 1), &[], &dir);
    assert_eq!(s, 403);
    let (s, r) = post(limited, "/v1/streams/live", &batch("within-limit", 10), &[], &dir);
    assert_eq!(s, 200, "{r}");
    let (s, r) = post(limited, "/v1/streams/live", &batch("over-limit", 10), &[], &dir);
    assert_eq!(s, 429, "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after:"), "{r}");

    let m = node.metrics();
    assert_eq!(metric_value(&m, "ferry_refused_records_total", &[("reason", "bad_request")]), 3.0);
    assert_eq!(metric_value(&m, "ferry_refused_records_total", &[("reason", "rate_limited")]), 10.0);
    node.stop();
    let lines = archive_lines(&node.data);
    let count = |tag: &str| lines.iter().filter(|l| l.starts_with(tag)).count();
    assert_eq!((count("plain"), count("gzipped"), count("zstded"), count("within-limit")), (3, 5, 7, 10));
    for refused in ["{\"msg\"", "oversized", "nowhere", "elsewhere", "over-limit", "aaaa"] {
        assert_eq!(count(refused), 0, "nothing of a refused batch ({refused}) is archived");
    }
    assert_eq!(lines.len(), 25);
}

/// Post batches of barely compressible lines (150 of ~310 bytes) until the
/// node answers 503 (or 200 batches went in): the batches accepted, and the
/// last status.
fn post_until_full(http: u16, dir: &TestDir) -> (Vec<usize>, u16) {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut accepted = Vec::new();
    let mut status = 200;
    for b in 0..200 {
        let mut body = String::new();
        for i in 0..150 {
            let noise: String = (0..300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (b'a' + (x % 26) as u8) as char
                })
                .collect();
            body.push_str(&format!("full-{b:03}-{i:03} {noise}\n"));
        }
        let (s, r) = post(http, "/v1/streams/live", body.as_bytes(), &[], dir);
        status = s;
        if s == 503 {
            assert!(r.to_ascii_lowercase().contains("retry-after:") && r.contains("full"), "{r}");
            break;
        }
        assert_eq!(s, 200, "{r}");
        accepted.push(b);
        std::thread::sleep(Duration::from_millis(20));
    }
    (accepted, status)
}

#[test]
fn a_full_archive_with_on_full_reject_answers_503_and_keeps_earlier_batches() {
    let dir = TestDir::new("http-full");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let store = "segment_max_bytes = \"64MiB\"\n[store.retention]\nmax_bytes = \"1MiB\"\non_full = \"reject\"\ncheck_interval = \"100ms\"";
    let (mut node, http, _) = http_node(&dir, &ports, store);
    // Barely compressible lines: the open segment (never deleted) outgrows max_bytes.
    let (accepted, status) = post_until_full(http, &dir);
    assert_eq!(status, 503, "the store filled up and refused");
    let (s, _) = http_get(ports.admin, "/readyz").unwrap();
    assert_eq!(s, 503, "not ready while full");
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines.len(), accepted.len() * 150, "every accepted batch intact, nothing of the refused one");
    let refused = format!("full-{:03}-", accepted.len());
    assert!(!lines.iter().any(|l| l.starts_with(&refused)));
}

/// "Full" does not wait for the next retention pass: with one a minute (the
/// default interval) the door closes once what was written since the last
/// pass takes the archive over `max_bytes`, not after a minute's intake
/// (here 200 batches, about 5 MB compressed, in 5 s).
#[test]
fn on_full_reject_closes_at_max_bytes_between_retention_passes() {
    let dir = TestDir::new("http-full-between");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let store = "segment_max_bytes = \"64MiB\"\n[store.retention]\nmax_bytes = \"1MiB\"\non_full = \"reject\"\ncheck_interval = \"60s\"";
    let (mut node, http, _) = http_node(&dir, &ports, store);
    let t = std::time::Instant::now();
    let (accepted, status) = post_until_full(http, &dir);
    assert_eq!(status, 503, "{} batches taken in {:?} without a refusal", accepted.len(), t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(60), "refused before the next pass");
    node.stop();
    let bytes: u64 = segments(&node.data).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    // At most one commit past the limit (commits of ~30 KB of frames here).
    assert!(bytes <= (1 << 20) + (256 << 10), "{bytes} bytes archived for max_bytes = 1 MiB");
    assert!(bytes > 1 << 20, "{bytes} bytes: closed before the limit");
}

/// HTTPS with the deployment CA: curl with a deployment certificate gets its
/// 200; curl without one is refused in the handshake and writes nothing.
#[test]
fn https_requires_a_client_certificate_from_the_deployment_ca() {
    let dir = TestDir::new("https");
    let pki = util::link::Pki::new(&dir, "pki");
    let https = free_port();
    let extra = listener("https", "http", "tls", https) + "\n" + &pki.tls_section("central");
    let mut node = start_node(&dir, "", &extra, &[]);
    let edge = pki.dir.join("edge");
    let curl = |tag: &str, cert: bool| {
        let file = dir.join("body.txt");
        std::fs::write(&file, batch(tag, 4)).unwrap();
        let mut c = Command::new(require_tool("curl"));
        c.args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-o", "/dev/null", "--cacert"])
            .arg(edge.join("ca.pem"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
        if cert {
            c.arg("--cert").arg(edge.join("node.pem")).arg("--key").arg(edge.join("node.key"));
        }
        c.arg(format!("https://localhost:{https}/v1/streams/live"));
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(curl("with-cert", true), (true, "200".to_owned()));
    let (ok, code) = curl("without-cert", false);
    assert!(!ok && code != "200", "refused without a client certificate: {code}");
    node.wait_metric("ferry_connections_refused_total", &[("reason", "tls_handshake")], Duration::from_secs(10), |v| {
        v == 1.0
    });
    node.stop();
    let lines = archive_lines(&node.data);
    assert_eq!(lines.iter().filter(|l| l.starts_with("with-cert")).count(), 4);
    assert!(!lines.iter().any(|l| l.starts_with("without-cert")), "{lines:?}");
    assert!(node.log_text().contains("the client sent no certificate"), "{}", node.log_text());
}

/// An untrusted HTTP listener caps connections per source and closes idle
/// ones, like every other stream listener.
#[test]
fn http_connections_are_capped_per_source_and_closed_when_idle() {
    use std::io::Read;
    let dir = TestDir::new("http-conns");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let http = free_port();
    let extra = format!(
        "\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\ntrust = \"untrusted\"\nmax_connections_per_source = 2\nidle_timeout = \"1s\"\n"
    );
    let node = Node::start(&dir, &node_config(&dir, &ports, "", "", &extra), ports.admin);
    let open = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let (mut a, mut b) = (open(), open());
    std::thread::sleep(Duration::from_millis(100));
    let mut third = open();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0, "the third connection from one source is closed at once");
    assert!(t.elapsed() < Duration::from_millis(800), "closed at once, not by the idle timeout");
    for s in [&mut a, &mut b] {
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "an idle connection is closed");
    }
    let idle = t.elapsed();
    assert!(idle < Duration::from_secs(4), "closed by the idle timeout, took {idle:?}");
    node.wait_metric(
        "ferry_connections_refused_total",
        &[("listener", "http"), ("reason", "max_connections_per_source")],
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    node.wait_metric(
        "ferry_connections_closed_total",
        &[("listener", "http"), ("reason", "idle_timeout")],
        Duration::from_secs(5),
        |v| v == 2.0,
    );
    // The source's places are free again.
    let (s, r) = post(http, "/v1/streams/live", &batch("after-idle", 2), &[], &dir);
    assert_eq!(s, 200, "{r}");
}

/// Acknowledged means durable, with the real curl and a real kill -9: a
/// poster sends numbered batches of 50 lines while the node is killed
/// right after the 5th, 30th and 80th 200 it gave (three kill points, each
/// within milliseconds of an acknowledgement) and started again. Every
/// batch curl got a 200 for is in the archive afterwards, and every batch
/// is there whole or not at all.
#[test]
fn batches_acknowledged_right_before_kill9_are_in_the_archive_after_restart() {
    let curl = require_tool("curl");
    let dir = TestDir::new("http-ack-kill");
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let http = free_port();
    let extra = format!(
        "\n[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\n"
    );
    let cfg = node_config(&dir, &ports, "", "", &extra);
    let mut node = Node::start(&dir, &cfg, ports.admin);
    const BATCHES: usize = 200;
    const LINES: usize = 50;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let body_dir = dir.path.clone();
    let poster = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let t = Instant::now();
        let mut i = 0;
        while i < BATCHES {
            assert!(t.elapsed() < Duration::from_secs(120), "posting {BATCHES} batches took over 120 s");
            let file = body_dir.join("ack-body.txt");
            std::fs::write(&file, batch(&format!("ackkill b{i:04}"), LINES)).unwrap();
            let out = Command::new(&curl)
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-X", "POST", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("http://127.0.0.1:{http}/v1/streams/live"))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "200" {
                acked.push(i);
                let _ = tx.send(acked.len());
                i += 1;
            } else {
                // Refused or cut (the node is down or dying): not acknowledged,
                // so it may be archived or not (whole either way); the next
                // batch has a new number.
                std::thread::sleep(Duration::from_millis(100));
                i += 1;
            }
        }
        acked
    });
    kill_after_acks(&mut node, &dir, &cfg, &rx, &[5, 30, 80]);
    let acked = poster.join().unwrap();
    node.stop();
    let lines = archive_lines(&dir.join("data"));
    let mut per_batch = vec![0usize; BATCHES];
    for l in &lines {
        if let Some(b) = l.split("ackkill b").nth(1).and_then(|r| r.get(..4)).and_then(|n| n.parse::<usize>().ok()) {
            per_batch[b] += 1;
        }
    }
    let lost: Vec<usize> = acked.iter().copied().filter(|&b| per_batch[b] != LINES).collect();
    eprintln!("{} batches acknowledged of {BATCHES}, 3 kills; {} lines archived", acked.len(), lines.len());
    assert!(acked.len() >= 100, "too few acknowledged to mean anything: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged batches missing or partial after kill -9: {lost:?}");
    let partial: Vec<(usize, usize)> =
        per_batch.iter().enumerate().filter(|(_, &n)| n != 0 && n != LINES).map(|(b, &n)| (b, n)).collect();
    assert!(partial.is_empty(), "batches archived in part (batch, lines): {partial:?}");
}
