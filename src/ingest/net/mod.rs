//! What every listener kind shares on the way in: accepting stream
//! connections under the caps (`accept`), the plain-or-TLS connection and its
//! handshake (`conn`), the account of a connection from open to close
//! (`guard`), and the datagram receive loop (`datagram`). The protocols
//! (`syslog`, `relp`, `http`, `gelf`) sit on top and only decode.

pub mod accept;
pub mod conn;
pub mod datagram;
pub mod guard;
