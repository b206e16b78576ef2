//! GELF over UDP: datagrams that are whole messages or chunks of one, each
//! message gzip, zlib or plain. Like syslog datagrams this never blocks (what
//! the store cannot take now is dropped and counted), and every message that
//! cannot be kept is counted in `ferry_dropped_records_total` with a reason:
//! `malformed` (does not decompress), `incomplete_frame` (chunks missing
//! after 5 s) or `overload` (pushed out of the reassembly memory bound).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tracing::warn;

use super::chunk::{parse, Datagram, Limits, LostWhy, Outcome, Reassembler};
use super::decode::decode;
use crate::ingest::batcher::{Batcher, HOLD_RETRY};
use crate::ingest::syslog::datagram::{KernelDrops, KERNEL_DROPS_EVERY};
use crate::ingest::ListenerCtx;
use crate::metrics::DropReason;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};
use crate::store::BATCH_BYTES;

/// How often partial messages are checked for expiry when no datagram
/// arrives: a lost message is reported at most this late.
const EXPIRE_EVERY: Duration = Duration::from_millis(500);

const BAD_CHUNK: &str = "gelf_bad_chunk";
const CHUNK_TIMEOUT: &str = "gelf_chunk_timeout";
const CHUNK_EVICTED: &str = "gelf_chunk_evicted";

pub async fn serve(sock: UdpSocket, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    for r in [DropReason::Malformed, DropReason::IncompleteFrame, DropReason::Overload] {
        ctx.metrics.dropped_records.with_label_values(&[&ctx.name, r.as_str()]);
    }
    for r in [BAD_CHUNK, CHUNK_TIMEOUT, CHUNK_EVICTED] {
        ctx.metrics.framing_errors.with_label_values(&[&ctx.name, r]);
    }
    let mut buf = vec![0u8; 65536];
    let mut rx = Receiver {
        batcher: Batcher::new(&ctx, String::new()),
        reasm: Reassembler::new(Limits::default()),
        origin: Instant::now(),
        ctx,
    };
    let mut kernel = KernelDrops::new(&sock, &rx.ctx);
    let mut drops_tick = tokio::time::interval(KERNEL_DROPS_EVERY);
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = sd.token.cancelled() => break,
            _ = tick.tick() => {
                rx.expire();
                continue;
            }
            _ = drops_tick.tick() => {
                kernel.poll();
                continue;
            }
            _ = tokio::time::sleep(HOLD_RETRY), if rx.batcher.has_records() => {
                rx.batcher.try_flush();
                continue;
            }
            // Cancel safety: recv_from is cancel safe; a tick loses no datagram.
            r = sock.recv_from(&mut buf) => r,
        };
        let (now, wall) = (rx.mono_ms(), SystemClock.now_ms());
        match first {
            Ok((n, src)) => rx.datagram(src, &buf[..n], now, wall),
            Err(e) => {
                rx.recv_error(&e);
                continue;
            }
        }
        // Take whatever else is already queued, up to a batch, without waiting.
        while rx.batcher.buffered() < BATCH_BYTES {
            match sock.try_recv_from(&mut buf) {
                Ok((n, src)) => rx.datagram(src, &buf[..n], now, wall),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    rx.recv_error(&e);
                    break;
                }
            }
        }
        rx.batcher.try_flush();
    }
    rx.batcher.drain(Duration::from_secs(5)).await;
    kernel.poll();
}

struct Receiver {
    ctx: Arc<ListenerCtx>,
    batcher: Batcher,
    reasm: Reassembler,
    /// Reassembly runs on a monotonic clock: a wall clock step must neither
    /// expire every partial message at once nor keep them forever.
    origin: Instant,
}

impl Receiver {
    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn datagram(&mut self, src: SocketAddr, d: &[u8], now: u64, wall: i64) {
        match parse(d) {
            Ok(Datagram::Whole(msg)) => self.message(src, msg, wall),
            Ok(Datagram::Chunk(c)) => match self.reasm.insert(src.ip(), &c, now) {
                Outcome::Complete(msg) => self.message(src, &msg, wall),
                Outcome::Pending | Outcome::Duplicate => {}
                Outcome::Invalid(e) => self.bad_chunk(src, &e),
            },
            Err(e) => self.bad_chunk(src, &e),
        }
        self.report_lost();
    }

    fn message(&mut self, src: SocketAddr, msg: &[u8], wall: i64) {
        let ctx = &self.ctx;
        match decode(msg, ctx.cfg.max_record_bytes) {
            Ok(d) if d.data.is_empty() => {}
            Ok(d) => {
                if ctx.admit_record(Some(src.ip()), d.data.len()) {
                    self.batcher.push(&d.data, d.truncated, wall);
                }
            }
            Err(e) => {
                ctx.metrics.drop_records(&ctx.name, DropReason::Malformed, 1);
                if ctx.may_warn() {
                    warn!(listener = %ctx.name, peer = %src, error = %e, bytes = msg.len(),
                        "GELF message dropped (counted as malformed)");
                }
            }
        }
    }

    #[cold]
    fn bad_chunk(&self, src: SocketAddr, e: &impl std::fmt::Display) {
        let ctx = &self.ctx;
        ctx.metrics.framing_errors.with_label_values(&[&ctx.name, BAD_CHUNK]).inc();
        if ctx.may_warn() {
            warn!(listener = %ctx.name, peer = %src, error = %e, "GELF chunk ignored (counted in ferry_framing_errors_total)");
        }
    }

    fn expire(&mut self) {
        let now = self.mono_ms();
        self.reasm.expire(now);
        self.report_lost();
    }

    fn report_lost(&mut self) {
        let ctx = &self.ctx;
        for l in self.reasm.drain_lost() {
            let (reason, label, why) = match l.why {
                LostWhy::Timeout => (DropReason::IncompleteFrame, CHUNK_TIMEOUT, "not all chunks arrived in time"),
                LostWhy::Evicted => {
                    (DropReason::Overload, CHUNK_EVICTED, "pushed out: too many partial messages buffered")
                }
            };
            ctx.metrics.drop_records(&ctx.name, reason, 1);
            ctx.metrics.framing_errors.with_label_values(&[&ctx.name, label]).inc();
            if ctx.may_warn() {
                warn!(listener = %ctx.name, source = %l.source, message_id = %format_args!("{:016x}", l.id),
                    chunks = l.received, of = l.count, timeout_ms = Limits::default().timeout_ms, "GELF message dropped: {why} (counted as {})", reason.as_str());
            }
        }
    }

    fn recv_error(&self, e: &io::Error) {
        if self.ctx.may_warn() {
            warn!(listener = %self.ctx.name, error = %e, "datagram receive failed");
        }
    }
}
