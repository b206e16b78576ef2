//! Raw → typed config. Collects every problem rather than stopping at the
//! first, so an operator fixes a file in one pass. Defaults live here, next to
//! the bounds they must respect.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawListener};
use super::units::{ByteSize, HumanDuration};
use super::*;

mod bucket;
mod files;

/// Default `max_record_bytes` for trusted listeners.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;
/// Hard ceiling on any record; above this the framing itself is treated as garbage.
pub const MAX_RECORD_BYTES_CEILING: usize = 16 << 20;
/// A collector listener's `max_connections` when the config says none:
/// 10,000 hosts and room for their reconnect storm.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn err(&mut self, key: &str, span: Option<Range<usize>>, message: impl Into<String>) {
        let line = span.map(|s| self.line_of(s)).unwrap_or(0);
        self.problems.push(Problem { file: self.file.to_owned(), line, key: key.to_owned(), message: message.into() });
    }

    fn at<T>(&mut self, key: &str, v: &Spanned<T>, message: impl Into<String>) {
        self.err(key, Some(v.span()), message)
    }

    /// A name that becomes a path component: short, plain ASCII.
    fn name(&mut self, key: &str, v: &Spanned<String>) -> String {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !s.starts_with('-');
        if !ok {
            self.at(
                key,
                v,
                format!("{s:?} must be 1-64 characters of A-Z a-z 0-9 - _ (it becomes part of file paths)"),
            );
        }
        s.clone()
    }

    fn one_of<T: Copy>(&mut self, key: &str, v: &Spanned<String>, choices: &[(&str, T)]) -> Option<T> {
        match choices.iter().find(|(n, _)| *n == v.get_ref()) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                self.at(key, v, format!("{:?} is not one of: {}", v.get_ref(), names.join(", ")));
                None
            }
        }
    }
}

/// The dotted key a parse error points at: the key on the span's line (the
/// span may be the key or its value), prefixed by the table it sits in.
fn key_at(text: &str, span: Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let key = match line.split_once('=') {
        Some((k, _)) if !line.trim_start().starts_with('[') => k.trim(),
        _ => text.get(span).unwrap_or("").trim(),
    };
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match table {
        Some(t) if !key.starts_with('[') => format!("{t}.{key}"),
        _ => key.to_owned(),
    }
}

/// Parse and validate config text. `file` names it in every problem.
pub fn validate(text: &str, file: &str) -> Result<Config, Error> {
    let mut cx = Ctx { file, text, problems: Vec::new() };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let key = e.span().map(|s| key_at(text, s)).unwrap_or_default();
            let msg = e.message().trim().to_owned();
            cx.err(if key.is_empty() { "<file>" } else { &key }, e.span(), msg);
            return Err(Error::Invalid(cx.problems));
        }
    };
    let node = validate_node(&mut cx, raw.node.as_ref());
    let admin = validate_admin(&mut cx, raw.admin.as_ref());
    let store = validate_store(&mut cx, raw.store.as_ref());
    let log_level = validate_log_level(&mut cx, raw.log.as_ref());
    let streams = validate_streams(&mut cx, &raw);
    let listeners = validate_listeners(&mut cx, &raw, &streams);
    let tls = validate_tls(&mut cx, raw.tls.as_ref());
    refuse_tls_listeners_without_tls(&mut cx, &raw, tls.is_some());
    let uplinks = validate_uplinks(&mut cx, &raw, tls.is_some());
    let sinks = validate_sinks(&mut cx, &raw);
    let buckets = validate_buckets(&mut cx, &raw);
    if cx.problems.is_empty() {
        Ok(Config {
            tls,
            uplinks,
            sinks,
            buckets,
            source: file.to_owned(),
            node,
            admin,
            log_level,
            store,
            streams,
            listeners,
        })
    } else {
        Err(Error::Invalid(cx.problems))
    }
}

fn validate_node(cx: &mut Ctx<'_>, raw: Option<&raw::RawNode>) -> NodeConfig {
    let Some(n) = raw else {
        cx.err("node", None, "missing [node] section (site, name, data_dir)");
        return NodeConfig { site: String::new(), name: String::new(), data_dir: PathBuf::new() };
    };
    let site = match &n.site {
        Some(s) => cx.name("node.site", s),
        None => {
            cx.err("node.site", None, "missing: the datacenter this node archives for");
            String::new()
        }
    };
    let name = match &n.name {
        Some(s) => cx.name("node.name", s),
        None => {
            cx.err("node.name", None, "missing: this node's name");
            String::new()
        }
    };
    let data_dir = match &n.data_dir {
        Some(d) if d.get_ref().is_empty() => {
            cx.at("node.data_dir", d, "must not be empty");
            PathBuf::new()
        }
        Some(d) => PathBuf::from(d.get_ref()),
        None => PathBuf::from("/var/lib/ferry"),
    };
    NodeConfig { site, name, data_dir }
}

fn validate_admin(cx: &mut Ctx<'_>, raw: Option<&raw::RawAdmin>) -> AdminConfig {
    let listen = match raw.and_then(|a| a.listen.as_ref()) {
        Some(l) if l.get_ref().is_empty() => None,
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.at(
                    "admin.listen",
                    l,
                    format!("{:?} is not an address:port such as \"127.0.0.1:9750\"", l.get_ref()),
                );
                None
            }
        },
        None => Some("127.0.0.1:9750".parse().expect("literal address")),
    };
    let allow_remote = raw.and_then(|a| a.allow_remote.as_ref()).is_some_and(|a| *a.get_ref());
    if let (Some(addr), Some(l)) = (listen, raw.and_then(|a| a.listen.as_ref())) {
        if !addr.ip().is_loopback() && !allow_remote {
            cx.at(
                "admin.listen",
                l,
                format!(
                    "{addr} is not a loopback address: the admin listener answers /metrics and /status without \
                     authentication (site, node, listeners, peers' addresses, lag, certificate expiry); bind it to \
                     127.0.0.1, or set admin.allow_remote = true and firewall it to the Prometheus hosts"
                ),
            );
        }
    }
    AdminConfig { listen, allow_remote }
}

fn validate_log_level(cx: &mut Ctx<'_>, raw: Option<&raw::RawLog>) -> Option<String> {
    let l = raw.and_then(|l| l.level.as_ref())?;
    match tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
        Ok(_) => Some(l.get_ref().clone()),
        Err(e) => {
            cx.at(
                "log.level",
                l,
                format!("{:?} is not a log filter such as \"info\" or \"warn,ferry=debug\" ({e})", l.get_ref()),
            );
            None
        }
    }
}

