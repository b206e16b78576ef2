//! The one place that knows the stop order ([`Stages::stop`]): stop accepting
//! (listeners watch `token`), let connections hand their last batches to the
//! store (wait for `tracker`), stop the work over the archive, then commit and
//! seal (the store's close), give the uplinks a grace to deliver what was
//! just sealed, stop the sinks (they write their cursors on the way out), and
//! the admin listener last. Every task of the node is spawned through one of
//! these trackers, so "wait" means all of them.

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
    /// A shutdown not yet begun, with no tasks.
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

/// Connections get this long to hand their last batches to the store.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Uplinks get this long after the store's close to deliver what it sealed.
pub const UPLINK_GRACE: Duration = Duration::from_secs(5);
/// What a stage that must stop at once (uplinks after their grace, sinks)
/// still gets to finish.
const STAGE_DEADLINE: Duration = Duration::from_secs(5);

/// Stop listeners together: all stop accepting at once, then their
/// connections get `deadline` in all to hand over their last batches.
pub async fn stop_all(sds: &[Shutdown], deadline: Duration) -> bool {
    for sd in sds {
        sd.token.cancel();
        sd.tracker.close();
    }
    tokio::time::timeout(deadline, async {
        for sd in sds {
            sd.tracker.wait().await;
        }
    })
    .await
    .is_ok()
}

/// The node's tasks other than its listeners', by the stage they stop in.
#[derive(Default)]
pub struct Stages {
    /// Work over the archive (retention, the watch of its segments): stops
    /// before the store closes.
    pub archive: Shutdown,
    /// Uplinks: their tokens are children of this one's.
    pub uplinks: Shutdown,
    /// Cancelled when the uplinks' grace begins: an uplink stops as soon as
    /// nothing deliverable is left.
    pub uplink_drain: CancellationToken,
    /// Sinks and bucket uploaders.
    pub sinks: Shutdown,
    /// The admin listener and the memory giver: the last to stop.
    pub last: Shutdown,
}

impl Stages {
    /// Stop everything in order: `listeners` (their connections get
    /// [`DRAIN_DEADLINE`]), the archive's work, `close_store`, the uplinks
    /// (after [`UPLINK_GRACE`]), the sinks, the last.
    pub async fn stop(&self, listeners: &[Shutdown], close_store: impl Future<Output = ()>) {
        if !stop_all(listeners, DRAIN_DEADLINE).await {
            tracing::warn!(deadline = ?DRAIN_DEADLINE, "some connections did not finish in time");
        }
        // Retention may be deleting files: it finishes its step.
        self.archive.token.cancel();
        self.archive.tracker.close();
        self.archive.tracker.wait().await;
        close_store.await;
        self.uplinks.tracker.close();
        self.uplink_drain.cancel();
        if tokio::time::timeout(UPLINK_GRACE, self.uplinks.tracker.wait()).await.is_err() {
            tracing::info!(grace = ?UPLINK_GRACE, "uplinks still had data to deliver; it stays on disk for the next start");
        }
        self.uplinks.stop(STAGE_DEADLINE).await;
        self.sinks.stop(STAGE_DEADLINE).await;
        self.last.stop(STAGE_DEADLINE).await;
    }
}
