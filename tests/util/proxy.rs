//! A fault-injecting loopback proxy for the link tests.
//!
//! [`Proxy::tcp`] forwards TCP connections, [`Proxy::udp`] forwards datagrams
//! NAT-style (one upstream socket per client address). Both run on a private
//! tokio runtime owned by the [`Proxy`] handle, so synchronous tests drive
//! them from plain threads; dropping the handle stops every task and closes
//! every socket.
//!
//! Faults:
//! * [`Proxy::cut`] breaks the link at once: TCP connections are reset on
//!   both sides (`SO_LINGER` 0), UDP mappings are forgotten so the client's
//!   next datagrams reach the server from a new source port.
//! * [`Proxy::blackhole`] makes the link dead without closing anything:
//!   nothing crosses it in either direction (no data, FIN or RST), new TCP
//!   connections are accepted but not connected upstream, UDP datagrams are
//!   dropped. TCP bytes are held back rather than discarded, as TCP
//!   retransmission would do on a real dead path: once the blackhole is
//!   lifted the same connections carry on with an intact byte stream.
//! * [`Proxy::tcp_thin`] forwards the client's bytes at a fixed rate: a thin
//!   WAN behind a fast first hop (the client's send buffer fills at loopback
//!   speed and drains at the thin one's).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// TCP copy buffer, per direction.
const TCP_BUF: usize = 64 * 1024;
/// Largest UDP payload.
const UDP_BUF: usize = 65536;
/// Socket buffer size asked for UDP sockets (capped by the kernel).
const UDP_SOCKBUF: libc::c_int = 4 << 20;
/// Period of [`Proxy::samples`].
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// State shared by the handle and the proxy's tasks.
struct Shared {
    /// Bytes per second client → upstream, 0 for no limit.
    up_rate: u64,
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    start: Instant,
    samples: Mutex<Vec<(Duration, u64)>>,
    /// `true` while blackholed.
    blackhole: watch::Sender<bool>,
    /// Generation counter, bumped by every TCP cut.
    cut: watch::Sender<u64>,
    /// Ids of the TCP connections whose task is still running.
    live: Mutex<HashSet<u64>>,
    /// UDP client mappings.
    nat: Mutex<HashMap<SocketAddr, Mapping>>,
}

struct Mapping {
    sock: Arc<UdpSocket>,
    reply: AbortHandle,
}

/// A running proxy. See the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    udp: bool,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listen on 127.0.0.1:<free port> and forward every TCP connection to `upstream`.
    pub fn tcp(upstream: SocketAddr) -> Proxy {
        Proxy::start(upstream, false, 0)
    }

    /// Like [`tcp`](Self::tcp), but client → upstream at `rate` bytes/s.
    pub fn tcp_thin(upstream: SocketAddr, rate: u64) -> Proxy {
        Proxy::start(upstream, false, rate)
    }

    /// Listen on 127.0.0.1:<free port> (UDP) and forward datagrams to
    /// `upstream`, each client address getting its own upstream socket (like
    /// a NAT), replies sent back to that client.
    pub fn udp(upstream: SocketAddr) -> Proxy {
        Proxy::start(upstream, true, 0)
    }

    fn start(upstream: SocketAddr, udp: bool, up_rate: u64) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(if udp { "proxy-udp" } else { "proxy-tcp" })
            .enable_all()
            .build()
            .expect("proxy runtime");
        let shared = Arc::new(Shared {
            up_rate,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            start: Instant::now(),
            samples: Mutex::new(Vec::new()),
            blackhole: watch::Sender::new(false),
            cut: watch::Sender::new(0),
            live: Mutex::new(HashSet::new()),
            nat: Mutex::new(HashMap::new()),
        });
        // The kernel picks the port as it binds: a port chosen first and bound
        // after can be taken meanwhile by another test's outgoing connection
        // (seen once: AddrInUse in reload.rs).
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let addr = if udp {
            let sock = {
                let _g = rt.enter();
                let s = std::net::UdpSocket::bind(any).expect("proxy udp bind");
                s.set_nonblocking(true).unwrap();
                set_bufs(&s);
                s
            };
            let addr = sock.local_addr().unwrap();
            let sock = {
                let _g = rt.enter();
                Arc::new(UdpSocket::from_std(sock).unwrap())
            };
            rt.spawn(udp_main(sock, upstream, shared.clone()));
            addr
        } else {
            let listener = {
                let _g = rt.enter();
                let l = std::net::TcpListener::bind(any).expect("proxy tcp bind");
                l.set_nonblocking(true).unwrap();
                l
            };
            let addr = listener.local_addr().unwrap();
            let listener = {
                let _g = rt.enter();
                TcpListener::from_std(listener).unwrap()
            };
            rt.spawn(tcp_accept(listener, upstream, shared.clone()));
            addr
        };
        rt.spawn(sampler(shared.clone()));
        Proxy { addr, udp, shared, rt: Some(rt) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Break the link now. TCP: every live forwarded connection is reset on
    /// both sides (returns once they are closed, at most ~2 s); the listener
    /// keeps accepting. UDP: every client mapping is forgotten, so the next
    /// datagrams from a client leave from a new upstream source port.
    pub fn cut(&self) {
        if self.udp {
            let old: Vec<Mapping> = {
                let mut nat = self.shared.nat.lock().unwrap();
                nat.drain().map(|(_, m)| m).collect()
            };
            for m in old {
                m.reply.abort();
            }
            return;
        }
        let victims: Vec<u64> = self.shared.live.lock().unwrap().iter().copied().collect();
        self.shared.cut.send_modify(|g| *g += 1);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            let live = self.shared.live.lock().unwrap();
            if victims.iter().all(|id| !live.contains(id)) {
                return;
            }
            drop(live);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// While on, nothing crosses the link in either direction, and nothing is
    /// closed. Off: forwarding resumes on the same connections.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// Bytes forwarded client→server so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server→client so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// `(elapsed since start, cumulative client→server bytes)`, one sample
    /// every 100 ms from the start (the first one at ~0).
    pub fn samples(&self) -> Vec<(Duration, u64)> {
        self.shared.samples.lock().unwrap().clone()
    }

    /// TCP connections accepted (or UDP client mappings created) so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Dropping the runtime drops every task and with it every socket.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
        if let Ok(mut nat) = self.shared.nat.lock() {
            nat.clear();
        }
    }
}

