//! The fault-injecting proxy of the test harness, against loopback echo servers.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use util::proxy::Proxy;

/// Poll `cond` until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A loopback TCP server: echoes (or, as a sink, swallows) every connection.
/// Every thread stops and is joined on drop.
struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// Connections that ended with an error (a reset) rather than EOF.
    resets: Arc<AtomicU64>,
    /// Bytes received.
    received: Arc<AtomicU64>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    fn echo() -> TcpServer {
        TcpServer::start(true)
    }

    fn sink() -> TcpServer {
        TcpServer::start(false)
    }

    fn start(echo: bool) -> TcpServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let resets = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, accepted, resets, received, threads) =
                (stop.clone(), accepted.clone(), resets.clone(), received.clone(), threads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let s = match l.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (stop, resets, received) = (stop.clone(), resets.clone(), received.clone());
                    let h = std::thread::spawn(move || serve(s, echo, &stop, &resets, &received));
                    threads.lock().unwrap().push(h);
                }
            })
        };
        TcpServer { addr, stop, accepted, resets, received, threads, accept: Some(accept) }
    }
}

fn serve(mut s: TcpStream, echo: bool, stop: &AtomicBool, resets: &AtomicU64, received: &AtomicU64) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::SeqCst);
                if echo && s.write_all(&buf[..n]).is_err() {
                    resets.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                resets.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            h.join().unwrap();
        }
        for h in self.threads.lock().unwrap().drain(..) {
            h.join().unwrap();
        }
    }
}

/// A loopback UDP server: echoes (or swallows) datagrams, recording sources.
struct UdpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    datagrams: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn start(echo: bool) -> UdpServer {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(Mutex::new(Vec::new()));
        let datagrams = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sources, datagrams) = (stop.clone(), sources.clone(), datagrams.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = s.recv_from(&mut buf) else {
                        continue;
                    };
                    datagrams.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut src = sources.lock().unwrap();
                        if src.last() != Some(&from) {
                            src.push(from);
                        }
                    }
                    if echo {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
        };
        UdpServer { addr, stop, sources, datagrams, thread: Some(thread) }
    }

    fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().clone()
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            h.join().unwrap();
        }
    }
}

/// The connection was broken: a read fails (or sees EOF) within 2 s.
fn assert_broken(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: read {n} bytes"),
        Err(e) => assert!(!is_timeout(&e), "{what}: still open after 2s"),
    }
}

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(p.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Write `data` and read the echo back.
fn roundtrip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert!(back == data, "echo differs");
}

fn udp_client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c
}

/// Send `msg` through the proxy and expect it echoed.
fn udp_roundtrip(c: &UdpSocket, p: &Proxy, msg: &[u8]) {
    c.send_to(msg, p.addr()).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = c.recv_from(&mut buf).expect("udp echo through the proxy");
    assert_eq!(from, p.addr());
    assert_eq!(&buf[..n], msg);
}

