//! RELP server (rsyslog's omrelp/imrelp): every `syslog` transaction is
//! answered `200 OK` only after the commit holding its record is durable.
//!
//! Transactions are read as fast as the client sends them (its window), so
//! records from many transactions share one commit; acknowledgements go back
//! in order as commits complete. While the store refuses records (full),
//! acknowledgements are held, the client's window fills, and it stops
//! sending: its own disk-assisted queue is the buffer. A record whose ack
//! was lost in a crash is resent by the client: RELP gives at-least-once,
//! never less.
//!
//! A commit that fails (a disk fault: nothing of it was written) is never
//! answered with an error code: librelp forgets a message answered with
//! anything but `200`. The session is closed instead, with the failed
//! transactions unanswered, and the client resends every unanswered one
//! when it reconnects, while the stream refuses records the reconnected
//! session is held as above.
//!
//! A session that ends (a stop, a reload that replaces its listener) answers
//! everything already committing, says `serverclose`, half-closes, and reads
//! what the client still sends until it closes: a socket closed with unread
//! input is reset by the kernel, which throws away answers still queued, and
//! a record archived but unanswered would be sent again and doubled.

pub mod codec;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ingest::net::conn::TlsServer;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::batcher::Batcher;
use super::net::accept::{accept_tcp, Admission};
use super::net::conn::{read_now, readable, Conn};
use super::net::guard::{Close, ConnGuard};
use super::ListenerCtx;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};
use crate::store::{Committed, Error as StoreError};
use codec::{decode, encode_rsp, Frame};

type Ack = oneshot::Receiver<Result<Committed, StoreError>>;

/// How long a closing session may take to hand over its last answers and
/// see the client close in turn (a client that neither reads nor closes is
/// let go then).
const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// RELP over TCP, or over TLS (rsyslog's omrelp `tls="on"`) with `tls`.
pub async fn serve(listener: TcpListener, tls: Option<TlsServer>, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    accept_tcp(listener, tls, ctx, sd, connection).await
}

/// Wait for the oldest commit in flight. Cancel safe: the entry is removed
/// only once its answer is in.
async fn oldest(q: &mut VecDeque<(Ack, Vec<u64>)>) -> (bool, Vec<u64>) {
    let ok = match q.front_mut() {
        Some((rx, _)) => matches!(rx.await, Ok(Ok(_))),
        None => std::future::pending().await,
    };
    let (_, txnrs) = q.pop_front().expect("front exists");
    (ok, txnrs)
}

/// Read buffer growth step.
const READ_CHUNK: usize = 64 << 10;

/// Ready at once when the last read gave bytes (`more`), else when the
/// socket is readable, within `idle`.
async fn ready_or_more(
    sock: &mut Conn,
    more: bool,
    idle: std::time::Duration,
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    if more {
        return Ok(Ok(()));
    }
    tokio::time::timeout(idle, readable(sock)).await
}

/// Before waiting idle: no buffer, or just a cut frame's own bytes.
fn release(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    } else if buf.capacity() > buf.len() + 1024 {
        *buf = BytesMut::from(&buf[..]);
    }
}

/// What a RELP session holds between reads.
struct Session {
    /// Allocated when bytes arrive; while idle only a cut frame's own bytes.
    buf: BytesMut,
    /// Answers not sent yet.
    out: Vec<u8>,
    batcher: Batcher,
    /// Commits in flight, oldest first, with the transactions each answers.
    inflight: VecDeque<(Ack, Vec<u64>)>,
    /// Transactions read since the last commit was asked for.
    txnrs: Vec<u64>,
    /// The client's `close`: answered once everything before it is.
    close_txnr: Option<u64>,
}

