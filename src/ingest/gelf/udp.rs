//! GELF over UDP: datagrams that are whole messages or chunks of one, each
//! message gzip, zlib or plain. Served by the same receive loop as syslog
//! datagrams (never blocks; holds through a short stall), and every message that
//! cannot be kept is counted in `ferry_dropped_records_total` with a reason:
//! `malformed` (does not decompress), `incomplete_frame` (chunks missing
//! after 5 s) or `overload` (pushed out of the reassembly memory bound).

use std::net::SocketAddr;
use std::time::Instant;

use tracing::warn;

use super::chunk::{parse, Datagram, Limits, LostWhy, Outcome, Reassembler};
use super::decode::decode;
use crate::ingest::batcher::Batcher;
use crate::ingest::net::datagram::Datagrams;
use crate::ingest::ListenerCtx;
use crate::metrics::DropReason;

const BAD_CHUNK: &str = "gelf_bad_chunk";
const CHUNK_TIMEOUT: &str = "gelf_chunk_timeout";
const CHUNK_EVICTED: &str = "gelf_chunk_evicted";

/// The GELF side of a datagram listener; the receive loop is
/// [`crate::ingest::net::datagram::serve`]. Partial messages are checked
/// for expiry every `TICK` (500 ms), traffic or not: a lost message is
/// reported at most that late.
pub struct Gelf {
    reasm: Reassembler,
    /// Reassembly runs on a monotonic clock: a wall clock step must neither
    /// expire every partial message at once nor keep them forever.
    origin: Instant,
}

impl Gelf {
    pub fn new(ctx: &ListenerCtx) -> Gelf {
        for r in [DropReason::Malformed, DropReason::IncompleteFrame, DropReason::Overload] {
            ctx.metrics.ingest.dropped_records.with_label_values(&[&ctx.name, r.as_str()]);
        }
        for r in [BAD_CHUNK, CHUNK_TIMEOUT, CHUNK_EVICTED] {
            ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, r]);
        }
        Gelf { reasm: Reassembler::new(Limits::default()), origin: Instant::now() }
    }
}

impl Datagrams for Gelf {
    fn datagram(
        &mut self,
        ctx: &ListenerCtx,
        batcher: &mut Batcher,
        src: Option<SocketAddr>,
        d: &[u8],
        wall: i64,
        at: Instant,
    ) {
        // GELF listens on UDP only, where every datagram has a source.
        let Some(src) = src else { return };
        let now = self.mono_ms(at);
        match parse(d) {
            Ok(Datagram::Whole(msg)) => message(ctx, batcher, src, msg, wall),
            Ok(Datagram::Chunk(c)) => match self.reasm.insert(src.ip(), &c, now) {
                Outcome::Complete(msg) => message(ctx, batcher, src, &msg, wall),
                Outcome::Pending | Outcome::Duplicate => {}
                Outcome::Invalid(e) => bad_chunk(ctx, src, &e),
            },
            Err(e) => bad_chunk(ctx, src, &e),
        }
        self.report_lost(ctx);
    }

    fn tick(&mut self, ctx: &ListenerCtx, at: Instant) {
        let now = self.mono_ms(at);
        self.reasm.expire(now);
        self.report_lost(ctx);
    }
}

impl Gelf {
    fn mono_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn report_lost(&mut self, ctx: &ListenerCtx) {
        for l in self.reasm.drain_lost() {
            let (reason, label, why) = match l.why {
                LostWhy::Timeout => (DropReason::IncompleteFrame, CHUNK_TIMEOUT, "not all chunks arrived in time"),
                LostWhy::Evicted => {
                    (DropReason::Overload, CHUNK_EVICTED, "pushed out: too many partial messages buffered")
                }
            };
            ctx.metrics.drop_records(&ctx.name, reason, 1);
            ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, label]).inc();
            if ctx.may_warn() {
                warn!(listener = %ctx.name, source = %l.source, message_id = %format_args!("{:016x}", l.id),
                    chunks = l.received, of = l.count, timeout_ms = Limits::default().timeout_ms, "GELF message dropped: {why} (counted as {})", reason.as_str());
            }
        }
    }
}

fn message(ctx: &ListenerCtx, batcher: &mut Batcher, src: SocketAddr, msg: &[u8], wall: i64) {
    match decode(msg, ctx.cfg.max_record_bytes) {
        Ok(d) if d.data.is_empty() => {}
        Ok(d) => {
            if ctx.admit_record(Some(src.ip()), d.data.len()) {
                batcher.push(&d.data, d.truncated, wall);
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
fn bad_chunk(ctx: &ListenerCtx, src: SocketAddr, e: &impl std::fmt::Display) {
    ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, BAD_CHUNK]).inc();
    if ctx.may_warn() {
        warn!(listener = %ctx.name, peer = %src, error = %e, "GELF chunk ignored (counted in ferry_framing_errors_total)");
    }
}
