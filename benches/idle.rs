//! Idle collector connections (issue 26): RSS per idle connection of each
//! kind, and RSS after a storm closes.
//!
//! One node with five listeners (syslog TCP, syslog over TLS, RELP, GELF
//! TCP, HTTP), all `trust = "trusted"` with room for the connections. For
//! each kind in turn, `FERRY_BENCH_CONNS` connections (default 10,000) are
//! opened and each does what a collector does first — a line (syslog, TLS:
//! after the handshake), `open` (RELP), a message (GELF), one POST on a
//! keep-alive connection (HTTP) — then all stay idle: RSS from
//! `/proc/<pid>/status` before and after, per connection. Then they close
//! and the RSS 3 s later is noted against the start.
//!
//! `cargo bench --bench idle`; figures in `benches/README.md`.

mod common;

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

fn main() {
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
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let admin = free_port();
    let node_dir = pki.join("node");
    let mut cfg = format!(
        "[node]\nsite = \"sg1\"\nname = \"relay-1\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[[stream]]\nname = \"live\"\n",
        work.path().join("data").display(),
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
    let cfg_path = work.path().join("ferry.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut node = Node::start(&ferry, &cfg_path, &work.path().join("ferry.log"), admin);
    let pid = node.pid;
    let tls = Arc::new(ferry::pki::collector_client_config(&node_dir.join("ca.pem"), None).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("{n} idle connections of each kind, one after the other; RSS of the node (VmRSS)");
    println!("{:<8} {:>10} {:>12} {:>14} {:>14}", "kind", "start KiB", "held KiB", "B/connection", "after close KiB");
    for (i, kind) in [Kind::Syslog, Kind::Tls, Kind::Relp, Kind::Gelf, Kind::Http].into_iter().enumerate() {
        std::thread::sleep(Duration::from_secs(3));
        let start = rss_kib(pid);
        let conns = rt.block_on(open_all(kind, ports[i], n, tls.clone()));
        wait_active(admin, n, kind);
        std::thread::sleep(Duration::from_secs(1));
        let held = rss_kib(pid);
        drop(conns);
        std::thread::sleep(Duration::from_secs(3));
        let after = rss_kib(pid);
        let per = held.saturating_sub(start) as f64 * 1024.0 / n as f64;
        println!("{:<8} {start:>10} {held:>12} {per:>14.0} {after:>14}", format!("{kind:?}"));
    }
    node.stop();
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

/// `n` connections of `kind`, each past its first exchange, 100 dialling at once.
async fn open_all(
    kind: Kind,
    port: u16,
    n: usize,
    tls: Arc<rustls::ClientConfig>,
) -> Vec<Box<dyn std::any::Any + Send>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sem = Arc::new(tokio::sync::Semaphore::new(100));
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
        out.push(r.unwrap());
    }
    out
}
