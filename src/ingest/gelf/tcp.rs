//! GELF over TCP: NUL-delimited messages, stored as sent (GELF over TCP is
//! never compressed). Connections are served by the syslog stream loop
//! (limits, backpressure, idle timeout, counters) with NUL-delimited framing.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::ingest::net::accept::accept_tcp;
use crate::ingest::syslog::framing::Decoder;
use crate::ingest::syslog::stream::connection_with;
use crate::ingest::ListenerCtx;
use crate::shutdown::Shutdown;

pub async fn serve(listener: TcpListener, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    accept_tcp(listener, None, ctx, sd, |sock, peer, ip, ctx, sd, permit| {
        let dec = Decoder::nul_delimited(ctx.cfg.max_record_bytes);
        connection_with(dec, sock, peer, Some(ip), ctx, sd, permit)
    })
    .await
}