async fn connection(
    sock: Conn,
    peer: String,
    ip: std::net::IpAddr,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    _admission: Admission,
) {
    let guard = ConnGuard::open(&ctx);
    let mut sock = sock;
    let mut s = Session::new(&ctx, &peer);
    // A read gave bytes: read again before waiting for readiness (TLS may
    // hold decrypted bytes the socket's readiness does not show).
    let mut more = true;
    let max_record = ctx.cfg.max_record_bytes;
    // A RELP frame may carry a record longer than max_record_bytes (it is cut,
    // flagged and counted), up to this much.
    let max_frame = crate::config::MAX_RECORD_BYTES_CEILING;
    let reason: Close = loop {
        if s.answer_close() {
            break Close::Eof;
        }
        tokio::select! {
            biased;
            _ = sd.token.cancelled() => break Close::Shutdown,
            (ok, done) = oldest(&mut s.inflight) => {
                if !ok {
                    warn!(listener = %ctx.name, %peer, transactions = done.len(),
                        "commit failed: closing the RELP session unanswered so the client resends");
                    break Close::StoreError;
                }
                s.answer_ok(done);
                if let Err(e) = sock.write_all(&s.out).await {
                    warn!(listener = %ctx.name, %peer, error = %e, "cannot send RELP acks");
                    break Close::ReadError;
                }
                s.out = Vec::new();
            }
            r = ready_or_more(&mut sock, more, ctx.cfg.idle_timeout), if s.close_txnr.is_none() => {
                if let Some(reason) = not_ready(r, &ctx, &peer) {
                    break reason;
                }
                match s.read_some(&mut sock, &ctx, &peer) {
                    Err(reason) => break reason,
                    Ok(false) => {
                        more = false;
                        continue;
                    }
                    Ok(true) => more = true,
                }
                let now = SystemClock.now_ms();
                let mut fatal = None;
                loop {
                    match decode(&s.buf, max_frame) {
                        Ok(None) => break,
                        Ok(Some((Frame { txnr, command: b"syslog", data }, n))) => {
                            // The sender's template's final LF is not part of the message.
                            let data = data.strip_suffix(b"\n").unwrap_or(data);
                            // Acknowledged sources are slowed, never dropped: over its
                            // rate, a source waits and its RELP window fills.
                            ctx.pace_record(ip, data.len()).await;
                            let keep = data.len().min(max_record);
                            s.batcher.push(&data[..keep], keep < data.len(), now);
                            s.txnrs.push(txnr);
                            s.buf.advance(n);
                        }
                        Ok(Some((Frame { txnr, command, .. }, n))) => {
                            answer_command(&mut s.out, &mut s.close_txnr, txnr, command, &ctx, &peer);
                            s.buf.advance(n);
                        }
                        Err(e) => {
                            fatal = Some(e);
                            break;
                        }
                    }
                }
                let mut refused = false;
                if !s.txnrs.is_empty() {
                    match s.batcher.flush_acked().await {
                        Some(rx) => s.inflight.push_back((rx, std::mem::take(&mut s.txnrs))),
                        // Stopping: unanswered, the client resends them elsewhere or later.
                        None => refused = true,
                    }
                }
                if !s.out.is_empty() {
                    if sock.write_all(&s.out).await.is_err() {
                        break Close::ReadError;
                    }
                    s.out = Vec::new();
                }
                if refused {
                    break Close::Shutdown;
                }
                if let Some(e) = fatal {
                    break framing_error(&ctx, &peer, e);
                }
            }
        }
    };
    s.answer_committing().await;
    if reason == Close::Shutdown {
        s.out.extend_from_slice(b"0 serverclose 0\n");
    }
    if reason != Close::ReadError {
        let _ = tokio::time::timeout(CLOSE_DEADLINE, hand_over_and_close(&mut sock, &s.out, &mut s.buf)).await;
    }
    guard.close(reason);
    log_closed(&ctx, &peer, reason);
}

/// An ordinary end is a debug line; any other is worth an info line.
fn log_closed(ctx: &ListenerCtx, peer: &str, reason: Close) {
    let reason = reason.as_str();
    if matches!(reason, "eof" | "shutdown") {
        debug!(listener = %ctx.name, %peer, reason, "RELP session closed");
    } else {
        info!(listener = %ctx.name, %peer, reason, "RELP session closed");
    }
}

fn framing_error(ctx: &ListenerCtx, peer: &str, e: codec::RelpError) -> Close {
    ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, e.reason()]).inc();
    warn!(listener = %ctx.name, %peer, error = %e, "RELP framing error: closing session (records before it were kept)");
    Close::FramingError
}

