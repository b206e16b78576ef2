//! Every metric ferry exports, in one registry, by area: each area (ingest,
//! store, node, link, sink, files, bucket) registers its own families and is
//! a field of [`Metrics`], so a module reads the counters of its own area
//! (`metrics.ingest.received_records`). Each drop has exactly one
//! [`DropReason`], which is also its label, so "received = committed +
//! dropped" can be checked from `/metrics` alone.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// At most one log line a second for a repeated warning (a flood, a failing
/// disk): the counters carry the totals, the log only says it is happening.
#[derive(Debug, Default)]
pub struct WarnLimit(std::sync::atomic::AtomicI64);

impl WarnLimit {
    /// True at most once per wall-clock second.
    pub fn may_warn(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let last = self.0.load(Ordering::Relaxed);
        now != last && self.0.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A closed set of values of a metric's `reason` label: each area names
/// its reasons with an enum implementing this, so a call site counts a
/// reason by its type, never by a string typed again there.
pub trait Reason {
    /// The label value.
    fn reason(&self) -> &'static str;
}

/// Why a record did not reach the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A datagram arrived while the stream's queue was full (node overloaded).
    Overload,
    /// The store refused new records (`on_full = "reject"` and the archive is full).
    StoreFull,
    /// The commit failed on disk (I/O error); the records were not written.
    StoreError,
    /// A partial record was pending when its connection broke or timed out.
    IncompleteFrame,
    /// The node was shutting down and the store was already closed.
    ShuttingDown,
    /// An untrusted (or limited) source exceeded its records/s or bytes/s.
    RateLimited,
    /// A message that cannot be decoded at all (GELF: a corrupt compressed
    /// payload); there is nothing meaningful to keep.
    Malformed,
    /// The stream's disk is full: datagrams are dropped, streams wait.
    DiskFull,
    /// A tailed file wrote more than its `quota` in the period: the rest of
    /// the period is skipped.
    FileQuota,
}

impl DropReason {
    /// The `reason` label of `ferry_dropped_records_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overload => "overload",
            DropReason::StoreFull => "store_full",
            DropReason::StoreError => "store_error",
            DropReason::IncompleteFrame => "incomplete_frame",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::RateLimited => "rate_limited",
            DropReason::Malformed => "malformed",
            DropReason::DiskFull => "disk_full",
            DropReason::FileQuota => "file_quota",
        }
    }
}

/// All of ferry's metrics. Cloning is cheap (prometheus handles are `Arc`s).
#[derive(Clone)]
pub struct Metrics {
    /// Every family below; what `/metrics` renders.
    pub registry: Registry,
    /// Listeners: received, dropped, refused, connections (`ferry_received_*`, `ferry_connections_*`, ...).
    pub ingest: IngestMetrics,
    /// The archive: commits, segments, recovery, retention, disk faults, audits.
    pub store: StoreMetrics,
    /// The node: version, start time, readiness, config reloads, certificate expiry.
    pub node: NodeMetrics,
    /// Uplinks (`ferry_uplink_*`), receivers (`ferry_link_*`) and the mirror.
    pub link: LinkMetrics,
    /// Deliveries to brokers (`ferry_sink_*`).
    pub sink: SinkMetrics,
    /// `[[bucket]]` uploads (their own area: `ferry_bucket_*`).
    pub bucket: BucketMetrics,
    /// `kind = "file"` listeners (their own area: `ferry_file_*`).
    pub files: FileMetrics,
}

