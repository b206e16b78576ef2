//! `/status`: the node at a glance, for a human (`ferry status`). Built from
//! the same metrics `/metrics` exports, so the two never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::rates::series;
use crate::metrics::Metrics;
use prometheus::core::Collector;

fn by_first(s: &BTreeMap<Vec<String>, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in s {
        *out.entry(k.first().cloned().unwrap_or_default()).or_insert(0.0) += v;
    }
    out
}

fn bytes(v: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `12.3k/s`, or `-` while no rate is known yet.
fn rate(r: Option<f64>, unit_bytes: bool) -> String {
    match r {
        None => "-".into(),
        Some(v) if unit_bytes => format!("{}/s", bytes(v)),
        Some(v) if v >= 10_000.0 => format!("{:.1}k/s", v / 1000.0),
        Some(v) => format!("{v:.0}/s"),
    }
}

/// What the page shows besides metrics: the archive as it is on disk now.
pub struct Archive {
    /// Bytes of segment files under `archive/`.
    pub bytes: u64,
    /// Segment files under `archive/`.
    pub segments: u64,
}

/// The archive's files now (open segments included), for the page.
pub fn archive_now(dir: &std::path::Path) -> Archive {
    let mut a = Archive { bytes: 0, segments: 0 };
    for e in walkdir::WalkDir::new(dir).into_iter().filter_map(Result::ok) {
        if e.file_type().is_file() && crate::store::segment::is_segment_file(&e.file_name().to_string_lossy()) {
            a.segments += 1;
            a.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    a
}

/// A field of `/proc/self/status` in KiB (0 where there is none).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The metrics a page is rendered from, read from the metric objects
/// themselves (a metric renamed or relabelled cannot be missed here), and
/// the rates since an earlier sample.
struct View<'a> {
    m: &'a Metrics,
    per_sec: Option<BTreeMap<(String, String), f64>>,
}

impl View<'_> {
    /// The series of `c` by the values of its labels, in their declared order.
    fn get(&self, c: &dyn Collector) -> BTreeMap<Vec<String>, f64> {
        series(c)
    }

    /// Per second of counter `c` for the series whose first label is `key`.
    fn rate(&self, c: &dyn Collector, key: &str) -> Option<f64> {
        let name = c.desc().first().map(|d| d.fq_name.clone()).unwrap_or_default();
        self.per_sec.as_ref().map(|p| p.get(&(name, key.to_owned())).copied().unwrap_or(0.0))
    }
}

/// `second_label=count` of each nonzero series whose first label is `key`
/// (drops by reason, errors by reason, ...).
fn counts_for(s: &BTreeMap<Vec<String>, f64>, key: &str) -> Vec<String> {
    s.iter().filter(|(l, n)| l[0] == key && **n > 0.0).map(|(l, n)| format!("{}={}", l[1], *n as u64)).collect()
}

/// `items` joined by spaces, or `-` when there are none.
fn or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(" ")
    }
}

/// Render the status page: the node, then one table per part that runs on
/// it (streams and listeners always; uplinks, sinks, buckets and receivers
/// when configured).
pub fn render(m: &Metrics, site: &str, node: &str, archive: &Archive, rates: &super::rates::Rates) -> String {
    let w = View { m, per_sec: rates.per_sec(m) };
    let mut s = String::new();
    head(&w, &mut s, site, node, archive);
    streams(&w, &mut s);
    listeners(&w, &mut s);
    uplinks(&w, &mut s);
    sinks(&w, &mut s);
    buckets(&w, &mut s);
    receivers(&w, &mut s);
    s
}

