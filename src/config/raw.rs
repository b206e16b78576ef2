//! The config file as written: serde structs with `deny_unknown_fields` and
//! spans on every value that validation may need to point at. Nothing here
//! decides whether a value makes sense; `validate.rs` does.

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, HumanDuration, Rate};

/// The whole file as parsed, before validation: every section optional here, so that `validate` can name each one
/// missing rather than serde stopping at the first.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[node]`: who this node is and where it keeps its data.
    pub node: Option<RawNode>,
    /// `[admin]`: the metrics and status listener.
    pub admin: Option<RawAdmin>,
    /// `[store]`: commits, fsync, segments, compression and retention.
    pub store: Option<RawStore>,
    /// `[tls]`: the deployment CA and this node's certificate; needed by links and TLS listeners.
    pub tls: Option<RawTls>,
    /// `[log]`: the log level.
    pub log: Option<RawLog>,
    /// `[[stream]]`: the streams records are archived into.
    #[serde(default)]
    pub stream: Vec<RawStream>,
    /// `[[listener]]`: where records come in.
    #[serde(default)]
    pub listener: Vec<RawListener>,
    /// `[[uplink]]`: where this node's archive is forwarded.
    #[serde(default)]
    pub uplink: Vec<RawUplink>,
    /// `[[sink]]`: message buses the archive is delivered into.
    #[serde(default)]
    pub sink: Vec<RawSink>,
    /// `[[bucket]]`: object stores sealed segments are uploaded to.
    #[serde(default)]
    pub bucket: Vec<RawBucket>,
}

/// `[[bucket]]`: sealed segments into S3-compatible object storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    /// `name`: this bucket's name in metrics, status and state files; unique among buckets.
    pub name: Spanned<String>,
    /// `bucket`: the S3 bucket's own name.
    pub bucket: Spanned<String>,
    /// `endpoint`: `http(s)://host:port` of an S3-compatible service; unset: AWS for `region`.
    pub endpoint: Option<Spanned<String>>,
    /// `region`: the region requests are signed for; default `us-east-1`.
    pub region: Option<Spanned<String>>,
    /// `prefix`: prepended to every object key; default empty.
    pub prefix: Option<Spanned<String>>,
    /// `path_style`: `endpoint/bucket/key` addressing rather than `bucket.endpoint/key`; default true when `endpoint`
    /// is set, else false.
    pub path_style: Option<Spanned<bool>>,
    /// `ca`: a PEM file of roots trusted besides the system's (e.g. the deployment CA for a private endpoint).
    pub ca: Option<Spanned<String>>,
    /// `credentials_file`: an AWS shared-credentials style file; unset: the `AWS_*` environment variables.
    pub credentials_file: Option<Spanned<String>>,
    /// `sites`: sites to upload; unset or empty: every site in the archive.
    pub sites: Option<Spanned<Vec<String>>>,
    /// `streams`: streams to upload; unset or empty: every stream.
    pub streams: Option<Spanned<Vec<String>>>,
    /// `part_size`: bytes per part of a multipart upload, 5MiB to 5GiB; default 16MiB.
    pub part_size: Option<Spanned<ByteSize>>,
    /// `multipart_above`: segments larger than this go up in parts, 5MiB to 5GiB; default 64MiB.
    pub multipart_above: Option<Spanned<ByteSize>>,
    /// `concurrency`: parts in flight at once, 1 to 64; default 4.
    pub concurrency: Option<Spanned<i64>>,
    /// `segments_in_flight`: segments uploaded at once, 1 to 16; default 2. Each holds its body or parts in memory.
    pub segments_in_flight: Option<Spanned<i64>>,
    /// `max_rate`: bytes per second of segment data sent, at least 1KiB/s; unset: no cap.
    pub max_rate: Option<Spanned<Rate>>,
    /// `backoff_min`: first wait after a failed request, at least 10ms; default 500ms.
    pub backoff_min: Option<Spanned<HumanDuration>>,
    /// `backoff_max`: longest wait between retries, at least 10ms; default 30s.
    pub backoff_max: Option<Spanned<HumanDuration>>,
    /// `request_timeout`: one request (a part, a HEAD, a listing) at most, at least 100ms; default 60s.
    pub request_timeout: Option<Spanned<HumanDuration>>,
    /// `keep_local`: a duration (`"7d"`) or a size (`"200GiB"`): uploaded segments beyond it are deleted locally;
    /// unset: only the store's retention deletes.
    pub keep_local: Option<Spanned<String>>,
}