impl Metrics {
    /// Every family registered, `ferry_build_info` set and the checksum-mismatch counters at 0 for both sides (so that
    /// alerts see them before the first mismatch).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let m = Metrics {
            ingest: IngestMetrics::register(r),
            store: StoreMetrics::register(r),
            node: NodeMetrics::register(r),
            link: LinkMetrics::register(r),
            sink: SinkMetrics::register(r),
            bucket: BucketMetrics::register(r),
            files: FileMetrics::register(r),
            registry,
        };
        m.node.info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for side in ["uplink", "receiver"] {
            m.link.link_checksum_mismatches.with_label_values(&[side]);
        }
        m
    }

    /// Count one listener's drop of `n` records for `reason`.
    pub fn drop_records(&self, listener: &str, reason: DropReason, n: u64) {
        self.ingest.dropped_records.with_label_values(&[listener, reason.as_str()]).inc_by(n);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

fn cv(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn gv(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let c = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn g(r: &Registry, name: &str, help: &str) -> IntGauge {
    let c = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// What listeners received, dropped, refused and flagged, and their
/// connections (`ferry_received_*`, `ferry_connections_*`, ...).
#[derive(Clone)]
pub struct IngestMetrics {
    /// `ferry_received_records_total{listener}`: Records received, per listener.
    pub received_records: IntCounterVec,
    /// `ferry_received_bytes_total{listener}`: Record bytes received, per listener.
    pub received_bytes: IntCounterVec,
    /// `ferry_dropped_records_total{listener, reason}`: Records that did not reach the archive, per listener and
    /// reason.
    pub dropped_records: IntCounterVec,
    /// `ferry_truncated_records_total{listener}`: Records cut to max_record_bytes (kept, flagged in the frame header).
    pub truncated_records: IntCounterVec,
    /// `ferry_refused_records_total{listener, reason}`: Records refused with an error the sender sees (it keeps them):
    /// HTTP 4xx/5xx, per reason.
    pub refused_records: IntCounterVec,
    /// `ferry_socket_dropped_datagrams_total{listener}`: Datagrams the kernel dropped at a UDP listener's socket
    /// (receive buffer full) before ferry could read them.
    pub socket_dropped_datagrams: IntCounterVec,
    /// `ferry_flagged_records_total{listener, flag}`: Records kept as received but noteworthy (invalid_utf8, nul_byte).
    pub flagged_records: IntCounterVec,
    /// `ferry_framing_errors_total{listener, reason}`: Framing errors that closed a connection or discarded bytes.
    pub framing_errors: IntCounterVec,
    /// `ferry_connections_accepted_total{listener}`: Stream connections accepted.
    pub connections_accepted: IntCounterVec,
    /// `ferry_connections_active{listener}`: Stream connections open now.
    pub connections_active: IntGaugeVec,
    /// `ferry_connections_refused_total{listener, reason}`: Stream connections refused, per reason.
    pub connections_refused: IntCounterVec,
    /// `ferry_connections_closed_total{listener, reason}`: Stream connections closed, per reason.
    pub connections_closed: IntCounterVec,
    /// `ferry_source_limit_shared_records_total{listener, bucket}`: Records of sources beyond max_sources, charged to a
    /// shared bucket (bucket: aggregate = the source's /24 or /48, global).
    pub source_limit_shared: IntCounterVec,
    /// `ferry_source_limit_tracked_sources{listener}`: Sources the per-source limits track one by one (at most
    /// max_sources; idle ones leave within 2 minutes).
    pub source_limit_tracked: IntGaugeVec,
}

impl IngestMetrics {
    fn register(r: &Registry) -> IngestMetrics {
        IngestMetrics {
            received_records: cv(r, "ferry_received_records_total", "Records received, per listener", &["listener"]),
            received_bytes: cv(r, "ferry_received_bytes_total", "Record bytes received, per listener", &["listener"]),
            dropped_records: cv(
                r,
                "ferry_dropped_records_total",
                "Records that did not reach the archive, per listener and reason",
                &["listener", "reason"],
            ),
            truncated_records: cv(
                r,
                "ferry_truncated_records_total",
                "Records cut to max_record_bytes (kept, flagged in the frame header)",
                &["listener"],
            ),
            refused_records: cv(
                r,
                "ferry_refused_records_total",
                "Records refused with an error the sender sees (it keeps them): HTTP 4xx/5xx, per reason",
                &["listener", "reason"],
            ),
            socket_dropped_datagrams: cv(
                r,
                "ferry_socket_dropped_datagrams_total",
                "Datagrams the kernel dropped at a UDP listener's socket (receive buffer full) before ferry could read them",
                &["listener"],
            ),
            flagged_records: cv(
                r,
                "ferry_flagged_records_total",
                "Records kept as received but noteworthy (invalid_utf8, nul_byte)",
                &["listener", "flag"],
            ),
            framing_errors: cv(
                r,
                "ferry_framing_errors_total",
                "Framing errors that closed a connection or discarded bytes",
                &["listener", "reason"],
            ),
            connections_accepted: cv(
                r,
                "ferry_connections_accepted_total",
                "Stream connections accepted",
                &["listener"],
            ),
            connections_active: gv(r, "ferry_connections_active", "Stream connections open now", &["listener"]),
            connections_refused: cv(
                r,
                "ferry_connections_refused_total",
                "Stream connections refused, per reason",
                &["listener", "reason"],
            ),
            connections_closed: cv(
                r,
                "ferry_connections_closed_total",
                "Stream connections closed, per reason",
                &["listener", "reason"],
            ),
            source_limit_shared: cv(
                r,
                "ferry_source_limit_shared_records_total",
                "Records of sources beyond max_sources, charged to a shared bucket (bucket: aggregate = the source's /24 or /48, global)",
                &["listener", "bucket"],
            ),
            source_limit_tracked: gv(
                r,
                "ferry_source_limit_tracked_sources",
                "Sources the per-source limits track one by one (at most max_sources; idle ones leave within 2 minutes)",
                &["listener"],
            ),
        }
    }
}

/// The archive: commits, segments, recovery, retention, disk faults, audits.
#[derive(Clone)]
pub struct StoreMetrics {
    /// `ferry_committed_records_total{stream}`: Records committed (written and, per fsync policy, synced).
    pub committed_records: IntCounterVec,
    /// `ferry_committed_bytes_total{stream}`: Uncompressed bytes committed (escaped lines with LF).
    pub committed_bytes: IntCounterVec,
    /// `ferry_written_bytes_total{stream}`: Bytes written to segment files (frames, compressed).
    pub written_bytes: IntCounterVec,
    /// `ferry_commits_total{stream}`: Commits (frames written).
    pub commits: IntCounterVec,
    /// `ferry_commit_duration_seconds{stream}`: Time to compress, write and fsync one commit.
    pub commit_seconds: HistogramVec,
    /// `ferry_commit_errors_total{stream}`: Commits that failed on disk.
    pub commit_errors: IntCounterVec,
    /// `ferry_segments_open{stream}`: Segments open for writing.
    pub segments_open: IntGaugeVec,
    /// `ferry_segments_sealed_total{stream}`: Segments sealed (closed, checksum recorded).
    pub segments_sealed: IntCounterVec,
    /// `ferry_archive_bytes`: Bytes of segment files under archive/ at the last retention scan.
    pub archive_bytes: IntGauge,
    /// `ferry_archive_segments`: Segment files under archive/ at the last retention scan.
    pub archive_segments: IntGauge,
    /// `ferry_store_full`: 1 when the store refuses new records (on_full = reject and the archive is full).
    pub store_full: IntGauge,
    /// `ferry_recovered_segments_total{stream}`: Unsealed segments found at start and recovered.
    pub recovered_segments: IntCounterVec,
    /// `ferry_recovery_truncated_bytes_total{stream}`: Bytes of torn frames cut from segment tails at start.
    pub recovery_truncated_bytes: IntCounterVec,
    /// `ferry_recovery_truncated_frames_total{stream}`: Torn frames cut from segment tails at start.
    pub recovery_truncated_frames: IntCounterVec,
    /// `ferry_recovery_corrupt_segments_total{stream}`: Segments with a damaged frame followed by valid ones (kept, not
    /// truncated).
    pub recovery_corrupt_segments: IntCounterVec,
    /// `ferry_retention_deleted_segments_total{reason}`: Segments deleted by retention, per reason.
    pub retention_deleted_segments: IntCounterVec,
    /// `ferry_retention_deleted_bytes_total{reason}`: Bytes deleted by retention, per reason.
    pub retention_deleted_bytes: IntCounterVec,
    /// `ferry_fsync_duration_seconds`: Time spent in fsync of segment files.
    pub fsync_seconds: Histogram,
    /// `ferry_disk_errors_total{stream, op, trouble}`: Failed disk operations of a stream's writer (op: create, write,
    /// fsync, seal, probe; trouble: disk_full, read_only, io_error).
    pub disk_errors: IntCounterVec,
    /// `ferry_store_unwritable{stream, reason}`: 1 while a stream refuses records because its disk does (reason:
    /// disk_full, read_only, io_error).
    pub store_unwritable: IntGaugeVec,
    /// `ferry_abandoned_segments_total{stream}`: Segments closed early after a disk fault (a failed fsync, or a failed
    /// write that could not be cut): cut back to their last durable length and sealed there.
    pub abandoned_segments: IntCounterVec,
    /// `ferry_cut_records_total{stream}`: Acknowledged records cut with a segment's untrusted tail after a failed fsync
    /// (fsync = interval or never).
    pub cut_records: IntCounterVec,
    /// `ferry_state_repaired_total{kind}`: Damaged state files found and repaired or worked around (kind: seal,
    /// delivered).
    pub state_repaired: IntCounterVec,
    /// `ferry_audit_complete_hour_seconds{site, stream, node}`: End (Unix time) of the newest hour that is complete
    /// here and closed: every segment sealed, verified, the sequence unbroken, and the origin's next hour continuing
    /// it.
    pub audit_complete_hour: IntGaugeVec,
    /// `ferry_audit_gaps{site, stream, node, reason}`: Gaps ferry audit finds in the archive now, per origin and reason
    /// (segment_missing, records_missing, seal_mismatch, sequence_overlap, deleted_undelivered).
    pub audit_gaps: IntGaugeVec,
}

impl StoreMetrics {
    fn register(r: &Registry) -> StoreMetrics {
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new("ferry_commit_duration_seconds", "Time to compress, write and fsync one commit")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["stream"],
        )
        .expect("valid metric");
        r.register(Box::new(commit_seconds.clone())).expect("unique metric");
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new("ferry_fsync_duration_seconds", "Time spent in fsync of segment files")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0]),
        )
        .expect("valid metric");
        r.register(Box::new(fsync_seconds.clone())).expect("unique metric");
        StoreMetrics {
            committed_records: cv(
                r,
                "ferry_committed_records_total",
                "Records committed (written and, per fsync policy, synced)",
                &["stream"],
            ),
            committed_bytes: cv(
                r,
                "ferry_committed_bytes_total",
                "Uncompressed bytes committed (escaped lines with LF)",
                &["stream"],
            ),
            written_bytes: cv(
                r,
                "ferry_written_bytes_total",
                "Bytes written to segment files (frames, compressed)",
                &["stream"],
            ),
            commits: cv(r, "ferry_commits_total", "Commits (frames written)", &["stream"]),
            commit_seconds,
            commit_errors: cv(r, "ferry_commit_errors_total", "Commits that failed on disk", &["stream"]),
            segments_open: gv(r, "ferry_segments_open", "Segments open for writing", &["stream"]),
            segments_sealed: cv(
                r,
                "ferry_segments_sealed_total",
                "Segments sealed (closed, checksum recorded)",
                &["stream"],
            ),
            archive_bytes: g(
                r,
                "ferry_archive_bytes",
                "Bytes of segment files under archive/ at the last retention scan",
            ),
            archive_segments: g(r, "ferry_archive_segments", "Segment files under archive/ at the last retention scan"),
            store_full: g(
                r,
                "ferry_store_full",
                "1 when the store refuses new records (on_full = reject and the archive is full)",
            ),
            recovered_segments: cv(
                r,
                "ferry_recovered_segments_total",
                "Unsealed segments found at start and recovered",
                &["stream"],
            ),
            recovery_truncated_bytes: cv(
                r,
                "ferry_recovery_truncated_bytes_total",
                "Bytes of torn frames cut from segment tails at start",
                &["stream"],
            ),
            recovery_truncated_frames: cv(
                r,
                "ferry_recovery_truncated_frames_total",
                "Torn frames cut from segment tails at start",
                &["stream"],
            ),
            recovery_corrupt_segments: cv(
                r,
                "ferry_recovery_corrupt_segments_total",
                "Segments with a damaged frame followed by valid ones (kept, not truncated)",
                &["stream"],
            ),
            retention_deleted_segments: cv(
                r,
                "ferry_retention_deleted_segments_total",
                "Segments deleted by retention, per reason",
                &["reason"],
            ),
            retention_deleted_bytes: cv(
                r,
                "ferry_retention_deleted_bytes_total",
                "Bytes deleted by retention, per reason",
                &["reason"],
            ),
            fsync_seconds,
            disk_errors: cv(
                r,
                "ferry_disk_errors_total",
                "Failed disk operations of a stream's writer (op: create, write, fsync, seal, probe; trouble: disk_full, read_only, io_error)",
                &["stream", "op", "trouble"],
            ),
            store_unwritable: gv(
                r,
                "ferry_store_unwritable",
                "1 while a stream refuses records because its disk does (reason: disk_full, read_only, io_error)",
                &["stream", "reason"],
            ),
            abandoned_segments: cv(
                r,
                "ferry_abandoned_segments_total",
                "Segments closed early after a disk fault (a failed fsync, or a failed write that could not be cut): cut back to their last durable length and sealed there",
                &["stream"],
            ),
            cut_records: cv(
                r,
                "ferry_cut_records_total",
                "Acknowledged records cut with a segment's untrusted tail after a failed fsync (fsync = interval or never)",
                &["stream"],
            ),
            state_repaired: cv(
                r,
                "ferry_state_repaired_total",
                "Damaged state files found and repaired or worked around (kind: seal, delivered)",
                &["kind"],
            ),
            audit_complete_hour: gv(
                r,
                "ferry_audit_complete_hour_seconds",
                "End (Unix time) of the newest hour that is complete here and closed: every segment sealed, verified, the sequence unbroken, and the origin's next hour continuing it",
                &["site", "stream", "node"],
            ),
            audit_gaps: gv(
                r,
                "ferry_audit_gaps",
                "Gaps ferry audit finds in the archive now, per origin and reason (segment_missing, records_missing, seal_mismatch, sequence_overlap, deleted_undelivered)",
                &["site", "stream", "node", "reason"],
            ),
        }
    }
}

