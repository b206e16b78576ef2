//! HTTP batch ingest: `POST /v1/streams/{stream}` with LF-separated lines or
//! NDJSON (`Content-Type: application/x-ndjson`), optionally
//! `Content-Encoding: gzip` or `zstd`. A request is all or nothing: it is
//! answered `200 {"accepted":N}` only after its records are committed, and
//! every refusal leaves nothing of it in the archive:
//!
//! | status | meaning |
//! |---|---|
//! | 400 | a line is not valid JSON (NDJSON): the body names the line |
//! | 403 | an untrusted listener's source asked for another stream |
//! | 404 | no such stream |
//! | 413 | the body, compressed or decompressed, exceeds `max_body_bytes` |
//! | 415 | an unknown `Content-Encoding` |
//! | 429 | the source is over its rate; `Retry-After` says when to retry |
//! | 503 | the store refuses records (archive full, read-only or failing disk, shutting down); `Retry-After` |
//! | 507 | the disk is full; `Retry-After`. Nothing of the request was written |

mod accept;

use std::borrow::Cow;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::warn;

use super::ListenerCtx;
use crate::config::Trust;
use crate::shutdown::Shutdown;
use crate::store::clock::{Clock, SystemClock};
use crate::store::escape::escape_into;
use crate::store::{Batch, Committed, Error as StoreError, Store};

struct HttpCtx {
    listener: Arc<ListenerCtx>,
    store: Arc<Store>,
}

/// Serve HTTP ingest until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::ingest::net::conn::TlsServer>,
    ctx: Arc<ListenerCtx>,
    store: Arc<Store>,
    sd: Shutdown,
) {
    let max_body = ctx.cfg.max_body_bytes;
    let name = ctx.name.clone();
    let incoming = match accept::incoming(listener, tls, ctx.clone(), sd.clone()) {
        Ok(i) => i,
        Err(e) => {
            warn!(listener = %name, error = %e, "HTTP listener failed");
            return;
        }
    };
    let state = Arc::new(HttpCtx { listener: ctx, store });
    let app = Router::new()
        .route("/v1/streams/{stream}", post(ingest))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    let token = sd.token.clone();
    // tap_io: axum gives connect info (the peer address) to tapped custom listeners.
    let r = axum::serve(incoming.tap_io(|_| {}), app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    if let Err(e) = r {
        warn!(listener = %name, error = %e, "HTTP listener failed");
    }
}

fn refuse(
    ctx: &HttpCtx,
    peer: SocketAddr,
    status: StatusCode,
    reason: &'static str,
    records: u64,
    msg: String,
) -> Response {
    let l = &ctx.listener;
    l.metrics.ingest.refused_records.with_label_values(&[&l.name, reason]).inc_by(records);
    if l.may_warn() {
        warn!(listener = %l.name, %peer, status = status.as_u16(), reason, "{msg}");
    }
    (status, format!("{msg}\n")).into_response()
}

/// Why a request body is refused, before any of it is queued.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A `Content-Encoding` other than gzip or zstd: 415.
    #[error("Content-Encoding {0:?} is not supported (gzip, zstd)")]
    Encoding(String),
    /// The body does not decompress: 400.
    #[error("cannot decompress the body: {0}")]
    Decompress(#[source] std::io::Error),
    /// The body decompresses to more than `max_body_bytes`: 413.
    #[error("decompressed body exceeds max_body_bytes ({0})")]
    TooLarge(usize),
    /// A line of an NDJSON body is not JSON: 400.
    #[error("line {line}: not valid JSON: {source}")]
    Json {
        /// The line, 1-based.
        line: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
}

impl BodyError {
    /// The HTTP status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Decompress(_) | BodyError::Json { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The `reason` label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::Encoding(_) | BodyError::Decompress(_) => "bad_encoding",
            BodyError::TooLarge(_) => "too_large",
            BodyError::Json { .. } => "bad_request",
        }
    }
}

/// The request body as sent: decompressed (gzip, zstd) within `limit`, or
/// why it is refused.
pub fn decode_body<'a>(encoding: Option<&str>, body: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, BodyError> {
    fn read_limited<'b>(r: impl Read, limit: usize) -> Result<Cow<'b, [u8]>, BodyError> {
        let mut out = Vec::new();
        let n = r.take(limit as u64 + 1).read_to_end(&mut out).map_err(BodyError::Decompress)?;
        if n > limit {
            return Err(BodyError::TooLarge(limit));
        }
        Ok(Cow::Owned(out))
    }
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(Cow::Borrowed(body)),
        Some("gzip") | Some("x-gzip") => read_limited(flate2::read::MultiGzDecoder::new(body), limit),
        Some("zstd") => {
            let d = zstd::stream::read::Decoder::new(body).map_err(BodyError::Decompress)?;
            read_limited(d, limit)
        }
        Some(other) => Err(BodyError::Encoding(other.to_owned())),
    }
}

/// The records of a decoded body: its non-empty lines (a CR before the LF
/// dropped), each a JSON value when `ndjson`; else which line is not.
pub fn body_lines(raw: &[u8], ndjson: bool) -> Result<Vec<&[u8]>, BodyError> {
    let mut lines = Vec::new();
    for (i, line) in raw.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if ndjson {
            if let Err(source) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                return Err(BodyError::Json { line: i + 1, source });
            }
        }
        lines.push(line);
    }
    Ok(lines)
}