/// Why the session ends when the socket was not ready: the idle timeout,
/// or an error; `None` when it is ready.
fn not_ready(
    r: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    ctx: &ListenerCtx,
    peer: &str,
) -> Option<Close> {
    match r {
        Err(_) => {
            ctx.metrics.ingest.framing_errors.with_label_values(&[&ctx.name, "idle_timeout"]).inc();
            warn!(listener = %ctx.name, %peer, "idle timeout: closing RELP session");
            Some(Close::IdleTimeout)
        }
        Ok(Err(e)) => {
            warn!(listener = %ctx.name, %peer, error = %e, "read error; closing RELP session");
            Some(Close::ReadError)
        }
        Ok(Ok(())) => None,
    }
}

/// Send the last answers, half-close, and read until the client closes.
async fn hand_over_and_close(sock: &mut Conn, out: &[u8], buf: &mut BytesMut) -> std::io::Result<()> {
    sock.write_all(out).await?;
    sock.shutdown().await?;
    // The client may still be sending: read (and drop: unanswered, it
    // is sent again) until it closes too. Closing with unread input
    // makes the kernel send a reset and throw away whatever answers
    // are still queued for sending: records committed but never
    // answered, which the client would send again and double.
    while sock.read_buf(buf).await? > 0 {
        buf.clear();
    }
    std::io::Result::Ok(())
}

/// Answer a command other than `syslog`: `open` gets the offer, `close` is
/// answered once everything before it is, the rest are refused.
fn answer_command(
    out: &mut Vec<u8>,
    close_txnr: &mut Option<u64>,
    txnr: u64,
    command: &[u8],
    ctx: &ListenerCtx,
    peer: &str,
) {
    match command {
        b"open" => {
            let offer =
                format!("200 OK\nrelp_version=0\nrelp_software=ferry,{}\ncommands=syslog", env!("CARGO_PKG_VERSION"));
            encode_rsp(txnr, offer.as_bytes(), out);
        }
        b"close" => *close_txnr = Some(txnr),
        other => {
            warn!(listener = %ctx.name, %peer, command = %String::from_utf8_lossy(other), "unsupported RELP command");
            encode_rsp(txnr, b"500 unsupported command", out);
        }
    }
}

impl Session {
    fn new(ctx: &Arc<ListenerCtx>, peer: &str) -> Session {
        Session {
            buf: BytesMut::new(),
            out: Vec::new(),
            batcher: Batcher::new(ctx, peer.to_owned()),
            inflight: VecDeque::new(),
            txnrs: Vec::new(),
            close_txnr: None,
        }
    }

    /// The client's `close`, once nothing before it is committing: answered
    /// with the session's last answers, then `serverclose`. True when done.
    fn answer_close(&mut self) -> bool {
        if self.close_txnr.is_some() && self.inflight.is_empty() {
            // Written with the session's last answers below.
            encode_rsp(self.close_txnr.take().expect("checked"), b"", &mut self.out);
            self.out.extend_from_slice(b"0 serverclose 0\n");
            return true;
        }
        false
    }

    fn answer_ok(&mut self, done: Vec<u64>) {
        for t in done {
            encode_rsp(t, b"200 OK", &mut self.out);
        }
    }

    /// Answer what is already committing before going away (the client would
    /// resend it otherwise); what failed stays unanswered, so it is resent.
    async fn answer_committing(&mut self) {
        while !self.inflight.is_empty() {
            let (ok, done) = oldest(&mut self.inflight).await;
            if ok {
                self.answer_ok(done);
            }
        }
    }

    /// Read what the socket holds now: `Ok(false)` when it held nothing (the
    /// buffer is let go), `Err` when the session ends.
    fn read_some(&mut self, sock: &mut Conn, ctx: &ListenerCtx, peer: &str) -> Result<bool, Close> {
        let buf = &mut self.buf;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read_now(sock, buf) {
            None => {
                release(buf);
                Ok(false)
            }
            Some(Err(e)) => {
                warn!(listener = %ctx.name, %peer, error = %e, "read error; closing RELP session");
                Err(Close::ReadError)
            }
            Some(Ok(0)) => Err(Close::Eof),
            Some(Ok(_)) => Ok(true),
        }
    }
}
