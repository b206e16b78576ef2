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

fn certs(args: &[&str]) {
    let out = std::process::Command::new(FERRY).arg("certs").args(args).output().unwrap();
    assert!(out.status.success(), "ferry certs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ca_count(node: &Node) -> usize {
    node.metrics().lines().filter(|l| l.starts_with("ferry_certificate_expiry_timestamp_seconds{role=\"ca\"")).count()
}

/// certs/README.md, "Rotation", run step by step while an edge delivers to
/// central: new CA into both bundles, reload; new node certificates, reload;
/// old CA out, reload. After each reload the uplink dials again (a new
/// handshake with what is now in force), and delivery never pauses longer
/// than a reconnect.
#[test]
fn the_ca_rotation_procedure_keeps_the_link_delivering() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let link = free_port();
    let p = pair("rotate", &pki, Via::Tls, link, link, "", "");
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    assert_eq!(ca_count(&edge), 1);

    // Records flow all along; acknowledged bytes are sampled every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(0usize));
    let sender = {
        let (stop, sent, port) = (stop.clone(), sent.clone(), p.edge_ports.tcp);
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: String = (i..i + 20).map(|j| line("rot", j)).collect();
                c.write_all(batch.as_bytes()).unwrap();
                i += 20;
                *sent.lock().unwrap() = i;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let samples = Arc::new(Mutex::new(Vec::<(Instant, f64)>::new()));
    let sampler = {
        let (stop, samples, admin) = (stop.clone(), samples.clone(), p.edge_ports.admin);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, text)) = http_get(admin, "/metrics") {
                    samples
                        .lock()
                        .unwrap()
                        .push((Instant::now(), metric_value(&text, "ferry_uplink_acked_bytes_total", &[])));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (edge_dir, central_dir) = (pki.dir.join("edge"), pki.dir.join("central"));
    let old_ca = std::fs::read_to_string(edge_dir.join("ca.pem")).unwrap();
    let mut edge_cfg = p.edge_cfg.clone();
    let mut flip = false;
    // Reload both with the files as they are now, then make the uplink dial
    // again (a changed connect_timeout restarts it) and see it deliver.
    let mut step = |edge: &Node, what: &str| {
        reload(&central, &p.central_cfg, "applied");
        reload(edge, &edge_cfg, "applied");
        flip = !flip;
        edge_cfg = if flip {
            edge_cfg.replace("connect_timeout = \"2s\"", "connect_timeout = \"3s\"")
        } else {
            edge_cfg.replace("connect_timeout = \"3s\"", "connect_timeout = \"2s\"")
        };
        let dials = edge.log_text().matches("uplink connected").count();
        reload(edge, &edge_cfg, "applied");
        let t = Instant::now();
        while edge.log_text().matches("uplink connected").count() == dials {
            assert!(t.elapsed() < Duration::from_secs(15), "{what}: the uplink did not connect again");
            std::thread::sleep(Duration::from_millis(20));
        }
        let acked = edge.metric("ferry_uplink_acked_bytes_total", &[]);
        edge.wait_metric("ferry_uplink_acked_bytes_total", &[], Duration::from_secs(15), |v| v > acked);
        eprintln!("{what}: delivering");
    };

    // 1. A new CA, added to every bundle.
    let new_ca_dir = pki_dir.join("new-ca");
    certs(&["ca", "--out", &new_ca_dir.display().to_string(), "--name", "ferry CA 2027"]);
    let new_ca = std::fs::read_to_string(new_ca_dir.join("ca.pem")).unwrap();
    for d in [&edge_dir, &central_dir] {
        std::fs::write(d.join("ca.pem"), format!("{old_ca}{new_ca}")).unwrap();
    }
    step(&edge, "bundle of both CAs");
    assert_eq!(ca_count(&edge), 2);
    assert_eq!(ca_count(&central), 2);

    // 2. Every node reissued by the new CA.
    let issued = pki_dir.join("reissued");
    issue_nodes(&new_ca_dir, &issued);
    for (from, to) in [(issued.join("edge"), &edge_dir), (issued.join("central"), &central_dir)] {
        for f in ["node.pem", "node.key"] {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
    step(&edge, "new node certificates");

    // 3. The old CA out of every bundle.
    for d in [&edge_dir, &central_dir] {
        std::fs::write(d.join("ca.pem"), &new_ca).unwrap();
    }
    step(&edge, "new CA alone");
    assert_eq!(ca_count(&edge), 1);
    let m = edge.metrics();
    assert!(m.contains("ferry CA 2027"), "the CA in force is the new one:\n{m}");

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    sampler.join().unwrap();
    let n = *sent.lock().unwrap();
    // The longest time acknowledged bytes did not move while records flowed.
    let longest = longest_pause(&samples.lock().unwrap(), false);
    eprintln!("{n} records sent; longest pause in delivery {longest:?}");
    assert!(longest < Duration::from_secs(5), "delivery paused {longest:?} (more than a reconnect)");
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(20), |v| v >= n as f64);
    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);
    let ids = id_counts(&central.data, "rot-").unwrap();
    assert_eq!(ids.len(), n);
    assert!(ids.values().all(|&c| c == 1));
}

/// Wire bytes through `proxy` per second over `span`, starting now.
/// Wait until a 500 ms window's wire rate meets `cond` (20 s at most).
fn wait_rate(proxy: &proxy::Proxy, what: &str, cond: impl Fn(f64) -> bool) {
    let t = Instant::now();
    loop {
        let r = wire_rate(proxy, Duration::from_millis(500));
        if cond(r) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the wire never got {what}: {r:.0} B/s");
    }
}

fn wire_rate(proxy: &proxy::Proxy, span: Duration) -> f64 {
    let (b0, t0) = (proxy.bytes_up(), Instant::now());
    std::thread::sleep(span);
    (proxy.bytes_up() - b0) as f64 / t0.elapsed().as_secs_f64()
}

/// The issue's reload under traffic, with the real clients: rsyslog keeps
/// one RELP connection open and curl posts batches over HTTP while the
/// edge's uplink drains a backlog to central through a proxy that counts
/// wire bytes. One reload removes a listener, adds one, lowers the HTTP
/// listener's body limit and the uplink's `max_rate`; the next moves the
/// uplink to central's other address; the RELP connection is untouched by
/// both, and the wire rate follows the new cap within one 10 s window. A
/// last one changes the RELP listener's limits under rsyslog: it reconnects.
/// Every acknowledged record is archived once and the mirror is
/// byte-identical.
#[test]
fn reload_under_rsyslog_and_curl_traffic_loses_nothing_and_the_wire_follows_the_cap() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let pki_dir = TestDir::new("pki");
    let pki = Pki::new(&pki_dir, "pki");
    let (port_a, port_b) = (free_port(), free_port());
    let proxy = proxy::Proxy::tcp(format!("127.0.0.1:{port_a}").parse().unwrap());
    let mut p =
        pair("traffic", &pki, Via::Tls, proxy.port(), port_a, "segment_max_bytes = \"8MiB\"", "max_rate = \"2MB/s\"");
    p.central_cfg.push_str(&format!(
        "\n[[listener]]\nname = \"link2\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{port_b}\"\nidle_timeout = \"3s\"\n"
    ));
    let (relp, http) = (free_port(), free_port());
    let relp_block = format!(
        "[[listener]]\nname = \"relp\"\nkind = \"relp\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{relp}\"\nstream = \"live\"\n"
    );
    let http_block = format!(
        "[[listener]]\nname = \"http\"\nkind = \"http\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{http}\"\nstream = \"live\"\nmax_body_bytes = \"64KiB\"\n"
    );
    p.edge_cfg.push_str(&format!("\n{relp_block}\n{http_block}"));
    let central = Node::start(&p.central_dir, &p.central_cfg, p.central_ports.admin);
    let mut edge = Node::start(&p.edge_dir, &p.edge_cfg, p.edge_ports.admin);
    let v1 = p.edge_cfg.clone();

    // The backlog: ~48 MB of barely compressible lines (~37 MB on the wire), 20 s of link at the caps.
    let mut rng = seeded_rng("reload_under_rsyslog_and_curl_traffic");
    let (backlog, n) = incompressible_lines(&mut rng, "backlog", 48 << 20);
    ferry_send(&["--to", &format!("127.0.0.1:{}", p.edge_ports.tcp)], &backlog);
    edge.wait_metric("ferry_committed_records_total", &[], Duration::from_secs(60), |v| v >= n as f64);

    // rsyslog (RELP to the edge) fed over its TCP input; curl posting batches.
    let input = free_port();
    let rs_dir = TestDir::new("traffic-rsyslog");
    let _rsyslog = rsyslog::Rsyslog::shipped_relp(&rs_dir, relp, input);
    let stop = Arc::new(AtomicBool::new(false));
    let relp_sent = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (stop, sent) = (stop.clone(), relp_sent.clone());
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", input)).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: String = (i..i + 50).map(|j| line("relp", j)).collect();
                c.write_all(batch.as_bytes()).unwrap();
                i += 50;
                sent.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    // Each post's ids and the status curl got.
    let posts = Arc::new(Mutex::new(Vec::<(usize, u16)>::new()));
    let poster = {
        let (stop, posts, dir) = (stop.clone(), posts.clone(), rs_dir.join("posts"));
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = dir.join(format!("{k}"));
                if std::fs::write(&body, (k * 20..k * 20 + 20).map(|j| line("http", j)).collect::<String>()).is_err() {
                    break; // the test failed and its directory is gone
                }
                let status = post_status(http, &body);
                posts.lock().unwrap().push((k, status));
                k += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    edge.wait_metric("ferry_connections_accepted_total", &[("listener", "relp")], Duration::from_secs(20), |v| {
        v == 1.0
    });
    edge.wait_metric("ferry_received_records_total", &[("listener", "http")], Duration::from_secs(20), |v| v >= 100.0);
    // A 32 KiB batch is within the HTTP listener's limit.
    let big = rs_dir.join("big");
    std::fs::write(&big, (0..800).map(|j| line("big", j)).collect::<String>()).unwrap();
    assert!(std::fs::metadata(&big).unwrap().len() > 16 << 10);
    assert_eq!(post_status(http, &big), 200);

    // At the first cap.
    edge.wait_metric("ferry_uplink_connected", &[], Duration::from_secs(20), |v| v == 1.0);
    // The session is up: wait (bounded) until the wire runs at the cap, then measure it.
    wait_rate(&proxy, "at the 2 MB/s cap", |r| r > 1_500_000.0);
    let before = wire_rate(&proxy, Duration::from_secs(2));
    let reconnects = edge.metric("ferry_uplink_reconnects_total", &[]);

    // A refused reload first: the applied one after it is a success again.
    reload(&edge, &v1.replace("max_rate = \"2MB/s\"", "max_rate = \"slow\""), "invalid");
    assert_eq!(edge.metric("ferry_config_last_reload_successful", &[]), 0.0);

    // v2: tcp removed, tcp2 added, the HTTP body limit and the cap lowered.
    let tcp_block = format!(
        "[[listener]]\nname = \"tcp\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{}\"\nstream = \"live\"\n",
        p.edge_ports.tcp
    );
    assert!(v1.contains(&tcp_block), "{v1}");
    let tcp2 = free_port();
    let v2 = v1
        .replace(
            &tcp_block,
            &format!("[[listener]]\nname = \"tcp2\"\nkind = \"syslog\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:{tcp2}\"\nstream = \"live\"\n"),
        )
        .replace(&http_block, &http_block.replace("64KiB", "16KiB"))
        .replace("max_rate = \"2MB/s\"", "max_rate = \"500KB/s\"");
    reload(&edge, &v2, "applied");
    assert_eq!(edge.metric("ferry_config_last_reload_successful", &[]), 1.0);
    // The wire follows: down to the new cap within a few seconds (what was
    // already in flight drains first), then within 10% of it over 10 s.
    let t = Instant::now();
    wait_rate(&proxy, "down to the 500 KB/s cap", |r| r < 600_000.0);
    eprintln!("the wire came down to the new cap {:.1} s after the reload", t.elapsed().as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(5), "the new cap took {:?} to be in force", t.elapsed());
    let after = wire_rate(&proxy, Duration::from_secs(10));
    eprintln!("wire rate {before:.0} B/s at 2 MB/s, {after:.0} B/s in the 10 s after the reload to 500 KB/s");
    assert!(before > 1_500_000.0, "the first cap was in force and saturated: {before:.0} B/s");
    assert!((after - 500_000.0).abs() < 50_000.0, "{after:.0} B/s in the window after the reload");
    assert_eq!(edge.metric("ferry_uplink_reconnects_total", &[]), reconnects, "a rate change keeps the session");
    // The new body limit is in force; the removed listener's port is free; tcp2 takes records.
    assert_eq!(post_status(http, &big), 413);
    drop(std::net::TcpListener::bind(("127.0.0.1", p.edge_ports.tcp)).expect("the removed listener's port is free"));
    let mut c2 = TcpStream::connect(("127.0.0.1", tcp2)).unwrap();
    c2.write_all((0..100).map(|j| line("tcp2", j)).collect::<String>().as_bytes()).unwrap();
    drop(c2);

    // v3: the uplink's address changes (straight to link2) and the cap goes: the backlog drains.
    let v3 = v2
        .replace(&format!("127.0.0.1:{}\"]", proxy.port()), &format!("127.0.0.1:{port_b}\"]"))
        .replace("max_rate = \"500KB/s\"", "");
    reload(&edge, &v3, "applied");
    central.wait_metric("ferry_link_sessions_active", &[("listener", "link2")], Duration::from_secs(20), |v| v == 1.0);
    // No reload so far touched the RELP listener: its connection is the first one, never closed.
    assert_eq!(edge.metric("ferry_connections_accepted_total", &[("listener", "relp")]), 1.0, "one RELP connection");
    assert_eq!(edge.metric("ferry_connections_closed_total", &[("listener", "relp")]), 0.0, "never closed");

    // v4: the RELP listener's limits change: it is replaced under rsyslog, which
    // reconnects and sends again what had no answer; what was answered stays.
    let v4 = v3.replace(&relp_block, &format!("{relp_block}max_connections_per_source = 8\n"));
    reload(&edge, &v4, "applied");
    edge.wait_metric("ferry_connections_accepted_total", &[("listener", "relp")], Duration::from_secs(20), |v| {
        v == 2.0
    });
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    poster.join().unwrap();
    let relp_n = relp_sent.load(Ordering::Relaxed);
    // rsyslog hands over everything it was given (its own startup lines too).
    edge.wait_metric("ferry_received_records_total", &[("listener", "relp")], Duration::from_secs(30), |v| {
        v >= relp_n as f64
    });
    edge.stop();
    wait_mirrored(&edge.data, &central.data, Duration::from_secs(60));
    assert_byte_identical(&edge.data, &central.data);

    let relp_ids = id_counts(&central.data, "relp-").unwrap();
    assert_each_once(&relp_ids, relp_n, "the lines rsyslog was given");
    let http_ids = id_counts(&central.data, "http-").unwrap();
    let posts = posts.lock().unwrap();
    let acked: Vec<usize> = posts.iter().filter(|p| p.1 == 200).map(|p| p.0).collect();
    let failed: Vec<&(usize, u16)> = posts.iter().filter(|p| p.1 != 200).collect();
    eprintln!("{relp_n} lines through rsyslog; {} posts acknowledged, not acknowledged: {failed:?}", acked.len());
    for k in acked {
        for j in k * 20..k * 20 + 20 {
            assert_eq!(http_ids.get(&format!("http-{j:06}")), Some(&1), "acknowledged post {k}, line {j}");
        }
    }
    // A post without a 200 is the client's to send again; ferry kept all of
    // it or none (never part), and only the listener's swap refused any.
    for (k, status) in &failed {
        let kept = (k * 20..k * 20 + 20).filter(|j| http_ids.contains_key(&format!("http-{j:06}"))).count();
        assert!(kept == 0 || kept == 20, "post {k} (status {status}) archived in part: {kept} of 20 lines");
    }
    assert!(failed.len() <= 3, "{} posts refused across the reloads: {failed:?}", failed.len());
    assert!(http_ids.values().all(|&c| c == 1), "no HTTP line twice");
    for (prefix, want) in [("big-", 800), ("tcp2-", 100), ("backlog-", n)] {
        assert_each_once(&id_counts(&central.data, prefix).unwrap(), want, prefix);
    }
}
