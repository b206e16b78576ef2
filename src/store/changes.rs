//! What changed in the archive, told to the forwarders (uplinks, sinks).
//!
//! Forwarders used to find new data by rescanning the whole archive tree
//! every 200 ms: a fresh record waited for the next scan, and an idle node
//! paid for walking every segment it kept. Now every writer of the archive
//! (the stream writers, the mirror, retention) reports here, and a forwarder
//! sleeps until something changed:
//! - **growth** of a segment being written: its new length, kept per path
//!   (only open segments are here, so the map stays small);
//! - a **layout** change (a segment created, sealed, removed): a counter that
//!   tells the forwarder to list the archive again.
//!
//! The other way, a forwarder that is behind may ask a stream's writer to
//! start a new segment ([`Changes::request_rotation`]): fresh records then
//! no longer queue behind unsent bytes of the segment they would have
//! shared, and the live share carries only them.
//!
//! Wake-ups may coalesce (a `watch` keeps only that something changed), but
//! none is lost: a woken forwarder reads the current lengths and, when the
//! layout counter moved, the files themselves, so whatever happened between
//! two looks is seen at the second.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Default)]
struct State {
    lens: HashMap<PathBuf, u64>,
    layout: u64,
}

/// Shared by everything that writes or reads the archive of one node.
pub struct Changes {
    state: Mutex<State>,
    version: watch::Sender<u64>,
    /// Streams (of this node) whose open segment a forwarder asked to close.
    rotations: Mutex<HashSet<String>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes { state: Mutex::new(State::default()), version: watch::channel(0).0, rotations: Mutex::default() }
    }
}

impl Changes {
    /// Nothing changed yet.
    pub fn new() -> Arc<Changes> {
        Arc::new(Changes::default())
    }

    /// A segment being written now holds `len` bytes (after a commit, or
    /// a mirror append).
    pub fn grown(&self, rel: &Path, len: u64) {
        {
            let mut s = self.state.lock().expect("not poisoned");
            match s.lens.get_mut(rel) {
                Some(l) => *l = (*l).max(len),
                None => {
                    s.lens.insert(rel.to_owned(), len);
                }
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// A segment was created, sealed or removed: forwarders list the
    /// archive again. `rel`, when given, is no longer being written.
    pub fn layout_changed(&self, closed: Option<&Path>) {
        {
            let mut s = self.state.lock().expect("not poisoned");
            if let Some(rel) = closed {
                s.lens.remove(rel);
            }
            s.layout += 1;
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Ask the writer of `stream` to put its next commit in a new segment.
    pub fn request_rotation(&self, stream: &str) {
        self.rotations.lock().expect("not poisoned").insert(stream.to_owned());
    }

    /// For the writer of `stream`: was a new segment asked for? (Clears it.)
    pub fn take_rotation(&self, stream: &str) -> bool {
        let mut r = self.rotations.lock().expect("not poisoned");
        !r.is_empty() && r.remove(stream)
    }

    /// A forwarder's view. Its first [`Subscriber::take`] asks for a listing.
    pub fn subscribe(self: &Arc<Changes>) -> Subscriber {
        let mut rx = self.version.subscribe();
        rx.mark_changed();
        Subscriber { changes: self.clone(), rx, layout_seen: None, woken: false }
    }
}

/// What a forwarder learns when it looks.
#[derive(Debug, Default)]
pub struct Update {
    /// List the archive again: a segment came or went, or this is the
    /// first look.
    pub relist: bool,
    /// Current length of every segment being written.
    pub lens: HashMap<PathBuf, u64>,
}

/// One forwarder's view of the changes: it sleeps until something changed since its last look.
pub struct Subscriber {
    changes: Arc<Changes>,
    rx: watch::Receiver<u64>,
    layout_seen: Option<u64>,
    /// `changed` resolved and `take` has not been called since.
    woken: bool,
}

impl Subscriber {
    /// Resolves when something changed since the last [`take`](Self::take)
    /// (at once before the first). Cancel safe. Never resolves once the
    /// [`Changes`] is gone.
    pub async fn changed(&mut self) {
        if self.woken {
            return;
        }
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await
        }
        self.woken = true;
    }

    /// Whether [`changed`](Self::changed) would resolve at once.
    pub fn has_changed(&self) -> bool {
        self.woken || self.rx.has_changed().unwrap_or(false)
    }

    /// What changed, and mark it seen.
    pub fn take(&mut self) -> Update {
        self.woken = false;
        self.rx.borrow_and_update();
        let s = self.changes.state.lock().expect("not poisoned");
        let relist = self.layout_seen != Some(s.layout);
        self.layout_seen = Some(s.layout);
        Update { relist, lens: s.lens.clone() }
    }

    /// Ask for a listing at the next look (a session starts over).
    pub fn force_relist(&mut self) {
        self.layout_seen = None;
        self.rx.mark_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_coalesce_but_nothing_is_lost() {
        let c = Changes::new();
        let mut sub = c.subscribe();
        sub.changed().await;
        assert!(sub.take().relist, "the first look lists the archive");
        assert!(!sub.has_changed());
        c.grown(Path::new("a"), 10);
        c.grown(Path::new("a"), 20);
        c.grown(Path::new("b"), 5);
        sub.changed().await;
        let u = sub.take();
        assert!(!u.relist);
        assert_eq!(u.lens[Path::new("a")], 20);
        assert_eq!(u.lens[Path::new("b")], 5);
        c.layout_changed(Some(Path::new("a")));
        c.grown(Path::new("b"), 7);
        assert!(sub.has_changed());
        let u = sub.take();
        assert!(u.relist, "a seal between two looks is seen at the second");
        assert!(!u.lens.contains_key(Path::new("a")));
        assert_eq!(u.lens[Path::new("b")], 7);
        assert!(!sub.has_changed());
    }
}
