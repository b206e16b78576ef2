//! Syslog datagrams (UDP per RFC 5426, unix datagram like /dev/log): one
//! datagram is one record. The receive loop is `ingest::net::datagram`'s.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::ingest::batcher::Batcher;
use crate::ingest::net::datagram::Datagrams;
use crate::ingest::ListenerCtx;

/// Syslog datagrams: one datagram is one record.
pub struct Syslog;

impl Datagrams for Syslog {
    #[inline]
    fn datagram(
        &mut self,
        ctx: &ListenerCtx,
        b: &mut Batcher,
        src: Option<SocketAddr>,
        d: &[u8],
        wall: i64,
        _: Instant,
    ) {
        push(ctx, b, src.map(|a| a.ip()), d, ctx.cfg.max_record_bytes, wall)
    }
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