/// `[[sink]]`: delivery of archived records into a message bus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `name`: this sink's name in metrics, status and its cursor files; unique among sinks.
    pub name: Spanned<String>,
    /// `kind`: `"kafka"` or `"rabbitmq"`.
    pub kind: Spanned<String>,
    /// `sites`: sites to deliver; unset or empty: every site in the archive.
    pub sites: Option<Spanned<Vec<String>>>,
    /// `streams`: streams to deliver; unset or empty: every stream.
    pub streams: Option<Spanned<Vec<String>>>,
    /// `live_share`: share (0 to 1) of records given to each origin's newest segment while a backlog drains; default 0,
    /// strict sequence order.
    pub live_share: Option<Spanned<f64>>,
    /// `max_in_flight`: records published and not yet acknowledged, 1 to 10,000,000; default 50,000.
    pub max_in_flight: Option<Spanned<i64>>,
    /// `max_in_flight_bytes`: decoded bytes published and not yet acknowledged, at least 64KiB; default 16MiB.
    pub max_in_flight_bytes: Option<Spanned<ByteSize>>,
    /// `max_message_bytes`: records larger than this go to the dead-letter file, at least 1KiB; unset: no limit of
    /// ferry's own.
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    /// `backoff_min`: first wait after a broker failure, at least 10ms; default 200ms.
    pub backoff_min: Option<Spanned<HumanDuration>>,
    /// `backoff_max`: longest wait between attempts, at least 10ms; default 2s.
    pub backoff_max: Option<Spanned<HumanDuration>>,
    /// `connect_timeout`: a connection (and channel, or first metadata) at most; default 10s.
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    /// `request_timeout`: any other broker call at most; default 10s.
    pub request_timeout: Option<Spanned<HumanDuration>>,
    /// `stall_after`: records waiting with no acknowledgement this long means stalled and a restart, at least 1s;
    /// default 30s.
    pub stall_after: Option<Spanned<HumanDuration>>,
    // kafka
    /// `kind = "kafka"`: `host:port` bootstrap brokers; required.
    pub brokers: Option<Spanned<Vec<String>>>,
    /// `kind = "kafka"`: topic template with `{site}`, `{stream}`, `{node}`; default `logs.{stream}`.
    pub topic: Option<Spanned<String>>,
    /// `kind = "kafka"`: librdkafka `compression.codec` (zstd, lz4, gzip, snappy, none); default zstd.
    pub compression: Option<Spanned<String>>,
    /// `kind = "kafka"`: how long librdkafka retries a record before the sink starts over; default 120s.
    pub message_timeout: Option<Spanned<HumanDuration>>,
    /// `kind = "kafka"`: further librdkafka properties, passed as they are.
    pub options: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    // rabbitmq
    /// `kind = "rabbitmq"`: `amqp://` or `amqps://` URL with user, password and vhost; required.
    pub url: Option<Spanned<String>>,
    /// `kind = "rabbitmq"`: exchange template (`{site}`, `{stream}`, `{node}`), declared durable; default `logs`.
    pub exchange: Option<Spanned<String>>,
    /// `kind = "rabbitmq"`: topic, direct, fanout or headers; default topic.
    pub exchange_kind: Option<Spanned<String>>,
    /// `kind = "rabbitmq"`: routing key template; default `{site}.{stream}`.
    pub routing_key: Option<Spanned<String>>,
}

/// `[log]`: what ferry logs (stderr, the journal under systemd).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A `tracing` filter: `info`, `debug`, `warn,ferry::link=debug`.
    pub level: Option<Spanned<String>>,
}

/// `[tls]`: the deployment's PKI as this node sees it (see `ferry certs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `ca`: PEM file of the deployment CA; peers' certificates must chain to it.
    pub ca: Spanned<String>,
    /// `cert`: PEM file of this node's certificate (`ferry://site/node`).
    pub cert: Spanned<String>,
    /// `key`: PEM file of this node's private key.
    pub key: Spanned<String>,
    /// One CRL file, or a list of them.
    pub crl: Option<Spanned<OneOrMany>>,
}