/// The node itself: version, uptime, readiness, the config in force and its
/// reloads, certificates.
#[derive(Clone)]
pub struct NodeMetrics {
    /// `ferry_start_time_seconds`: Unix time the node started.
    pub up_since: IntGauge,
    /// `ferry_build_info{version}`: Build information: always 1, the version is a label.
    pub info: IntGaugeVec,
    /// Reloads by result: applied, unchanged, invalid, refused.
    pub config_reloads: IntCounterVec,
    /// Always 1; the config in force's SHA-256 (first 16 hex digits) is a label.
    pub config_info: IntGaugeVec,
    /// When the config in force was loaded.
    pub config_loaded: IntGauge,
    /// 1 if the last reload was applied (or none was asked), 0 if refused.
    pub config_last_reload_ok: IntGauge,
    /// Each loaded certificate's notAfter (role node or ca).
    pub certificate_expiry: IntGaugeVec,
    /// `ferry_ready`: 1 when every listener is bound and the store is open.
    pub ready: IntGauge,
}

impl NodeMetrics {
    fn register(r: &Registry) -> NodeMetrics {
        NodeMetrics {
            up_since: g(r, "ferry_start_time_seconds", "Unix time the node started"),
            info: gv(r, "ferry_build_info", "Build information: always 1, the version is a label", &["version"]),
            config_reloads: cv(
                r,
                "ferry_config_reloads_total",
                "Reloads asked (SIGHUP) by result: applied, unchanged, invalid (the file has problems), refused (a key that needs a restart, or TLS files that do not verify)",
                &["result"],
            ),
            config_info: gv(
                r,
                "ferry_config_info",
                "The config in force: always 1, its SHA-256 (first 16 hex digits) and file are labels",
                &["hash", "file"],
            ),
            config_loaded: g(r, "ferry_config_loaded_timestamp_seconds", "When the config in force was loaded (start or reload)"),
            config_last_reload_ok: g(
                r,
                "ferry_config_last_reload_successful",
                "1 if the last reload was applied (or none was asked yet), 0 if it was refused",
            ),
            certificate_expiry: gv(
                r,
                "ferry_certificate_expiry_timestamp_seconds",
                "notAfter of each certificate ferry has loaded: its own (role node) and every CA of the bundle (role ca)",
                &["role", "subject"],
            ),
            ready: g(r, "ferry_ready", "1 when every listener is bound and the store is open"),
        }
    }
}