/// The node: version, uptime, readiness, archive, memory, config, certificates.
fn head(w: &View<'_>, s: &mut String, site: &str, node: &str, archive: &Archive) {
    let up = crate::store::clock::Clock::now_ms(&crate::store::clock::SystemClock) / 1000 - w.m.node.up_since.get();
    let ready = if w.m.node.ready.get() == 1 { "ready" } else { "not ready" };
    let _ = writeln!(s, "ferry {} — site {site}, node {node}, up {up}s, {ready}", env!("CARGO_PKG_VERSION"));
    let full = if w.m.store.store_full.get() == 1 { "  (FULL: refusing records, on_full = reject)" } else { "" };
    let open_segments: f64 = w.get(&w.m.store.segments_open).values().sum();
    let _ = writeln!(
        s,
        "archive: {} in {} segments ({} open){full}",
        bytes(archive.bytes as f64),
        archive.segments,
        open_segments as u64
    );
    // Memory beside the connections that hold most of it (a relay for
    // thousands of collectors is sized by these two figures).
    let connections: f64 = w.get(&w.m.ingest.connections_active).values().sum();
    let (rss, peak) = (proc_status_kib("VmRSS:"), proc_status_kib("VmHWM:"));
    let _ = writeln!(
        s,
        "memory: {} resident (peak {}), {} collector connections open",
        bytes(rss as f64 * 1024.0),
        bytes(peak as f64 * 1024.0),
        connections as u64
    );
    let hash = w.get(&w.m.node.config_info).keys().next().cloned().unwrap_or_default();
    if hash.len() == 2 {
        let reload =
            if w.m.node.config_last_reload_ok.get() == 1 { "" } else { "  (LAST RELOAD REFUSED: see the log)" };
        let _ = writeln!(s, "config: {} sha256 {}…{reload}", hash[1], hash[0]);
    }
    let certs = w.get(&w.m.node.certificate_expiry);
    let now = crate::store::clock::Clock::now_ms(&crate::store::clock::SystemClock) / 1000;
    for (k, v) in &certs {
        let days = (*v as i64 - now) / 86_400;
        let warn = if days < 30 { "  EXPIRES SOON: certs/README.md, rotation" } else { "" };
        let _ = writeln!(s, "certificate ({}): {} expires in {days} days{warn}", k[0], k[1]);
    }
}

/// Per stream: records, bytes raw and on disk, open segments, rates, the disk.
fn streams(w: &View<'_>, s: &mut String) {
    let committed = by_first(&w.get(&w.m.store.committed_records));
    let cbytes = by_first(&w.get(&w.m.store.committed_bytes));
    let written = by_first(&w.get(&w.m.store.written_bytes));
    let open = by_first(&w.get(&w.m.store.segments_open));
    let unwritable = w.get(&w.m.store.store_unwritable);
    let _ = writeln!(
        s,
        "\nstreams\n  {:<16} {:>14} {:>12} {:>12} {:>5} {:>10} {:>12}  DISK",
        "STREAM", "RECORDS", "RAW", "ON DISK", "OPEN", "RECORDS/S", "RAW/S"
    );
    for (k, v) in &committed {
        let down: Vec<&str> =
            unwritable.iter().filter(|(l, n)| l[0] == *k && **n > 0.0).map(|(l, _)| l[1].as_str()).collect();
        let _ = writeln!(
            s,
            "  {:<16} {:>14} {:>12} {:>12} {:>5} {:>10} {:>12}  {}",
            k,
            *v as u64,
            bytes(cbytes.get(k).copied().unwrap_or(0.0)),
            bytes(written.get(k).copied().unwrap_or(0.0)),
            open.get(k).copied().unwrap_or(0.0) as u64,
            rate(w.rate(&w.m.store.committed_records, k), false),
            rate(w.rate(&w.m.store.committed_bytes, k), true),
            if down.is_empty() { "ok".to_owned() } else { format!("REFUSING RECORDS: {}", down.join(",")) }
        );
    }
}

/// Per listener: records received, connections, rates, drops and refusals.
fn listeners(w: &View<'_>, s: &mut String) {
    let received = by_first(&w.get(&w.m.ingest.received_records));
    let dropped = w.get(&w.m.ingest.dropped_records);
    let active = by_first(&w.get(&w.m.ingest.connections_active));
    let kernel = by_first(&w.get(&w.m.ingest.socket_dropped_datagrams));
    let refused = w.get(&w.m.ingest.refused_records);
    let conns_refused = w.get(&w.m.ingest.connections_refused);
    let _ = writeln!(
        s,
        "\nlisteners\n  {:<16} {:>14} {:>6} {:>10} {:>12}  DROPPED, REFUSED",
        "LISTENER", "RECEIVED", "CONNS", "RECORDS/S", "BYTES/S"
    );
    for (k, v) in &received {
        let mut drops: Vec<String> = counts_for(&dropped, k);
        // Lost before ferry could read them, and refused back to the sender: shown beside the drops.
        if let Some(n) = kernel.get(k).filter(|n| **n > 0.0) {
            drops.push(format!("kernel_socket_buffer={}", *n as u64));
        }
        drops.extend(
            refused
                .iter()
                .filter(|(l, n)| l[0] == *k && **n > 0.0)
                .map(|(l, n)| format!("refused:{}={}", l[1], *n as u64)),
        );
        drops.extend(
            conns_refused
                .iter()
                .filter(|(l, n)| l[0] == *k && **n > 0.0)
                .map(|(l, n)| format!("connections_refused:{}={}", l[1], *n as u64)),
        );
        let _ = writeln!(
            s,
            "  {:<16} {:>14} {:>6} {:>10} {:>12}  {}",
            k,
            *v as u64,
            active.get(k).copied().unwrap_or(0.0) as u64,
            rate(w.rate(&w.m.ingest.received_records, k), false),
            rate(w.rate(&w.m.ingest.received_bytes, k), true),
            or_dash(&drops)
        );
    }
}

