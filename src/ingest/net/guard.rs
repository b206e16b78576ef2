//! The account of one connection from the moment a protocol starts serving
//! it to its close: `ferry_connections_accepted_total`,
//! `ferry_connections_active` and `ferry_connections_closed_total{reason}`,
//! kept by one guard so no path forgets one of them. A connection that ends
//! without saying why (its task aborted) is counted as `aborted`.

use prometheus::IntGauge;

use crate::ingest::ListenerCtx;

/// Why a connection closed: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The peer closed it.
    Eof,
    /// Silent for `idle_timeout`.
    IdleTimeout,
    /// Bytes that cannot be framed (a bad octet count, a RELP error).
    FramingError,
    /// Reading failed (a reset, a TLS error).
    ReadError,
    /// The node is stopping.
    Shutdown,
    /// A commit failed (RELP closes the session unanswered so the client resends).
    StoreError,
    /// Ended without a reason (the task was cancelled).
    Aborted,
}

impl Close {
    /// Every reason, so that each label exists at 0 from the start.
    pub const ALL: [Close; 7] = [
        Close::Eof,
        Close::IdleTimeout,
        Close::FramingError,
        Close::ReadError,
        Close::Shutdown,
        Close::StoreError,
        Close::Aborted,
    ];

    /// The `reason` label of `ferry_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Eof => "eof",
            Close::IdleTimeout => "idle_timeout",
            Close::FramingError => "framing_error",
            Close::ReadError => "read_error",
            Close::Shutdown => "shutdown",
            Close::StoreError => "store_error",
            Close::Aborted => "aborted",
        }
    }

    /// An ordinary end, not worth more than a debug line.
    pub fn is_quiet(self) -> bool {
        matches!(self, Close::Eof | Close::Shutdown)
    }
}

/// Connections closed since the start, for [`give_back_memory`].
static CLOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Connections closed since the start: [`crate::node::memory`] hands freed
/// memory back after closes.
pub fn closed_so_far() -> u64 {
    CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a connection open on creation, and closed (with its reason) once.
pub struct ConnGuard<'a> {
    ctx: &'a ListenerCtx,
    active: IntGauge,
    closed: bool,
}

impl<'a> ConnGuard<'a> {
    /// Count a connection accepted and active.
    pub fn open(ctx: &'a ListenerCtx) -> ConnGuard<'a> {
        let m = &ctx.metrics;
        m.ingest.connections_accepted.with_label_values(&[&ctx.name]).inc();
        let active = m.ingest.connections_active.with_label_values(&[&ctx.name]);
        active.inc();
        ConnGuard { ctx, active, closed: false }
    }

    /// Count the connection closed, for `why`.
    pub fn close(mut self, why: Close) {
        self.count(why);
    }

    fn count(&mut self, why: Close) {
        if !std::mem::replace(&mut self.closed, true) {
            self.ctx.metrics.ingest.connections_closed.with_label_values(&[&self.ctx.name, why.as_str()]).inc();
            self.active.dec();
            CLOSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.count(Close::Aborted);
    }
}
