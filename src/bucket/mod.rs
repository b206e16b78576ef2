//! `[[bucket]]`: the archive into S3-compatible object storage.
//!
//! A follower like the uplinks and the sinks: woken by the store (a seal, a
//! deletion), it puts every sealed segment at `prefix/<same relative path>`
//! with its seal record beside it (`….log.zst.seal`) and every tombstone
//! (`….log.zst.gone`), by create-only writes. A segment is delivered (its
//! path in `state/buckets/<name>.delivered`, so retention may delete it)
//! only once the bucket holds it with the sealed length and SHA-256, and
//! its seal. A key holding other bytes is a conflict: counted, logged once,
//! the local copy kept, nothing overwritten.

pub mod client;
pub mod index;
pub mod uploads;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::BucketConfig;
use crate::metrics::{Metrics, Reason};
use crate::store::changes::{Changes, Subscriber};
use crate::store::clock::Clock;
use crate::store::delivered::Delivered;
use crate::store::follow;
use crate::store::fs::Fs;
use crate::store::recover::list_repaired;
use crate::store::segment::{list_tombstones, OnDisk};
use client::{Client, Put};
use uploads::Uploads;

/// A bucket operation, the `op` label of `ferry_bucket_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A segment put in one request (at most `multipart_above`).
    Put,
    /// A seal record put beside its segment.
    PutSeal,
    /// A segment's time index (`<rel>.idx`) put beside it.
    PutIndex,
    /// A tombstone of a segment deleted undelivered.
    PutTombstone,
    /// A multipart upload started (segments above `multipart_above`).
    CreateMultipart,
    /// One part of a multipart upload.
    PutPart,
    /// A multipart upload completed: the object appears.
    CompleteMultipart,
    /// A multipart upload aborted (failed, or left by a crash).
    Abort,
    /// An object's existence and length asked.
    Head,
    /// An existing object read, to compare with what would be put.
    Get,
}

impl Op {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutSeal => "put_seal",
            Op::PutIndex => "put_index",
            Op::PutTombstone => "put_tombstone",
            Op::CreateMultipart => "create_multipart",
            Op::PutPart => "put_part",
            Op::CompleteMultipart => "complete_multipart",
            Op::Abort => "abort",
            Op::Head => "head",
            Op::Get => "get",
        }
    }
}

/// Why an upload did not happen; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The client cannot be made or a request cannot be built: what, and why.
    #[error("bucket setup: {what}: {source}")]
    Setup {
        /// What was being set up (the client, a request, a credentials file).
        what: String,
        /// Why it failed.
        #[source]
        source: Cause,
    },
    /// A request through `object_store` failed.
    #[error("{op}: {source}", op = .0.as_str(), source = .1)]
    Store(Op, #[source] object_store::Error),
    /// A request ferry signs itself (see `client::Raw`): status and body.
    #[error("{op}: {1}", op = .0.as_str())]
    Http(Op, String),
    /// The bucket does not hold what was put: another length after upload, or an object that went away.
    #[error("after upload: {0}")]
    Mismatch(String),
    /// The local segment (or its seal) could not be read.
    #[error("reading the segment: {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// This node's own state (its delivered list, open uploads, a task).
    #[error("state: {0}")]
    State(#[source] Cause),
}

/// The error underneath a [`BucketError`], kept whole.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl BucketError {
    /// A failure of this node's own state.
    pub fn state(e: impl Into<Cause>) -> BucketError {
        BucketError::State(e.into())
    }

    /// Setting up `what` failed with `e`.
    pub fn setup(what: impl Into<String>, e: impl Into<Cause>) -> BucketError {
        BucketError::Setup { what: what.into(), source: e.into() }
    }
}