/// Per uplink: connection, bytes, cap, what the receiver refuses; lag per stream.
fn uplinks(w: &View<'_>, s: &mut String) {
    let connected = w.get(&w.m.link.uplink_connected);
    if !connected.is_empty() {
        let wire = by_first(&w.get(&w.m.link.uplink_wire_bytes));
        let cap = by_first(&w.get(&w.m.link.uplink_max_rate));
        let rec = by_first(&w.get(&w.m.link.uplink_reconnects));
        let deliv = by_first(&w.get(&w.m.link.uplink_segments_delivered));
        let blocked = w.get(&w.m.link.uplink_blocked_segments);
        let errors = w.get(&w.m.link.uplink_errors);
        let _ = writeln!(
            s,
            "\nuplinks\n  {:<16} {:>9} {:>12} {:>14} {:>10} {:>9} {:>12} {:>12}  RECEIVER REFUSES",
            "UPLINK", "CONNECTED", "WIRE", "CAP", "RECONNECTS", "DELIVERED", "WIRE/S", "ACKED/S"
        );
        for (k, v) in &connected {
            let name = &k[0];
            let c = cap.get(name).copied().unwrap_or(0.0);
            let mut refusing: Vec<String> = blocked
                .iter()
                .filter(|(l, n)| l[0] == *name && **n > 0.0)
                .map(|(l, n)| format!("{} ({} segments, retrying)", l[1], *n as u64))
                .collect();
            if errors.get(&vec![name.clone(), "certificate_name".into()]).is_some_and(|n| *n > 0.0) {
                refusing.push(
                    "certificate_name: the receiver's certificate does not name the address dialled (ferry certs issue --dns/--ip, or server_name)".into(),
                );
            }
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>12} {:>14} {:>10} {:>9} {:>12} {:>12}  {}",
                name,
                if *v > 0.0 { "yes" } else { "NO" },
                bytes(wire.get(name).copied().unwrap_or(0.0)),
                if c > 0.0 { format!("{:.1} Mbit/s", c * 8.0 / 1e6) } else { "none".into() },
                rec.get(name).copied().unwrap_or(0.0) as u64,
                deliv.get(name).copied().unwrap_or(0.0) as u64,
                rate(w.rate(&w.m.link.uplink_wire_bytes, name), true),
                rate(w.rate(&w.m.link.uplink_acked_bytes, name), true),
                or_dash(&refusing)
            );
        }
        let lag_b = w.get(&w.m.link.uplink_lag_bytes);
        let lag_s = w.get(&w.m.link.uplink_lag_seconds);
        let acked = w.get(&w.m.link.uplink_acked_bytes);
        let _ =
            writeln!(s, "  {:<16} {:<24} {:>12} {:>10} {:>12}", "UPLINK", "SITE/STREAM", "LAG", "LAG SECS", "ACKED");
        for (k, v) in &lag_b {
            let _ = writeln!(
                s,
                "  {:<16} {:<24} {:>12} {:>10.1} {:>12}",
                k[0],
                format!("{}/{}", k[1], k[2]),
                bytes(*v),
                lag_s.get(k).copied().unwrap_or(0.0),
                bytes(acked.get(k).copied().unwrap_or(0.0))
            );
        }
    }
}

