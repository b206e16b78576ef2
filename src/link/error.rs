//! How a link session ends, on either side of the link: one [`End`] for the
//! uplink and the receiver, so the log says which and a caller can match.

use std::time::Duration;

use super::proto::{Code, DecodeError};

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    /// This node stopped it: its shutdown, or the uplink's task cancelled.
    #[error("stopped by this node")]
    Stopped,
    /// The uplink's shutdown grace: nothing deliverable was left.
    #[error("nothing left to deliver")]
    Drained,
    /// REFUSE, with its code and reason: the receiver's, as the uplink reads
    /// it, or the one a receiver sends.
    #[error("link refused ({code}): {reason}", code = .0.as_str(), reason = .1)]
    Refused(Code, String),
    /// The connection broke or became useless.
    #[error(transparent)]
    Lost(#[from] Lost),
}

/// The connection is gone or useless; the uplink connects again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// The peer answered nothing (not even PONG) for `dead_after`.
    #[error("no answer for {0:?}")]
    NoAnswer(Duration),
    /// HELLO was not answered within `connect_timeout`.
    #[error("no WELCOME for {0:?}")]
    NoWelcome(Duration),
    /// WELCOME chose a version the uplink did not offer or does not speak.
    #[error("receiver chose protocol version {chose}, offered {offered}")]
    Version {
        /// The receiver's choice.
        chose: u16,
        /// The highest version this uplink offered.
        offered: u16,
    },
    /// A message the protocol does not allow here (its start, for the log).
    #[error("unexpected message from the receiver: {0}")]
    Unexpected(String),
    /// Bytes from the receiver that are no message.
    #[error("receiver sent garbage: {0}")]
    Garbage(DecodeError),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A read or write failed.
    #[error("connection failed: {0}")]
    Io(#[source] IoCause),
    /// The TLS layer ended the connection: the receiver refused this node's
    /// certificate (e.g. `certificate_revoked`), or this node refused the
    /// receiver's. `reason` is the metric label.
    /// `by_peer`: the receiver refused this node's certificate (its alert).
    #[error("TLS refused ({reason}): {detail}")]
    Tls {
        /// The `reason` label (`certificate_revoked`, `unknown_ca`, ...).
        reason: &'static str,
        /// The receiver refused this node's certificate (its alert), not the other way round.
        by_peer: bool,
        /// The TLS error, for the log.
        detail: String,
    },
    /// A write did not complete for this long: the peer stopped reading.
    #[error("write blocked for {0:?}")]
    WriteBlocked(Duration),
}

impl Lost {
    /// A failed read or write: a TLS refusal (with its reason) when it is one, else an I/O error.
    pub fn io(e: std::io::Error) -> Lost {
        match crate::pki::tls_failure(&e) {
            Some(reason) => Lost::Tls { reason, by_peer: crate::pki::refused_by_peer(&e), detail: e.to_string() },
            None => Lost::Io(IoCause(std::sync::Arc::new(e))),
        }
    }

    /// `msg` as the log shows it: its start only (an APPEND carries megabytes).
    pub fn unexpected(msg: &impl std::fmt::Debug) -> Lost {
        Lost::Unexpected(format!("{msg:?}").chars().take(200).collect())
    }
}

/// The I/O error that ended a connection, kept whole (its kind, its
/// source) for the log and for callers that match on it. Shared, because a
/// session's end is cloned; equal when kind and text are (tests compare
/// ends).
#[derive(Debug, Clone)]
pub struct IoCause(pub std::sync::Arc<std::io::Error>);

impl PartialEq for IoCause {
    fn eq(&self, other: &IoCause) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoCause {}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
