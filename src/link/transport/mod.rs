//! Transports: TLS 1.3 over TCP (tokio-rustls) and QUIC (quinn), both with
//! mutual TLS against the deployment CA. Either way the session above sees
//! one ordered byte stream ([`Link::io`]), the peer's certified identity, and
//! a counter of bytes put on the wire for the bandwidth cap.

pub mod quic;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::pki::Identity;

/// The byte stream of a link.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Bytes this side has put on the wire (TLS records written to the TCP
/// socket, or UDP payloads sent by QUIC), for the token bucket.
#[derive(Clone)]
pub enum WireCounter {
    /// The count, and the socket (valid as long as the link's stream).
    Tcp(Arc<AtomicU64>, std::os::fd::RawFd),
    /// The QUIC connection, whose stats count the UDP payloads sent.
    Quic(quinn::Connection),
}

impl WireCounter {
    /// Bytes put on the wire so far.
    pub fn sent(&self) -> u64 {
        match self {
            WireCounter::Tcp(c, _) => c.load(Ordering::Relaxed),
            WireCounter::Quic(c) => c.stats().udp_tx.bytes,
        }
    }

    /// TCP: bytes the peer's TCP has acknowledged (written less what is
    /// still queued in the socket). While it grows the path is moving, even
    /// when the receiver's answers are held up behind megabytes queued on a
    /// thin path. QUIC: `None` (its congestion control keeps little in
    /// flight, so answers are not held up that way).
    pub fn delivered(&self) -> Option<u64> {
        match self {
            WireCounter::Tcp(c, fd) => {
                let mut queued: libc::c_int = 0;
                // SAFETY: TIOCOUTQ on a socket descriptor writes one c_int.
                let r = unsafe { libc::ioctl(*fd, libc::TIOCOUTQ, &mut queued) };
                (r == 0).then(|| c.load(Ordering::Relaxed).saturating_sub(queued.max(0) as u64))
            }
            WireCounter::Quic(_) => None,
        }
    }
}

/// An established, authenticated link.
pub struct Link {
    /// The stream messages are read from and written to.
    pub io: Box<dyn Io>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Who the peer's certificate says it is.
    pub identity: Identity,
    /// The peer's certificate chain (leaf first): checked again when a
    /// reload brings a new CRL.
    pub peer_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Bytes this side put on the wire, for the rate limit.
    pub wire: WireCounter,
    /// Keeps a QUIC connection (and its endpoint) open; closed with a code on drop of the session.
    pub quic: Option<quinn::Connection>,
}

impl Link {
    /// Close the link after what was written has been delivered: the stream
    /// is finished, and a QUIC peer gets up to a second to read it and hang
    /// up before the connection is closed with `code` (closing a QUIC
    /// connection at once discards unsent stream data, such as a REFUSE).
    pub async fn close(&mut self, code: u32, reason: &str) {
        use tokio::io::AsyncWriteExt;
        let _ = self.io.shutdown().await;
        if let Some(c) = &self.quic {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.closed()).await;
            c.close(quinn::VarInt::from_u32(code), reason.as_bytes());
        }
    }
}

/// Which transport a link uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TLS 1.3 over TCP.
    Tls,
    /// QUIC.
    Quic,
}

/// Why a handshake was refused, as a metric label and a message.
#[derive(Debug)]
pub struct Refused {
    /// The metric label (`unknown_ca`, `certificate_revoked`, ...).
    pub reason: &'static str,
    /// The message, for the log.
    pub detail: String,
}

/// Timeouts and keepalives of a link.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Interval of keepalive traffic when idle.
    pub keepalive: Duration,
    /// Silence after which the link is considered dead.
    pub dead_after: Duration,
    /// Limit for connect plus handshake.
    pub connect_timeout: Duration,
}
