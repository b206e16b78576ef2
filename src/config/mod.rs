//! One TOML file, two stages: `raw` (what was written, with spans) and
//! `validate` (a typed [`Config`] or every problem found, each naming the
//! file, the line and the key). `ferry check` and `ferry run` share this path.

pub mod facility;
pub mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{validate, DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_BYTES_CEILING};

/// The embedded default: a single-node edge on loopback with `./data`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Why a Kafka sink is refused by a ferry built without the cargo feature.
pub const NO_KAFKA: &str = "this ferry is built without Kafka support (cargo feature \"kafka\")";

/// A validated configuration. Every field holds a value that makes sense.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    pub node: NodeConfig,
    pub admin: AdminConfig,
    /// `[log] level`: a `tracing` filter; unset: `FERRY_LOG`, else `info`.
    pub log_level: Option<String>,
    pub store: StoreConfig,
    /// Stream names, in file order.
    pub streams: Vec<String>,
    pub listeners: Vec<ListenerConfig>,
    /// The deployment CA and this node's identity; required by links.
    pub tls: Option<crate::pki::TlsFiles>,
    pub uplinks: Vec<UplinkConfig>,
    pub sinks: Vec<SinkConfig>,
    pub buckets: Vec<BucketConfig>,
}

/// `[[bucket]]`: every sealed segment, its seal and the tombstones into an
/// S3-compatible bucket, by create-only writes.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketConfig {
    pub name: String,
    pub bucket: String,
    /// `http(s)://host:port`; unset: AWS for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// PEM roots to trust (the deployment CA) besides the system roots.
    pub ca: Option<std::path::PathBuf>,
    /// AWS shared-credentials style file; unset: the `AWS_*` environment.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Sites to upload; empty: every site in the archive.
    pub sites: Vec<String>,
    /// Streams to upload; empty: every stream.
    pub streams: Vec<String>,
    /// Segments larger than this go up in parts of `part_size`.
    pub multipart_above: u64,
    pub part_size: u64,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Segments uploaded at once (each reads its body or its parts into
    /// memory: at most this × `multipart_above`, or × `concurrency` parts).
    pub segments_in_flight: usize,
    /// Bytes per second of segment data sent, at most.
    pub max_rate: Option<f64>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// One request (a part, a HEAD, a listing), at most.
    pub request_timeout: Duration,
    /// Local copies of segments the bucket confirmed are deleted past this
    /// (the store's retention still applies to the rest).
    pub keep_local: Option<KeepLocal>,
}

/// How much of what the bucket holds stays on the local disk too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepLocal {
    /// Uploaded segments sealed longer ago than this are deleted here.
    Age(Duration),
    /// Uploaded segments beyond this many bytes (oldest first) are deleted here.
    Bytes(u64),
}

