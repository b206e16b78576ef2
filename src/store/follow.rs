//! The segments a follower of the archive is delivering (an uplink session,
//! a sink, a bucket), as the store's listings and growth notifications tell
//! them: the one copy of how a listing is merged into what is being sent,
//! how growth is applied, how the live share chooses between the live
//! segment and the backlog, and how lag is counted per stream. Pure but for
//! [`lag_by_stream`] (frame headers only); its user lists (with
//! [`crate::store::recover::list_repaired`]) and acts on what it returns.
//!
//! Each follower keeps its own per-segment state `S` (offsets sent and
//! acknowledged, flights, ids) and reaches the shared part through
//! [`Followed`]: the segment as listed and where reading stalled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use crate::store::frame::{FrameHeader, MAX_HEADER_LEN};
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

/// Bytes (or records) a follower sent from live segments and from its
/// backlog: the live share is kept over these.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shares {
    live: u64,
    backlog: u64,
}

impl Shares {
    /// Count `n` sent from a live segment (`live`) or from the backlog.
    pub fn sent(&mut self, n: u64, live: bool) {
        if live {
            self.live += n;
        } else {
            self.backlog += n;
        }
    }

    /// Of a live segment and the backlog's next, each ready to send (or
    /// not there): the live one while its part of what was sent is at most
    /// `share`, else the backlog; whichever is there alone. True: live.
    pub fn choose<T>(&self, live: Option<T>, backlog: Option<T>, share: f64) -> Option<(T, bool)> {
        match (live, backlog) {
            (Some(l), Some(b)) => {
                let total = (self.live + self.backlog).max(1) as f64;
                Some(if self.live as f64 / total <= share { (l, true) } else { (b, false) })
            }
            (Some(l), None) => Some((l, true)),
            (None, Some(b)) => Some((b, false)),
            (None, None) => None,
        }
    }
}

/// (site, stream)
pub type StreamKey = (String, String);

/// Where a follower stands in a segment it has not delivered to its end.
#[derive(Debug, Clone)]
pub struct Behind {
    /// The segment, relative to `archive/`.
    pub rel: PathBuf,
    /// Its site and stream.
    pub stream: StreamKey,
    /// Bytes acknowledged from the start, and the sequence number there.
    pub acked: u64,
    /// The sequence number at `acked`: the first record not acknowledged.
    pub acked_seq: u64,
    /// The segment's length as listed.
    pub len: u64,
    /// `first_seq`, `next_seq` of its seal: records behind without a read.
    pub seqs: Option<(u64, u64)>,
}

impl Behind {
    /// A segment listed on disk, acknowledged up to `acked`.
    pub fn new(local: &OnDisk, acked: u64, acked_seq: u64) -> Behind {
        Behind {
            rel: local.rel.clone(),
            stream: (local.name.site.clone(), local.name.stream.clone()),
            acked,
            acked_seq,
            len: local.len,
            seqs: local.seal.as_ref().map(|x| (x.first_seq, x.next_seq)),
        }
    }
}

/// What a follower has not delivered of one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Segment bytes not acknowledged.
    pub bytes: u64,
    /// Counted only when asked (an open segment's frames are read for it).
    pub records: u64,
    /// Receive time of the oldest record not acknowledged.
    pub oldest_ms: Option<i64>,
}

impl Lag {
    /// Seconds the oldest record not acknowledged has waited (0: none).
    pub fn seconds(&self, now_ms: i64) -> f64 {
        self.oldest_ms.map(|ms| (now_ms - ms).max(0) as f64 / 1000.0).unwrap_or(0.0)
    }
}

/// Lag per stream of the segments behind (every stream of `streams` is
/// there, 0 when caught up), reading frame headers under `archive`: the
/// first one after each acknowledged offset for the age, and with
/// `records`, those of open segments to count their records. Blocking I/O.
pub fn lag_by_stream(
    archive: &Path,
    behind: Vec<Behind>,
    streams: &HashSet<StreamKey>,
    records: bool,
) -> HashMap<StreamKey, Lag> {
    let mut out: HashMap<StreamKey, Lag> = streams.iter().map(|k| (k.clone(), Lag::default())).collect();
    for b in behind {
        let lag = out.entry(b.stream).or_default();
        if b.acked >= b.len {
            continue;
        }
        lag.bytes += b.len - b.acked;
        let count = records && b.seqs.is_none();
        let (n, first_ms) = headers_from(&archive.join(&b.rel), b.acked, b.len, count);
        lag.records += match (records, b.seqs) {
            (false, _) => 0,
            (true, Some((first, next))) => next.saturating_sub(b.acked_seq.max(first)),
            (true, None) => n,
        };
        if let Some(ms) = first_ms {
            lag.oldest_ms = Some(lag.oldest_ms.map_or(ms, |o| o.min(ms)));
        }
    }
    out
}