impl crate::metrics::Reason for BucketError {
    /// The `reason` label of `ferry_bucket_errors_total`.
    fn reason(&self) -> &'static str {
        match self {
            BucketError::Setup { .. } => "setup",
            BucketError::Mismatch(_) => "length_mismatch",
            BucketError::Read { .. } => "read",
            BucketError::State(_) => "state_write",
            BucketError::Store(_, e) => match e {
                object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => "auth",
                object_store::Error::NotFound { .. } => "not_found",
                e => classify(&format!("{e} {e:?}")),
            },
            BucketError::Http(_, detail) => classify(detail),
        }
    }
}

impl BucketError {
    fn from_store(op: Op, e: object_store::Error) -> BucketError {
        BucketError::Store(op, e)
    }
}

/// Every `reason` label of `ferry_bucket_errors_total`.
const REASONS: [&str; 13] = [
    "setup",
    "length_mismatch",
    "read",
    "state_write",
    "auth",
    "not_found",
    "throttled",
    "checksum",
    "bad_response",
    "timeout",
    "server",
    "connect",
    "other",
];

/// The reason of an error object_store reports only in words: it keeps
/// the HTTP status ("… status code: 503 Service Unavailable") and the
/// store's error code (`SlowDown`, `BadDigest`) in its message. Statuses
/// are matched with their phrase, never as bare digits (a port or a key
/// may hold "503").
fn classify(s: &str) -> &'static str {
    let has = |words: &[&str]| words.iter().any(|w| s.contains(w));
    if has(&["SlowDown", "503 Service", "429 Too Many"]) {
        "throttled"
    } else if has(&["BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"]) {
        "checksum"
    } else if has(&["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403 Forbidden", "401 Unauthorized"])
    {
        "auth"
    } else if has(&["NoSuchBucket", "404 Not Found"]) {
        "not_found"
    } else if has(&["Unable to extract", "missing from response", "parse", "deserialize", "decoding response body"]) {
        "bad_response"
    } else if has(&["imed out", "Timeout", "timeout"]) {
        "timeout"
    } else if has(&["500 Internal", "502 Bad Gateway", "504 Gateway", "InternalError"]) {
        "server"
    } else if has(&["onnect", "error sending request"]) {
        "connect"
    } else {
        "other"
    }
}

/// One `[[bucket]]`, running.
pub struct Uploader {
    /// The `[[bucket]]` section.
    pub cfg: BucketConfig,
    /// This node's name (`[node] name`).
    pub node: String,
    /// `data_dir/archive`: the sealed segments to upload.
    pub archive_dir: PathBuf,
    /// `data_dir/state`: seal records, tombstones and `buckets/<name>.*`.
    pub state_dir: PathBuf,
    /// `ferry_bucket_*` are counted here.
    pub metrics: Metrics,
    /// The time for lag and backoff (a test clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Segments in the bucket with their seals (retention may delete them here).
    pub delivered: Arc<Delivered>,
    /// The filesystem the segments are read through (fault injection in tests).
    pub fs: Fs,
    /// Wakes the uploader when a segment is sealed or deleted.
    pub changes: Arc<Changes>,
}

/// Every series of the bucket exists from the start, gauges at 0.
fn zero_series(bm: &crate::metrics::BucketMetrics, name: &str) {
    for g in [&bm.up, &bm.conflicted, &bm.lag_segments, &bm.lag_bytes] {
        g.with_label_values(&[name]).set(0);
    }
    for c in [&bm.segments, &bm.bytes, &bm.conflicts, &bm.already_there, &bm.aborted_uploads] {
        c.with_label_values(&[name]);
    }
    // Every reason at 0 from the start, so `increase()` sees the first error.
    for reason in REASONS {
        bm.errors.with_label_values(&[name, reason]);
    }
}

