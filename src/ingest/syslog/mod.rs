//! Syslog ingest: TCP and unix stream sockets (RFC 6587 framing), UDP
//! (RFC 5426) and unix datagram sockets.

pub mod datagram;
pub mod framing;
pub mod parse;
pub mod stream;