#[test]
fn tcp_forwards_both_ways_and_counts() {
    let server = TcpServer::echo();
    let p = Proxy::tcp(server.addr);
    assert_eq!(p.addr().port(), p.port());
    assert!(p.addr().ip().is_loopback());
    assert_eq!(p.connections(), 0);

    let mut total = 0u64;
    let mut a = connect(&p);
    let mut b = connect(&p);
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for _ in 0..16 {
        roundtrip(&mut a, &chunk);
        roundtrip(&mut b, b"hello");
        total += chunk.len() as u64 + 5;
    }
    // A datagram-sized odd payload too.
    roundtrip(&mut a, &chunk[..1234]);
    total += 1234;

    assert!(
        wait_until(Duration::from_secs(2), || p.bytes_up() == total && p.bytes_down() == total),
        "up {} down {} expected {total}",
        p.bytes_up(),
        p.bytes_down()
    );
    assert_eq!(p.connections(), 2);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);

    // A half-close crosses the proxy: the echo server sees EOF and closes,
    // which reaches the client as EOF.
    a.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // The other connection is unaffected.
    roundtrip(&mut b, b"still there");
    assert_eq!(server.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn tcp_throughput() {
    let server = TcpServer::sink();
    let p = Proxy::tcp(server.addr);
    let mut c = connect(&p);
    let chunk = vec![0x5au8; 64 * 1024];
    let total: u64 = 512 << 20;
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        c.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    assert!(
        wait_until(Duration::from_secs(10), || server.received.load(Ordering::SeqCst) == total),
        "sink got {} of {total}",
        server.received.load(Ordering::SeqCst)
    );
    let secs = t.elapsed().as_secs_f64();
    let mbps = total as f64 / secs / 1e6;
    eprintln!("proxy TCP throughput: {mbps:.0} MB/s ({total} bytes in {secs:.2}s)");
    // The proxy counts a chunk once written: the count may trail the sink a moment.
    assert!(wait_until(Duration::from_secs(2), || p.bytes_up() == total));
    assert_eq!(p.bytes_down(), 0);
    assert!(mbps > 100.0, "proxy TCP throughput {mbps:.0} MB/s");
}

#[test]
fn tcp_cut_resets_live_connections_and_accepts_new_ones() {
    let server = TcpServer::echo();
    let p = Proxy::tcp(server.addr);
    let mut a = connect(&p);
    roundtrip(&mut a, b"before the cut");
    let mut idle = connect(&p);
    roundtrip(&mut idle, b"idle");
    assert_eq!(p.connections(), 2);

    let t = Instant::now();
    p.cut();
    assert!(t.elapsed() < Duration::from_secs(1), "cut took {:?}", t.elapsed());

    // Both client sides fail at once: a reset (or at worst EOF), never a timeout.
    assert_broken(&mut a, "busy connection after cut");
    assert_broken(&mut idle, "idle connection after cut");
    // Writing to the cut connection fails as well.
    let write_failed = wait_until(Duration::from_secs(2), || a.write_all(b"x").is_err());
    assert!(write_failed, "writes still succeed after cut");
    // The server side saw resets, not clean EOFs.
    assert!(
        wait_until(Duration::from_secs(2), || server.resets.load(Ordering::SeqCst) == 2),
        "server saw {} resets",
        server.resets.load(Ordering::SeqCst)
    );

    // A new connection works at once.
    let mut b = connect(&p);
    roundtrip(&mut b, b"after the cut");
    assert_eq!(p.connections(), 3);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);

    // Cutting again with nothing but `b` live only breaks `b`.
    p.cut();
    assert_broken(&mut b, "second cut");
    let mut c = connect(&p);
    roundtrip(&mut c, b"third");
}

#[test]
fn tcp_blackhole_holds_traffic_without_closing() {
    let server = TcpServer::echo();
    let p = Proxy::tcp(server.addr);
    let mut a = connect(&p);
    roundtrip(&mut a, b"up");
    assert!(wait_until(Duration::from_secs(2), || p.bytes_up() == 2 && p.bytes_down() == 2));

    p.blackhole(true);
    a.write_all(b"x").unwrap();
    a.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 16];
    match a.read(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("blackholed link delivered {other:?}"),
    }
    // New connections are accepted but go nowhere.
    let mut b = connect(&p);
    b.write_all(b"new").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    match b.read(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("blackholed link delivered {other:?}"),
    }
    assert_eq!(p.connections(), 2);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!((p.bytes_up(), p.bytes_down()), (2, 2));
    assert_eq!(server.received.load(Ordering::SeqCst), 2);

    p.blackhole(false);
    // The same connections carry on, with nothing lost or reordered.
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    a.write_all(b"y").unwrap();
    let mut got = [0u8; 2];
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"xy");
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 3];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"new");
    roundtrip(&mut a, b"again");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(server.resets.load(Ordering::SeqCst), 0);

    // A cut still works on a blackholed link.
    p.blackhole(true);
    p.cut();
    assert_broken(&mut a, "cut while blackholed");
    assert_broken(&mut b, "cut while blackholed");
}

#[test]
fn udp_forwards_both_ways_and_cut_changes_source_port() {
    let server = UdpServer::start(true);
    let p = Proxy::udp(server.addr);
    let c = udp_client();
    let c2 = udp_client();

    udp_roundtrip(&c, &p, b"one");
    udp_roundtrip(&c, &p, &[7u8; 1350]);
    udp_roundtrip(&c2, &p, b"other client");
    // The largest possible datagram.
    let big = vec![9u8; 65507];
    udp_roundtrip(&c, &p, &big);
    let total = 3 + 1350 + 12 + 65507;
    assert!(wait_until(Duration::from_secs(2), || p.bytes_down() == total && p.bytes_up() == total));
    assert_eq!(p.connections(), 2);
    let before = server.sources();
    assert_eq!(before.len(), 3, "{before:?}"); // c, c2, c again
    assert_eq!(before[0], before[2]);
    assert_ne!(before[0], before[1]);
    for s in &before {
        assert!(s.ip().is_loopback());
        assert_ne!(s.port(), p.port());
    }

    p.cut();
    udp_roundtrip(&c, &p, b"after cut");
    let after = server.sources();
    assert_eq!(after.len(), 4, "{after:?}");
    assert_ne!(after[3].port(), before[0].port(), "same source port after cut");
    assert_ne!(after[3].port(), before[1].port());
    assert_eq!(p.connections(), 3);
    // It stays on its new mapping.
    udp_roundtrip(&c, &p, b"again");
    assert_eq!(server.sources().len(), 4);
    assert_eq!(p.connections(), 3);
}