/// Per sink: connection, stalls, deliveries, errors; lag per stream.
fn sinks(w: &View<'_>, s: &mut String) {
    let sink_up = w.get(&w.m.sink.sink_connected);
    if !sink_up.is_empty() {
        let recs = w.get(&w.m.sink.sink_records);
        let lag_r = w.get(&w.m.sink.sink_lag_records);
        let lag_b = w.get(&w.m.sink.sink_lag_bytes);
        let lag_s = w.get(&w.m.sink.sink_lag_seconds);
        let errors = w.get(&w.m.sink.sink_errors);
        let dead = w.get(&w.m.sink.sink_dead_letters);
        let deliv = by_first(&w.get(&w.m.sink.sink_segments_delivered));
        let stalled = by_first(&w.get(&w.m.sink.sink_stalled));
        let missing = w.get(&w.m.sink.sink_missing_topic);
        let _ = writeln!(
            s,
            "\nsinks\n  {:<16} {:>9} {:>8} {:>14} {:>9}  ERRORS / DEAD-LETTERED",
            "SINK", "CONNECTED", "STALLED", "DELIVERED", "SEGMENTS"
        );
        for (k, v) in &sink_up {
            let name = &k[0];
            let total: f64 = recs.iter().filter(|(l, _)| l[0] == *name).map(|(_, n)| n).sum();
            let errs: Vec<String> = counts_for(&errors, name);
            let deads: Vec<String> = counts_for(&dead, name);
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>8} {:>14} {:>9}  {} / {}",
                name,
                if *v > 0.0 { "yes" } else { "NO" },
                if stalled.get(name).copied().unwrap_or(0.0) > 0.0 { "STALLED" } else { "no" },
                total as u64,
                deliv.get(name).copied().unwrap_or(0.0) as u64,
                or_dash(&errs),
                or_dash(&deads)
            );
        }
        for (k, _) in missing.iter().filter(|(_, v)| **v > 0.0) {
            let _ = writeln!(
                s,
                "  {:<16} topic {} does not exist; create it or allow auto-creation on the brokers",
                k[0], k[1]
            );
        }
        let _ = writeln!(
            s,
            "  {:<16} {:<24} {:>12} {:>12} {:>10} {:>14}",
            "SINK", "SITE/STREAM", "LAG RECORDS", "LAG", "LAG SECS", "DELIVERED"
        );
        for (k, v) in &lag_r {
            let _ = writeln!(
                s,
                "  {:<16} {:<24} {:>12} {:>12} {:>10.1} {:>14}",
                k[0],
                format!("{}/{}", k[1], k[2]),
                *v as u64,
                bytes(lag_b.get(k).copied().unwrap_or(0.0)),
                lag_s.get(k).copied().unwrap_or(0.0),
                recs.get(k).copied().unwrap_or(0.0) as u64
            );
        }
    }
}

/// Per bucket: uploads, lag, conflicts, errors.
fn buckets(w: &View<'_>, s: &mut String) {
    let bucket_up = w.get(&w.m.bucket.up);
    if !bucket_up.is_empty() {
        let b = &w.m.bucket;
        let one = |c: &dyn Collector| by_first(&w.get(c));
        let (segs, up_bytes, lag_n, lag_b) = (one(&b.segments), one(&b.bytes), one(&b.lag_segments), one(&b.lag_bytes));
        let (lag_s, conflicted) = (one(&b.lag_seconds), one(&b.conflicted));
        let errors = w.get(&w.m.bucket.errors);
        let _ = writeln!(
            s,
            "\nbuckets\n  {:<16} {:>4} {:>9} {:>12} {:>8} {:>12} {:>9} {:>10}  ERRORS",
            "BUCKET", "UP", "SEGMENTS", "UPLOADED", "LAG SEGS", "LAG", "LAG SECS", "CONFLICTS"
        );
        for (name, v) in by_first(&bucket_up) {
            let g = |m: &BTreeMap<String, f64>| m.get(&name).copied().unwrap_or(0.0);
            let errs: Vec<String> = counts_for(&errors, &name);
            let _ = writeln!(
                s,
                "  {:<16} {:>4} {:>9} {:>12} {:>8} {:>12} {:>9.1} {:>10}  {}",
                name,
                if v > 0.0 { "yes" } else { "NO" },
                g(&segs) as u64,
                bytes(g(&up_bytes)),
                g(&lag_n) as u64,
                bytes(g(&lag_b)),
                g(&lag_s),
                if g(&conflicted) > 0.0 { format!("{} HELD", g(&conflicted) as u64) } else { "0".into() },
                or_dash(&errs)
            );
        }
    }
}

/// Per link listener: sessions, bytes by site, refusals; checksum mismatches.
fn receivers(w: &View<'_>, s: &mut String) {
    let sessions = by_first(&w.get(&w.m.link.link_sessions_active));
    if !sessions.is_empty() {
        let recv = w.get(&w.m.link.link_received_bytes);
        let refused = w.get(&w.m.link.link_refused);
        let _ = writeln!(s, "\nreceivers\n  {:<16} {:>8}  RECEIVED BY SITE / REFUSED", "LISTENER", "LINKS");
        for (k, v) in &sessions {
            let sites: Vec<String> =
                recv.iter().filter(|(l, _)| l[0] == *k).map(|(l, n)| format!("{}={}", l[1], bytes(*n))).collect();
            let refs: Vec<String> = counts_for(&refused, k);
            let _ = writeln!(s, "  {:<16} {:>8}  {} / {}", k, *v as u64, sites.join(" "), or_dash(&refs));
        }
    }
    let mism: f64 = w.get(&w.m.link.link_checksum_mismatches).values().sum();
    if mism > 0.0 {
        let _ =
            writeln!(s, "\nCHECKSUM MISMATCHES: {mism} (see the log; the affected segments are kept and not released)");
    }
}