/// The link both ways: uplinks (`ferry_uplink_*`), receivers (`ferry_link_*`)
/// and the mirror they write.
#[derive(Clone)]
pub struct LinkMetrics {
    /// `ferry_uplink_connected{uplink}`: 1 while the uplink has an established link.
    pub uplink_connected: IntGaugeVec,
    /// `ferry_uplink_acked_bytes_total{uplink, site, stream}`: Segment bytes the receiver acknowledged (durable there).
    pub uplink_acked_bytes: IntCounterVec,
    /// `ferry_uplink_lag_bytes{uplink, site, stream}`: Segment bytes on disk not yet acknowledged by the receiver.
    pub uplink_lag_bytes: IntGaugeVec,
    /// `ferry_uplink_lag_seconds{uplink, site, stream}`: Age of the oldest record not yet acknowledged by the receiver
    /// (0 when caught up).
    pub uplink_lag_seconds: prometheus::GaugeVec,
    /// `ferry_uplink_wire_bytes_total{uplink}`: Bytes put on the wire by the uplink (TLS records or QUIC packets).
    pub uplink_wire_bytes: IntCounterVec,
    /// `ferry_uplink_reconnects_total{uplink}`: Links lost and re-dialled.
    pub uplink_reconnects: IntCounterVec,
    /// `ferry_uplink_segments_delivered_total{uplink}`: Segments sealed and verified at the receiver.
    pub uplink_segments_delivered: IntCounterVec,
    /// `ferry_uplink_max_rate_bytes{uplink}`: Configured bandwidth cap in bytes/s (0 = none).
    pub uplink_max_rate: IntGaugeVec,
    /// `ferry_uplink_errors_total{uplink, reason}`: Uplink failures by reason (connect, refusals by code,
    /// receiver_ahead).
    pub uplink_errors: IntCounterVec,
    /// `ferry_uplink_blocked_segments{uplink, reason}`: Segments the receiver cannot write now (reason: no_space,
    /// read_only, io_error), kept and retried.
    pub uplink_blocked_segments: IntGaugeVec,
    /// `ferry_link_refused_total{listener, reason}`: Links or requests a receiver refused, by reason.
    pub link_refused: IntCounterVec,
    /// `ferry_link_sessions_active{listener}`: Uplinks connected to this receiver.
    pub link_sessions_active: IntGaugeVec,
    /// `ferry_link_received_bytes_total{listener, site}`: Segment bytes written to the mirror, per origin site.
    pub link_received_bytes: IntCounterVec,
    /// `ferry_link_checksum_mismatches_total{side}`: Sealed segments whose mirror differs from the origin.
    pub link_checksum_mismatches: IntCounterVec,
    /// `ferry_mirror_errors_total{trouble}`: Mirror appends and seals refused because the mirror's disk failed or the
    /// archive is full (trouble: disk_full, read_only, io_error, archive_full: over max_bytes with on_full = reject).
    pub mirror_errors: IntCounterVec,
}