/// `[[sink]]`: delivery of archived records (mirrored or local) into a bus.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    /// Sites to deliver; empty: every site in the archive.
    pub sites: Vec<String>,
    /// Streams to deliver; empty: every stream.
    pub streams: Vec<String>,
    /// Share of the records given to each origin's newest segment while a
    /// backlog drains (0: strict sequence order per origin).
    pub live_share: f64,
    /// Records published and not yet acknowledged, at most (memory bound).
    pub max_in_flight: usize,
    /// Decoded bytes published and not yet acknowledged, at most.
    pub max_in_flight_bytes: usize,
    /// Records larger than this go to the dead-letter file without being
    /// offered (Kafka: also librdkafka's `message.max.bytes`).
    pub max_message_bytes: Option<usize>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A connection, its channel and confirm mode (RabbitMQ) or a first
    /// metadata answer (Kafka), at most. Default 10s.
    pub connect_timeout: Duration,
    /// Any other broker call (declare, publish, produce, close), at most.
    /// Default 10s.
    pub request_timeout: Duration,
    /// Records waiting and no acknowledgement for this long: the sink is
    /// stalled, says so, and starts again. Default 30s.
    pub stall_after: Duration,
    pub bus: BusConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BusConfig {
    Kafka(KafkaConfig),
    RabbitMq(RabbitMqConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct KafkaConfig {
    /// `host:port` bootstrap brokers.
    pub brokers: Vec<String>,
    /// Topic template: `{site}`, `{stream}`, `{node}` are replaced.
    pub topic: String,
    /// librdkafka `compression.codec`: zstd, lz4, gzip, snappy, none.
    pub compression: String,
    /// How long librdkafka retries a record before the sink starts over.
    pub message_timeout: Duration,
    /// Further librdkafka properties, passed as they are.
    pub options: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RabbitMqConfig {
    /// `amqp://user:pass@host:port/vhost` (or `amqps://`).
    pub url: String,
    /// Exchange template; declared durable by the sink.
    pub exchange: String,
    /// direct, fanout, topic, headers.
    pub exchange_kind: String,
    /// Routing key template: `{site}`, `{stream}`, `{node}` are replaced.
    pub routing_key: String,
}

/// Which transport an uplink dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTransport {
    /// TLS 1.3 over TCP.
    Tcp,
    Quic,
}

/// `[[uplink]]`: forwarding of this node's archive to a receiver.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkConfig {
    pub name: String,
    pub transport: LinkTransport,
    /// `host:port` of each receiver, tried in order on failover.
    pub addresses: Vec<String>,
    /// Name checked against the receiver's certificate; default: the host of the address.
    pub server_name: Option<String>,
    /// Cap on bytes put on the wire, per second.
    pub max_rate: Option<f64>,
    pub burst: u64,
    /// Share of the bandwidth given to the newest data while a backlog drains.
    pub live_share: f64,
    /// Unacknowledged bytes in flight.
    pub window: u64,
    pub keepalive: Duration,
    pub dead_after: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The datacenter this node archives for; a path component of the archive.
    pub site: String,
    /// This process's name; part of every segment file name it writes.
    pub name: String,
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// `/metrics`, `/healthz`, `/readyz`, `/status`; `None` disables the
    /// admin listener.
    pub listen: Option<SocketAddr>,
    /// The operator's word that `listen` may be a non-loopback address: the
    /// admin listener has no authentication, and what it serves (site, node,
    /// listeners, peer addresses, lag, certificate expiry) maps the pipeline
    /// for whoever reaches it.
    pub allow_remote: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement: nothing acknowledged is lost on power loss.
    Always,
    /// fsync at most every interval: acknowledged data may be lost on power loss, not on a crash.
    Interval(Duration),
    /// Leave it to the kernel.
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    /// One gzip member per frame (`.log.gz`): `zcat` and `zgrep` read it.
    Gzip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse new records (ingest pushes back) rather than delete undelivered data.
    Reject,
    /// Delete the oldest segments even if an uplink has not delivered them.
    DropOldest,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub commit_interval: Duration,
    /// A commit's raw bytes at most (default 2 MiB), and the bytes of
    /// batches queued for the writer: memory at full rate is about twice it.
    pub commit_bytes: usize,
    pub fsync: FsyncPolicy,
    pub segment_max_bytes: u64,
    pub compression: Compression,
    pub zstd_level: i32,
    /// `compression = "gzip"`: deflate level, 1 (fastest) to 9.
    pub gzip_level: i32,
    /// Threads that compress one large commit at once (one frame each).
    pub compress_threads: usize,
    pub retention: RetentionConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub on_full: OnFull,
    pub check_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Syslog,
    /// The link receiver: other nodes' uplinks connect here.
    Ferry,
    /// RELP (rsyslog's omrelp): acknowledged per record after commit.
    Relp,
    /// HTTP batches: `POST /v1/streams/{stream}`, answered after commit.
    Http,
    /// GELF (Graylog, Docker's gelf driver): NUL-delimited over TCP, chunked
    /// and possibly compressed datagrams over UDP. One message is one record.
    Gelf,
    /// Application log files, tailed (no socket).
    File,
}

/// Whether a TLS listener asks its clients for a certificate from the
/// deployment CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// Handshakes without a valid client certificate fail (the default).
    Required,
    /// A client may present no certificate; one that it presents must verify.
    Optional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    /// Unix datagram socket (what `logger -u` and `/dev/log` speak).
    Unix,
    /// Unix stream socket, framed like TCP.
    UnixStream,
    /// TLS over TCP: TLS 1.3 for `kind = "ferry"`; TLS 1.2 or 1.3 with the
    /// deployment CA for syslog (RFC 5425), RELP and HTTP.
    Tls,
    /// `kind = "ferry"`: QUIC.
    Quic,
    /// `kind = "file"`: files read from the local disk.
    File,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Socket(SocketAddr),
    Path(PathBuf),
    /// `kind = "file"`: the glob patterns tailed.
    Files(Vec<String>),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Socket(a) => write!(f, "{a}"),
            ListenAddr::Path(p) => write!(f, "{}", p.display()),
            ListenAddr::Files(p) => write!(f, "{}", p.join(", ")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    Untrusted,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub kind: ListenerKind,
    pub transport: Transport,
    pub listen: ListenAddr,
    /// The stream records go to when no route matches.
    pub stream: String,
    pub trust: Trust,
    pub max_connections: usize,
    pub max_record_bytes: usize,
    pub idle_timeout: Duration,
    /// TLS listeners: a connection that has not completed its handshake by
    /// then is closed (and counted); it holds a connection slot until then.
    pub handshake_timeout: Duration,
    pub routes: Vec<Route>,
    /// `kind = "ferry"`: peer sites that may forward other sites' segments.
    pub relays: Vec<String>,
    /// `kind = "http"`: largest request body (compressed, and once decompressed).
    pub max_body_bytes: usize,
    /// Per source address; `None` = unlimited (trusted listeners by default).
    pub source_records_per_sec: Option<f64>,
    pub source_bytes_per_sec: Option<f64>,
    pub max_connections_per_source: Option<usize>,
    /// Sources tracked one by one by the per-source limits.
    pub max_sources: usize,
    /// IPv6 sources are keyed by this prefix length.
    pub source_ipv6_prefix: u8,
    /// `transport = "tls"` (syslog, RELP, HTTP): client certificate policy.
    pub client_cert: ClientCert,
    /// `kind = "file"`: what to tail and how.
    pub files: Option<FileConfig>,
}

/// `kind = "file"`: tailing application log files.
#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    /// Glob patterns (`*`, `?`, `[..]`, `**`) of whole paths.
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    /// Where files found at the listener's very first start begin.
    pub start_at: StartAt,
    pub quota: Option<units::Quota>,
    /// A line matching it starts a record; other lines join the record before.
    pub multiline_start: Option<String>,
    pub partial_timeout: Duration,
    pub max_open_files: usize,
    pub poll_interval: Duration,
    pub rotate_wait: Duration,
    /// Written into each record.
    pub host: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// A routing rule: every field that is set must match.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub app_name: Option<String>,
    pub facility: Option<u8>,
    pub hostname: Option<String>,
    pub stream: String,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; 0 when the problem is about something missing from the file.
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}: {}", self.file, self.line, self.key, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in config:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Load and validate a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        validate(&text, &path.display().to_string())
    }

    /// The embedded default config.
    pub fn default_embedded() -> Config {
        validate(DEFAULT_CONFIG, "<embedded default>").expect("the embedded default config is valid")
    }

    /// `data_dir/archive`: segment files and nothing else.
    pub fn archive_dir(&self) -> PathBuf {
        self.node.data_dir.join("archive")
    }

    /// `data_dir/state`: indexes, seal records, cursors.
    pub fn state_dir(&self) -> PathBuf {
        self.node.data_dir.join("state")
    }
}
