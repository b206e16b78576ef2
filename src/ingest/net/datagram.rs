//! Receiving datagrams for every datagram listener (syslog over UDP and unix
//! datagram, GELF over UDP): a large receive buffer, the kernel's own drops
//! read and counted, and a receive loop that takes what is queued in batches
//! and hands each datagram to the listener kind's [`Datagrams`] handler.
//! Never blocks: when the stream's queue is full the records are held (up
//! to `HOLD_BYTES`) and offered again, and beyond that dropped and counted
//! (`overload`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{UdpSocket, UnixDatagram};
use tracing::warn;

use crate::ingest::batcher::{Batcher, HOLD_RETRY};
use crate::ingest::ListenerCtx;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};
use crate::store::BATCH_BYTES;

/// Receive buffer asked of the kernel (capped by net.core.rmem_max unless root).
const RCVBUF: libc::c_int = 8 << 20;

/// Ask for a large receive buffer; best effort (a smaller one still works).
/// Returns the size the kernel granted (Linux reports twice the usable
/// size), for the start-up warning when it is far below what was asked.
pub fn grow_receive_buffer(s: &impl AsRawFd) -> usize {
    let v: libc::c_int = RCVBUF;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a valid, owned fd with a correctly sized int option.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of_val(&v) as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&got) as libc::socklen_t;
    // SAFETY: getsockopt on a valid fd into a correctly sized int.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &mut got as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 {
        usize::try_from(got).unwrap_or(0)
    } else {
        0
    }
}

/// Warn at start when a datagram listener's receive buffer is far below the
/// 8 MiB asked: the kernel capped it at `net.core.rmem_max` (ferry runs
/// without CAP_NET_ADMIN under its unit), and a short stall will lose datagrams.
pub fn check_receive_buffer(listener: &str, granted: usize) {
    // Linux books twice what it grants (for its own overhead): uncapped, 8 MiB reads back as 16.
    if granted < 2 * RCVBUF as usize {
        warn!(listener, granted_bytes = granted, asked_bytes = RCVBUF,
            "the kernel capped this listener's receive buffer (net.core.rmem_max): a short stall will lose datagrams (counted in ferry_socket_dropped_datagrams_total); set net.core.rmem_max = {RCVBUF}");
    }
}

/// Counts what the kernel dropped at a UDP socket because its receive buffer
/// was full: the classic silent loss of syslog over UDP. Linux keeps the
/// count per socket (`drops`, last column of /proc/net/udp and udp6); it is
/// read every [`TICK`] and added to `ferry_socket_dropped_datagrams_total`.
pub struct KernelDrops {
    inode: u64,
    seen: u64,
    counter: prometheus::IntCounter,
}

impl KernelDrops {
    /// Drop accounting of `sock`, counted under the listener's name.
    pub fn new(sock: &impl AsRawFd, ctx: &ListenerCtx) -> KernelDrops {
        // SAFETY: fstat on a valid, owned fd into a zeroed stat buffer.
        let inode = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(sock.as_raw_fd(), &mut st) == 0 {
                st.st_ino
            } else {
                0
            }
        };
        let counter = ctx.metrics.ingest.socket_dropped_datagrams.with_label_values(&[&ctx.name]);
        KernelDrops { inode, seen: 0, counter }
    }

    /// Add the drops since the last call to the counter.
    pub fn poll(&mut self) {
        if self.inode == 0 {
            return;
        }
        let Some(now) = ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .find_map(|f| std::fs::read_to_string(f).ok().and_then(|t| drops_of(&t, self.inode)))
        else {
            return;
        };
        if now > self.seen {
            self.counter.inc_by(now - self.seen);
            self.seen = now;
        }
    }
}

/// The `drops` column of the /proc/net/udp line whose inode is `inode`.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(9)?.parse::<u64>().ok()? == inode).then(|| f.last()?.parse().ok())?
    })
}

/// The two datagram sockets, behind one interface.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Kernel drop accounting, for sockets where Linux counts them (UDP).
    fn kernel_drops(&self, _ctx: &ListenerCtx) -> Option<KernelDrops> {
        None
    }
    /// Wait for a datagram into `buf`: its length and sender (none for unix sockets).
    fn recv(&self, buf: &mut [u8])
        -> impl std::future::Future<Output = io::Result<(usize, Option<SocketAddr>)>> + Send;
    /// A datagram already queued, without waiting (`WouldBlock` when none).
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)>;
}