impl LinkMetrics {
    fn register(r: &Registry) -> LinkMetrics {
        LinkMetrics {
            uplink_connected: gv(
                r,
                "ferry_uplink_connected",
                "1 while the uplink has an established link",
                &["uplink"],
            ),
            uplink_acked_bytes: cv(
                r,
                "ferry_uplink_acked_bytes_total",
                "Segment bytes the receiver acknowledged (durable there)",
                &["uplink", "site", "stream"],
            ),
            uplink_lag_bytes: gv(
                r,
                "ferry_uplink_lag_bytes",
                "Segment bytes on disk not yet acknowledged by the receiver",
                &["uplink", "site", "stream"],
            ),
            uplink_lag_seconds: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "ferry_uplink_lag_seconds",
                        "Age of the oldest record not yet acknowledged by the receiver (0 when caught up)",
                    ),
                    &["uplink", "site", "stream"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            uplink_wire_bytes: cv(
                r,
                "ferry_uplink_wire_bytes_total",
                "Bytes put on the wire by the uplink (TLS records or QUIC packets)",
                &["uplink"],
            ),
            uplink_reconnects: cv(r, "ferry_uplink_reconnects_total", "Links lost and re-dialled", &["uplink"]),
            uplink_segments_delivered: cv(
                r,
                "ferry_uplink_segments_delivered_total",
                "Segments sealed and verified at the receiver",
                &["uplink"],
            ),
            uplink_max_rate: gv(
                r,
                "ferry_uplink_max_rate_bytes",
                "Configured bandwidth cap in bytes/s (0 = none)",
                &["uplink"],
            ),
            uplink_errors: cv(
                r,
                "ferry_uplink_errors_total",
                "Uplink failures by reason (connect, refusals by code, receiver_ahead)",
                &["uplink", "reason"],
            ),
            uplink_blocked_segments: gv(
                r,
                "ferry_uplink_blocked_segments",
                "Segments the receiver cannot write now (reason: no_space, read_only, io_error), kept and retried",
                &["uplink", "reason"],
            ),
            link_refused: cv(
                r,
                "ferry_link_refused_total",
                "Links or requests a receiver refused, by reason",
                &["listener", "reason"],
            ),
            link_sessions_active: gv(
                r,
                "ferry_link_sessions_active",
                "Uplinks connected to this receiver",
                &["listener"],
            ),
            link_received_bytes: cv(
                r,
                "ferry_link_received_bytes_total",
                "Segment bytes written to the mirror, per origin site",
                &["listener", "site"],
            ),
            link_checksum_mismatches: cv(
                r,
                "ferry_link_checksum_mismatches_total",
                "Sealed segments whose mirror differs from the origin",
                &["side"],
            ),
            mirror_errors: cv(
                r,
                "ferry_mirror_errors_total",
                "Mirror appends and seals refused because the mirror's disk failed or the archive is full (trouble: disk_full, read_only, io_error, archive_full: over max_bytes with on_full = reject)",
                &["trouble"],
            ),
        }
    }
}

