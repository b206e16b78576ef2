//! Stream sockets (TCP, unix stream): accept under a connection limit, then
//! one task per connection decoding RFC 6587 frames into batches.
//!
//! Backpressure: a connection hands each read's records to the store and
//! waits for room before reading again, so a slow disk slows senders through
//! TCP flow control and memory stays bounded. Nothing downstream of the store
//! (the link) can slow a connection.

use std::sync::Arc;

use crate::ingest::net::conn::{read_now, readable, ReadReady, TlsServer};
use bytes::{Buf, BytesMut};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::framing::{Decoder, FramingError, Next};
use crate::config::MAX_RECORD_BYTES_CEILING;
use crate::ingest::batcher::Batcher;
use crate::ingest::net::accept::{accept_error, accept_tcp, admit, Admission};
use crate::ingest::net::guard::{Close, ConnGuard};
use crate::ingest::ListenerCtx;
use crate::metrics::DropReason;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};

/// Read buffer growth step; also about one batch per read at full speed.
const READ_CHUNK: usize = 64 << 10;

/// The read size after a read that brought less than this: most wake-ups of
/// an idle collector are a few lines, and thousands of connections waking at
/// once with 64 KiB each fragmented the heap for good (issue 26). A read
/// that fills its buffer grows the next to [`READ_CHUNK`].
const FIRST_READ: usize = 4 << 10;

/// Syslog over TCP, or over TLS (RFC 5425) with `tls`: RFC 6587 frames.
pub async fn serve_tcp(listener: TcpListener, tls: Option<TlsServer>, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    accept_tcp(listener, tls, ctx, sd, |conn, peer, ip, ctx, sd, permit| {
        connection(conn, peer, Some(ip), ctx, sd, permit)
    })
    .await
}

/// Syslog over a unix stream socket: RFC 6587 frames, until shutdown.
pub async fn serve_unix(listener: UnixListener, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = sd.token.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, _)) => {
                let peer = match sock.peer_cred() {
                    Ok(c) => format!("unix:pid={},uid={}", c.pid().unwrap_or(0), c.uid()),
                    Err(_) => "unix".to_owned(),
                };
                let Some(admission) = admit(&ctx, &limit, &peer) else {
                    continue;
                };
                let (ctx, sd2) = (ctx.clone(), sd.clone());
                sd.spawn(connection(sock, peer, None, ctx, sd2, admission));
            }
            Err(e) => accept_error(&ctx, e).await,
        }
    }
}

/// Serve one syslog connection to its end. Not an `async fn`: the task is
/// [`connection_with`]'s future itself, not a wrapper holding a copy of it.
pub fn connection<S: ReadReady + Send + 'static>(
    sock: S,
    peer: String,
    source: Option<std::net::IpAddr>,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    admission: Admission,
) -> impl std::future::Future<Output = ()> + Send {
    let max_record = ctx.cfg.max_record_bytes;
    let dec = Decoder::new(max_record, MAX_RECORD_BYTES_CEILING.max(max_record));
    connection_with(dec, sock, peer, source, ctx, sd, admission)
}

