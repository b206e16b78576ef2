//! The link: forwards the archive to the central site.
//!
//! - [`proto`]: the wire protocol, a pure codec.
//! - [`transport`]: TLS 1.3 over TCP and QUIC, mutual TLS, wire byte counts.
//! - [`uplink`]: reads segments from the store's files and ships their frames.
//! - [`receiver`]: authenticates uplinks and writes the mirror.
//!
//! The link never imports ingest: the store's files are the only hand-off.

pub mod error;
pub mod proto;
pub mod receiver;
pub mod transport;
pub mod uplink;