/// Deliveries to brokers (`ferry_sink_*`).
#[derive(Clone)]
pub struct SinkMetrics {
    /// `ferry_sink_connected{sink}`: 1 while the sink has a working broker connection.
    pub sink_connected: IntGaugeVec,
    /// `ferry_sink_stalled{sink}`: 1 while records wait and the broker has acknowledged nothing for stall_after.
    pub sink_stalled: IntGaugeVec,
    /// `ferry_sink_missing_topic{sink, topic}`: 1 while a Kafka topic the sink delivers to does not exist.
    pub sink_missing_topic: IntGaugeVec,
    /// `ferry_sink_records_total{sink, site, stream}`: Records the broker acknowledged (acks=all, publisher confirms).
    pub sink_records: IntCounterVec,
    /// `ferry_sink_bytes_total{sink, site, stream}`: Record bytes (as sent, unescaped) the broker acknowledged.
    pub sink_bytes: IntCounterVec,
    /// `ferry_sink_lag_records{sink, site, stream}`: Records on disk the broker has not acknowledged yet.
    pub sink_lag_records: IntGaugeVec,
    /// `ferry_sink_lag_bytes{sink, site, stream}`: Segment bytes on disk the broker has not acknowledged yet.
    pub sink_lag_bytes: IntGaugeVec,
    /// `ferry_sink_lag_seconds{sink, site, stream}`: Age of the oldest record the broker has not acknowledged (0 when
    /// caught up).
    pub sink_lag_seconds: prometheus::GaugeVec,
    /// `ferry_sink_errors_total{sink, reason}`: Sink failures by reason (connect, transient broker errors, unroutable,
    /// disk).
    pub sink_errors: IntCounterVec,
    /// `ferry_sink_dead_letters_total{sink, reason}`: Records the broker refused for good, written to the sink's
    /// dead-letter file.
    pub sink_dead_letters: IntCounterVec,
    /// `ferry_sink_segments_delivered_total{sink}`: Segments whose every record the broker acknowledged.
    pub sink_segments_delivered: IntCounterVec,
}

impl SinkMetrics {
    /// Count one failure of sink `sink`, by its reason.
    pub fn error(&self, sink: &str, why: &impl Reason) {
        self.sink_errors.with_label_values(&[sink, why.reason()]).inc();
    }

