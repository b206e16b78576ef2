//! The segments a follower of the archive is delivering (an uplink session,
//! a sink), as the store's listings and growth notifications tell them: the
//! one copy of how a listing is merged into what is being sent and how
//! growth is applied. Pure: no I/O, no clock; its user lists (with
//! [`crate::store::recover::list_repaired`]) and acts on what it returns.
//!
//! Each follower keeps its own per-segment state `S` (offsets sent and
//! acknowledged, flights, ids) and reaches the shared part through
//! [`Followed`]: the segment as listed and where reading stalled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use crate::store::segment::{OnDisk, SegmentName};

/// What the core needs of a follower's per-segment state.
pub trait Followed {
    /// The segment as listed (length grows with the file).
    fn local(&mut self) -> &mut OnDisk;
    /// File length at which nothing whole was left to read: wait for growth.
    fn stalled_at(&mut self) -> &mut Option<u64>;
}

/// What a listing changed.
#[derive(Debug)]
pub struct Merged<S> {
    /// Gone from the listing (delivered elsewhere, or deleted under the
    /// follower): their state, for the follower to account for.
    pub removed: Vec<(PathBuf, S)>,
    /// New to the follower, in listing order.
    pub added: Vec<PathBuf>,
    /// Known before, sealed since.
    pub sealed: Vec<PathBuf>,
}

/// The segments being followed, by path under `archive/` (sequence order
/// within an origin); derefs to the map for the follower's own walks.
#[derive(Debug)]
pub struct Following<S> {
    segs: BTreeMap<PathBuf, S>,
    /// Segments growing that the last listing did not select (other sites
    /// or streams, already delivered): their growth is no reason to list.
    unlisted: HashSet<PathBuf>,
}

impl<S> Default for Following<S> {
    fn default() -> Self {
        Following { segs: BTreeMap::new(), unlisted: HashSet::new() }
    }
}

impl<S> Deref for Following<S> {
    type Target = BTreeMap<PathBuf, S>;
    fn deref(&self) -> &Self::Target {
        &self.segs
    }
}

impl<S> DerefMut for Following<S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.segs
    }
}

impl<S: Followed> Following<S> {
    /// Take a listing (`found`: the undelivered segments the follower
    /// selects, oldest first) and the lengths of the segments being written
    /// now (`lens`). A segment's length never shrinks (a listing may race a
    /// commit); its stall ends when its length changed. New ones get their
    /// state from `new`. Growth since the listing is applied by [`grown`]
    /// after (the follower acts on what grew).
    ///
    /// [`grown`]: Following::grown
    pub fn merge(
        &mut self,
        found: Vec<OnDisk>,
        lens: &HashMap<PathBuf, u64>,
        mut new: impl FnMut(OnDisk) -> S,
    ) -> Merged<S> {
        let present: HashSet<&PathBuf> = found.iter().map(|l| &l.rel).collect();
        let gone: Vec<PathBuf> = self.segs.keys().filter(|r| !present.contains(r)).cloned().collect();
        let removed = gone.into_iter().filter_map(|r| self.segs.remove(&r).map(|s| (r, s))).collect();
        let (mut added, mut sealed) = (Vec::new(), Vec::new());
        for l in found {
            match self.segs.get_mut(&l.rel) {
                Some(s) => {
                    if s.stalled_at().is_some_and(|at| at != l.len) {
                        *s.stalled_at() = None;
                    }
                    let local = s.local();
                    if local.seal.is_none() && l.seal.is_some() {
                        sealed.push(l.rel.clone());
                    }
                    let len = local.len.max(l.len);
                    *local = l;
                    local.len = len;
                }
                None => {
                    added.push(l.rel.clone());
                    self.segs.insert(l.rel.clone(), new(l));
                }
            }
        }
        self.unlisted = lens.keys().filter(|r| !self.segs.contains_key(*r)).cloned().collect();
        Merged { removed, added, sealed }
    }

    /// Segments being written grew. Returns the ones followed that grew,
    /// and whether one of them is unknown (created since the last listing,
    /// or never listed): list again.
    pub fn grown(&mut self, lens: &HashMap<PathBuf, u64>) -> (Vec<PathBuf>, bool) {
        let (mut grew, mut unknown) = (Vec::new(), false);
        for (rel, &len) in lens {
            match self.segs.get_mut(rel) {
                Some(s) => {
                    let l = s.local();
                    if len > l.len && l.seal.is_none() {
                        l.len = len;
                        *s.stalled_at() = None;
                        grew.push(rel.clone());
                    }
                }
                None => unknown |= !self.unlisted.contains(rel),
            }
        }
        (grew, unknown)
    }
}