/// Records in the frames of `path` from `offset` to `len` (headers only:
/// the first one alone unless `count`), and the first record time there.
/// Stops at anything not a header.
pub fn headers_from(path: &Path, mut offset: u64, len: u64, count: bool) -> (u64, Option<i64>) {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else { return (0, None) };
    let mut head = vec![0u8; 8 + MAX_HEADER_LEN];
    let (mut records, mut first) = (0u64, None);
    while offset < len {
        let Ok(n) = f.read_at(&mut head, offset) else { break };
        let Ok(h) = FrameHeader::decode(&head[..n]) else { break };
        records += u64::from(h.records);
        first.get_or_insert(h.first_ms);
        if !count {
            break;
        }
        offset += h.frame_len();
    }
    (records, first)
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
    fn the_live_share_chooses_live_until_it_had_its_part() {
        let mut sh = Shares::default();
        assert_eq!(sh.choose(Some("l"), Some("b"), 0.25), Some(("l", true)), "nothing sent yet");
        sh.sent(100, true);
        assert_eq!(sh.choose(Some("l"), Some("b"), 0.25), Some(("b", false)));
        sh.sent(300, false);
        assert_eq!(sh.choose(Some("l"), Some("b"), 0.25), Some(("l", true)), "100 of 400 = the share");
        assert_eq!(sh.choose(None, Some("b"), 1.0), Some(("b", false)));
        assert_eq!(sh.choose(Some("l"), None, 0.0), Some(("l", true)));
        assert_eq!(sh.choose::<&str>(None, None, 0.5), None);
    }

    #[test]
    fn lag_counts_bytes_records_and_the_oldest_time_per_stream() {
        use crate::store::frame::{FrameEncoder, FrameMeta};
        let dir = tempfile::tempdir().unwrap();
        let open = seg(1, 0, false);
        let mut enc = FrameEncoder::new(1).unwrap();
        let (mut file, mut frame, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ms) in [1_000i64, 2_000, 3_000].into_iter().enumerate() {
            offsets.push(file.len() as u64);
            let meta = FrameMeta {
                stream: "live",
                records: i as u32 + 1,
                truncated: 0,
                first_seq: 0,
                first_ms: ms,
                last_ms: ms,
            };
            enc.encode(&meta, "r\n".repeat(i + 1).as_bytes(), &mut frame).unwrap();
            file.extend_from_slice(&frame);
        }
        std::fs::create_dir_all(dir.path().join(open.rel.parent().unwrap())).unwrap();
        std::fs::write(dir.path().join(&open.rel), &file).unwrap();
        let open = OnDisk { len: file.len() as u64, ..open };
        let mut sealed = seg(0, 500, true);
        if let Some(x) = sealed.seal.as_mut() {
            (x.first_seq, x.next_seq) = (10, 40);
        }
        let idle: StreamKey = ("b".into(), "live".into());
        let behind = vec![Behind::new(&open, offsets[1], 0), Behind::new(&sealed, 100, 25)];
        let streams = HashSet::from([idle.clone()]);
        let lag = lag_by_stream(dir.path(), behind.clone(), &streams, true);
        let a = lag[&("a".to_string(), "live".to_string())];
        // Open: frames 2 and 3 (2 + 3 records); sealed: 40 - 25 by its seal.
        assert_eq!(a.records, 5 + 15);
        assert_eq!(a.bytes, (file.len() as u64 - offsets[1]) + 400);
        assert_eq!(a.oldest_ms, Some(2_000), "the first record after the acknowledged offset");
        assert_eq!(lag[&idle], Lag::default(), "a stream caught up reports 0");
        let quick = lag_by_stream(dir.path(), behind, &HashSet::new(), false);
        assert_eq!(quick[&("a".to_string(), "live".to_string())].records, 0, "records only when asked");
        assert_eq!(Lag { oldest_ms: Some(1_000), ..Lag::default() }.seconds(3_500), 2.5);
    }

    #[test]
    fn the_newest_open_segment_of_each_stream_is_live() {
        let found = vec![seg(0, 1, true), seg(1, 1, false), seg(2, 1, false)];
        assert_eq!(newest_open(&found), HashSet::from([seg(2, 1, false).rel]));
        assert!(selects(&[], &["live".into()], &seg(0, 1, true).rel));
        assert!(!selects(&["b".into()], &[], &seg(0, 1, true).rel));
    }
}