    fn register(r: &Registry) -> SinkMetrics {
        SinkMetrics {
            sink_connected: gv(
                r,
                "ferry_sink_connected",
                "1 while the sink has a working broker connection",
                &["sink"],
            ),
            sink_stalled: gv(
                r,
                "ferry_sink_stalled",
                "1 while records wait and the broker has acknowledged nothing for stall_after",
                &["sink"],
            ),
            sink_missing_topic: gv(
                r,
                "ferry_sink_missing_topic",
                "1 while a Kafka topic the sink delivers to does not exist",
                &["sink", "topic"],
            ),
            sink_records: cv(
                r,
                "ferry_sink_records_total",
                "Records the broker acknowledged (acks=all, publisher confirms)",
                &["sink", "site", "stream"],
            ),
            sink_bytes: cv(
                r,
                "ferry_sink_bytes_total",
                "Record bytes (as sent, unescaped) the broker acknowledged",
                &["sink", "site", "stream"],
            ),
            sink_lag_records: gv(
                r,
                "ferry_sink_lag_records",
                "Records on disk the broker has not acknowledged yet",
                &["sink", "site", "stream"],
            ),
            sink_lag_bytes: gv(
                r,
                "ferry_sink_lag_bytes",
                "Segment bytes on disk the broker has not acknowledged yet",
                &["sink", "site", "stream"],
            ),
            sink_lag_seconds: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "ferry_sink_lag_seconds",
                        "Age of the oldest record the broker has not acknowledged (0 when caught up)",
                    ),
                    &["sink", "site", "stream"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            sink_errors: cv(
                r,
                "ferry_sink_errors_total",
                "Sink failures by reason (connect, transient broker errors, unroutable, disk)",
                &["sink", "reason"],
            ),
            sink_dead_letters: cv(
                r,
                "ferry_sink_dead_letters_total",
                "Records the broker refused for good, written to the sink's dead-letter file",
                &["sink", "reason"],
            ),
            sink_segments_delivered: cv(
                r,
                "ferry_sink_segments_delivered_total",
                "Segments whose every record the broker acknowledged",
                &["sink"],
            ),
        }
    }
}

/// Tailed files, each labelled by listener.
#[derive(Clone)]
pub struct FileMetrics {
    /// `ferry_file_watched{listener}`: Files tailed (matched by the globs, or renamed or deleted and still read).
    pub watched: IntGaugeVec,
    /// `ferry_file_open{listener}`: Tailed files held open (at most max_open_files).
    pub open: IntGaugeVec,
    /// `ferry_file_finished_total{listener}`: Renamed or deleted files read to their end and closed.
    pub finished: IntCounterVec,
    /// `ferry_file_truncations_total{listener}`: Files found shorter than read (copytruncate): read again from their
    /// start.
    pub truncations: IntCounterVec,
    /// `ferry_file_quota_skipped_bytes_total{listener}`: Bytes of files over their quota, skipped (their lines are
    /// dropped records, reason file_quota).
    pub quota_bytes: IntCounterVec,
    /// `ferry_file_repeated_bytes_total{listener}`: Bytes read again at a start that the commits in flight at the last
    /// stop may already hold (an upper bound of what is archived twice).
    pub repeated_bytes: IntCounterVec,
    /// `ferry_file_lag_bytes{listener}`: Bytes written to tailed files and not yet read.
    pub lag_bytes: IntGaugeVec,
    /// `ferry_file_errors_total{listener, reason}`: Failures opening, reading or checkpointing files, by reason.
    pub errors: IntCounterVec,
}