/// A UDP socket.
pub struct Udp(pub UdpSocket);
/// A unix datagram socket.
pub struct Unix(pub UnixDatagram);

impl DatagramSocket for Udp {
    fn kernel_drops(&self, ctx: &ListenerCtx) -> Option<KernelDrops> {
        Some(KernelDrops::new(&self.0, ctx))
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
        self.0.recv_from(buf).await.map(|(n, a)| (n, Some(a)))
    }
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
        self.0.try_recv_from(buf).map(|(n, a)| (n, Some(a)))
    }
}

impl DatagramSocket for Unix {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
        self.0.recv_from(buf).await.map(|(n, _)| (n, None))
    }
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
        self.0.try_recv_from(buf).map(|(n, _)| (n, None))
    }
}

/// What a datagram listener makes of each datagram: syslog takes it as one
/// record, GELF reassembles chunks and decompresses. The receive loop around
/// it (batching, holding through a stall, kernel drops, draining at a stop)
/// is [`serve`], the same for both.
pub trait Datagrams: Send {
    /// One datagram from `src` (`None` on unix sockets), received at `wall_ms`
    /// (the archive's clock) and `at` (a monotonic one, for timeouts).
    fn datagram(
        &mut self,
        ctx: &ListenerCtx,
        batcher: &mut Batcher,
        src: Option<SocketAddr>,
        d: &[u8],
        wall_ms: i64,
        at: Instant,
    );
    /// Every [`TICK`], traffic or not (GELF: give up on incomplete messages).
    fn tick(&mut self, _ctx: &ListenerCtx, _at: Instant) {}
}

/// How often kernel drops are read and [`Datagrams::tick`] runs.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Serve a datagram socket with `handler` until shutdown.
pub async fn serve<S: DatagramSocket, D: Datagrams>(sock: S, mut handler: D, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    let mut buf = vec![0u8; 65536];
    let mut batcher = Batcher::new(&ctx, String::new());
    let mut kernel = sock.kernel_drops(&ctx);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failed = |e: &io::Error| {
        if ctx.may_warn() {
            warn!(listener = %ctx.name, error = %e, "datagram receive failed");
        }
    };
    loop {
        let first = tokio::select! {
            _ = sd.token.cancelled() => break,
            _ = tick.tick() => {
                if let Some(k) = kernel.as_mut() {
                    k.poll();
                }
                handler.tick(&ctx, Instant::now());
                continue;
            }
            // Cancel safety: recv_from is cancel safe; a tick loses no datagram.
            r = sock.recv(&mut buf) => r,
            _ = tokio::time::sleep(HOLD_RETRY), if batcher.has_records() => {
                batcher.try_flush();
                continue;
            }
        };
        let (wall, at) = (SystemClock.now_ms(), Instant::now());
        match first {
            Ok((n, src)) => handler.datagram(&ctx, &mut batcher, src, &buf[..n], wall, at),
            Err(e) => {
                failed(&e);
                continue;
            }
        }
        // Take whatever else is already queued, up to a batch, without waiting.
        while batcher.buffered() < BATCH_BYTES {
            match sock.try_recv(&mut buf) {
                Ok((n, src)) => handler.datagram(&ctx, &mut batcher, src, &buf[..n], wall, at),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed(&e);
                    break;
                }
            }
        }
        batcher.try_flush();
    }
    batcher.drain(std::time::Duration::from_secs(5)).await;
    if let Some(k) = kernel.as_mut() {
        k.poll();
    }
}

#[cfg(test)]
mod tests {
    use super::drops_of;

    #[test]
    fn drops_are_read_from_the_line_of_the_socket() {
        let t = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:14B4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  124: 0100007F:14B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n";
        assert_eq!(drops_of(t, 4242), Some(17));
        assert_eq!(drops_of(t, 4343), Some(0));
        assert_eq!(drops_of(t, 1), None);
    }
}