/// Ask for big UDP socket buffers so bursts are not dropped by the kernel.
fn set_bufs(s: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &UDP_SOCKBUF as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

async fn sampler(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let v = shared.up.load(Ordering::SeqCst);
        let at = shared.start.elapsed();
        shared.samples.lock().unwrap().push((at, v));
    }
}

/// Wait until the link is not blackholed.
async fn open(bh: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, which outlives every task.
    let _ = bh.wait_for(|on| !*on).await;
}

// ---------------------------------------------------------------- TCP

async fn tcp_accept(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.live.lock().unwrap().insert(id);
        let cut = shared.cut.subscribe();
        let shared2 = shared.clone();
        tokio::spawn(async move {
            tcp_conn(client, upstream, &shared2, cut).await;
            shared2.live.lock().unwrap().remove(&id);
        });
    }
}

/// How a forwarded connection ended.
enum End {
    /// Both directions saw EOF and passed it on: close normally.
    Clean,
    /// An error or a cut: reset both sides.
    Abort,
}

async fn tcp_conn(mut client: TcpStream, upstream: SocketAddr, shared: &Shared, mut cut: watch::Receiver<u64>) {
    let _ = client.set_nodelay(true);
    let mut bh = shared.blackhole.subscribe();
    // A dead link carries no SYN either: connect upstream only once open.
    let connect = async {
        open(&mut bh).await;
        TcpStream::connect(upstream).await
    };
    let mut server = tokio::select! {
        r = connect => match r {
            Ok(s) => s,
            Err(_) => {
                let _ = client.set_zero_linger();
                return;
            }
        },
        _ = cut.changed() => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = pump(&mut cr, &mut sw, &shared.up, shared.blackhole.subscribe(), shared.up_rate);
        let down = pump(&mut sr, &mut cw, &shared.down, shared.blackhole.subscribe(), 0);
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => match r {
                Ok(_) => End::Clean,
                Err(_) => End::Abort,
            },
            _ = cut.changed() => End::Abort,
        }
    };
    if let End::Abort = end {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copy `r` to `w` until EOF (then pass the EOF on), counting into `count`,
/// holding everything back while the link is blackholed, at most `rate`
/// bytes/s if not 0.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    count: &AtomicU64,
    mut bh: watch::Receiver<bool>,
    rate: u64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Thin: reads of 1/50 s worth, each followed by its time on the wire.
    let size = if rate == 0 { TCP_BUF } else { (rate as usize / 50).clamp(512, TCP_BUF) };
    let mut buf = vec![0u8; size];
    let mut next = tokio::time::Instant::now();
    loop {
        if rate > 0 {
            tokio::time::sleep_until(next).await;
        }
        open(&mut bh).await;
        let n = r.read(&mut buf).await;
        open(&mut bh).await;
        match n? {
            0 => {
                w.shutdown().await?;
                return Ok(());
            }
            n => {
                w.write_all(&buf[..n]).await?;
                count.fetch_add(n as u64, Ordering::SeqCst);
                if rate > 0 {
                    next = next.max(tokio::time::Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- UDP

async fn udp_main(listen: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; UDP_BUF];
    // The last upstream port each client had, so a new mapping never reuses it.
    let mut last_port: HashMap<SocketAddr, u16> = HashMap::new();
    let bh = shared.blackhole.subscribe();
    loop {
        let (n, client) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors surface here on Linux; nothing to do about them.
            Err(_) => continue,
        };
        if *bh.borrow() {
            continue;
        }
        let existing = shared.nat.lock().unwrap().get(&client).map(|m| m.sock.clone());
        let sock = match existing {
            Some(s) => s,
            None => {
                let Some(sock) = new_upstream(upstream, last_port.get(&client).copied()) else {
                    continue;
                };
                last_port.insert(client, sock.local_addr().unwrap().port());
                let reply =
                    tokio::spawn(udp_reply(sock.clone(), listen.clone(), client, shared.clone())).abort_handle();
                shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.nat.lock().unwrap().insert(client, Mapping { sock: sock.clone(), reply });
                sock
            }
        };
        if sock.send(&buf[..n]).await.is_ok() {
            shared.up.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}

/// A fresh upstream socket connected to `upstream`, on a port other than `avoid`.
fn new_upstream(upstream: SocketAddr, avoid: Option<u16>) -> Option<Arc<UdpSocket>> {
    for _ in 0..16 {
        let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        if Some(s.local_addr().ok()?.port()) == avoid {
            continue;
        }
        s.connect(upstream).ok()?;
        s.set_nonblocking(true).ok()?;
        set_bufs(&s);
        return UdpSocket::from_std(s).ok().map(Arc::new);
    }
    None
}

async fn udp_reply(sock: Arc<UdpSocket>, listen: Arc<UdpSocket>, client: SocketAddr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; UDP_BUF];
    let bh = shared.blackhole.subscribe();
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ECONNREFUSED from an earlier datagram to a closed port.
            Err(_) => continue,
        };
        if *bh.borrow() {
            continue;
        }
        if listen.send_to(&buf[..n], client).await.is_ok() {
            shared.down.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}
