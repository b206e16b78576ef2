//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the
//! process answers), `/readyz` (listeners bound, store open and accepting),
//! `/status` (the same numbers for a human).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub mod client;
pub mod rates;
pub mod status;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// What `/metrics` renders and `/status` reads.
    pub metrics: Metrics,
    /// Set once every listener is bound and the store is open; cleared on shutdown.
    pub ready: Arc<AtomicBool>,
    /// This node's site, shown by `/status`.
    pub site: String,
    /// This node's name, shown by `/status`.
    pub node: String,
    /// For `/readyz`: streams whose disk refuses writes.
    pub store: Arc<crate::store::Store>,
    /// Counters sampled for the rates of `/status`.
    pub rates: Arc<rates::Rates>,
}

/// Serve until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/status",
            get(|State(s): State<AdminState>| async move {
                let dir = s.store.archive_dir().to_owned();
                let archive = tokio::task::spawn_blocking(move || status::archive_now(&dir))
                    .await
                    .unwrap_or(status::Archive { bytes: 0, segments: 0 });
                status::render(&s.metrics, &s.site, &s.node, &archive, &s.rates)
            }),
        )
        .with_state(state.clone());
    // Ends with the admin server (same token).
    {
        let (st, stop) = (state, stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(rates::EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => st.rates.sample(&st.metrics),
                }
            }
        });
    }
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or stopping\n".to_string());
    }
    if s.metrics.store.store_full.get() != 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: archive full (on_full = reject)\n".to_string());
    }
    let down = s.store.unwritable();
    if !down.is_empty() {
        let why: Vec<String> = down.iter().map(|(st, t)| format!("stream {st}: {}", t.as_str())).collect();
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", why.join(", ")));
    }
    (StatusCode::OK, "ready\n".to_string())
}
