//! The one place that knows the stop order: stop accepting (listeners watch
//! `token`), let connections hand their last batches to the store (wait for
//! `tracker`), then commit and seal (the store's close), then exit. Every task
//! is spawned through the tracker, so "wait" means all of them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Handed to every listener and connection task.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the node begins to stop.
    pub token: CancellationToken,
    /// Every ingest task; waited on before the store closes.
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Spawn a tracked task.
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(f);
    }

    /// Cancel, then wait for every tracked task up to `deadline`. Returns
    /// false if some were still running at the deadline.
    pub async fn stop(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
    }
}
