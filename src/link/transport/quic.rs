//! QUIC (quinn). One bidirectional stream per connection carries the same
//! protocol as TLS over TCP; QUIC's own keepalive and idle timeout notice a
//! dead path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;

use super::{Link, Refused, Timing, WireCounter};
use crate::link::proto::ALPN;
use crate::pki::{self, identity_from_cert, Derived, Live, TlsFiles};

fn transport_config(timing: &Timing) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timing.keepalive));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timing.dead_after).ok());
    // Long, fat WAN pipes: let one stream use a large window.
    t.stream_receive_window(quinn::VarInt::from_u32(32 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    Arc::new(t)
}

/// The client side: one endpoint, reused across reconnects; each
/// connection uses the TLS material in force.
#[derive(Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
    config: Arc<Derived<quinn::ClientConfig>>,
}

impl Dialer {
    /// A client endpoint (IPv6 when `ipv6`) with the TLS material in force.
    pub fn new(live: &Arc<Live>, timing: &Timing, ipv6: bool) -> io::Result<Dialer> {
        let timing = *timing;
        let config = Derived::new(live.clone(), move |m| {
            let tls = pki::client_config_from(m, &[ALPN])?;
            let crypto = QuicClientConfig::try_from(tls).map_err(|e| pki::Error::Quic(e.to_string()))?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            config.transport_config(transport_config(&timing));
            Ok(config)
        })
        .map_err(io::Error::other)?;
        let bind: SocketAddr =
            if ipv6 { "[::]:0".parse().expect("literal") } else { "0.0.0.0:0".parse().expect("literal") };
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(Dialer { endpoint, config: Arc::new(config) })
    }

    /// Connect to `addr`, checking the receiver's certificate against `server_name`.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str, timing: &Timing) -> io::Result<Link> {
        let fut = async {
            let conn = self
                .endpoint
                .connect_with(self.config.get(), addr, server_name)
                .map_err(io::Error::other)?
                .await
                .map_err(io::Error::other)?;
            let (identity, peer_certs) = peer_identity(&conn).map_err(|r| io::Error::other(r.detail))?;
            let (send, recv) = conn.open_bi().await.map_err(io::Error::other)?;
            Ok(Link {
                io: Box::new(tokio::io::join(recv, send)),
                peer: addr,
                identity,
                peer_certs,
                wire: WireCounter::Quic(conn.clone()),
                quic: Some(conn),
            })
        };
        tokio::time::timeout(timing.connect_timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// The peer's identity and certificate chain.
fn peer_identity(conn: &quinn::Connection) -> Result<(crate::pki::Identity, Vec<CertificateDer<'static>>), Refused> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(Refused { reason: "no_client_cert", detail: "peer presented no certificate".into() })?;
    let der =
        certs.first().ok_or(Refused { reason: "no_client_cert", detail: "peer presented no certificate".into() })?;
    let identity = identity_from_cert(der).map_err(|e| Refused { reason: "bad_identity", detail: e.to_string() })?;
    Ok((identity, *certs))
}

/// The receiver side: each handshake uses the TLS material in force.
pub struct Acceptor {
    endpoint: quinn::Endpoint,
    config: Derived<Arc<quinn::ServerConfig>>,
}

impl Acceptor {
    /// Bind a QUIC endpoint on `addr`.
    pub fn bind(addr: SocketAddr, live: &Arc<Live>, timing: &Timing) -> io::Result<Acceptor> {
        let t = *timing;
        let server = Derived::new(live.clone(), move |m| {
            let tls = pki::server_config_from(m, &[ALPN])?;
            let crypto = QuicServerConfig::try_from(tls).map_err(|e| pki::Error::Quic(e.to_string()))?;
            let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            config.transport_config(transport_config(&t));
            Ok(Arc::new(config))
        })
        .map_err(io::Error::other)?;
        let config = (*server.get()).clone();
        let (reset, cid_key) = restart_keys(&live.files())?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset));
        endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let socket = std::net::UdpSocket::bind(addr)?;
        let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime for QUIC"))?;
        Ok(Acceptor { endpoint: quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)?, config: server })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Next incoming connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// The server config for the next handshake.
    pub fn config(&self) -> Arc<quinn::ServerConfig> {
        self.config.get()
    }

    /// Stop accepting; existing connections are closed with `code`.
    pub fn close(&self, code: u32, reason: &str) {
        self.endpoint.close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }
}

/// The stateless-reset key and the connection-ID validation key, derived
/// from the node's private key so they survive a restart: a receiver that
/// crashed and came back recognises the connection IDs it issued before and
/// answers their packets with a valid stateless reset, so the uplink redials
/// at once instead of waiting out its idle timeout.
fn restart_keys(files: &TlsFiles) -> io::Result<(ring::hmac::Key, u64)> {
    use sha2::Digest;
    let key = std::fs::read(&files.key)?;
    let derive = |label: &[u8]| {
        let mut h = sha2::Sha256::new();
        h.update(label);
        h.update(&key);
        h.finalize()
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(b"ferry quic stateless reset v1\0"));
    let cid = derive(b"ferry quic connection ids v1\0");
    Ok((reset, u64::from_le_bytes(cid[..8].try_into().expect("32-byte digest"))))
}

/// Complete the server side of a QUIC handshake and authenticate the peer.
pub async fn handshake(
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
    timing: &Timing,
) -> Result<Link, Refused> {
    let peer = incoming.remote_address();
    let fut = async {
        let connecting = incoming
            .accept_with(config)
            .map_err(|e| Refused { reason: pki::classify_quic(&e), detail: e.to_string() })?;
        let conn = connecting.await.map_err(|e| Refused { reason: pki::classify_quic(&e), detail: e.to_string() })?;
        let (identity, peer_certs) = peer_identity(&conn)?;
        let (send, recv) = conn.accept_bi().await.map_err(|e| Refused { reason: "stream", detail: e.to_string() })?;
        Ok(Link {
            io: Box::new(tokio::io::join(recv, send)),
            peer,
            identity,
            peer_certs,
            wire: WireCounter::Quic(conn.clone()),
            quic: Some(conn),
        })
    };
    match tokio::time::timeout(timing.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Refused { reason: "timeout", detail: "QUIC handshake timed out".into() }),
    }
}
