//! GELF ingest (Graylog Extended Log Format), as Graylog senders and
//! Docker's gelf log driver send it: NUL-delimited over TCP; over UDP, whole
//! or chunked datagrams, each message gzip, zlib or plain JSON.
//!
//! One GELF message is one record, stored as its (decompressed) JSON text:
//! ferry archives what was sent and leaves parsing to whoever reads it.

pub mod chunk;
pub mod decode;
mod tcp;
mod udp;

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use super::ListenerCtx;
use crate::shutdown::Shutdown;

/// Serve GELF over TCP (NUL-delimited) until shutdown.
pub async fn serve_tcp(listener: TcpListener, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    tcp::serve(listener, ctx, sd).await
}

/// Serve GELF over UDP (whole or chunked datagrams) until shutdown.
pub async fn serve_udp(sock: UdpSocket, ctx: Arc<ListenerCtx>, sd: Shutdown) {
    let gelf = udp::Gelf::new(&ctx);
    crate::ingest::net::datagram::serve(crate::ingest::net::datagram::Udp(sock), gelf, ctx, sd).await
}
