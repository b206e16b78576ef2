//! Reload on SIGHUP (issue 14): a running edge with a TLS link to central
//! takes listener, rate and address changes in place; an invalid file, a
//! key that needs a restart, or TLS files that do not verify change nothing.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::link::*;
use util::*;

fn hup(node: &Node) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
}

/// Write `cfg`, SIGHUP, and wait for the reload counter of `result` to grow.
fn reload(node: &Node, cfg: &str, result: &str) {
    let before = node.metric("ferry_config_reloads_total", &[("result", result)]);
    std::fs::write(&node.config, cfg).unwrap();
    hup(node);
    node.wait_metric("ferry_config_reloads_total", &[("result", result)], Duration::from_secs(30), |v| v > before);
}

fn config_hash(node: &Node) -> String {
    let m = node.metrics();
    let line = m.lines().find(|l| l.starts_with("ferry_config_info{")).expect("ferry_config_info").to_owned();
    line.split("hash=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

fn line(tag: &str, i: usize) -> String {
    format!("<13>Nov 30 10:00:00 h app: {tag}-{i:06} x\n")
}

#[test]
fn reload_changes_listeners_rate_and_addresses_in_place_and_refuses_what_it_must() {
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let (port_a, port_b) = (free_port(), free_port());
    let mut p = pair("reload", &pki, Via::Tls, port_a, port_a, "", "max_rate = \"1MB/s\"");
    p.central_cfg.push_str(&format!(
        "\n[[listener]]\nname = \"link2\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{port_b}\"\nidle_timeout = \"3s\"\n"
    ));
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    let v1 = p.edge_cfg.clone();
    let hash1 = config_hash(&edge);
    assert_eq!(edge.metric("ferry_config_last_reload_successful", &[]), 1.0);
    assert!(edge.metric("ferry_certificate_expiry_timestamp_seconds", &[("role", "node")]) > 1e9);

    // A collector connection to a listener no reload touches.
    let mut kept = TcpStream::connect(("127.0.0.1", p.edge_ports.tcp)).unwrap();
    for i in 0..100 {
        kept.write_all(line("kept", i).as_bytes()).unwrap();
    }
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(20), |v| v >= 100.0);
    edge.wait_metric("ferry_uplink_connected", &[], Duration::from_secs(20), |v| v == 1.0);
    let reconnects = edge.metric("ferry_uplink_reconnects_total", &[]);

    // v2: a listener removed (udp), one added (tcp2), the rate cap lowered.
    let tcp2 = free_port();
    let udp_block = format!(
        "[[listener]]\nname = \"udp\"\nkind = \"syslog\"\ntransport = \"udp\"\nlisten = \"127.0.0.1:{}\"\n",
        p.edge_ports.udp
    );
    assert!(v1.contains(&udp_block), "{v1}");
    let v2 = v1.replace(
        &udp_block,
        &format!("[[listener]]\nname = \"tcp2\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{tcp2}\"\nstream = \"live\"\n"),
    )
    .replace("max_rate = \"1MB/s\"", "max_rate = \"200KB/s\"");
    reload(&edge, &v2, "applied");
    edge.wait_metric("ferry_uplink_max_rate_bytes", &[], Duration::from_secs(10), |v| v == 200_000.0);
    assert_ne!(config_hash(&edge), hash1);
    assert_eq!(edge.metric("ferry_uplink_reconnects_total", &[]), reconnects, "a rate change keeps the session");
    // The udp port is free again; tcp2 takes records.
    std::net::UdpSocket::bind(("127.0.0.1", p.edge_ports.udp)).expect("the removed listener's port is free");
    let mut new = TcpStream::connect(("127.0.0.1", tcp2)).unwrap();
    for i in 0..100 {
        new.write_all(line("new", i).as_bytes()).unwrap();
        kept.write_all(line("kept", 100 + i).as_bytes()).unwrap();
    }
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(20), |v| v >= 300.0);

    // v3: the uplink's address changes: it ends its session and dials link2.
    let v3 = v2.replace(&format!("127.0.0.1:{port_a}\"]"), &format!("127.0.0.1:{port_b}\"]"));
    reload(&edge, &v3, "applied");
    central.wait_metric("ferry_link_sessions_active", &[("listener", "link2")], Duration::from_secs(20), |v| v == 1.0);
    central.wait_metric("ferry_link_sessions_active", &[("listener", "link")], Duration::from_secs(20), |v| v == 0.0);
    let hash3 = config_hash(&edge);

    // An invalid file: nothing changes; the problem is logged with file:line: key.
    let bad = v3.replace("max_rate = \"200KB/s\"", "max_rate = \"fast\"");
    let bad_line = bad.lines().position(|l| l.contains("\"fast\"")).unwrap() + 1;
    reload(&edge, &bad, "invalid");
    assert_eq!(edge.metric("ferry_config_last_reload_successful", &[]), 0.0);
    assert_eq!(config_hash(&edge), hash3);
    let want = format!("{}:{bad_line}: uplink.max_rate", edge.config.display());
    assert!(edge.log_text().contains(&want), "log names {want}:\n{}", edge.log_text());

    // A key that needs a restart: refused by name.
    reload(&edge, &v3.replace("site = \"edge1\"", "site = \"edge2\""), "refused");
    assert!(edge.log_text().contains("reload refused: node.site: cannot change while ferry runs"));
    reload(
        &edge,
        &v3.replace("name = \"live\"", "name = \"other\"").replace("stream = \"live\"", "stream = \"other\""),
        "refused",
    );
    assert!(edge.log_text().contains("reload refused: stream live: removing a stream needs a restart"));

    // TLS files that do not go together: refused, the material in force stays.
    let central_cert = pki.dir.join("central").join("node.pem").display().to_string();
    let edge_cert = pki.dir.join("edge").join("node.pem").display().to_string();
    reload(&edge, &v3.replace(&edge_cert, &central_cert), "refused");
    assert!(edge.log_text().contains("reload refused: tls:"), "{}", edge.log_text());
    assert_eq!(config_hash(&edge), hash3);
    let other = TestDir::new("pki2");
    let foreign = Pki::new(&other, "pki");
    reload(
        &edge,
        &v3.replace(
            &pki.dir.join("edge").join("ca.pem").display().to_string(),
            &foreign.dir.join("edge").join("ca.pem").display().to_string(),
        ),
        "refused",
    );
    assert!(edge.log_text().contains("is not verified by the CA bundle"), "{}", edge.log_text());

    // The same file again: unchanged, and it was fine all along.
    reload(&edge, &v3, "unchanged");
    assert_eq!(edge.metric("ferry_config_last_reload_successful", &[]), 1.0);

    // Nothing touched the kept connection; everything acknowledged arrives once.
    for i in 0..100 {
        kept.write_all(line("kept", 200 + i).as_bytes()).unwrap();
    }
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(20), |v| v >= 400.0);
    assert_eq!(edge.metric("ferry_connections_accepted_total", &[("listener", "tcp")]), 1.0);
    assert_eq!(edge.metric("ferry_connections_closed_total", &[("listener", "tcp")]), 0.0);
    drop(kept);
    drop(new);
    // Stopping seals the open segment and the uplink delivers it on the way out.
    edge.stop();
    let t = Instant::now();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    eprintln!("mirrored {:?} after the stop", t.elapsed());
    assert_byte_identical(&edge.data, &central.data);
    let ids = id_counts(&central.data, "kept-").unwrap();
    assert_eq!(ids.len(), 300);
    assert!(ids.values().all(|&n| n == 1));
    let ids = id_counts(&central.data, "new-").unwrap();
    assert_eq!(ids.len(), 100);
    assert!(ids.values().all(|&n| n == 1));
}