fn validate_streams(cx: &mut Ctx<'_>, raw: &RawConfig) -> Vec<String> {
    let mut streams = Vec::new();
    for (i, s) in raw.stream.iter().enumerate() {
        let key = format!("stream[{i}].name");
        let n = cx.name(&key, &s.name);
        if streams.contains(&n) {
            cx.at(&key, &s.name, format!("stream {n:?} is defined twice"));
        }
        streams.push(n);
    }
    // A central node that only receives (`kind = "ferry"`) mirrors segments
    // as they are: it needs no stream of its own.
    let receives_only = !raw.listener.is_empty() && raw.listener.iter().all(|l| l.kind.get_ref() == "ferry");
    if streams.is_empty() && !receives_only {
        cx.err("stream", None, "no [[stream]] defined: records need somewhere to go");
    }
    streams
}

/// Each listener, then what no two may share: a name, or an address of the
/// same kind of socket.
fn validate_listeners(cx: &mut Ctx<'_>, raw: &RawConfig, streams: &[String]) -> Vec<ListenerConfig> {
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, l) in raw.listener.iter().enumerate() {
        if let Some(lc) = validate_listener(cx, i, l, streams) {
            if listeners.iter().any(|o| o.name == lc.name) {
                cx.at(&format!("listener[{i}].name"), &l.name, format!("listener {:?} is defined twice", lc.name));
            }
            if listeners.iter().any(|o| o.listen == lc.listen && same_socket_kind(o.transport, lc.transport)) {
                let (key, at) = match &l.listen {
                    Some(a) => ("listen", a),
                    None => ("paths", &l.kind),
                };
                cx.at(
                    &format!("listener[{i}].{key}"),
                    at,
                    format!("{} is already used by another listener", lc.listen),
                );
            }
            listeners.push(lc);
        }
    }
    listeners
}

fn validate_tls(cx: &mut Ctx<'_>, raw: Option<&raw::RawTls>) -> Option<crate::pki::TlsFiles> {
    raw.map(|t| {
        let crl = t.crl.as_ref().map(|c| c.get_ref().to_vec()).unwrap_or_default();
        if let Some(c) = &t.crl {
            if crl.is_empty() || crl.iter().any(String::is_empty) {
                cx.at("tls.crl", c, "a CRL file's path, or a list of them (e.g. \"/etc/ferry/crl.pem\")");
            }
        }
        crate::pki::TlsFiles {
            ca: PathBuf::from(t.ca.get_ref()),
            cert: PathBuf::from(t.cert.get_ref()),
            key: PathBuf::from(t.key.get_ref()),
            crl: crl.into_iter().map(PathBuf::from).collect(),
        }
    })
}

/// Receivers and TLS listeners name no files of their own: they take [tls]'s.
fn refuse_tls_listeners_without_tls(cx: &mut Ctx<'_>, raw: &RawConfig, has_tls: bool) {
    for (i, l) in raw.listener.iter().enumerate() {
        if l.kind.get_ref() == "ferry" && !has_tls {
            cx.at(&format!("listener[{i}].kind"), &l.kind, "a ferry receiver needs a [tls] section (ca, cert, key)");
        } else if let Some(t) = l.transport.as_ref().filter(|t| t.get_ref() == "tls" && !has_tls) {
            cx.at(&format!("listener[{i}].transport"), t, "a TLS listener needs a [tls] section (ca, cert, key)");
        }
    }
}

fn validate_uplinks(cx: &mut Ctx<'_>, raw: &RawConfig, has_tls: bool) -> Vec<UplinkConfig> {
    let mut uplinks: Vec<UplinkConfig> = Vec::new();
    for (i, u) in raw.uplink.iter().enumerate() {
        if !has_tls {
            cx.at(&format!("uplink[{i}].name"), &u.name, "an uplink needs a [tls] section (ca, cert, key)");
        }
        if let Some(uc) = validate_uplink(cx, i, u) {
            if uplinks.iter().any(|o| o.name == uc.name) {
                cx.at(&format!("uplink[{i}].name"), &u.name, format!("uplink {:?} is defined twice", uc.name));
            }
            uplinks.push(uc);
        }
    }
    uplinks
}

fn validate_sinks(cx: &mut Ctx<'_>, raw: &RawConfig) -> Vec<SinkConfig> {
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for (i, k) in raw.sink.iter().enumerate() {
        if let Some(sc) = validate_sink(cx, i, k) {
            if sinks.iter().any(|o| o.name == sc.name) {
                cx.at(&format!("sink[{i}].name"), &k.name, format!("sink {:?} is defined twice", sc.name));
            }
            sinks.push(sc);
        }
    }
    sinks
}

fn validate_buckets(cx: &mut Ctx<'_>, raw: &RawConfig) -> Vec<BucketConfig> {
    let mut buckets: Vec<BucketConfig> = Vec::new();
    for (i, b) in raw.bucket.iter().enumerate() {
        if let Some(bc) = bucket::validate_bucket(cx, i, b) {
            if buckets.iter().any(|o| o.name == bc.name) {
                cx.at(&format!("bucket[{i}].name"), &b.name, format!("bucket {:?} is defined twice", bc.name));
            }
            buckets.push(bc);
        }
    }
    buckets
}

fn same_socket_kind(a: Transport, b: Transport) -> bool {
    let stream = |t| matches!(t, Transport::Tcp | Transport::UnixStream | Transport::Tls);
    if a == Transport::File || b == Transport::File {
        return a == b;
    }
    match (a, b) {
        (Transport::Unix | Transport::UnixStream, Transport::Unix | Transport::UnixStream) => true,
        _ => stream(a) == stream(b),
    }
}

fn validate_store(cx: &mut Ctx<'_>, raw: Option<&raw::RawStore>) -> StoreConfig {
    let mut s = default_store();
    let Some(r) = raw else { return s };
    store_commits(cx, r, &mut s);
    let interval = r.fsync_interval.as_ref().map(|v| v.get_ref().0).unwrap_or(Duration::from_secs(1));
    if let Some(v) = &r.fsync {
        s.fsync = match cx.one_of("store.fsync", v, &[("always", 0), ("interval", 1), ("never", 2)]) {
            Some(0) | None => FsyncPolicy::Always,
            Some(1) => FsyncPolicy::Interval(interval),
            _ => FsyncPolicy::Never,
        };
    }
    store_compression(cx, r, &mut s);
    if let Some(ret) = &r.retention {
        store_retention(cx, ret, &mut s.retention);
    }
    s
}

fn default_store() -> StoreConfig {
    StoreConfig {
        commit_interval: Duration::from_millis(100),
        // What a commit and the queue in front of it hold (each up to this):
        // 2 MiB keeps a node at full rate near 18 MiB resident, 4 MiB cost
        // 5 MiB more for 4% more records/s, within the run-to-run spread
        // (issue 26, benches/README.md "Full-rate memory").
        commit_bytes: 2 << 20,
        fsync: FsyncPolicy::Always,
        segment_max_bytes: 256 << 20,
        compression: Compression::Zstd,
        zstd_level: 1,
        gzip_level: 1,
        compress_threads: 1,
        retention: RetentionConfig {
            max_age: Some(Duration::from_secs(30 * 86400)),
            max_bytes: None,
            on_full: OnFull::Reject,
            check_interval: Duration::from_secs(60),
        },
    }
}

