//! Idle collector connections (issue 26): RSS per idle connection of each
//! kind, against the floor of the runtime and TLS library alone, and RSS
//! after a storm.
//!
//! For each kind, a fresh node with five listeners (syslog TCP, syslog over
//! TLS, RELP, GELF TCP, HTTP), all `trust = "trusted"` with room for the
//! connections: `FERRY_BENCH_CONNS` connections (default 10,000) are opened
//! and each does what a collector does first — a line (syslog, TLS: after
//! the handshake), `open` (RELP), a message (GELF), one POST on a keep-alive
//! connection (HTTP) — then all stay idle: RSS from `/proc/<pid>/status`
//! before and after, per connection. Then they close and the RSS 3 s later
//! is noted against the start. A fresh node per kind, so each pays its own
//! first-time costs (heap arenas, the runtime's I/O registrations).
//!
//! The floor: this bench binary again, as a server that does only what any
//! tokio server must (a task and a registered socket per connection, waiting
//! for readiness; for TLS, tokio-rustls with ferry's own server config,
//! rustls's connection state) for plain TCP and TLS. ferry's own part is the
//! difference.
//!
//! The storm: on a fresh node, 10,000 connections each send a line and
//! close, 1,000 at a time (every collector reconnecting after a restart);
//! peak RSS, and RSS 3 s after against the start.
//!
//! `cargo bench --bench idle`; figures in `benches/README.md`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Syslog,
    Tls,
    Relp,
    Gelf,
    Http,
}

const KINDS: [Kind; 5] = [Kind::Syslog, Kind::Tls, Kind::Relp, Kind::Gelf, Kind::Http];

fn main() {
    if let Ok(spec) = std::env::var("FERRY_IDLE_FLOOR") {
        return floor_server(&spec);
    }
    let n = env_or("FERRY_BENCH_CONNS", 10_000) as usize;
    println!("machine: {} ({} CPU)", cpu_model(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    raise_nofile(n as u64 + 1000);
    let ferry = ferry_binary();
    let work = tempfile::tempdir().unwrap();
    // The deployment CA and a certificate for the node's TLS listener.
    let pki = work.path().join("pki");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(&ferry).arg("certs").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["ca", "--out", &pki.join("ca").display().to_string()]);
    run(&[
        "issue",
        "--ca",
        &pki.join("ca").display().to_string(),
        "--site",
        "sg1",
        "--node",
        "relay-1",
        "--ip",
        "127.0.0.1",
        "--out",
        &pki.join("node").display().to_string(),
    ]);
    let node_dir = pki.join("node");
    let tls = Arc::new(ferry::pki::collector_client_config(&node_dir.join("ca.pem"), None).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();

    println!("{n} idle connections of each kind, a fresh server for each; RSS of the server (VmRSS)");
    println!(
        "{:<14} {:>10} {:>12} {:>14} {:>16}",
        "server kind", "start KiB", "held KiB", "B/connection", "after close KiB"
    );
    for (spec, kind) in [("plain", Kind::Syslog), ("tls", Kind::Tls)] {
        let port = free_port();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("FERRY_IDLE_FLOOR", format!("{spec}:{port}:{}", node_dir.display()))
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "floor server not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        let row = measure(&rt, child.id(), kind, port, n, &tls, || std::thread::sleep(Duration::from_secs(1)));
        println!("{:<14} {row}", format!("floor {spec}"));
        let _ = child.kill();
        let _ = child.wait();
    }
    for kind in KINDS {
        let (mut node, ports, admin) = start_node(&ferry, work.path(), &node_dir, n, &format!("{kind:?}"));
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        let row = measure(&rt, node.pid, kind, ports[i], n, &tls, || wait_active(admin, n, kind));
        println!("{:<14} {row}", format!("ferry {kind:?}"));
        node.stop();
    }

    println!("storm: {n} connections each send a line and close, 1,000 at a time, into a fresh node");
    println!("{:<14} {:>10} {:>12} {:>16}", "kind", "start KiB", "peak KiB", "after 3 s KiB");
    for kind in [Kind::Syslog, Kind::Tls] {
        let (mut node, ports, _) = start_node(&ferry, work.path(), &node_dir, n, &format!("storm-{kind:?}"));
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let start = rss_kib(node.pid);
        let t = Instant::now();
        rt.block_on(open_all(kind, ports[i], n, tls.clone(), 1000, false));
        let took = t.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        let (peak, after) = (hwm_kib(node.pid), rss_kib(node.pid));
        println!("{:<14} {start:>10} {peak:>12} {after:>16}   ({took:.1?} for the storm)", format!("{kind:?}"));
        node.stop();
    }
}

/// One row: RSS before, with `n` connections of `kind` held (after
/// `settled`), per connection, and 3 s after they close.
fn measure(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    kind: Kind,
    port: u16,
    n: usize,
    tls: &Arc<rustls::ClientConfig>,
    settled: impl Fn(),
) -> String {
    std::thread::sleep(Duration::from_secs(1));
    let start = rss_kib(pid);
    let conns = rt.block_on(open_all(kind, port, n, tls.clone(), 100, true));
    settled();
    std::thread::sleep(Duration::from_secs(1));
    let held = rss_kib(pid);
    drop(conns);
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    let per = held.saturating_sub(start) as f64 * 1024.0 / n as f64;
    format!("{start:>10} {held:>12} {per:>14.0} {after:>16}")
}

/// A node with the five listeners, each with room for `n` connections.
fn start_node(ferry: &Path, work: &Path, node_dir: &Path, n: usize, name: &str) -> (Node, Vec<u16>, u16) {
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let admin = free_port();
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = format!(
        "[node]\nsite = \"sg1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[[stream]]\nname = \"live\"\n",
        dir.join("data").display(),
        node_dir.join("ca.pem").display(),
        node_dir.join("node.pem").display(),
        node_dir.join("node.key").display()
    );
    for (i, (name, kind, transport, extra)) in [
        ("tcp", "syslog", "tcp", ""),
        ("tls", "syslog", "tls", "client_cert = \"optional\"\n"),
        ("relp", "relp", "tcp", ""),
        ("gelf", "gelf", "tcp", ""),
        ("http", "http", "tcp", ""),
    ]
    .into_iter()
    .enumerate()
    {
        cfg.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nkind = \"{kind}\"\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:{}\"\n\
             stream = \"live\"\ntrust = \"trusted\"\nmax_connections = {}\n{extra}",
            ports[i],
            n + 100
        ));
    }
    let cfg_path = dir.join("ferry.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    (Node::start(ferry, &cfg_path, &dir.join("ferry.log"), admin), ports, admin)
}

/// The floor server (`FERRY_IDLE_FLOOR=plain|tls:<port>:<node pki dir>`):
/// what any tokio server holds per connection, and for TLS rustls's
/// connection with ferry's server config. Each connection waits for
/// readiness and reads into a scratch buffer, as ferry's connections do.
fn floor_server(spec: &str) {
    use tokio::io::AsyncReadExt;
    let mut parts = spec.splitn(3, ':');
    let (kind, port, dir) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let dir = Path::new(dir);
    let acceptor = (kind == "tls").then(|| {
        let files = ferry::pki::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            crl: Vec::new(),
        };
        tokio_rustls::TlsAcceptor::from(Arc::new(ferry::pki::collector_server_config(&files, true).unwrap()))
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            // Two tasks, so the plain one is not sized for rustls's state.
            match acceptor.clone() {
                None => drop(tokio::spawn(async move {
                    let mut scratch = [0u8; 64];
                    loop {
                        if s.readable().await.is_err() {
                            return;
                        }
                        match s.try_read(&mut scratch) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    }
                })),
                Some(a) => drop(tokio::spawn(async move {
                    let Ok(mut t) = a.accept(s).await else { return };
                    let mut scratch = [0u8; 64];
                    loop {
                        match t.read(&mut scratch).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })),
            }
        }
    });
}

