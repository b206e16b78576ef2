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
    /// `[node]`: site, name and data directory.
    pub node: NodeConfig,
    /// `[admin]`: the metrics and status listener.
    pub admin: AdminConfig,
    /// `[log] level`: a `tracing` filter; unset: `FERRY_LOG`, else `info`.
    pub log_level: Option<String>,
    /// `[store]`: commits, fsync, segments, compression and retention.
    pub store: StoreConfig,
    /// Stream names, in file order.
    pub streams: Vec<String>,
    /// `[[listener]]`s, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// The deployment CA and this node's identity; required by links.
    pub tls: Option<crate::pki::TlsFiles>,
    /// `[[uplink]]`s, in file order.
    pub uplinks: Vec<UplinkConfig>,
    /// `[[sink]]`s, in file order.
    pub sinks: Vec<SinkConfig>,
    /// `[[bucket]]`s, in file order.
    pub buckets: Vec<BucketConfig>,
}

/// `[[bucket]]`: every sealed segment, its seal and the tombstones into an
/// S3-compatible bucket, by create-only writes.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketConfig {
    /// This bucket's name in metrics, status and state files.
    pub name: String,
    /// The S3 bucket's own name.
    pub bucket: String,
    /// `http(s)://host:port`; unset: AWS for `region`.
    pub endpoint: Option<String>,
    /// The region requests are signed for (default `us-east-1`).
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
    /// Bytes per part of a multipart upload (5MiB to 5GiB, default 16MiB).
    pub part_size: u64,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Segments uploaded at once (each reads its body or its parts into
    /// memory: at most this × `multipart_above`, or × `concurrency` parts).
    pub segments_in_flight: usize,
    /// Bytes per second of segment data sent, at most.
    pub max_rate: Option<f64>,
    /// First wait after a failed request (default 500ms).
    pub backoff_min: Duration,
    /// Longest wait between retries (default 30s).
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
    /// This sink's name in metrics, status and its cursor files.
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
    /// First wait after a broker failure (default 200ms).
    pub backoff_min: Duration,
    /// Longest wait between attempts (default 2s): a broker back from a restart gets its records within seconds.
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
    /// Which bus, and its own settings.
    pub bus: BusConfig,
}

/// A sink's bus (`kind`) and the keys only that kind takes.
#[derive(Clone, Debug, PartialEq)]
pub enum BusConfig {
    /// `kind = "kafka"`.
    Kafka(KafkaConfig),
    /// `kind = "rabbitmq"`.
    RabbitMq(RabbitMqConfig),
}

/// `kind = "kafka"`: a librdkafka producer.
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

/// `kind = "rabbitmq"`: an AMQP 0-9-1 connection publishing with confirms.
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
    /// QUIC (one stream per segment being shipped).
    Quic,
}

/// `[[uplink]]`: forwarding of this node's archive to a receiver.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkConfig {
    /// This uplink's name in metrics, status and its state files.
    pub name: String,
    /// TLS over TCP or QUIC.
    pub transport: LinkTransport,
    /// `host:port` of each receiver, tried in order on failover.
    pub addresses: Vec<String>,
    /// Name checked against the receiver's certificate; default: the host of the address.
    pub server_name: Option<String>,
    /// Cap on bytes put on the wire, per second.
    pub max_rate: Option<f64>,
    /// Bytes that may go at once above `max_rate` (default 256KiB).
    pub burst: u64,
    /// Share of the bandwidth given to the newest data while a backlog drains.
    pub live_share: f64,
    /// Unacknowledged bytes in flight.
    pub window: u64,
    /// A ping after this long idle (default 2s).
    pub keepalive: Duration,
    /// A receiver silent this long is taken for dead and the next address tried (default 10s).
    pub dead_after: Duration,
    /// Connection and handshake at most (default 10s).
    pub connect_timeout: Duration,
    /// First wait before reconnecting (default 100ms).
    pub backoff_min: Duration,
    /// Longest wait between reconnects (default 1s).
    pub backoff_max: Duration,
}

/// `[node]`: who this node is and where it keeps its data.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The datacenter this node archives for; a path component of the archive.
    pub site: String,
    /// This process's name; part of every segment file name it writes.
    pub name: String,
    /// Holds `archive/` (segments) and `state/` (indexes, seals, cursors); default `/var/lib/ferry`.
    pub data_dir: PathBuf,
}

/// `[admin]`: the unauthenticated metrics and status listener.
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

/// `[store] fsync`: when committed data is forced to disk, which decides what an acknowledgement promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before every acknowledgement: nothing acknowledged is lost on power loss.
    Always,
    /// fsync at most every interval: acknowledged data may be lost on power loss, not on a crash.
    Interval(Duration),
    /// Leave it to the kernel.
    Never,
}

/// `[store] compression`: how each frame's data is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Each frame's data is one zstd frame (`.log.zst`); the default.
    Zstd,
    /// One gzip member per frame (`.log.gz`): `zcat` and `zgrep` read it.
    Gzip,
}

/// `[store.retention] on_full`: what happens at `max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse new records (ingest pushes back) rather than delete undelivered data.
    Reject,
    /// Delete the oldest segments even if an uplink has not delivered them.
    DropOldest,
}