/// A key that takes one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `key = "a"`.
    One(String),
    /// `key = ["a", "b"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    /// Either form as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[uplink]]`: forwarding this node's archive to a receiver (a `kind = "ferry"` listener).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    /// `name`: this uplink's name in metrics, status and its state files; unique among uplinks.
    pub name: Spanned<String>,
    /// `transport`: `"tls"` (or `"tcp"`: TLS 1.3 over TCP either way) or `"quic"`.
    pub transport: Spanned<String>,
    /// `addresses`: `host:port` of each receiver, tried in order on failover; at least one.
    pub addresses: Spanned<Vec<String>>,
    /// `server_name`: name checked against the receiver's certificate; default: the host of the address.
    pub server_name: Option<Spanned<String>>,
    /// `max_rate`: cap on bytes per second put on the wire; unset: no cap.
    pub max_rate: Option<Spanned<Rate>>,
    /// `burst`: bytes that may go at once above `max_rate`, at least 16KiB; default 256KiB.
    pub burst: Option<Spanned<ByteSize>>,
    /// `live_share`: share (0 to 1) of the bandwidth given to the newest data while a backlog drains; default 0.5.
    pub live_share: Option<Spanned<f64>>,
    /// `window`: unacknowledged bytes in flight, at least 64KiB; default 32MiB.
    pub window: Option<Spanned<ByteSize>>,
    /// `keepalive`: a ping after this long idle, at least 100ms and shorter than `dead_after`; default 2s.
    pub keepalive: Option<Spanned<HumanDuration>>,
    /// `dead_after`: a receiver silent this long is taken for dead, at least 500ms; default 10s.
    pub dead_after: Option<Spanned<HumanDuration>>,
    /// `connect_timeout`: connection and handshake at most, at least 100ms; default 10s.
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    /// `backoff_min`: first wait before reconnecting, at least 10ms; default 100ms.
    pub backoff_min: Option<Spanned<HumanDuration>>,
    /// `backoff_max`: longest wait between reconnects, at least 10ms; default 1s.
    pub backoff_max: Option<Spanned<HumanDuration>>,
}

/// `[node]`: this node's identity and data directory; required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// `site`: the datacenter this node archives for; required.
    pub site: Option<Spanned<String>>,
    /// `name`: this node's name, part of every segment file name it writes; required.
    pub name: Option<Spanned<String>>,
    /// `data_dir`: where `archive/` and `state/` live; default `/var/lib/ferry`.
    pub data_dir: Option<Spanned<String>>,
}

/// `[admin]`: the unauthenticated `/metrics`, `/healthz`, `/readyz` and `/status` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `listen`: `address:port`; default `127.0.0.1:9750`; `""` disables the listener.
    pub listen: Option<Spanned<String>>,
    /// `allow_remote`: allows a non-loopback `listen`; default false.
    pub allow_remote: Option<Spanned<bool>>,
}

/// `[store]`: how records are committed to segments on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `commit_interval`: longest a batch waits to be committed, 1ms to 10s; default 100ms.
    pub commit_interval: Option<Spanned<HumanDuration>>,
    /// `commit_bytes`: raw bytes of one commit at most, 4KiB to 64MiB; default 2MiB.
    pub commit_bytes: Option<Spanned<ByteSize>>,
    /// `fsync`: `"always"` (before every acknowledgement, the default), `"interval"` or `"never"`.
    pub fsync: Option<Spanned<String>>,
    /// `fsync = "interval"`: how often; default 1s.
    pub fsync_interval: Option<Spanned<HumanDuration>>,
    /// `segment_max_bytes`: a segment is sealed at this size (or at the hour), 64KiB to 64GiB and at least
    /// `commit_bytes`; default 256MiB.
    pub segment_max_bytes: Option<Spanned<ByteSize>>,
    /// `compression`: `"zstd"` (the default) or `"gzip"` (`.log.gz`, readable by `zcat`).
    pub compression: Option<Spanned<String>>,
    /// `zstd_level`: 1 to 19; default 1.
    pub zstd_level: Option<Spanned<i64>>,
    /// `gzip_level`: 1 to 9; default 1.
    pub gzip_level: Option<Spanned<i64>>,
    /// `compress_threads`: threads compressing one large commit at once, 1 to 8; default 1.
    pub compress_threads: Option<Spanned<i64>>,
    /// `[store.retention]`: when old segments are deleted.
    pub retention: Option<RawRetention>,
}

/// `[store.retention]`: deletion of old segments by age and by total size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// `max_age`: segments older than this are deleted, at least 1h; default 30d.
    pub max_age: Option<Spanned<HumanDuration>>,
    /// `max_bytes`: the archive's size cap, at least 1MiB; unset: no cap.
    pub max_bytes: Option<Spanned<ByteSize>>,
    /// `on_full`: at `max_bytes`, `"reject"` new records (the default) or `"drop_oldest"` even if undelivered.
    pub on_full: Option<Spanned<String>>,
    /// `check_interval`: how often retention looks, at least 100ms; default 60s.
    pub check_interval: Option<Spanned<HumanDuration>>,
}

/// `[[stream]]`: one stream, a directory of segments per site.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// `name`: the stream's name, a path component of the archive; unique.
    pub name: Spanned<String>,
}