fn raise_nofile(want: u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    assert!(l.rlim_cur >= want, "the open-file limit {} is below {want}", l.rlim_cur);
}

/// Every connection open and past its first exchange.
fn wait_active(admin: u16, n: usize, kind: Kind) {
    let listener = match kind {
        Kind::Syslog => "tcp",
        Kind::Tls => "tls",
        Kind::Relp => "relp",
        Kind::Gelf => "gelf",
        Kind::Http => "http",
    };
    let t = Instant::now();
    loop {
        let m = http_get(admin, "/metrics").map(|r| r.1).unwrap_or_default();
        if metric_value(&m, "ferry_connections_active", &[("listener", listener)]) >= n as f64 {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{kind:?}: connections not all open");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` connections of `kind`, each past its first exchange, `at_once`
/// dialling at a time; held open when `hold`, else closed right after.
async fn open_all(
    kind: Kind,
    port: u16,
    n: usize,
    tls: Arc<rustls::ClientConfig>,
    at_once: usize,
    hold: bool,
) -> Vec<Box<dyn std::any::Any + Send>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sem = Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (sem, tls) = (sem.clone(), tls.clone());
        tasks.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let line = format!("<13>Dec  5 10:00:00 h app: idle-{i:06}\n");
            let held: Box<dyn std::any::Any + Send> = match kind {
                Kind::Syslog => {
                    s.write_all(line.as_bytes()).await.unwrap();
                    Box::new(s)
                }
                Kind::Tls => {
                    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                    let mut t = tokio_rustls::TlsConnector::from(tls).connect(name, s).await.unwrap();
                    t.write_all(line.as_bytes()).await.unwrap();
                    t.flush().await.unwrap();
                    Box::new(t)
                }
                Kind::Relp => {
                    let offer = "relp_version=0\nrelp_software=bench\ncommands=syslog";
                    s.write_all(format!("1 open {} {offer}\n", offer.len()).as_bytes()).await.unwrap();
                    let mut b = [0u8; 256];
                    let _ = s.read(&mut b).await.unwrap();
                    Box::new(s)
                }
                Kind::Gelf => {
                    s.write_all(format!("{{\"version\":\"1.1\",\"host\":\"h\",\"short_message\":\"idle-{i}\"}}\0").as_bytes())
                        .await
                        .unwrap();
                    Box::new(s)
                }
                Kind::Http => {
                    let body = line;
                    let req = format!(
                        "POST /v1/streams/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(req.as_bytes()).await.unwrap();
                    // The answer, so the request is done and the connection idle.
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await.unwrap();
                    Box::new(s)
                }
            };
            held
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        let held = r.unwrap();
        if hold {
            out.push(held);
        }
    }
    out
}
