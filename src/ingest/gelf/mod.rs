//! GELF ingest (Graylog Extended Log Format, as Graylog senders and Docker's
//! gelf log driver send it). Stub: filled in by the GELF work.

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use super::ListenerCtx;
use crate::shutdown::Shutdown;

pub async fn serve_tcp(_listener: TcpListener, _ctx: Arc<ListenerCtx>, sd: Shutdown) {
    sd.token.cancelled().await
}

pub async fn serve_udp(_sock: UdpSocket, _ctx: Arc<ListenerCtx>, sd: Shutdown) {
    sd.token.cancelled().await
}