/// What a step's uploads did: segments in the bucket leave the queue (a
/// conflict is set aside, said and counted). Successes count even when a
/// segment beside them failed; the first failure is returned, else whether
/// anything moved.
fn took(
    bm: &crate::metrics::BucketMetrics,
    name: &str,
    tombs: usize,
    did: Vec<(PathBuf, Result<Put, BucketError>)>,
    queue: &mut VecDeque<OnDisk>,
    conflicted: &mut HashSet<PathBuf>,
) -> Result<bool, BucketError> {
    let mut progressed = tombs > 0;
    let mut failed = None;
    for (rel, r) in did {
        match r {
            Ok(put) => {
                progressed = true;
                queue.retain(|s| s.rel != rel);
                if let Put::Conflict(why) = put {
                    bm.conflicts.with_label_values(&[name]).inc();
                    error!(bucket = %name, path = %rel.display(), conflict = %why,
                        "the bucket holds other bytes under this segment's key: nothing overwritten, the local copy is kept");
                    conflicted.insert(rel);
                    bm.conflicted.with_label_values(&[name]).set(conflicted.len() as i64);
                }
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(progressed),
    }
}

/// How often lag is shown and tombstones are looked for without a wake-up.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Uploader {
    /// Upload until `stop`: every sealed segment, its seal and index, and every tombstone, with backoff on failures;
    /// returns when stopped.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.cfg.name.clone();
        let bm = self.metrics.bucket.clone();
        zero_series(&bm, &name);
        let client = match Client::new(&self.cfg, &self.metrics) {
            Ok(c) => c,
            Err(e) => {
                bm.error(&name, &e);
                error!(bucket = %name, error = %e, "cannot set up the bucket; it does not run");
                return;
            }
        };
        let (uploads, tombs_done) = match self.load_state(&name) {
            Ok(x) => x,
            Err(e) => {
                error!(bucket = %name, error = %e, "cannot read the bucket's state; it does not run");
                return;
            }
        };
        info!(bucket = %name, target = %client.key(""), "bucket uploader started");
        let mut changes = self.changes.subscribe();
        let mut queue: VecDeque<OnDisk> = VecDeque::new();
        let mut conflicted: HashSet<PathBuf> = HashSet::new();
        let mut orphans_done = uploads.list().is_empty();
        let mut backoff = self.cfg.backoff_min;
        let mut retry_at: Option<Instant> = None;
        let mut next_look = Instant::now();
        let mut last_error: Option<&'static str> = None;
        // Tombstones appear with deletions (a layout change): looked for then.
        let mut tombs_due = true;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if changes.has_changed() {
                let u = changes.take();
                if u.relist {
                    queue = self.scan(&conflicted).await;
                    tombs_due = true;
                }
            }
            let now = Instant::now();
            if now >= next_look {
                next_look = now + LOOK_EVERY;
                self.report_lag(&queue);
            }
            let work = !orphans_done || tombs_due || !queue.is_empty();
            let ready = work && retry_at.is_none_or(|t| now >= t);
            if ready {
                let step = async {
                    if !orphans_done {
                        let n = client.abort_orphans(&uploads).await?;
                        warn!(bucket = %name, uploads = n, "aborted the multipart uploads a previous run left open");
                        orphans_done = true;
                    }
                    let tombs = if tombs_due { self.put_tombstones(&client, &tombs_done).await? } else { 0 };
                    tombs_due = false;
                    // The oldest `segments_in_flight` at once: one's
                    // checksum and requests overlap another's transfer.
                    let batch = queue.iter().take(self.cfg.segments_in_flight);
                    let did = futures_util::future::join_all(
                        batch.map(|seg| async { (seg.rel.clone(), self.put_one(&client, seg, &uploads).await) }),
                    )
                    .await;
                    Ok::<_, BucketError>((tombs, did))
                };
                let result = tokio::select! {
                    r = step => r,
                    _ = stop.cancelled() => break,
                };
                let result = result.and_then(|(tombs, did)| took(&bm, &name, tombs, did, &mut queue, &mut conflicted));
                match result {
                    Ok(progressed) => {
                        bm.up.with_label_values(&[&name]).set(1);
                        if last_error.take().is_some() {
                            info!(bucket = %name, "the bucket answers again");
                        }
                        backoff = self.cfg.backoff_min;
                        retry_at = None;
                        if progressed {
                            continue;
                        }
                    }
                    Err(e) => {
                        last_error = Some(e.reason());
                        retry_at = Some(self.failed(&e, &mut backoff, &mut changes));
                    }
                }
            }
            let until = match retry_at {
                Some(t) => t.min(next_look),
                None => next_look,
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        bm.up.with_label_values(&[&name]).set(0);
        info!(bucket = %name, "bucket uploader stopped");
    }

    /// Count and say a failed step; back off, and list again when the
    /// archive changed under it. Returns when to try again.
    fn failed(&self, e: &BucketError, backoff: &mut Duration, changes: &mut Subscriber) -> Instant {
        let (bm, name) = (&self.metrics.bucket, &self.cfg.name);
        bm.up.with_label_values(&[name]).set(0);
        bm.error(name, e);
        // Said at every failure of a new kind, then once per backoff step.
        warn!(bucket = %name, reason = e.reason(), error = %e, retry_in = ?*backoff, "bucket upload failed");
        let retry_at = Instant::now() + jitter(*backoff);
        *backoff = (*backoff * 2).min(self.cfg.backoff_max);
        // A segment deleted under us or a state change: look again.
        if matches!(e, BucketError::Read { .. }) {
            changes.force_relist();
        }
        retry_at
    }

    /// The multipart uploads left open and the tombstones already put.
    fn load_state(&self, name: &str) -> std::io::Result<(Uploads, Delivered)> {
        let dir = self.state_dir.join("buckets");
        Uploads::load(&self.fs, dir.join(format!("{name}.uploads")))
            .and_then(|u| Ok((u, Delivered::load(&self.fs, dir.join(format!("{name}.gone")), &self.metrics)?)))
    }

    /// Sealed segments not yet in the bucket, of the selected sites and
    /// streams, oldest first (conflicts are left aside until a restart).
    async fn scan(&self, conflicted: &HashSet<PathBuf>) -> VecDeque<OnDisk> {
        let (fs, a, st, d) =
            (self.fs.clone(), self.archive_dir.clone(), self.state_dir.clone(), self.delivered.clone());
        let (now, m, cfg) = (self.clock.now_ms(), self.metrics.clone(), self.cfg.clone());
        let skip_c: HashSet<PathBuf> = conflicted.clone();
        let found = tokio::task::spawn_blocking(move || {
            let sel = |rel: &Path| follow::selects(&cfg.sites, &cfg.streams, rel);
            list_repaired(&fs, &a, &st, |r| d.contains(r) || !sel(r) || skip_c.contains(r), now, &m)
        })
        .await
        .expect("scan task");
        match found {
            Ok(f) => f.into_iter().filter(|l| l.seal.is_some()).collect(),
            Err(e) => {
                warn!(bucket = %self.cfg.name, error = %e, "cannot scan the archive");
                VecDeque::new()
            }
        }
    }

    /// The segment, then its seal; delivered once both are there.
    async fn put_one(&self, client: &Client, seg: &OnDisk, uploads: &Uploads) -> Result<Put, BucketError> {
        let seal = seg.seal.as_ref().expect("only sealed segments are queued");
        let rel = seg.rel.to_string_lossy().into_owned();
        let path = self.archive_dir.join(&seg.rel);
        let name = &self.cfg.name;
        let bm = &self.metrics.bucket;
        let put = client.put_segment(&path, &rel, seal, uploads).await?;
        if let Put::Conflict(_) = put {
            return Ok(put);
        }
        // The time index before the seal: a segment with a seal in the
        // bucket has its index too (readers without one read it whole).
        let (p, len) = (path.clone(), seal.len);
        let blocks = tokio::task::spawn_blocking(move || index::build(&p, len))
            .await
            .map_err(BucketError::state)?
            .map_err(|source| BucketError::Read { path: path.clone(), source })?;
        client.put_text(&format!("{rel}.idx"), &index::to_text(&blocks), Op::PutIndex).await?;
        let seal_put = client.put_text(&format!("{rel}.seal"), &seal.to_text(), Op::PutSeal).await?;
        if let Put::Conflict(why) = seal_put {
            return Ok(Put::Conflict(why));
        }
        self.delivered.add(&seg.rel).map_err(BucketError::state)?;
        match put {
            Put::Written => {
                bm.segments.with_label_values(&[name]).inc();
                bm.bytes.with_label_values(&[name]).inc_by(seal.len);
            }
            _ => bm.already_there.with_label_values(&[name]).inc(),
        }
        if seal_put == Put::Written {
            bm.seals.with_label_values(&[name]).inc();
        }
        Ok(put)
    }

    /// Tombstones of segments deleted undelivered, so the bucket alone
    /// tells what is missing and why. Returns how many went up.
    async fn put_tombstones(&self, client: &Client, done: &Delivered) -> Result<usize, BucketError> {
        let st = self.state_dir.clone();
        let all = tokio::task::spawn_blocking(move || list_tombstones(&st)).await.expect("tombstone listing");
        let mut n = 0;
        for (rel, name, rec) in all {
            if done.contains(&rel) {
                continue;
            }
            let sel = (self.cfg.sites.is_empty() || self.cfg.sites.contains(&name.site))
                && (self.cfg.streams.is_empty() || self.cfg.streams.contains(&name.stream));
            let Ok(rec) = rec else { continue };
            if !sel {
                continue;
            }
            let r = rel.to_string_lossy();
            match client.put_text(&format!("{r}.gone"), &rec.to_text(), Op::PutTombstone).await? {
                Put::Conflict(why) => {
                    warn!(bucket = %self.cfg.name, path = %r, conflict = %why, "a tombstone differs from the bucket's");
                }
                Put::Written => {
                    self.metrics.bucket.tombstones.with_label_values(&[&self.cfg.name]).inc();
                    n += 1;
                }
                Put::AlreadyThere => {}
            }
            done.add(&rel).map_err(BucketError::state)?;
        }
        Ok(n)
    }

    fn report_lag(&self, queue: &VecDeque<OnDisk>) {
        let bm = &self.metrics.bucket;
        let name = &self.cfg.name;
        let bytes: u64 = queue.iter().map(|s| s.len).sum();
        bm.lag_segments.with_label_values(&[name]).set(queue.len() as i64);
        bm.lag_bytes.with_label_values(&[name]).set(bytes as i64);
        let oldest = queue.iter().filter_map(|s| s.seal.as_ref().map(|x| x.sealed_ms)).min();
        let secs = oldest.map(|ms| ((self.clock.now_ms() - ms).max(0) as f64) / 1000.0).unwrap_or(0.0);
        bm.lag_seconds.with_label_values(&[name]).set(secs);
    }
}

/// ±20%, so nodes that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn reasons_come_from_status_phrases_and_store_codes_not_bare_digits() {
        let put = "Error performing PUT http://127.0.0.1:45035/archive/x in 3ms";
        assert_eq!(
            classify(&format!("{put} - Server returned non-2xx status code: 503 Service Unavailable")),
            "throttled"
        );
        assert_eq!(classify("<Code>SlowDown</Code>"), "throttled");
        assert_eq!(classify(&format!("{put}: 403 Forbidden <Code>SignatureDoesNotMatch</Code>")), "auth");
        assert_eq!(classify("ETag Header missing from response"), "bad_response");
        assert_eq!(classify(&format!("{put} - operation timed out")), "timeout");
        assert_eq!(classify("<Code>BadDigest</Code>"), "checksum");
        assert_eq!(classify(&format!("{put} - error sending request")), "connect");
        assert_eq!(classify("http://127.0.0.1:40503/k/503/403: something new"), "other");
    }
}
