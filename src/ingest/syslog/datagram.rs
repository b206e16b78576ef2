//! Datagram sockets (UDP per RFC 5426, unix datagram like /dev/log): one
//! datagram is one record. Never blocks: when the stream's queue is full the
//! records are held (up to `HOLD_BYTES`) and offered again, and beyond that
//! dropped and counted (`overload`); the kernel's own drops are made less
//! likely by a large receive buffer.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

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
pub fn grow_receive_buffer(s: &impl AsRawFd) {
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
            return;
        }
    }
}

/// The two datagram sockets, behind one interface.
pub trait DatagramSocket: Send + Sync + 'static {
    fn recv(&self, buf: &mut [u8]) -> impl std::future::Future<Output = io::Result<(usize, Option<IpAddr>)>> + Send;
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)>;
}

pub struct Udp(pub UdpSocket);
pub struct Unix(pub UnixDatagram);

impl DatagramSocket for Udp {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        self.0.recv_from(buf).await.map(|(n, a)| (n, Some(a.ip())))
    }
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        self.0.try_recv_from(buf).map(|(n, a)| (n, Some(a.ip())))
    }
}

impl DatagramSocket for Unix {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        self.0.recv_from(buf).await.map(|(n, _)| (n, None))
    }
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        self.0.try_recv_from(buf).map(|(n, _)| (n, None))
    }
}

/// Serve a datagram socket until shutdown.
pub async fn serve<S: DatagramSocket>(sock: S, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    let mut buf = vec![0u8; 65536];
    let mut batcher = Batcher::new(&ctx, String::new());
    let max = ctx.cfg.max_record_bytes;
    loop {
        let first = tokio::select! {
            _ = sd.token.cancelled() => break,
            r = sock.recv(&mut buf) => r,
            _ = tokio::time::sleep(HOLD_RETRY), if batcher.has_records() => {
                batcher.try_flush();
                continue;
            }
        };
        let now = SystemClock.now_ms();
        match first {
            Ok((n, src)) => push(&ctx, &mut batcher, src, &buf[..n], max, now),
            Err(e) => {
                if ctx.may_warn() {
                    warn!(listener = %ctx.name, error = %e, "datagram receive failed");
                }
                continue;
            }
        }
        // Take whatever else is already queued, up to a batch, without waiting.
        while batcher.buffered() < BATCH_BYTES {
            match sock.try_recv(&mut buf) {
                Ok((n, src)) => push(&ctx, &mut batcher, src, &buf[..n], max, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if ctx.may_warn() {
                        warn!(listener = %ctx.name, error = %e, "datagram receive failed");
                    }
                    break;
                }
            }
        }
        batcher.try_flush();
    }
    batcher.drain(std::time::Duration::from_secs(5)).await;
}

#[inline]
fn push(ctx: &ListenerCtx, batcher: &mut Batcher, src: Option<IpAddr>, d: &[u8], max: usize, now: i64) {
    // Senders often end a datagram with LF (or NUL); it is framing, not message.
    let d = d.strip_suffix(b"\n").or_else(|| d.strip_suffix(b"\0")).unwrap_or(d);
    if d.is_empty() {
        return;
    }
    if !ctx.admit_record(src, d.len()) {
        return;
    }
    let n = d.len().min(max);
    batcher.push(&d[..n], n < d.len(), now);
}