/// When a commit is cut, and how large a segment grows: a segment must hold
/// at least one whole commit.
fn store_commits(cx: &mut Ctx<'_>, r: &raw::RawStore, s: &mut StoreConfig) {
    if let Some(v) = &r.commit_interval {
        let d = v.get_ref().0;
        if d < Duration::from_millis(1) || d > Duration::from_secs(10) {
            cx.at("store.commit_interval", v, "must be between 1ms and 10s");
        }
        s.commit_interval = d;
    }
    if let Some(v) = &r.commit_bytes {
        let b = v.get_ref().0;
        if !(4096..=(64 << 20)).contains(&b) {
            cx.at("store.commit_bytes", v, "must be between 4KiB and 64MiB");
        }
        s.commit_bytes = b as usize;
    }
    if let Some(v) = &r.segment_max_bytes {
        let b = v.get_ref().0;
        if !((64 << 10)..=(64u64 << 30)).contains(&b) {
            cx.at("store.segment_max_bytes", v, "must be between 64KiB and 64GiB");
        }
        s.segment_max_bytes = b;
    }
    if s.segment_max_bytes < s.commit_bytes as u64 {
        cx.err(
            "store.segment_max_bytes",
            r.segment_max_bytes.as_ref().map(|v| v.span()),
            "must be at least store.commit_bytes",
        );
    }
}

fn store_compression(cx: &mut Ctx<'_>, r: &raw::RawStore, s: &mut StoreConfig) {
    if let Some(v) = &r.compression {
        if let Some(c) = cx.one_of("store.compression", v, &[("zstd", Compression::Zstd), ("gzip", Compression::Gzip)])
        {
            s.compression = c;
        }
    }
    if let Some(v) = &r.gzip_level {
        let l = *v.get_ref();
        if !(1..=9).contains(&l) {
            cx.at("store.gzip_level", v, "must be between 1 and 9");
        }
        s.gzip_level = l.clamp(1, 9) as i32;
    }
    if let Some(v) = &r.zstd_level {
        let l = *v.get_ref();
        if !(1..=19).contains(&l) {
            cx.at("store.zstd_level", v, "must be between 1 and 19");
        }
        s.zstd_level = l.clamp(1, 19) as i32;
    }
    if let Some(v) = &r.compress_threads {
        let n = *v.get_ref();
        if !(1..=8).contains(&n) {
            cx.at("store.compress_threads", v, "must be between 1 and 8");
        }
        s.compress_threads = n.clamp(1, 8) as usize;
    }
}

fn store_retention(cx: &mut Ctx<'_>, ret: &raw::RawRetention, s: &mut RetentionConfig) {
    if let Some(v) = &ret.max_age {
        let d = v.get_ref().0;
        if d < Duration::from_secs(3600) {
            cx.at("store.retention.max_age", v, "must be at least 1h (segments are hourly)");
        }
        s.max_age = Some(d);
    }
    if let Some(v) = &ret.max_bytes {
        let b = v.get_ref().0;
        if b < (1 << 20) {
            cx.at("store.retention.max_bytes", v, "must be at least 1MiB");
        }
        s.max_bytes = Some(b);
    }
    if let Some(v) = &ret.on_full {
        if let Some(o) =
            cx.one_of("store.retention.on_full", v, &[("reject", OnFull::Reject), ("drop_oldest", OnFull::DropOldest)])
        {
            s.on_full = o;
        }
    }
    if let Some(v) = &ret.check_interval {
        let d = v.get_ref().0;
        if d < Duration::from_millis(100) {
            cx.at("store.retention.check_interval", v, "must be at least 100ms");
        }
        s.check_interval = d;
    }
}

fn validate_uplink(cx: &mut Ctx<'_>, i: usize, u: &raw::RawUplink) -> Option<UplinkConfig> {
    let k = |f: &str| format!("uplink[{i}].{f}");
    let before = cx.problems.len();
    let name = cx.name(&k("name"), &u.name);
    let transport =
        // `tls` as the receiver spells it (`kind = "ferry"`), `tcp` as before: TLS 1.3 over TCP either way.
        cx.one_of(
            &k("transport"),
            &u.transport,
            &[("tls", LinkTransport::Tcp), ("tcp", LinkTransport::Tcp), ("quic", LinkTransport::Quic)],
        );
    let addresses = u.addresses.get_ref().clone();
    if addresses.is_empty() {
        cx.at(&k("addresses"), &u.addresses, "needs at least one receiver address (host:port)");
    }
    for a in &addresses {
        let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            cx.at(&k("addresses"), &u.addresses, format!("{a:?} is not host:port"));
        }
    }
    let dur =
        |cx: &mut Ctx<'_>, v: &Option<Spanned<HumanDuration>>, key: &str, default: Duration, min: Duration| match v {
            Some(d) => {
                if d.get_ref().0 < min {
                    cx.at(&k(key), d, format!("must be at least {min:?}"));
                }
                d.get_ref().0
            }
            None => default,
        };
    let keepalive = dur(cx, &u.keepalive, "keepalive", Duration::from_secs(2), Duration::from_millis(100));
    let dead_after = dur(cx, &u.dead_after, "dead_after", Duration::from_secs(10), Duration::from_millis(500));
    if keepalive >= dead_after {
        cx.err(&k("keepalive"), u.keepalive.as_ref().map(|v| v.span()), "must be shorter than dead_after");
    }
    let connect_timeout =
        dur(cx, &u.connect_timeout, "connect_timeout", Duration::from_secs(10), Duration::from_millis(100));
    let backoff_min = dur(cx, &u.backoff_min, "backoff_min", Duration::from_millis(100), Duration::from_millis(10));
    let backoff_max = dur(cx, &u.backoff_max, "backoff_max", Duration::from_secs(1), Duration::from_millis(10));
    if backoff_min > backoff_max {
        cx.err(&k("backoff_min"), u.backoff_min.as_ref().map(|v| v.span()), "must not exceed backoff_max");
    }
    let live_share = match &u.live_share {
        Some(v) => {
            if !(0.0..=1.0).contains(v.get_ref()) {
                cx.at(&k("live_share"), v, "must be between 0 and 1");
            }
            *v.get_ref()
        }
        None => 0.5,
    };
    let window = match &u.window {
        Some(v) => {
            if v.get_ref().0 < (64 << 10) {
                cx.at(&k("window"), v, "must be at least 64KiB");
            }
            v.get_ref().0
        }
        None => 32 << 20,
    };
    let burst = match &u.burst {
        Some(v) => {
            if v.get_ref().0 < (16 << 10) {
                cx.at(&k("burst"), v, "must be at least 16KiB");
            }
            v.get_ref().0
        }
        None => 256 << 10,
    };
    if cx.problems.len() > before {
        return None;
    }
    Some(UplinkConfig {
        name,
        transport: transport?,
        addresses,
        server_name: u.server_name.as_ref().map(|s| s.get_ref().clone()),
        max_rate: u.max_rate.as_ref().map(|r| r.get_ref().bytes_per_sec),
        burst,
        live_share,
        window,
        keepalive,
        dead_after,
        connect_timeout,
        backoff_min,
        backoff_max,
    })
}