impl FileMetrics {
    fn register(r: &Registry) -> FileMetrics {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gv = |name: &str, help: &str| {
            let c = IntGaugeVec::new(Opts::new(name, help), &["listener"]).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        FileMetrics {
            watched: gv("ferry_file_watched", "Files tailed (matched by the globs, or renamed or deleted and still read)"),
            open: gv("ferry_file_open", "Tailed files held open (at most max_open_files)"),
            finished: cv(
                "ferry_file_finished_total",
                "Renamed or deleted files read to their end and closed",
                &["listener"],
            ),
            truncations: cv(
                "ferry_file_truncations_total",
                "Files found shorter than read (copytruncate): read again from their start",
                &["listener"],
            ),
            quota_bytes: cv(
                "ferry_file_quota_skipped_bytes_total",
                "Bytes of files over their quota, skipped (their lines are dropped records, reason file_quota)",
                &["listener"],
            ),
            repeated_bytes: cv(
                "ferry_file_repeated_bytes_total",
                "Bytes read again at a start that the commits in flight at the last stop may already hold (an upper bound of what is archived twice)",
                &["listener"],
            ),
            lag_bytes: gv("ferry_file_lag_bytes", "Bytes written to tailed files and not yet read"),
            errors: cv("ferry_file_errors_total", "Failures opening, reading or checkpointing files, by reason", &["listener", "reason"]),
        }
    }
}

/// The uploads into object storage, each labelled by bucket (the config name).
#[derive(Clone)]
pub struct BucketMetrics {
    /// `ferry_bucket_segments_total{bucket}`: Segments uploaded and confirmed (length and SHA-256).
    pub segments: IntCounterVec,
    /// `ferry_bucket_bytes_total{bucket}`: Segment bytes uploaded and confirmed.
    pub bytes: IntCounterVec,
    /// `ferry_bucket_seals_total{bucket}`: Seal records put beside their segments.
    pub seals: IntCounterVec,
    /// `ferry_bucket_tombstones_total{bucket}`: Tombstones of segments deleted undelivered put in the bucket.
    pub tombstones: IntCounterVec,
    /// `ferry_bucket_already_there_total{bucket}`: Segments found in the bucket with the same length and SHA-256
    /// (another node, or a retry).
    pub already_there: IntCounterVec,
    /// `ferry_bucket_conflicts_total{bucket}`: Keys found in the bucket with other bytes than the sealed segment (never
    /// overwritten).
    pub conflicts: IntCounterVec,
    /// `ferry_bucket_conflicted_segments{bucket}`: Segments held back by a conflict in the bucket now.
    pub conflicted: IntGaugeVec,
    /// `ferry_bucket_errors_total{bucket, reason}`: Failed bucket operations, by reason.
    pub errors: IntCounterVec,
    /// `ferry_bucket_requests_total{bucket, op}`: Requests made to the bucket, by operation (retry storms show here).
    pub requests: IntCounterVec,
    /// `ferry_bucket_aborted_uploads_total{bucket}`: Multipart uploads of this node aborted (failed, or orphaned by a
    /// crash).
    pub aborted_uploads: IntCounterVec,
    /// `ferry_bucket_up{bucket}`: 1 while the last request to the bucket succeeded.
    pub up: IntGaugeVec,
    /// `ferry_bucket_lag_segments{bucket}`: Sealed segments not yet in the bucket.
    pub lag_segments: IntGaugeVec,
    /// `ferry_bucket_lag_bytes{bucket}`: Bytes of sealed segments not yet in the bucket.
    pub lag_bytes: IntGaugeVec,
    /// `ferry_bucket_lag_seconds{bucket}`: Age of the oldest sealed segment not yet in the bucket.
    pub lag_seconds: prometheus::GaugeVec,
}

impl BucketMetrics {
    /// Count one failed bucket operation of `bucket`, by its reason.
    pub fn error(&self, bucket: &str, why: &impl Reason) {
        self.errors.with_label_values(&[bucket, why.reason()]).inc();
    }

    fn register(r: &Registry) -> BucketMetrics {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gv = |name: &str, help: &str| {
            let c = IntGaugeVec::new(Opts::new(name, help), &["bucket"]).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new("ferry_bucket_lag_seconds", "Age of the oldest sealed segment not yet in the bucket"),
            &["bucket"],
        )
        .expect("valid metric");
        r.register(Box::new(lag_seconds.clone())).expect("unique metric");
        BucketMetrics {
            segments: cv(
                "ferry_bucket_segments_total",
                "Segments uploaded and confirmed (length and SHA-256)",
                &["bucket"],
            ),
            bytes: cv("ferry_bucket_bytes_total", "Segment bytes uploaded and confirmed", &["bucket"]),
            seals: cv("ferry_bucket_seals_total", "Seal records put beside their segments", &["bucket"]),
            tombstones: cv(
                "ferry_bucket_tombstones_total",
                "Tombstones of segments deleted undelivered put in the bucket",
                &["bucket"],
            ),
            already_there: cv(
                "ferry_bucket_already_there_total",
                "Segments found in the bucket with the same length and SHA-256 (another node, or a retry)",
                &["bucket"],
            ),
            conflicts: cv(
                "ferry_bucket_conflicts_total",
                "Keys found in the bucket with other bytes than the sealed segment (never overwritten)",
                &["bucket"],
            ),
            conflicted: gv("ferry_bucket_conflicted_segments", "Segments held back by a conflict in the bucket now"),
            errors: cv("ferry_bucket_errors_total", "Failed bucket operations, by reason", &["bucket", "reason"]),
            requests: cv(
                "ferry_bucket_requests_total",
                "Requests made to the bucket, by operation (retry storms show here)",
                &["bucket", "op"],
            ),
            aborted_uploads: cv(
                "ferry_bucket_aborted_uploads_total",
                "Multipart uploads of this node aborted (failed, or orphaned by a crash)",
                &["bucket"],
            ),
            up: gv("ferry_bucket_up", "1 while the last request to the bucket succeeded"),
            lag_segments: gv("ferry_bucket_lag_segments", "Sealed segments not yet in the bucket"),
            lag_bytes: gv("ferry_bucket_lag_bytes", "Bytes of sealed segments not yet in the bucket"),
            lag_seconds,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