/// `[[listener]]`: one way records come in (a socket, or tailed files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `name`: this listener's name in metrics and status; unique among listeners.
    pub name: Spanned<String>,
    /// `kind`: `"syslog"`, `"relp"`, `"http"`, `"gelf"`, `"ferry"` (the link receiver) or `"file"`.
    pub kind: Spanned<String>,
    /// Every kind but `file`.
    pub transport: Option<Spanned<String>>,
    /// `listen`: `address:port`, or a socket path for unix transports; every kind but `file`.
    pub listen: Option<Spanned<String>>,
    /// `stream`: where records go when no route matches; default: the first `[[stream]]`.
    pub stream: Option<Spanned<String>>,
    /// `trust`: `"trusted"` (the default) or `"untrusted"`, which brings per-source limits and smaller defaults.
    pub trust: Option<Spanned<String>>,
    /// `max_connections`: connections at once; default 16384 (1024 for `kind = "ferry"`).
    pub max_connections: Option<Spanned<i64>>,
    /// `max_record_bytes`: largest record taken; default 64KiB (8KiB when untrusted).
    pub max_record_bytes: Option<Spanned<ByteSize>>,
    /// `idle_timeout`: a connection silent this long is closed, at least 100ms; default 300s (60s when untrusted).
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// `transport = "tls"`: how long a client has for its TLS handshake.
    pub handshake_timeout: Option<Spanned<HumanDuration>>,
    /// `kind = "http"`: largest request body, compressed or not.
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    /// Per source address (default for untrusted listeners: 1000 and 1MiB/s).
    pub source_records_per_sec: Option<Spanned<i64>>,
    /// Bytes per second per source address (default for untrusted listeners: 1MiB/s).
    pub source_bytes_per_sec: Option<Spanned<Rate>>,
    /// Connections at once per source address (default for untrusted listeners: 16).
    pub max_connections_per_source: Option<Spanned<i64>>,
    /// Sources tracked one by one for the limits (then per /24 or /48, then one bucket).
    pub max_sources: Option<Spanned<i64>>,
    /// IPv6 sources are told apart by this prefix length (default 64).
    pub source_ipv6_prefix: Option<Spanned<i64>>,
    /// `kind = "ferry"`: peer sites allowed to forward other sites' segments (regional hops).
    pub relays: Option<Spanned<Vec<String>>>,
    /// `transport = "tls"` syslog, RELP and HTTP listeners: "required" or "optional".
    pub client_cert: Option<Spanned<String>>,
    /// `[[listener.route]]`: routing rules by record content, tried in order.
    #[serde(default)]
    pub route: Vec<RawRoute>,
    /// `kind = "file"`: glob patterns of the files to tail.
    pub paths: Option<Spanned<Vec<String>>>,
    /// `kind = "file"`: glob patterns (of whole paths) never tailed.
    pub exclude: Option<Spanned<Vec<String>>>,
    /// `kind = "file"`: "beginning" or "end", for files found at the very first start.
    pub start_at: Option<Spanned<String>>,
    /// `kind = "file"`: bytes per file per period, e.g. "64MiB/h".
    pub quota: Option<Spanned<String>>,
    /// `kind = "file"`: a regex; lines not matching it join the record before.
    pub multiline_start: Option<Spanned<String>>,
    /// `kind = "file"`: a line without its newline (or a multi-line record) is
    /// taken as it is after this long without more.
    pub partial_timeout: Option<Spanned<HumanDuration>>,
    /// `kind = "file"`: files held open at once, 2 to 1,000,000; default 1024.
    pub max_open_files: Option<Spanned<i64>>,
    /// `kind = "file"`: the safety net under inotify: every file looked at this often.
    pub poll_interval: Option<Spanned<HumanDuration>>,
    /// `kind = "file"`: a renamed or deleted file is read until it has not grown for this long.
    pub rotate_wait: Option<Spanned<HumanDuration>>,
    /// `kind = "file"`: the host name written into each record (default: this machine's).
    pub host: Option<Spanned<String>>,
}

/// `[[listener.route]]`: the first rule whose every given field matches sends
/// the record to its stream; records matching none go to the listener's stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Matches the syslog APP-NAME exactly.
    pub app_name: Option<Spanned<String>>,
    /// Matches the syslog facility, by name (`local0`, `auth`, ...).
    pub facility: Option<Spanned<String>>,
    /// Matches the syslog HOSTNAME exactly.
    pub hostname: Option<Spanned<String>>,
    /// The stream a matching record goes to.
    pub stream: Spanned<String>,
}