/// A `{site}`/`{stream}`/`{node}` template: any other `{...}` is a typo.
fn template(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> String {
    let t = v.get_ref();
    let mut rest = t.as_str();
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else {
            cx.at(key, v, format!("{t:?}: '{{' without '}}'"));
            break;
        };
        let name = &rest[i + 1..i + j];
        if !["site", "stream", "node"].contains(&name) {
            cx.at(key, v, format!("{t:?}: unknown placeholder {{{name}}} (known: {{site}} {{stream}} {{node}})"));
        }
        rest = &rest[i + j + 1..];
    }
    if t.is_empty() && key.ends_with("topic") {
        cx.at(key, v, "must not be empty");
    }
    t.clone()
}

#[derive(Clone, Copy, PartialEq)]
enum SinkKind {
    Kafka,
    Rabbit,
}

fn validate_sink(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> Option<SinkConfig> {
    let key = |f: &str| format!("sink[{i}].{f}");
    let before = cx.problems.len();
    let name = cx.name(&key("name"), &k.name);
    let kind = cx.one_of(&key("kind"), &k.kind, &[("kafka", SinkKind::Kafka), ("rabbitmq", SinkKind::Rabbit)]);
    let list = |v: &Option<Spanned<Vec<String>>>| v.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default();
    let (sites, streams) = (list(&k.sites), list(&k.streams));
    let live_share = sink_live_share(cx, i, k);
    let max_in_flight = sink_max_in_flight(cx, i, k);
    let max_in_flight_bytes = sink_max_in_flight_bytes(cx, i, k);
    let max_message_bytes = k.max_message_bytes.as_ref().map(|v| {
        if v.get_ref().0 < 1024 {
            cx.at(&key("max_message_bytes"), v, "must be at least 1KiB");
        }
        v.get_ref().0 as usize
    });
    let backoff_min = sink_duration(cx, i, &k.backoff_min, "backoff_min", Duration::from_millis(200));
    // Low: a broker back from a restart gets its records within seconds.
    let backoff_max = sink_duration(cx, i, &k.backoff_max, "backoff_max", Duration::from_secs(2));
    if backoff_min > backoff_max {
        cx.err(&key("backoff_min"), k.backoff_min.as_ref().map(|v| v.span()), "must not exceed backoff_max");
    }
    let connect_timeout = sink_duration(cx, i, &k.connect_timeout, "connect_timeout", Duration::from_secs(10));
    let request_timeout = sink_duration(cx, i, &k.request_timeout, "request_timeout", Duration::from_secs(10));
    let stall_after = sink_duration(cx, i, &k.stall_after, "stall_after", Duration::from_secs(30));
    if let Some(v) = &k.stall_after {
        if stall_after < Duration::from_secs(1) {
            cx.at(&key("stall_after"), v, "must be at least 1s");
        }
    }
    refuse_other_kinds_keys(cx, i, k, kind);
    let bus = match kind? {
        SinkKind::Kafka => kafka_bus(cx, i, k),
        SinkKind::Rabbit => rabbit_bus(cx, i, k),
    };
    if cx.problems.len() > before {
        return None;
    }
    Some(SinkConfig {
        name,
        sites,
        streams,
        live_share,
        max_in_flight,
        max_in_flight_bytes,
        max_message_bytes,
        backoff_min,
        backoff_max,
        connect_timeout,
        request_timeout,
        stall_after,
        bus,
    })
}

fn sink_live_share(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> f64 {
    match &k.live_share {
        Some(v) => {
            if !(0.0..=1.0).contains(v.get_ref()) {
                cx.at(&format!("sink[{i}].live_share"), v, "must be between 0 and 1");
            }
            *v.get_ref()
        }
        None => 0.0,
    }
}

fn sink_max_in_flight(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> usize {
    match &k.max_in_flight {
        Some(v) => {
            if !(1..=10_000_000).contains(v.get_ref()) {
                cx.at(&format!("sink[{i}].max_in_flight"), v, "must be between 1 and 10000000 records");
            }
            *v.get_ref() as usize
        }
        None => 50_000,
    }
}

fn sink_max_in_flight_bytes(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> usize {
    match &k.max_in_flight_bytes {
        Some(v) => {
            if v.get_ref().0 < (64 << 10) {
                cx.at(&format!("sink[{i}].max_in_flight_bytes"), v, "must be at least 64KiB");
            }
            v.get_ref().0 as usize
        }
        None => 16 << 20,
    }
}

/// A sink's duration key: at least 10ms, `default` when not given.
fn sink_duration(
    cx: &mut Ctx<'_>,
    i: usize,
    v: &Option<Spanned<HumanDuration>>,
    f: &str,
    default: Duration,
) -> Duration {
    match v {
        Some(d) => {
            if d.get_ref().0 < Duration::from_millis(10) {
                cx.at(&format!("sink[{i}].{f}"), d, "must be at least 10ms");
            }
            d.get_ref().0
        }
        None => default,
    }
}

/// Keys of the other kind are a mistake worth naming, not something to ignore.
fn refuse_other_kinds_keys(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink, kind: Option<SinkKind>) {
    let misplaced: &[(&str, bool)] = match kind {
        Some(SinkKind::Kafka) => &[
            ("url", k.url.is_some()),
            ("exchange", k.exchange.is_some()),
            ("exchange_kind", k.exchange_kind.is_some()),
            ("routing_key", k.routing_key.is_some()),
        ],
        Some(SinkKind::Rabbit) => &[
            ("brokers", k.brokers.is_some()),
            ("topic", k.topic.is_some()),
            ("compression", k.compression.is_some()),
            ("message_timeout", k.message_timeout.is_some()),
            ("options", k.options.is_some()),
        ],
        None => &[],
    };
    for (f, set) in misplaced {
        if *set {
            cx.at(
                &format!("sink[{i}].kind"),
                &k.kind,
                format!("{f} is not a setting of a {:?} sink", k.kind.get_ref()),
            );
        }
    }
}

fn kafka_bus(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> BusConfig {
    let key = |f: &str| format!("sink[{i}].{f}");
    if cfg!(not(feature = "kafka")) {
        cx.at(&key("kind"), &k.kind, super::NO_KAFKA);
    }
    let brokers = match &k.brokers {
        Some(b) => {
            if b.get_ref().is_empty() {
                cx.at(&key("brokers"), b, "needs at least one broker (host:port)");
            }
            for a in b.get_ref() {
                if !a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                    cx.at(&key("brokers"), b, format!("{a:?} is not host:port"));
                }
            }
            b.get_ref().clone()
        }
        None => {
            cx.at(&key("kind"), &k.kind, "a kafka sink needs brokers = [\"host:port\", ...]");
            Vec::new()
        }
    };
    let topic = k.topic.as_ref().map(|t| template(cx, &key("topic"), t)).unwrap_or_else(|| "logs.{stream}".into());
    let compression = match &k.compression {
        Some(c) => cx
            .one_of(
                &key("compression"),
                c,
                &[("zstd", "zstd"), ("lz4", "lz4"), ("gzip", "gzip"), ("snappy", "snappy"), ("none", "none")],
            )
            .unwrap_or("zstd")
            .to_owned(),
        None => "zstd".into(),
    };
    let message_timeout = sink_duration(cx, i, &k.message_timeout, "message_timeout", Duration::from_secs(120));
    let options = k.options.as_ref().map(|o| o.get_ref().clone().into_iter().collect()).unwrap_or_default();
    BusConfig::Kafka(KafkaConfig { brokers, topic, compression, message_timeout, options })
}

fn rabbit_bus(cx: &mut Ctx<'_>, i: usize, k: &raw::RawSink) -> BusConfig {
    let key = |f: &str| format!("sink[{i}].{f}");
    let url = match &k.url {
        Some(u) => {
            let ok = u.get_ref().starts_with("amqp://") || u.get_ref().starts_with("amqps://");
            if !ok {
                cx.at(&key("url"), u, "must start with amqp:// or amqps://");
            }
            u.get_ref().clone()
        }
        None => {
            cx.at(&key("kind"), &k.kind, "a rabbitmq sink needs url = \"amqp://user:password@host:5672/vhost\"");
            String::new()
        }
    };
    let exchange = k.exchange.as_ref().map(|t| template(cx, &key("exchange"), t)).unwrap_or_else(|| "logs".into());
    let exchange_kind = match &k.exchange_kind {
        Some(v) => cx
            .one_of(
                &key("exchange_kind"),
                v,
                &[("topic", "topic"), ("direct", "direct"), ("fanout", "fanout"), ("headers", "headers")],
            )
            .unwrap_or("topic")
            .to_owned(),
        None => "topic".into(),
    };
    let routing_key = k
        .routing_key
        .as_ref()
        .map(|t| template(cx, &key("routing_key"), t))
        .unwrap_or_else(|| "{site}.{stream}".into());
    BusConfig::RabbitMq(RabbitMqConfig { url, exchange, exchange_kind, routing_key })
}

fn validate_listener(cx: &mut Ctx<'_>, i: usize, l: &RawListener, streams: &[String]) -> Option<ListenerConfig> {
    let k = |f: &str| format!("listener[{i}].{f}");
    let before = cx.problems.len();
    let name = cx.name(&k("name"), &l.name);
    let kind = listener_kind(cx, i, l);
    let (transport, listen) = listener_address(cx, i, l, kind)?;
    let stream = listener_stream(cx, i, l, streams);
    let trust = match &l.trust {
        Some(t) => cx
            .one_of(&k("trust"), t, &[("trusted", Trust::Trusted), ("untrusted", Trust::Untrusted)])
            .unwrap_or(Trust::Trusted),
        None => Trust::Trusted,
    };
    let max_connections = max_connections(cx, i, l, kind);
    let max_record_bytes = max_record_bytes(cx, i, l);
    let idle_timeout = idle_timeout(cx, i, l);
    let handshake_timeout = handshake_timeout(cx, i, l);
    let routes = routes(cx, i, l, streams);
    let relays = l.relays.as_ref().map(|r| r.get_ref().clone()).unwrap_or_default();
    if let Some(r) = &l.relays {
        if kind != Some(ListenerKind::Ferry) {
            cx.at(&k("relays"), r, "only ferry receivers relay other sites");
        }
    }
    if !routes.is_empty() && matches!(kind, Some(ListenerKind::Relp | ListenerKind::Http)) {
        cx.at(&k("route"), &l.name, "RELP and HTTP listeners acknowledge per commit of one stream: no routes");
    }
    let untrusted = trust == Trust::Untrusted;
    let max_body_bytes = max_body_bytes(cx, i, l);
    let source_records_per_sec = source_records_per_sec(cx, i, l, untrusted);
    let source_bytes_per_sec = match &l.source_bytes_per_sec {
        Some(v) => Some(v.get_ref().bytes_per_sec),
        None => untrusted.then_some(1024.0 * 1024.0),
    };
    let max_connections_per_source = max_connections_per_source(cx, i, l, untrusted);
    let max_sources = max_sources(cx, i, l);
    let source_ipv6_prefix = source_ipv6_prefix(cx, i, l);
    refuse_content_routes(cx, i, l, kind, transport, trust, &routes);
    let files = listener_files(cx, i, l, kind, &routes);
    let client_cert = client_cert(cx, i, l, kind, transport);
    if cx.problems.len() > before {
        return None;
    }
    Some(ListenerConfig {
        client_cert,
        name,
        kind: kind?,
        transport: transport?,
        listen,
        stream,
        trust,
        max_connections,
        max_record_bytes,
        idle_timeout,
        handshake_timeout,
        routes,
        relays,
        max_body_bytes,
        source_records_per_sec,
        source_bytes_per_sec,
        max_connections_per_source,
        max_sources,
        source_ipv6_prefix,
        files,
    })
}

fn listener_kind(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> Option<ListenerKind> {
    cx.one_of(
        &format!("listener[{i}].kind"),
        &l.kind,
        &[
            ("syslog", ListenerKind::Syslog),
            ("relp", ListenerKind::Relp),
            ("http", ListenerKind::Http),
            ("gelf", ListenerKind::Gelf),
            ("ferry", ListenerKind::Ferry),
            ("file", ListenerKind::File),
        ],
    )
}

/// A listener's transport and address; `None` when a socket listener lacks
/// either, since nothing after can be judged without them.
fn listener_address(
    cx: &mut Ctx<'_>,
    i: usize,
    l: &RawListener,
    kind: Option<ListenerKind>,
) -> Option<(Option<Transport>, ListenAddr)> {
    let k = |f: &str| format!("listener[{i}].{f}");
    if kind == Some(ListenerKind::File) {
        for (key, v) in [("transport", &l.transport), ("listen", &l.listen)] {
            if let Some(v) = v {
                cx.at(&k(key), v, "a file listener reads files (paths = [...]): no socket");
            }
        }
        let paths = l.paths.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
        return Some((Some(Transport::File), ListenAddr::Files(paths)));
    }
    let (Some(t), Some(a)) = (&l.transport, &l.listen) else {
        cx.at(&k("kind"), &l.kind, "this listener kind needs transport and listen");
        return None;
    };
    Some(socket_of(cx, i, kind, t, a))
}

/// The stream named, or the first one defined when none is.
fn listener_stream(cx: &mut Ctx<'_>, i: usize, l: &RawListener, streams: &[String]) -> String {
    match &l.stream {
        Some(s) => {
            if !streams.contains(s.get_ref()) {
                cx.at(&format!("listener[{i}].stream"), s, format!("no [[stream]] named {:?}", s.get_ref()));
            }
            s.get_ref().clone()
        }
        None => match streams.first() {
            Some(s) => s.clone(),
            None => String::new(),
        },
    }
}

/// Whether the file says `trust = "untrusted"`: the defaults below tighten on it.
fn says_untrusted(l: &RawListener) -> bool {
    l.trust.as_ref().is_some_and(|t| t.get_ref() == "untrusted")
}

fn max_connections(cx: &mut Ctx<'_>, i: usize, l: &RawListener, kind: Option<ListenerKind>) -> usize {
    match &l.max_connections {
        Some(v) => {
            let n = *v.get_ref();
            if !(1..=1_000_000).contains(&n) {
                cx.at(&format!("listener[{i}].max_connections"), v, "must be between 1 and 1000000");
            }
            n.max(1) as usize
        }
        // Collectors: a datacenter's hosts, each with a persistent connection,
        // and room for a reconnect storm (sockets of the old session still
        // closing). Idle, one costs about 2 KiB plain, 9 KiB with TLS (issue 26,
        // benches/README.md "Idle connections"). Relays on a link: a few.
        None if kind == Some(ListenerKind::Ferry) => 1024,
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

fn max_record_bytes(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> usize {
    match &l.max_record_bytes {
        Some(v) => {
            let n = v.get_ref().as_usize();
            if !(256..=MAX_RECORD_BYTES_CEILING).contains(&n) {
                cx.at(
                    &format!("listener[{i}].max_record_bytes"),
                    v,
                    format!("must be between 256B and {}", ByteSize(MAX_RECORD_BYTES_CEILING as u64)),
                );
            }
            n.clamp(256, MAX_RECORD_BYTES_CEILING)
        }
        None if says_untrusted(l) => 8 << 10,
        None => DEFAULT_MAX_RECORD_BYTES,
    }
}

fn idle_timeout(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> Duration {
    match &l.idle_timeout {
        Some(v) => {
            if v.get_ref().0 < Duration::from_millis(100) {
                cx.at(&format!("listener[{i}].idle_timeout"), v, "must be at least 100ms");
            }
            v.get_ref().0
        }
        None if says_untrusted(l) => Duration::from_secs(60),
        None => Duration::from_secs(300),
    }
}

fn handshake_timeout(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> Duration {
    match &l.handshake_timeout {
        Some(v) => {
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&v.get_ref().0) {
                cx.at(&format!("listener[{i}].handshake_timeout"), v, "must be between 100ms and 60s");
            }
            v.get_ref().0
        }
        None if says_untrusted(l) => Duration::from_secs(5),
        None => Duration::from_secs(10),
    }
}

fn routes(cx: &mut Ctx<'_>, i: usize, l: &RawListener, streams: &[String]) -> Vec<Route> {
    let mut routes = Vec::new();
    for (j, r) in l.route.iter().enumerate() {
        let rk = |f: &str| format!("listener[{i}].route[{j}].{f}");
        if !streams.contains(r.stream.get_ref()) {
            cx.at(&rk("stream"), &r.stream, format!("no [[stream]] named {:?}", r.stream.get_ref()));
        }
        let facility = r.facility.as_ref().and_then(|f| match crate::config::facility::facility_by_name(f.get_ref()) {
            Some(n) => Some(n),
            None => {
                cx.at(&rk("facility"), f, format!("{:?} is not a syslog facility (kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, local0..local7)", f.get_ref()));
                None
            }
        });
        if r.app_name.is_none() && r.facility.is_none() && r.hostname.is_none() {
            cx.at(&rk("stream"), &r.stream, "a route needs at least one of app_name, facility, hostname");
        }
        routes.push(Route {
            app_name: r.app_name.as_ref().map(|s| s.get_ref().clone()),
            facility,
            hostname: r.hostname.as_ref().map(|s| s.get_ref().clone()),
            stream: r.stream.get_ref().clone(),
        });
    }
    routes
}

fn max_body_bytes(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> usize {
    match &l.max_body_bytes {
        Some(v) => {
            if !((1 << 10)..=(256 << 20)).contains(&v.get_ref().0) {
                cx.at(&format!("listener[{i}].max_body_bytes"), v, "must be between 1KiB and 256MiB");
            }
            v.get_ref().as_usize()
        }
        None => 16 << 20,
    }
}

fn source_records_per_sec(cx: &mut Ctx<'_>, i: usize, l: &RawListener, untrusted: bool) -> Option<f64> {
    match &l.source_records_per_sec {
        Some(v) if *v.get_ref() < 1 => {
            cx.at(&format!("listener[{i}].source_records_per_sec"), v, "must be at least 1");
            None
        }
        Some(v) => Some(*v.get_ref() as f64),
        None => untrusted.then_some(1000.0),
    }
}

fn max_connections_per_source(cx: &mut Ctx<'_>, i: usize, l: &RawListener, untrusted: bool) -> Option<usize> {
    match &l.max_connections_per_source {
        Some(v) if *v.get_ref() < 1 => {
            cx.at(&format!("listener[{i}].max_connections_per_source"), v, "must be at least 1");
            None
        }
        Some(v) => Some(*v.get_ref() as usize),
        None => untrusted.then_some(16),
    }
}

fn max_sources(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> usize {
    match &l.max_sources {
        Some(v) if !(64..=10_000_000).contains(v.get_ref()) => {
            cx.at(&format!("listener[{i}].max_sources"), v, "must be between 64 and 10000000");
            100_000
        }
        Some(v) => *v.get_ref() as usize,
        None => 100_000,
    }
}

fn source_ipv6_prefix(cx: &mut Ctx<'_>, i: usize, l: &RawListener) -> u8 {
    match &l.source_ipv6_prefix {
        Some(v) if !(1..=128).contains(v.get_ref()) => {
            cx.at(&format!("listener[{i}].source_ipv6_prefix"), v, "must be between 1 and 128");
            64
        }
        Some(v) => *v.get_ref() as u8,
        None => 64,
    }
}

/// Routes pick a stream by what a record says: a receiver has no records of
/// its own to route, and an untrusted source must not pick where it lands.
fn refuse_content_routes(
    cx: &mut Ctx<'_>,
    i: usize,
    l: &RawListener,
    kind: Option<ListenerKind>,
    transport: Option<Transport>,
    trust: Trust,
    routes: &[Route],
) {
    if !routes.is_empty() && kind == Some(ListenerKind::Ferry) {
        cx.at(&format!("listener[{i}].route"), &l.name, "ferry receivers mirror segments as they are: no routes");
    }
    if !routes.is_empty() && transport.is_some() && trust == Trust::Untrusted {
        cx.at(
            &format!("listener[{i}].route"),
            &l.name,
            "untrusted listeners cannot route by record content: their sources must not choose their stream",
        );
    }
}

/// A file listener's own keys; on any other listener, those keys are refused.
fn listener_files(
    cx: &mut Ctx<'_>,
    i: usize,
    l: &RawListener,
    kind: Option<ListenerKind>,
    routes: &[Route],
) -> Option<FileConfig> {
    if kind == Some(ListenerKind::File) {
        if !routes.is_empty() {
            cx.at(
                &format!("listener[{i}].route"),
                &l.name,
                "a file listener acknowledges by checkpoint of one stream: no routes",
            );
        }
        files::validate_files(cx, i, l)
    } else {
        files::refuse_file_keys(cx, i, l);
        None
    }
}

fn client_cert(
    cx: &mut Ctx<'_>,
    i: usize,
    l: &RawListener,
    kind: Option<ListenerKind>,
    transport: Option<Transport>,
) -> ClientCert {
    let key = format!("listener[{i}].client_cert");
    match &l.client_cert {
        Some(c) => {
            if transport != Some(Transport::Tls) || kind == Some(ListenerKind::Ferry) {
                cx.at(&key, c, "only syslog, RELP and HTTP listeners with transport = \"tls\" take client_cert");
            }
            cx.one_of(&key, c, &[("required", ClientCert::Required), ("optional", ClientCert::Optional)])
                .unwrap_or(ClientCert::Required)
        }
        None => ClientCert::Required,
    }
}

/// A socket listener's transport and address.
fn socket_of(
    cx: &mut Ctx<'_>,
    i: usize,
    kind: Option<ListenerKind>,
    t: &Spanned<String>,
    a: &Spanned<String>,
) -> (Option<Transport>, ListenAddr) {
    let k = |f: &str| format!("listener[{i}].{f}");
    let transport = match kind {
        Some(ListenerKind::Http | ListenerKind::Relp) => {
            cx.one_of(&k("transport"), t, &[("tcp", Transport::Tcp), ("tls", Transport::Tls)])
        }
        Some(ListenerKind::Gelf) => cx.one_of(&k("transport"), t, &[("tcp", Transport::Tcp), ("udp", Transport::Udp)]),
        Some(ListenerKind::Ferry) => {
            cx.one_of(&k("transport"), t, &[("tls", Transport::Tls), ("quic", Transport::Quic)])
        }
        _ => cx.one_of(
            &k("transport"),
            t,
            &[
                ("tcp", Transport::Tcp),
                ("udp", Transport::Udp),
                ("unix", Transport::Unix),
                ("unix-stream", Transport::UnixStream),
                ("tls", Transport::Tls),
            ],
        ),
    };
    let listen = match transport {
        Some(Transport::Unix | Transport::UnixStream) => {
            if a.get_ref().is_empty() {
                cx.at(&k("listen"), a, "must be a socket path");
            }
            ListenAddr::Path(PathBuf::from(a.get_ref()))
        }
        _ => match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => ListenAddr::Socket(addr),
            Err(_) => {
                cx.at(&k("listen"), a, format!("{:?} is not an address:port such as \"0.0.0.0:6514\"", a.get_ref()));
                ListenAddr::Path(PathBuf::new())
            }
        },
    };
    (transport, listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
site = "sg1"
name = "relay-1"
data_dir = "/tmp/x"

[[stream]]
name = "live"

[[listener]]
name = "tcp"
kind = "syslog"
transport = "tcp"
listen = "127.0.0.1:0"
"#;

    #[test]
    fn minimal_is_valid() {
        let c = validate(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.listeners[0].stream, "live");
        assert_eq!(c.store.commit_bytes, 2 << 20);
        assert_eq!(c.listeners[0].max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn a_link_listener_takes_fewer_connections_by_default() {
        let text = format!(
            "{MINIMAL}\n[tls]\nca = \"/x/ca.pem\"\ncert = \"/x/node.pem\"\nkey = \"/x/node.key\"\n\
             [[listener]]\nname = \"link\"\nkind = \"ferry\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:7443\"\n"
        );
        let c = validate(&text, "t.toml").unwrap();
        let max = |n: &str| c.listeners.iter().find(|l| l.name == n).unwrap().max_connections;
        assert_eq!((max("tcp"), max("link")), (16_384, 1024));
    }

    #[test]
    fn embedded_default_is_valid() {
        Config::default_embedded();
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("name = \"relay-1\"", "name = \"relay-1\"\nnmae = \"x\"");
        let Err(Error::Invalid(p)) = validate(&text, "t.toml") else { panic!() };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 5);
        assert_eq!(p[0].key, "node.nmae");
        assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
    }

    #[test]
    fn sinks_are_checked_key_by_key() {
        let ok = format!(
            "{MINIMAL}\n[[sink]]\nname = \"k\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"logs.{{site}}.{{stream}}\"\n\
             \n[[sink]]\nname = \"r\"\nkind = \"rabbitmq\"\nurl = \"amqp://u:p@h:5672/%2f\"\n"
        );
        let c = validate(&ok, "t.toml").unwrap();
        assert_eq!(c.sinks.len(), 2);
        assert!(
            matches!(&c.sinks[0].bus, BusConfig::Kafka(k) if k.topic == "logs.{site}.{stream}" && k.compression == "zstd")
        );
        assert!(matches!(&c.sinks[1].bus, BusConfig::RabbitMq(r) if r.routing_key == "{site}.{stream}"));
        assert_eq!(c.sinks[0].live_share, 0.0, "strict order unless asked");

        let bad = format!(
            "{MINIMAL}\n[[sink]]\nname = \"k\"\nkind = \"kafka\"\ntopic = \"logs.{{strem}}\"\nurl = \"amqp://x\"\n\
             \n[[sink]]\nname = \"r\"\nkind = \"rabbitmq\"\nurl = \"http://h\"\nlive_share = 2.0\n\
             \n[[sink]]\nname = \"r\"\nkind = \"nats\"\n"
        );
        let Err(Error::Invalid(p)) = validate(&bad, "t.toml") else { panic!() };
        let msgs: Vec<String> = p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
        let has = |k: &str, m: &str| msgs.iter().any(|x| x.starts_with(k) && x.contains(m));
        assert!(has("sink[0].kind", "url is not a setting"), "{msgs:#?}");
        assert!(has("sink[0].kind", "needs brokers"), "{msgs:#?}");
        assert!(has("sink[0].topic", "unknown placeholder {strem}"), "{msgs:#?}");
        assert!(has("sink[1].url", "amqp://"), "{msgs:#?}");
        assert!(has("sink[1].live_share", "between 0 and 1"), "{msgs:#?}");
        assert!(has("sink[2].kind", "not one of: kafka, rabbitmq"), "{msgs:#?}");
        assert!(p.iter().all(|p| p.line > 0), "{p:?}");
    }

    #[test]
    fn buckets_are_checked_key_by_key() {
        let ok = format!(
            "{MINIMAL}\n[[bucket]]\nname = \"s3\"\nbucket = \"logs\"\nendpoint = \"http://127.0.0.1:8333\"\nprefix = \"/ferry/\"\n\
             keep_local = \"7d\"\n\n[[bucket]]\nname = \"aws\"\nbucket = \"logs-eu\"\nkeep_local = \"200GiB\"\n"
        );
        let c = validate(&ok, "t.toml").unwrap();
        let (a, b) = (&c.buckets[0], &c.buckets[1]);
        assert_eq!((a.prefix.as_str(), a.path_style, a.part_size, a.concurrency), ("ferry", true, 16 << 20, 4));
        assert_eq!(a.keep_local, Some(KeepLocal::Age(Duration::from_secs(7 * 86400))));
        assert_eq!(
            (b.path_style, b.region.as_str(), b.keep_local),
            (false, "us-east-1", Some(KeepLocal::Bytes(200 << 30)))
        );

        let bad = format!(
            "{MINIMAL}\n[[bucket]]\nname = \"s3\"\nbucket = \"Logs_\"\nendpoint = \"ftp://x\"\npart_size = \"1MiB\"\n\
             keep_local = \"soon\"\nconcurrency = 0\ncredentials_file = \"rel/path\"\nprefix = \"a/../b\"\n\
             \n[[bucket]]\nname = \"s3\"\nbucket = \"logs\"\nsecret_access_key = \"x\"\n"
        );
        let msgs = match validate(&bad, "t.toml") {
            Err(Error::Invalid(p)) => p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let text = msgs.join("\n");
        assert!(text.contains("secret_access_key"), "credentials are never a TOML key: {text}");
        let ok_keys = validate(&bad.replace("secret_access_key = \"x\"\n", ""), "t.toml");
        let Err(Error::Invalid(p)) = ok_keys else { panic!() };
        let msgs: Vec<String> = p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
        let has = |k: &str, m: &str| msgs.iter().any(|x| x.starts_with(k) && x.contains(m));
        assert!(has("bucket[0].bucket", "not a bucket name"), "{msgs:#?}");
        assert!(has("bucket[0].endpoint", "http://"), "{msgs:#?}");
        assert!(has("bucket[0].part_size", "5MiB"), "{msgs:#?}");
        assert!(has("bucket[0].keep_local", "neither a duration"), "{msgs:#?}");
        assert!(has("bucket[0].concurrency", "between 1 and 64"), "{msgs:#?}");
        assert!(has("bucket[0].credentials_file", "absolute"), "{msgs:#?}");
        assert!(has("bucket[0].prefix", ".."), "{msgs:#?}");
        let Err(Error::Invalid(p)) = validate(&ok.replace("\"aws\"", "\"s3\""), "t.toml") else { panic!() };
        assert!(p.iter().any(|p| p.key == "bucket[1].name" && p.message.contains("defined twice")), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = format!("{MINIMAL}\n[store]\ncommit_bytes = \"1B\"\nfsync = \"sometimes\"\nzstd_level = 40\n");
        let Err(Error::Invalid(p)) = validate(&text, "t.toml") else { panic!() };
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["store.commit_bytes", "store.fsync", "store.zstd_level"], "{p:?}");
        assert!(p.iter().all(|p| p.line > 0));
    }

    #[test]
    fn collector_tls_and_gelf_listeners_are_checked() {
        let listener = |kind: &str, transport: &str, extra: &str| {
            format!("{MINIMAL}\n[[listener]]\nname = \"x\"\nkind = \"{kind}\"\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:1\"\n{extra}")
        };
        let tls = "\n[tls]\nca = \"/c\"\ncert = \"/n\"\nkey = \"/k\"\n";
        // Valid: TLS for syslog, RELP and HTTP with [tls]; GELF on tcp and udp.
        for (kind, transport, extra) in [
            ("syslog", "tls", "client_cert = \"optional\""),
            ("relp", "tls", ""),
            ("http", "tls", "client_cert = \"required\""),
            ("gelf", "udp", "trust = \"untrusted\""),
            ("gelf", "tcp", ""),
        ] {
            let text = format!("{}{tls}", listener(kind, transport, extra));
            let c = validate(&text, "t.toml").unwrap_or_else(|e| panic!("{kind}/{transport}: {e}"));
            let l = c.listeners.iter().find(|l| l.name == "x").unwrap();
            let want = if extra.contains("optional") { ClientCert::Optional } else { ClientCert::Required };
            assert_eq!(l.client_cert, want);
        }
        // Refused, each naming its key.
        for (text, key, says) in [
            (listener("syslog", "tls", ""), "listener[1].transport", "needs a [tls] section"),
            (
                format!("{}{tls}", listener("syslog", "tcp", "client_cert = \"optional\"")),
                "listener[1].client_cert",
                "transport = \"tls\"",
            ),
            (
                format!("{}{tls}", listener("syslog", "tls", "client_cert = \"maybe\"")),
                "listener[1].client_cert",
                "maybe",
            ),
            (listener("gelf", "unix", ""), "listener[1].transport", "unix"),
            (listener("http", "udp", ""), "listener[1].transport", "udp"),
        ] {
            let Err(Error::Invalid(p)) = validate(&text, "t.toml") else { panic!("{key} accepted:\n{text}") };
            assert!(p.iter().any(|p| p.key == key && p.message.contains(says) && p.line > 0), "{key}: {p:?}");
        }
    }

    #[test]
    fn bad_unit_is_a_located_error() {
        let text = format!("{MINIMAL}\n[store]\ncommit_interval = \"100 parsecs\"\n");
        let Err(Error::Invalid(p)) = validate(&text, "t.toml") else { panic!() };
        assert_eq!(p[0].line, 17, "{p:?}");
        assert_eq!(p[0].key, "store.commit_interval");
        assert!(p[0].message.contains("parsecs"));
    }

    #[test]
    fn unknown_stream_in_listener() {
        let text = MINIMAL.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nstream = \"nope\"");
        let Err(Error::Invalid(p)) = validate(&text, "t.toml") else { panic!() };
        assert_eq!(p[0].key, "listener[0].stream");
    }
}
