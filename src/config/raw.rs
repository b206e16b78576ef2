//! The config file as written: serde structs with `deny_unknown_fields` and
//! spans on every value that validation may need to point at. Nothing here
//! decides whether a value makes sense; `validate.rs` does.

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, HumanDuration, Rate};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<RawNode>,
    pub admin: Option<RawAdmin>,
    pub store: Option<RawStore>,
    pub tls: Option<RawTls>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub stream: Vec<RawStream>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub uplink: Vec<RawUplink>,
    #[serde(default)]
    pub sink: Vec<RawSink>,
    #[serde(default)]
    pub bucket: Vec<RawBucket>,
}

/// `[[bucket]]`: sealed segments into S3-compatible object storage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    pub name: Spanned<String>,
    pub bucket: Spanned<String>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub path_style: Option<Spanned<bool>>,
    pub ca: Option<Spanned<String>>,
    pub credentials_file: Option<Spanned<String>>,
    pub sites: Option<Spanned<Vec<String>>>,
    pub streams: Option<Spanned<Vec<String>>>,
    pub part_size: Option<Spanned<ByteSize>>,
    pub multipart_above: Option<Spanned<ByteSize>>,
    pub concurrency: Option<Spanned<i64>>,
    pub segments_in_flight: Option<Spanned<i64>>,
    pub max_rate: Option<Spanned<Rate>>,
    pub backoff_min: Option<Spanned<HumanDuration>>,
    pub backoff_max: Option<Spanned<HumanDuration>>,
    pub request_timeout: Option<Spanned<HumanDuration>>,
    pub keep_local: Option<Spanned<String>>,
}

/// `[[sink]]`: delivery of archived records into a message bus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub sites: Option<Spanned<Vec<String>>>,
    pub streams: Option<Spanned<Vec<String>>>,
    pub live_share: Option<Spanned<f64>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_in_flight_bytes: Option<Spanned<ByteSize>>,
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    pub backoff_min: Option<Spanned<HumanDuration>>,
    pub backoff_max: Option<Spanned<HumanDuration>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub request_timeout: Option<Spanned<HumanDuration>>,
    pub stall_after: Option<Spanned<HumanDuration>>,
    // kafka
    pub brokers: Option<Spanned<Vec<String>>>,
    pub topic: Option<Spanned<String>>,
    pub compression: Option<Spanned<String>>,
    pub message_timeout: Option<Spanned<HumanDuration>>,
    pub options: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    // rabbitmq
    pub url: Option<Spanned<String>>,
    pub exchange: Option<Spanned<String>>,
    pub exchange_kind: Option<Spanned<String>>,
    pub routing_key: Option<Spanned<String>>,
}

/// `[log]`: what ferry logs (stderr, the journal under systemd).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A `tracing` filter: `info`, `debug`, `warn,ferry::link=debug`.
    pub level: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// One CRL file, or a list of them.
    pub crl: Option<Spanned<OneOrMany>>,
}

/// A key that takes one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    pub name: Spanned<String>,
    pub transport: Spanned<String>,
    pub addresses: Spanned<Vec<String>>,
    pub server_name: Option<Spanned<String>>,
    pub max_rate: Option<Spanned<Rate>>,
    pub burst: Option<Spanned<ByteSize>>,
    pub live_share: Option<Spanned<f64>>,
    pub window: Option<Spanned<ByteSize>>,
    pub keepalive: Option<Spanned<HumanDuration>>,
    pub dead_after: Option<Spanned<HumanDuration>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub backoff_min: Option<Spanned<HumanDuration>>,
    pub backoff_max: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub site: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub allow_remote: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub commit_interval: Option<Spanned<HumanDuration>>,
    pub commit_bytes: Option<Spanned<ByteSize>>,
    pub fsync: Option<Spanned<String>>,
    pub fsync_interval: Option<Spanned<HumanDuration>>,
    pub segment_max_bytes: Option<Spanned<ByteSize>>,
    pub compression: Option<Spanned<String>>,
    pub zstd_level: Option<Spanned<i64>>,
    pub gzip_level: Option<Spanned<i64>>,
    pub compress_threads: Option<Spanned<i64>>,
    pub retention: Option<RawRetention>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub max_age: Option<Spanned<HumanDuration>>,
    pub max_bytes: Option<Spanned<ByteSize>>,
    pub on_full: Option<Spanned<String>>,
    pub check_interval: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    /// Every kind but `file`.
    pub transport: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub stream: Option<Spanned<String>>,
    pub trust: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_record_bytes: Option<Spanned<ByteSize>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// `transport = "tls"`: how long a client has for its TLS handshake.
    pub handshake_timeout: Option<Spanned<HumanDuration>>,
    /// `kind = "http"`: largest request body, compressed or not.
    pub max_body_bytes: Option<Spanned<ByteSize>>,
    /// Per source address (default for untrusted listeners: 1000 and 1MiB/s).
    pub source_records_per_sec: Option<Spanned<i64>>,
    pub source_bytes_per_sec: Option<Spanned<Rate>>,
    pub max_connections_per_source: Option<Spanned<i64>>,
    /// Sources tracked one by one for the limits (then per /24 or /48, then one bucket).
    pub max_sources: Option<Spanned<i64>>,
    /// IPv6 sources are told apart by this prefix length (default 64).
    pub source_ipv6_prefix: Option<Spanned<i64>>,
    /// `kind = "ferry"`: peer sites allowed to forward other sites' segments (regional hops).
    pub relays: Option<Spanned<Vec<String>>>,
    /// `transport = "tls"` syslog, RELP and HTTP listeners: "required" or "optional".
    pub client_cert: Option<Spanned<String>>,
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
    pub app_name: Option<Spanned<String>>,
    pub facility: Option<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
    pub stream: Spanned<String>,
}
