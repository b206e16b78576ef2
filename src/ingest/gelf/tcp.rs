//! GELF over TCP: one task per connection under the listener's connection
//! limits, the same backpressure as syslog streams (each read's records are
//! handed to the store before the next read). Messages are stored as sent:
//! GELF over TCP is never compressed.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::split::{Next, Splitter};
use crate::ingest::batcher::Batcher;
use crate::ingest::syslog::stream::accept_tcp;
use crate::ingest::ListenerCtx;
use crate::metrics::DropReason;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};

/// Read buffer growth step; about one batch per read at full speed.
const READ_CHUNK: usize = 64 << 10;

pub async fn serve(listener: TcpListener, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    accept_tcp(listener, ctx, sd, connection).await
}

async fn connection(
    mut sock: TcpStream,
    peer: String,
    ip: IpAddr,
    ctx: Arc<ListenerCtx>,
    sd: Shutdown,
    _permit: OwnedSemaphorePermit,
) {
    let m = &ctx.metrics;
    m.connections_accepted.with_label_values(&[&ctx.name]).inc();
    let active = m.connections_active.with_label_values(&[&ctx.name]);
    active.inc();
    debug!(listener = %ctx.name, %peer, "connection opened");
    let mut split = Splitter::new(ctx.cfg.max_record_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut batcher = Batcher::new(&ctx, peer.clone());
    let idle = ctx.cfg.idle_timeout;
    let reason: &'static str = loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            biased;
            _ = sd.token.cancelled() => break "shutdown",
            // Cancel safety: read_buf is cancel safe; nothing is lost if shutdown wins.
            r = tokio::time::timeout(idle, sock.read_buf(&mut buf)) => r,
        };
        match read {
            Err(_) => {
                let pending = split.mid_record(&buf);
                m.framing_errors.with_label_values(&[&ctx.name, "idle_timeout"]).inc();
                if pending {
                    m.drop_records(&ctx.name, DropReason::IncompleteFrame, 1);
                }
                warn!(listener = %ctx.name, %peer, idle_timeout = ?idle, incomplete_bytes = buf.len(),
                    "idle timeout: closing connection{}", if pending { " with an unterminated message (dropped, counted)" } else { "" });
                break "idle_timeout";
            }
            Ok(Err(e)) => {
                warn!(listener = %ctx.name, %peer, error = %e, "read error; closing connection");
                if split.mid_record(&buf) {
                    m.drop_records(&ctx.name, DropReason::IncompleteFrame, 1);
                }
                break "read_error";
            }
            Ok(Ok(0)) => {
                if let Some((rec, truncated)) = split.finish(&buf) {
                    if ctx.admit_record(Some(ip), rec.len()) {
                        batcher.push(rec, truncated, SystemClock.now_ms());
                    }
                }
                break "eof";
            }
            Ok(Ok(_)) => {}
        }
        let now = SystemClock.now_ms();
        let mut pos = 0;
        loop {
            match split.next(&buf[pos..]) {
                Next::Incomplete => break,
                Next::Skip { consumed } => pos += consumed,
                Next::Record { len, consumed, truncated } => {
                    if ctx.admit_record(Some(ip), len) {
                        batcher.push(&buf[pos..pos + len], truncated, now);
                    }
                    pos += consumed;
                }
            }
        }
        buf.advance(pos);
        batcher.flush().await;
    };
    batcher.flush().await;
    m.connections_closed.with_label_values(&[&ctx.name, reason]).inc();
    active.dec();
    if reason == "eof" || reason == "shutdown" {
        debug!(listener = %ctx.name, %peer, reason, "connection closed");
    } else {
        info!(listener = %ctx.name, %peer, reason, "connection closed");
    }
}