/// Serve one connection framed by `dec` to its end (syslog's RFC 6587
/// decoder, or GELF's NUL-delimited one).
///
/// Memory: the connection drains what the socket holds, a read at a time
/// (each read's records handed to the store before the next: backpressure),
/// then waits for readiness holding no read buffer, only the bytes of a
/// record cut by the last read. Thousands of idle collectors cost their
/// sockets and tasks, not 64 KiB each.
pub(crate) async fn connection_with<S: ReadReady>(
    mut dec: Decoder,
    mut sock: S,
    peer: String,
    source: Option<std::net::IpAddr>,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    _admission: Admission,
) {
    let m = &ctx.metrics;
    let guard = ConnGuard::open(&ctx);
    debug!(listener = %ctx.name, %peer, "connection opened");
    let mut buf = BytesMut::new();
    let mut batcher = Batcher::new(&ctx, peer.clone());
    let idle = ctx.cfg.idle_timeout;
    let mut chunk = FIRST_READ;
    let reason: Close = 'conn: loop {
        // 1. Drain: rustls may hold plaintext from the handshake, so this
        // comes first, and readiness is awaited only after a read was pending.
        loop {
            if sd.token.is_cancelled() {
                break 'conn Close::Shutdown;
            }
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            let before = buf.len();
            match read_now(&mut sock, &mut buf) {
                None => break,
                Some(Err(e)) => break 'conn read_failed(&ctx, &peer, &dec, &buf, e),
                Some(Ok(0)) => break 'conn at_eof(&ctx, &peer, source, &mut dec, &buf, &mut batcher),
                Some(Ok(n)) => {
                    if buf.len() == buf.capacity() {
                        chunk = READ_CHUNK;
                    } else if n < FIRST_READ {
                        chunk = FIRST_READ;
                    }
                    batcher.expect(before + n);
                }
            }
            let (pos, fatal) = take_records(&ctx, source, &mut dec, &buf, &mut batcher);
            buf.advance(pos);
            batcher.flush().await;
            if let Some(e) = fatal {
                m.ingest.framing_errors.with_label_values(&[&ctx.name, e.reason()]).inc();
                warn!(listener = %ctx.name, %peer, error = %e, "framing error: closing connection (records before it were kept)");
                break 'conn Close::FramingError;
            }
        }
        // 2. Idle: keep only the bytes of a record cut by the last read.
        if buf.is_empty() {
            buf = BytesMut::new();
        } else if buf.capacity() > buf.len() + 1024 {
            buf = BytesMut::from(&buf[..]);
        }
        let ready = tokio::select! {
            biased;
            _ = sd.token.cancelled() => break Close::Shutdown,
            r = tokio::time::timeout(idle, readable(&mut sock)) => r,
        };
        match ready {
            Err(_) => break idle_timeout(&ctx, &peer, &dec, &buf, idle),
            Ok(Err(e)) => break read_failed(&ctx, &peer, &dec, &buf, e),
            Ok(Ok(())) => {}
        }
    };
    batcher.flush().await;
    guard.close(reason);
    let reason = reason.as_str();
    if matches!(reason, "eof" | "shutdown") {
        debug!(listener = %ctx.name, %peer, reason, "connection closed");
    } else {
        info!(listener = %ctx.name, %peer, reason, "connection closed");
    }
}

/// The records whole in `buf`, admitted ones into the batch. Returns the
/// bytes used and the framing error that stopped the walk, if one did.
fn take_records(
    ctx: &ListenerCtx,
    source: Option<std::net::IpAddr>,
    dec: &mut Decoder,
    buf: &[u8],
    batcher: &mut Batcher,
) -> (usize, Option<FramingError>) {
    let now = SystemClock.now_ms();
    let mut pos = 0;
    loop {
        match dec.next(&buf[pos..]) {
            Next::Incomplete => return (pos, None),
            Next::Skip { consumed } => pos += consumed,
            Next::Record { start, len, consumed, truncated } => {
                if ctx.admit_record(source, len) {
                    batcher.push(&buf[pos + start..pos + start + len], truncated, now);
                }
                pos += consumed;
            }
            Next::Error(e) => return (pos, Some(e)),
        }
    }
}

/// The peer closed: a last record without its trailer is taken, a cut
/// frame is dropped and counted.
fn at_eof(
    ctx: &ListenerCtx,
    peer: &str,
    source: Option<std::net::IpAddr>,
    dec: &mut Decoder,
    buf: &[u8],
    batcher: &mut Batcher,
) -> Close {
    if let Some((rec, truncated)) = dec.finish(buf) {
        if ctx.admit_record(source, rec.len()) {
            batcher.push(rec, truncated, SystemClock.now_ms());
        }
    } else if dec.mid_record(buf) {
        ctx.metrics.drop_records(&ctx.name, DropReason::IncompleteFrame, 1);
        warn!(listener = %ctx.name, %peer, incomplete_bytes = buf.len(), "connection closed mid-frame; partial frame dropped (counted)");
    }
    Close::Eof
}

/// A read failed: a frame cut by it is dropped and counted.
fn read_failed(ctx: &ListenerCtx, peer: &str, dec: &Decoder, buf: &[u8], e: std::io::Error) -> Close {
    warn!(listener = %ctx.name, %peer, error = %e, "read error; closing connection");
    if dec.mid_record(buf) {
        ctx.metrics.drop_records(&ctx.name, DropReason::IncompleteFrame, 1);
    }
    Close::ReadError
}

/// Nothing came for `idle`: counted as a framing error, with a cut frame
/// dropped and counted.
fn idle_timeout(ctx: &ListenerCtx, peer: &str, dec: &Decoder, buf: &[u8], idle: std::time::Duration) -> Close {
    let pending = dec.mid_record(buf);
    ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, "idle_timeout"]).inc();
    if pending {
        ctx.metrics.drop_records(&ctx.name, DropReason::IncompleteFrame, 1);
    }
    warn!(listener = %ctx.name, %peer, idle_timeout = ?idle, incomplete_bytes = buf.len(),
        "idle timeout: closing connection{}", if pending { " with an incomplete frame (dropped, counted)" } else { "" });
    Close::IdleTimeout
}
