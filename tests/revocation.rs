//! Trust taken back (issue 28): `ferry certs revoke` writes the CA's CRL,
//! a node reads it through `[tls] crl` on reload, and from then on the
//! revoked certificate is refused everywhere: a link session in progress
//! ends, its reconnects fail with `certificate_revoked` on both sides, and
//! collectors (syslog over TLS, RELP over TLS from rsyslog) are refused.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::link::*;
use util::rsyslog::Rsyslog;
use util::*;

fn hup(node: &Node) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
}

/// `ferry certs <args>`, which must succeed; its standard output.
fn certs(args: &[&str]) -> String {
    let out = Command::new(FERRY).arg("certs").args(args).output().unwrap();
    assert!(out.status.success(), "ferry certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn revoke(pki: &Pki, who: &str) -> String {
    let (ca, cert) = (pki.dir.join("ca"), pki.dir.join(who).join("node.pem"));
    certs(&["revoke", "--ca", &ca.display().to_string(), "--cert", &cert.display().to_string()])
}

/// `cfg` with `crl = "<pki>/ca/crl.pem"` in its `[tls]` section.
fn with_crl(cfg: &str, pki: &Pki) -> String {
    let crl = pki.dir.join("ca/crl.pem");
    assert!(cfg.contains("[tls]\n"), "{cfg}");
    cfg.replace("[tls]\n", &format!("[tls]\ncrl = \"{}\"\n", crl.display()))
}

/// Lines to `port` (syslog over TCP) until `stop`: traffic that keeps an
/// uplink busy while the test looks at it.
fn keep_sending(port: u16, tag: &'static str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = String::new();
            for _ in 0..200 {
                batch.push_str(&format!("<13>Dec  5 10:00:00 h app: {tag}-{i:08} {}\n", noise(i as u64, 60)));
                i += 1;
            }
            s.write_all(batch.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        i
    })
}