async fn ingest(
    State(ctx): State<Arc<HttpCtx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let l = &ctx.listener;
    if l.cfg.trust == Trust::Untrusted && stream != l.cfg.stream {
        return refuse(
            &ctx,
            peer,
            StatusCode::FORBIDDEN,
            "forbidden_stream",
            0,
            format!("this listener only accepts stream {:?}", l.cfg.stream),
        );
    }
    let Some(handle) = ctx.store.stream(&stream) else {
        return refuse(&ctx, peer, StatusCode::NOT_FOUND, "unknown_stream", 0, format!("no stream {stream:?}"));
    };
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let raw = match decode_body(encoding, &body, l.cfg.max_body_bytes) {
        Ok(r) => r,
        Err(e) => return refuse(&ctx, peer, e.status(), e.reason(), 0, e.to_string()),
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("ndjson") || t.contains("json"));

    // Validate everything before anything is queued: a refused request leaves nothing behind.
    let lines = match body_lines(&raw, ndjson) {
        Ok(lines) => lines,
        Err(e) => {
            let records = raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
            return refuse(&ctx, peer, e.status(), e.reason(), records, e.to_string());
        }
    };
    let records = lines.len() as u64;
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    if records == 0 {
        return (StatusCode::OK, "{\"accepted\":0}\n").into_response();
    }
    if let Err(wait) = l.limits.take_all(peer.ip(), records, bytes, Instant::now()) {
        return rate_limited(&ctx, peer, records, wait);
    }
    let (batch, rx) = batch_of(l, &lines, records, bytes);
    if let Err((e, _)) = handle.submit(batch).await {
        return submit_refused(&ctx, peer, records, e);
    }
    l.metrics.ingest.received_records.with_label_values(&[&l.name]).inc_by(records);
    l.metrics.ingest.received_bytes.with_label_values(&[&l.name]).inc_by(bytes);
    match rx.await {
        Ok(Ok(_)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], format!("{{\"accepted\":{records}}}\n"))
                .into_response()
        }
        Ok(Err(e)) => {
            let reason = if e.is_disk_full() { "disk_full" } else { "store_error" };
            unavailable(
                &ctx,
                peer,
                records,
                &e,
                reason,
                format!("commit failed: {e}; nothing of this request was written, retry"),
            )
        }
        Err(_) => unavailable(
            &ctx,
            peer,
            records,
            &StoreError::Closed,
            "store_unavailable",
            "the store stopped before committing; retry".into(),
        ),
    }
}

/// 429 with the seconds until the source's buckets hold the request.
fn rate_limited(ctx: &HttpCtx, peer: SocketAddr, records: u64, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = refuse(
        ctx,
        peer,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        records,
        format!("source {} is over its rate limit; retry in {secs}s", peer.ip()),
    );
    r.headers_mut().insert(header::RETRY_AFTER, secs.into());
    r
}

/// The request's lines as one batch (each cut to `max_record_bytes`,
/// counted), with the receiver of its commit's answer.
fn batch_of(
    l: &ListenerCtx,
    lines: &[&[u8]],
    records: u64,
    bytes: u64,
) -> (Batch, oneshot::Receiver<Result<Committed, StoreError>>) {
    let max = l.cfg.max_record_bytes;
    let mut data = Vec::with_capacity(bytes as usize + lines.len() * 2);
    let mut truncated = 0u32;
    for line in lines {
        let keep = line.len().min(max);
        let _ = escape_into(&line[..keep], &mut data);
        data.push(b'\n');
        if keep < line.len() {
            truncated += 1;
        }
    }
    if truncated > 0 {
        l.metrics.ingest.truncated_records.with_label_values(&[&l.name]).inc_by(u64::from(truncated));
    }
    let now = SystemClock.now_ms();
    let (tx, rx) = oneshot::channel();
    let batch = Batch {
        listener: l.name.clone(),
        data,
        records: records as u32,
        truncated,
        first_ms: now,
        last_ms: now,
        ack: Some(tx),
    };
    (batch, rx)
}

/// The store did not take the batch: nothing of the request was written.
fn submit_refused(ctx: &HttpCtx, peer: SocketAddr, records: u64, e: StoreError) -> Response {
    match e {
        StoreError::Full => unavailable(
            ctx,
            peer,
            records,
            &e,
            "store_full",
            "the archive is full (on_full = reject); nothing was written".into(),
        ),
        e if e.is_disk_full() => {
            unavailable(ctx, peer, records, &e, "disk_full", format!("{e}; nothing was written, retry later"))
        }
        e => unavailable(ctx, peer, records, &e, "store_unavailable", format!("the store refused the batch: {e}")),
    }
}

/// 507 says "retry later, the disk is full" to a client that reads codes;
/// both it and 503 carry Retry-After.
fn unavailable(
    ctx: &HttpCtx,
    peer: SocketAddr,
    records: u64,
    e: &StoreError,
    reason: &'static str,
    msg: String,
) -> Response {
    let status = if e.is_disk_full() { StatusCode::INSUFFICIENT_STORAGE } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = refuse(ctx, peer, status, reason, records, msg);
    r.headers_mut().insert(header::RETRY_AFTER, 1u64.into());
    r
}
