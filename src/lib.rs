#![warn(missing_docs)]
//! ferry: a cross-datacenter log relay and archive appliance.
//!
//! One record's path through the crate:
//!
//! - [`ingest`]: listeners (syslog over TCP, UDP, unix sockets and TLS, RELP,
//!   GELF, HTTP, tailed files) decode frames into records, escape them into
//!   per-stream [`store::Batch`]es and hand them over, waiting for room
//!   (streams) or dropping and counting (datagrams).
//! - [`store`]: one writer thread per stream group-commits batches into
//!   frames (a header + a zstd or gzip data frame), appends them to hourly,
//!   size-capped segments under `archive/`, fsyncs, then acknowledges.
//!   Recovery, retention, the frame and segment readers and the followers'
//!   shared core (`store::follow`) live here too.
//! - [`link`]: an uplink reads those same files and ships their frames, as
//!   they are, over mutual-TLS TCP or QUIC to a receiver, which writes them
//!   through [`mirror`] at the same relative path: a byte-identical copy. A
//!   peer writes only its own node's segments; CRLs take trust back.
//! - [`sink`]: on a central node, the mirrored (and local) segments are read
//!   again, frame by frame, and published into Kafka or RabbitMQ; a durable
//!   cursor moves only over records the broker acknowledged.
//! - [`bucket`]: sealed segments, their seals and tombstones uploaded into
//!   S3-compatible object storage, create-only.
//! - [`query`]: reading an archive (a data_dir or a bucket) for people:
//!   selection by site, stream and receive time, and the audit of every
//!   origin's hours; `ferry cat`, `grep` and `audit` are built on it.
//! - [`admin`] and [`metrics`]: what an operator sees; every drop has a reason.
//! - [`config`]: one TOML file, validated with file, line and key in every error.
//! - [`pki`]: the deployment CA, node identities (`ferry://site/node`) and
//!   revocation lists.
//! - [`cli`]: `ferry run | check | verify | send | cat | grep | audit |
//!   status | certs`.
//! - [`node`]: a running node: starts, reloads (`SIGHUP`) and stops the rest.
//! - [`shutdown`]: the stop order.
//! - [`logging`]: the log subscriber and its reloadable level.

pub mod admin;
pub mod bucket;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod pki;
pub mod query;
pub mod shutdown;
pub mod sink;
pub mod store;