/// The newest unsealed segment of each (site, stream) in a listing: the
/// live ones, which a follower serves by its live share.
pub fn newest_open(found: &[OnDisk]) -> HashSet<PathBuf> {
    let mut newest: HashMap<(&str, &str), &PathBuf> = HashMap::new();
    for l in found {
        if l.seal.is_none() {
            newest.insert((&l.name.site, &l.name.stream), &l.rel);
        }
    }
    newest.into_values().cloned().collect()
}

/// Whether a segment path is of the `sites` and `streams` a follower
/// carries (empty: all).
pub fn selects(sites: &[String], streams: &[String], rel: &Path) -> bool {
    SegmentName::parse_rel(rel).is_some_and(|n| {
        (sites.is_empty() || sites.contains(&n.site)) && (streams.is_empty() || streams.contains(&n.stream))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::SealRecord;

    #[derive(Debug)]
    struct S {
        local: OnDisk,
        stalled_at: Option<u64>,
    }

    impl Followed for S {
        fn local(&mut self) -> &mut OnDisk {
            &mut self.local
        }
        fn stalled_at(&mut self) -> &mut Option<u64> {
            &mut self.stalled_at
        }
    }

    fn seg(seq: u64, len: u64, sealed: bool) -> OnDisk {
        let rel = PathBuf::from(format!("a/live/2026-12-04/live-2026-12-04T10-n1-{seq:08}.log.zst"));
        OnDisk {
            name: SegmentName::parse_rel(&rel).unwrap(),
            rel,
            len,
            seal: sealed.then(|| SealRecord { len, ..SealRecord::default() }),
            damaged_seal: None,
        }
    }

    fn new(l: OnDisk) -> S {
        S { local: l, stalled_at: None }
    }

    #[test]
    fn a_listing_adds_removes_seals_and_never_shrinks() {
        let mut f: Following<S> = Following::default();
        let m = f.merge(vec![seg(0, 100, true), seg(1, 50, false)], &HashMap::new(), new);
        assert_eq!((m.added.len(), m.removed.len(), m.sealed.len()), (2, 0, 0));
        // Growth told more than the next listing saw: the length stays.
        let one = seg(1, 0, false).rel;
        let (grew, unknown) = f.grown(&HashMap::from([(one.clone(), 80)]));
        assert_eq!((grew, unknown), (vec![one.clone()], false));
        *f.get_mut(&one).unwrap().stalled_at() = Some(80);
        let m = f.merge(vec![seg(1, 70, false)], &HashMap::new(), new);
        assert_eq!(m.removed.len(), 1, "segment 0 delivered elsewhere");
        assert_eq!(f[&one].local.len, 80);
        assert_eq!(f[&one].stalled_at, None, "listed at another length: read again");
        let m = f.merge(vec![seg(1, 90, true)], &HashMap::new(), new);
        assert_eq!(m.sealed, vec![one.clone()]);
        assert_eq!((f[&one].local.len, f[&one].stalled_at), (90, None));
    }

    #[test]
    fn growth_of_an_unlisted_segment_asks_for_a_listing_once() {
        let mut f: Following<S> = Following::default();
        let other = PathBuf::from("b/live/2026-12-04/live-2026-12-04T10-n1-00000000.log.zst");
        let fresh = PathBuf::from("a/live/2026-12-04/live-2026-12-04T10-n1-00000009.log.zst");
        // The listing did not select `other` although it was growing.
        f.merge(vec![seg(0, 10, false)], &HashMap::from([(other.clone(), 5)]), new);
        assert!(!f.grown(&HashMap::from([(other.clone(), 6)])).1, "not ours: no listing");
        assert!(f.grown(&HashMap::from([(fresh, 1)])).1, "new since the listing: list again");
    }

    #[test]
    fn the_newest_open_segment_of_each_stream_is_live() {
        let found = vec![seg(0, 1, true), seg(1, 1, false), seg(2, 1, false)];
        assert_eq!(newest_open(&found), HashSet::from([seg(2, 1, false).rel]));
        assert!(selects(&[], &["live".into()], &seg(0, 1, true).rel));
        assert!(!selects(&["b".into()], &[], &seg(0, 1, true).rel));
    }
}