/// Two edges deliver to central; edge1's certificate is revoked and central
/// reloads with the CRL: edge1's session ends within a second, its
/// reconnects fail with certificate_revoked in both logs and both metrics;
/// edge2 keeps its session and its bytes keep arriving; everything edge1
/// had acknowledged is in the mirror, a byte-identical prefix of its files.
fn revocation_under_traffic(via: Via) {
    let dir = TestDir::new("revoke-link");
    let pki = Pki::new(&dir, "pki");
    pki.issue("edge2", "relay-b", "edge2", &[]);
    let port = free_port();
    let store = "commit_bytes = \"64KiB\"\nsegment_max_bytes = \"256KiB\"";
    let a = pair("revoke-a", &pki, via, port, port, store, "");
    let b = pair("revoke-b", &pki, via, port, port, store, "");
    let b_cfg = b
        .edge_cfg
        .replace(&pki.dir.join("edge").display().to_string(), &pki.dir.join("edge2").display().to_string())
        .replace("site = \"edge1\"", "site = \"edge2\"")
        .replace("name = \"relay-1\"", "name = \"relay-b\"");
    let mut central = Node::start(&a.central_dir, &a.central_cfg, a.central_ports.admin);
    let mut edge_a = Node::start(&a.edge_dir, &a.edge_cfg, a.edge_ports.admin);
    let mut edge_b = Node::start(&b.edge_dir, &b_cfg, b.edge_ports.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let senders =
        [keep_sending(a.edge_ports.tcp, "a", stop.clone()), keep_sending(b.edge_ports.tcp, "b", stop.clone())];
    let received = |site: &str| central.metric("ferry_link_received_bytes_total", &[("site", site)]);
    for site in ["edge1", "edge2"] {
        let t = Instant::now();
        while received(site) <= 0.0 {
            assert!(t.elapsed() < Duration::from_secs(30), "{site} delivers nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let b_reconnects = edge_b.metric("ferry_uplink_reconnects_total", &[("uplink", "central")]);

    let out = revoke(&pki, "edge");
    assert!(out.contains("revoked ferry://edge1/relay-1"), "{out}");
    std::fs::write(&central.config, with_crl(&a.central_cfg, &pki)).unwrap();
    // edge2's progress as central sees it, every 20 ms, from a second before
    // the reload to three seconds after.
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        samples.push((Instant::now(), received("edge2")));
        std::thread::sleep(Duration::from_millis(20));
    }
    let reloads = central.metric("ferry_config_reloads_total", &[("result", "applied")]);
    let hupped = Instant::now();
    hup(&central);
    let mut ended = None;
    while hupped.elapsed() < Duration::from_secs(4) {
        samples.push((Instant::now(), received("edge2")));
        if ended.is_none() && central.metric("ferry_link_refused_total", &[("reason", "certificate_revoked")]) >= 1.0 {
            ended = Some(hupped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        central.metric("ferry_config_reloads_total", &[("result", "applied")]) > reloads,
        "the reload was applied:\n{}",
        central.log_text()
    );
    let ended = ended.unwrap_or_else(|| panic!("edge1's session did not end:\n{}", central.log_text()));
    assert!(ended < Duration::from_secs(1), "edge1's session ended {ended:?} after the SIGHUP");

    // Its reconnects fail in the handshake, on both sides.
    edge_a.wait_metric(
        "ferry_uplink_errors_total",
        &[("uplink", "central"), ("reason", "certificate_revoked")],
        Duration::from_secs(20),
        |v| v >= 2.0,
    );
    central.wait_metric(
        "ferry_link_refused_total",
        &[("reason", "certificate_revoked")],
        Duration::from_secs(20),
        |v| v >= 2.0,
    );
    let acked = edge_a.metric("ferry_uplink_acked_bytes_total", &[("uplink", "central")]);
    assert!(acked > 0.0);

    // edge2 never paused longer than a reconnect (it did not even reconnect).
    let longest = longest_pause(&samples, true);
    assert!(longest < Duration::from_millis(1500), "edge2's bytes stopped arriving for {longest:?}");
    assert_eq!(edge_b.metric("ferry_uplink_reconnects_total", &[("uplink", "central")]), b_reconnects);
    assert_eq!(
        edge_b.metric("ferry_uplink_errors_total", &[("uplink", "central"), ("reason", "certificate_revoked")]),
        0.0
    );

    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    edge_a.stop();
    edge_b.stop();
    central.stop();
    let (alog, clog) = (edge_a.log_text(), central.log_text());
    assert!(alog.contains("certificate_revoked") && alog.contains("it is revoked"), "edge1's log says why:\n{alog}");
    assert!(
        clog.lines().any(|l| l.contains("link refused") && l.contains("certificate_revoked")),
        "central's log says why:\n{clog}"
    );
    // Everything edge1 had acknowledged is in the mirror, byte for byte.
    let mut mirrored = 0u64;
    for r in segment_files(&central.data, "edge1") {
        let m = std::fs::read(central.data.join("archive").join(&r)).unwrap();
        let e = std::fs::read(edge_a.data.join("archive").join(&r)).unwrap();
        assert!(e.starts_with(&m), "{}: the mirror is a prefix of the edge's file", r.display());
        mirrored += m.len() as u64;
    }
    assert!(mirrored as f64 >= acked, "acknowledged {acked} bytes, mirrored {mirrored}");
    // Its data is kept and marked in the audit; edge2's is not marked.
    let archive = central.data.display().to_string();
    let table = Command::new(FERRY).args(["audit", &archive]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("edge1/relay-1: written by a node revoked at"), "{table}");
    assert!(!table.contains("edge2/relay-b: written by a node revoked"), "{table}");
    let json = Command::new(FERRY).args(["audit", &archive, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let revoked = v["revoked"].as_array().unwrap();
    assert_eq!(revoked.len(), 1, "{v}");
    assert_eq!((revoked[0]["site"].as_str(), revoked[0]["node"].as_str()), (Some("edge1"), Some("relay-1")));
}

#[test]
fn over_tls_a_revoked_edge_is_cut_off_at_the_reload_and_the_other_edge_carries_on() {
    revocation_under_traffic(Via::Tls)
}

#[test]
fn over_quic_a_revoked_edge_is_cut_off_at_the_reload_and_the_other_edge_carries_on() {
    revocation_under_traffic(Via::Quic)
}

/// `openssl s_client` with `who`'s certificate, having sent `line`; it
/// exits when the server closes the connection.
fn open_client(port: u16, ca: &Path, who: &Path, line: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(require_tool("openssl"))
        .args(["s_client", "-quiet", "-no_ign_eof", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
        .arg(ca)
        .arg("-cert")
        .arg(who.join("node.pem"))
        .arg("-key")
        .arg(who.join("node.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    (child, stdin)
}

/// [`open_client`], then its input closed and its end awaited (5 s at most).
fn s_client(port: u16, ca: &Path, who: &Path, line: &str) {
    let (mut child, stdin) = open_client(port, ca, who, line);
    drop(stdin);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A syslog-over-TLS listener requiring client certificates accepts a
/// collector's certificate, then refuses it after the reload that brings
/// the CRL revoking it (logged as revoked, counted), and a session of it
/// left open across the reload is ended; RELP over TLS from a
/// real rsyslog holding that certificate is refused and counted too, and
/// nothing it sends is archived. Another collector's certificate still
/// passes.
#[test]
fn collectors_with_a_revoked_certificate_are_refused_after_a_reload() {
    let dir = TestDir::new("revoke-collectors");
    let pki = Pki::new(&dir, "pki");
    pki.issue("edge1", "collector-2", "collector-2", &[]);
    let ports = Ports { tcp: free_port(), udp: free_port(), admin: free_port() };
    let (tls_port, relp_port) = (free_port(), free_port());
    let extra = format!(
        "\n[[listener]]\nname = \"tls\"\nkind = \"syslog\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{tls_port}\"\nstream = \"live\"\n\n[[listener]]\nname = \"relp-tls\"\nkind = \"relp\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{relp_port}\"\nstream = \"live\"\n\n{}",
        pki.tls_section("central")
    );
    let cfg = node_config(&dir, &ports, "", "", &extra);
    let node = Node::start(&dir, &cfg, ports.admin);
    let ca = pki.dir.join("ca/ca.pem");
    let (revoked, other) = (pki.dir.join("edge"), pki.dir.join("collector-2"));
    s_client(tls_port, &ca, &revoked, "<13>Dec  5 10:00:00 h app: before-revocation");
    // A session of that collector that stays open across the reload.
    let (mut held, held_input) = open_client(tls_port, &ca, &revoked, "<13>Dec  5 10:00:00 h app: held-open");
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(20), |v| v >= 2.0);
    assert!(held.try_wait().unwrap().is_none(), "the held session is open");

    let out = revoke(&pki, "edge");
    assert!(out.contains("revoked ferry://edge1/relay-1"), "{out}");
    let again = revoke(&pki, "edge");
    assert!(again.contains("already revoked"), "revoking twice changes nothing: {again}");
    let before = node.metric("ferry_config_reloads_total", &[("result", "applied")]);
    std::fs::write(&node.config, with_crl(&cfg, &pki)).unwrap();
    hup(&node);
    node.wait_metric("ferry_config_reloads_total", &[("result", "applied")], Duration::from_secs(20), |v| v > before);
    let refused =
        |l: &str| node.metric("ferry_connections_refused_total", &[("listener", l), ("reason", "tls_handshake")]);
    assert_eq!(refused("tls"), 0.0);
    // The open session ends at the reload: ferry closes it, s_client exits.
    let t = Instant::now();
    while held.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "the revoked collector's open session was not ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held_input);

    s_client(tls_port, &ca, &revoked, "<13>Dec  5 10:00:00 h app: after-revocation");
    node.wait_metric("ferry_connections_refused_total", &[("listener", "tls")], Duration::from_secs(10), |v| v >= 1.0);
    s_client(tls_port, &ca, &other, "<13>Dec  5 10:00:00 h app: other-collector");
    node.wait_metric("ferry_committed_records_total", &[("stream", "live")], Duration::from_secs(20), |v| v >= 3.0);

    // RELP over TLS from rsyslog holding the revoked certificate.
    let input = free_port();
    let rs = Rsyslog::omrelp_tls(&dir, relp_port, input, &ca, &revoked);
    ferry_send(&["--to", &format!("127.0.0.1:{input}")], b"<13>Dec  5 10:00:00 h app: relp-from-revoked\n");
    node.wait_metric("ferry_connections_refused_total", &[("listener", "relp-tls")], Duration::from_secs(30), |v| {
        v >= 2.0
    });
    drop(rs);
    let mut node = node;
    node.stop();
    let log = node.log_text();
    assert!(
        log.lines().any(|l| l.contains("TLS connection refused") && l.contains("revoked")),
        "the refusal says the certificate is revoked:\n{log}"
    );
    assert!(
        log.contains("the client certificate is revoked by the CRL a reload put in force"),
        "the held session was ended by ferry, saying why:\n{log}"
    );
    assert!(!log.contains("panicked"), "no connection task panicked:\n{log}");
    let lines = archive_lines(&node.data);
    let tags: Vec<&str> = lines.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    assert_eq!(tags, ["before-revocation", "held-open", "other-collector"], "{lines:?}");
}