#[test]
fn udp_blackhole_drops_datagrams() {
    let server = UdpServer::start(true);
    let p = Proxy::udp(server.addr);
    let c = udp_client();
    udp_roundtrip(&c, &p, b"before");

    p.blackhole(true);
    c.send_to(b"lost", p.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    match c.recv_from(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("blackholed link delivered {other:?}"),
    }
    assert_eq!(server.datagrams.load(Ordering::SeqCst), 1);
    assert_eq!(p.bytes_up(), 6);

    p.blackhole(false);
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp_roundtrip(&c, &p, b"after");
    assert_eq!(server.datagrams.load(Ordering::SeqCst), 2);
    assert!(wait_until(Duration::from_secs(2), || p.bytes_up() == 11));
    assert_eq!(p.connections(), 1);
}

#[test]
fn udp_sustains_tens_of_thousands_of_datagrams_per_second() {
    let server = UdpServer::start(false);
    let p = Proxy::udp(server.addr);
    let c = udp_client();
    c.connect(p.addr()).unwrap();
    let pkt = vec![0xa5u8; 1200];
    let (total, burst) = (64_000u64, 64u64);
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        for _ in 0..burst {
            c.send(&pkt).unwrap();
        }
        sent += burst;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut ok = true;
        while server.datagrams.load(Ordering::SeqCst) < sent {
            if Instant::now() > deadline {
                ok = false;
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(ok, "only {} of {sent} datagrams arrived", server.datagrams.load(Ordering::SeqCst));
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    eprintln!("proxy UDP: {rate:.0} datagrams/s");
    assert!(wait_until(Duration::from_secs(2), || p.bytes_up() == total * 1200));
    assert!(rate > 20_000.0, "proxy UDP rate {rate:.0}/s");
}

#[test]
fn samples_grow_with_traffic() {
    let server = TcpServer::sink();
    let p = Proxy::tcp(server.addr);
    let mut c = connect(&p);
    // Samples of the idle start first, then of the write.
    assert!(wait_until(Duration::from_secs(2), || p.samples().len() >= 2));
    c.write_all(&[1u8; 5000]).unwrap();
    assert!(wait_until(Duration::from_secs(2), || p.bytes_up() == 5000));
    assert!(wait_until(Duration::from_secs(2), || {
        let s = p.samples();
        s.len() >= 4 && s.last().is_some_and(|l| l.1 == 5000)
    }));

    let s = p.samples();
    assert!(s.len() >= 4, "{s:?}");
    assert!(s[0].0 < Duration::from_millis(100), "{s:?}");
    assert_eq!(s[0].1, 0);
    assert_eq!(s.last().unwrap().1, 5000, "{s:?}");
    for w in s.windows(2) {
        assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{s:?}");
        let gap = w[1].0 - w[0].0;
        assert!(gap >= Duration::from_millis(90) && gap < Duration::from_millis(500), "{s:?}");
    }
    assert!(wait_until(Duration::from_secs(2), || p.samples().len() > s.len()), "sampling went on");

    let u = Proxy::udp(UdpServer::start(false).addr);
    assert!(wait_until(Duration::from_secs(2), || u.samples().len() >= 2), "a UDP proxy samples too");
}

#[test]
fn drop_closes_everything() {
    let server = TcpServer::echo();
    let p = Proxy::tcp(server.addr);
    let port = p.port();
    let mut a = connect(&p);
    roundtrip(&mut a, b"hi");
    let t = Instant::now();
    drop(p);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    assert_broken(&mut a, "after drop");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(wait_until(Duration::from_secs(2), || server.threads.lock().unwrap().iter().all(|h| h.is_finished())));

    let userver = UdpServer::start(true);
    let u = Proxy::udp(userver.addr);
    let uport = u.port();
    let c = udp_client();
    udp_roundtrip(&c, &u, b"hi");
    drop(u);
    // The port is free again: nothing of the proxy is left holding it.
    UdpSocket::bind(("127.0.0.1", uport)).expect("udp port released");
}