/// `[store]`: how records are committed to segments on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// Longest a batch waits to be committed (default 100ms).
    pub commit_interval: Duration,
    /// A commit's raw bytes at most (default 2 MiB), and the bytes of
    /// batches queued for the writer: memory at full rate is about twice it.
    pub commit_bytes: usize,
    /// When commits are forced to disk (default: always).
    pub fsync: FsyncPolicy,
    /// A segment is sealed at this size, or at the end of its hour (default 256MiB).
    pub segment_max_bytes: u64,
    /// zstd (the default) or gzip.
    pub compression: Compression,
    /// `compression = "zstd"`: level, 1 (fastest, the default) to 19.
    pub zstd_level: i32,
    /// `compression = "gzip"`: deflate level, 1 (fastest) to 9.
    pub gzip_level: i32,
    /// Threads that compress one large commit at once (one frame each).
    pub compress_threads: usize,
    /// `[store.retention]`.
    pub retention: RetentionConfig,
}

/// `[store.retention]`: deletion of old segments by age and total size.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    /// Segments older than this are deleted (default 30 days).
    pub max_age: Option<Duration>,
    /// The archive's size cap; `None`: no cap.
    pub max_bytes: Option<u64>,
    /// What happens at `max_bytes` (default: reject).
    pub on_full: OnFull,
    /// How often retention looks (default 60s).
    pub check_interval: Duration,
}

/// `[[listener]] kind`: the protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Syslog (RFC 5424 and 3164), octet-counted or newline-framed on streams.
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

/// `[[listener]] transport`: how a listener's bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// UDP datagrams: no acknowledgement, so dropped and counted when there is no room.
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

/// `[[listener]] listen` (or `paths`): where a listener takes its records from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A unix socket's path.
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

/// `[[listener]] trust`: whether a listener's sources are the operator's own machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The default: no per-source limits unless configured.
    Trusted,
    /// Per-source limits by default, smaller records and shorter timeouts; no routes by content.
    Untrusted,
}

/// `[[listener]]`: one way records come in.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// This listener's name in metrics and status.
    pub name: String,
    /// The protocol spoken.
    pub kind: ListenerKind,
    /// How the bytes arrive.
    pub transport: Transport,
    /// The socket address, unix path or file patterns.
    pub listen: ListenAddr,
    /// The stream records go to when no route matches.
    pub stream: String,
    /// Trusted or untrusted sources (default trusted).
    pub trust: Trust,
    /// Connections at once (default 16384; 1024 for `kind = "ferry"`).
    pub max_connections: usize,
    /// Largest record taken (default 64KiB, 8KiB when untrusted).
    pub max_record_bytes: usize,
    /// A connection silent this long is closed (default 300s, 60s when untrusted).
    pub idle_timeout: Duration,
    /// TLS listeners: a connection that has not completed its handshake by
    /// then is closed (and counted); it holds a connection slot until then.
    pub handshake_timeout: Duration,
    /// `[[listener.route]]`s, in file order: the first that matches decides the stream.
    pub routes: Vec<Route>,
    /// `kind = "ferry"`: peer sites that may forward other sites' segments.
    pub relays: Vec<String>,
    /// `kind = "http"`: largest request body (compressed, and once decompressed).
    pub max_body_bytes: usize,
    /// Per source address; `None` = unlimited (trusted listeners by default).
    pub source_records_per_sec: Option<f64>,
    /// Bytes per second per source; `None` = unlimited (untrusted default: 1MiB/s).
    pub source_bytes_per_sec: Option<f64>,
    /// Connections at once per source; `None` = unlimited (untrusted default: 16).
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
    /// Glob patterns of whole paths never tailed.
    pub exclude: Vec<String>,
    /// Where files found at the listener's very first start begin.
    pub start_at: StartAt,
    /// Bytes per file per period; more waits for the next period.
    pub quota: Option<units::Quota>,
    /// A line matching it starts a record; other lines join the record before.
    pub multiline_start: Option<String>,
    /// A line without its newline (or a multi-line record) is taken as it is after this long without more (default 5s).
    pub partial_timeout: Duration,
    /// Files held open at once (default 1024).
    pub max_open_files: usize,
    /// Every file is looked at this often, the safety net under inotify (default 5s).
    pub poll_interval: Duration,
    /// A renamed or deleted file is read until it has not grown for this long (default 10s).
    pub rotate_wait: Duration,
    /// Written into each record.
    pub host: String,
}

/// `start_at`: where files found at a file listener's very first start are read from; later starts resume at the
/// checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// From the first byte (the default): what is already in the file is archived too.
    Beginning,
    /// From the end: only what is written from now on.
    End,
}

/// A routing rule: every field that is set must match.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Matches the syslog APP-NAME exactly.
    pub app_name: Option<String>,
    /// Matches the syslog facility number (0-23; named in the config).
    pub facility: Option<u8>,
    /// Matches the syslog HOSTNAME exactly.
    pub hostname: Option<String>,
    /// The stream a matching record goes to.
    pub stream: String,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The config file's name, as given.
    pub file: String,
    /// 1-based; 0 when the problem is about something missing from the file.
    pub line: usize,
    /// The key at fault, with its table and index: `listener[2].listen`.
    pub key: String,
    /// What is wrong, and usually what would be right.
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
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config: every problem found, not just the first.
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
