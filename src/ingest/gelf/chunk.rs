//! GELF UDP chunking: header parsing and a pure reassembler (no sockets, the
//! clock is a parameter), so every timing and memory rule is testable.
//!
//! A chunk is `0x1e 0x0f`, an 8-byte message id, a sequence number, a
//! sequence count (1..=128), then a slice of the (possibly compressed)
//! message. Chunks may arrive in any order, more than once, or never: a
//! message not complete [`Limits::timeout_ms`] after its first chunk is lost,
//! like Graylog does after its default 5 s. Memory is bounded by caps on
//! partial messages and on their buffered bytes, overall and per source
//! address, so that one flooding sender pushes out its own partial messages
//! before anyone else's; the oldest goes first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;

/// The two bytes a chunk starts with; a datagram without them is a whole message.
pub const MAGIC: [u8; 2] = [0x1e, 0x0f];
/// Magic, message id, sequence number and count.
pub const HEADER_LEN: usize = 12;
/// The GELF spec's limit; more is a broken or hostile sender.
pub const MAX_CHUNKS: u8 = 128;

/// One datagram, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A whole message (possibly compressed), not chunked.
    Whole(&'a [u8]),
    /// One chunk of a message, to reassemble.
    Chunk(Chunk<'a>),
}

/// One chunk's header and its slice of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The message id (8 bytes, big-endian here): chunks with the same id and source make one message.
    pub id: u64,
    /// This chunk's place in the message, below `count`.
    pub seq: u8,
    /// Chunks in the message, 1 to [`MAX_CHUNKS`].
    pub count: u8,
    /// This chunk's slice of the (possibly compressed) message.
    pub payload: &'a [u8],
}

/// Why a chunk was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The magic but not a whole header.
    Short {
        /// The datagram's length.
        len: usize,
    },
    /// A sequence count of 0 or above [`MAX_CHUNKS`].
    BadCount {
        /// The count announced.
        count: u8,
    },
    /// A sequence number not below the count.
    BadSeq {
        /// The sequence number.
        seq: u8,
        /// The count announced.
        count: u8,
    },
    /// Another chunk of the same message announced a different count.
    CountMismatch {
        /// The message id.
        id: u64,
        /// The count this chunk announced.
        count: u8,
        /// The count the message's first chunk announced.
        expected: u8,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Short { len } => write!(f, "chunk of {len} bytes is shorter than the {HEADER_LEN}-byte header"),
            ChunkError::BadCount { count } => write!(f, "sequence count {count} is not within 1..={MAX_CHUNKS}"),
            ChunkError::BadSeq { seq, count } => write!(f, "sequence number {seq} is not below the count {count}"),
            ChunkError::CountMismatch { id, count, expected } => {
                write!(f, "message {id:016x}: sequence count {count}, but earlier chunks said {expected}")
            }
        }
    }
}

/// Classify a datagram: a chunk if it starts with the magic, else a whole message.
pub fn parse(d: &[u8]) -> Result<Datagram<'_>, ChunkError> {
    if !d.starts_with(&MAGIC) {
        return Ok(Datagram::Whole(d));
    }
    let Some((h, payload)) = d.split_first_chunk::<HEADER_LEN>() else {
        return Err(ChunkError::Short { len: d.len() });
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[2..10]);
    let (seq, count) = (h[10], h[11]);
    if count == 0 || count > MAX_CHUNKS {
        return Err(ChunkError::BadCount { count });
    }
    if seq >= count {
        return Err(ChunkError::BadSeq { seq, count });
    }
    Ok(Datagram::Chunk(Chunk { id: u64::from_be_bytes(id), seq, count, payload }))
}

/// Bounds of a [`Reassembler`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A message not complete this long after its first chunk is lost (default 5000, Graylog's 5 s).
    pub timeout_ms: u64,
    /// Partial messages held at once, overall (default 1024).
    pub max_partials: usize,
    /// Payload bytes buffered in partial messages, overall (default 32 MiB).
    pub max_bytes: usize,
    /// Finished message ids remembered so that late duplicates are ignored
    /// rather than starting a partial that would later count as lost.
    pub max_finished: usize,
    /// Per source address: a sender over these evicts its own oldest.
    pub max_partials_per_source: usize,
    /// Payload bytes buffered per source address (default 8 MiB).
    pub max_bytes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout_ms: 5_000,
            max_partials: 1024,
            max_bytes: 32 << 20,
            max_finished: 8192,
            max_partials_per_source: 128,
            max_bytes_per_source: 8 << 20,
        }
    }
}

/// What one chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Buffered; the message is not complete yet.
    Pending,
    /// The last missing chunk: the whole message, in sequence order.
    Complete(Vec<u8>),
    /// Already had this chunk, or the message is already finished: ignored.
    Duplicate,
    /// The chunk's header is wrong, or it contradicts the message's earlier chunks: dropped.
    Invalid(ChunkError),
}

/// Why a partial message was given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostWhy {
    /// Not complete within the timeout.
    Timeout,
    /// Pushed out by newer messages when a memory bound was reached.
    Evicted,
}

/// A partial message given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The sender's address.
    pub source: IpAddr,
    /// The message id.
    pub id: u64,
    /// Chunks received of it.
    pub received: u8,
    /// Chunks it needed.
    pub count: u8,
    /// Timed out or evicted.
    pub why: LostWhy,
}

type Key = (IpAddr, u64);

struct Partial {
    chunks: Vec<Option<Box<[u8]>>>,
    received: u8,
    bytes: usize,
    first_ms: u64,
    serial: u64,
}

/// Partial messages keyed by (source address, message id): two senders with
/// the same id never mix, and one sender may use several sockets.
pub struct Reassembler {
    limits: Limits,
    partials: HashMap<Key, Partial>,
    /// Serial (arrival order of first chunks) → key: the oldest is first.
    order: BTreeMap<u64, Key>,
    next_serial: u64,
    bytes: usize,
    /// Partial messages and buffered bytes per source address.
    per_source: HashMap<IpAddr, (usize, usize)>,
    finished: HashMap<Key, u64>,
    finished_order: VecDeque<(Key, u64)>,
    lost: Vec<Lost>,
}

impl Reassembler {
    /// An empty reassembler bounded by `limits`.
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler {
            limits,
            partials: HashMap::new(),
            order: BTreeMap::new(),
            next_serial: 0,
            bytes: 0,
            per_source: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            lost: Vec::new(),
        }
    }

    /// Partial messages held now.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }

    /// Payload bytes buffered in partial messages.
    pub fn buffered(&self) -> usize {
        self.bytes
    }

    /// Messages given up on since the last call.
    pub fn drain_lost(&mut self) -> std::vec::Drain<'_, Lost> {
        self.lost.drain(..)
    }

    /// Add one chunk from `source`, received at `now_ms` (a monotonic clock).
    pub fn insert(&mut self, source: IpAddr, c: &Chunk<'_>, now_ms: u64) -> Outcome {
        let key = (source, c.id);
        if self.finished.contains_key(&key) {
            return Outcome::Duplicate;
        }
        if c.count == 1 {
            self.finish(key, now_ms);
            return Outcome::Complete(c.payload.to_vec());
        }
        if !self.partials.contains_key(&key) {
            while self.per_source.get(&source).is_some_and(|s| s.0 >= self.limits.max_partials_per_source.max(1)) {
                self.evict_oldest_of(source, now_ms);
            }
            while self.partials.len() >= self.limits.max_partials.max(1) {
                self.evict_oldest(now_ms);
            }
            self.per_source.entry(source).or_default().0 += 1;
            let serial = self.next_serial;
            self.next_serial += 1;
            self.order.insert(serial, key);
            let p =
                Partial { chunks: vec![None; usize::from(c.count)], received: 0, bytes: 0, first_ms: now_ms, serial };
            self.partials.insert(key, p);
        }
        let Some(p) = self.partials.get_mut(&key) else { return Outcome::Pending };
        if p.chunks.len() != usize::from(c.count) {
            let expected = u8::try_from(p.chunks.len()).unwrap_or(u8::MAX);
            return Outcome::Invalid(ChunkError::CountMismatch { id: c.id, count: c.count, expected });
        }
        let Some(slot) = p.chunks.get_mut(usize::from(c.seq)) else {
            return Outcome::Invalid(ChunkError::BadSeq { seq: c.seq, count: c.count });
        };
        if slot.is_some() {
            return Outcome::Duplicate;
        }
        *slot = Some(c.payload.into());
        p.received += 1;
        p.bytes += c.payload.len();
        self.bytes += c.payload.len();
        self.per_source.entry(source).or_default().1 += c.payload.len();
        if usize::from(p.received) == p.chunks.len() {
            let Some(p) = self.remove(&key) else { return Outcome::Pending };
            self.finish(key, now_ms);
            let mut msg = Vec::with_capacity(p.bytes);
            for part in p.chunks.iter().flatten() {
                msg.extend_from_slice(part);
            }
            return Outcome::Complete(msg);
        }
        while self.per_source.get(&source).is_some_and(|s| s.1 > self.limits.max_bytes_per_source) {
            self.evict_oldest_of(source, now_ms);
        }
        while self.bytes > self.limits.max_bytes && !self.order.is_empty() {
            self.evict_oldest(now_ms);
        }
        Outcome::Pending
    }

    /// Give up on messages older than the timeout, and forget finished ids
    /// once no more of their chunks can be expected.
    pub fn expire(&mut self, now_ms: u64) {
        let timeout = self.limits.timeout_ms;
        while let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            let old = self.partials.get(&key).is_none_or(|p| now_ms.saturating_sub(p.first_ms) >= timeout);
            if !old {
                break;
            }
            self.give_up(key, LostWhy::Timeout, now_ms);
        }
        while let Some(&(key, at)) = self.finished_order.front() {
            if now_ms.saturating_sub(at) < timeout {
                break;
            }
            self.finished_order.pop_front();
            self.finished.remove(&key);
        }
    }

    fn evict_oldest(&mut self, now_ms: u64) {
        if let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            self.give_up(key, LostWhy::Evicted, now_ms);
        } else {
            // Unreachable while `order` mirrors `partials`; never loop on it.
            self.partials.clear();
            self.per_source.clear();
        }
    }

    /// Evict `source`'s oldest partial message (a scan, only when it is over its caps).
    fn evict_oldest_of(&mut self, source: IpAddr, now_ms: u64) {
        match self.order.values().find(|k| k.0 == source) {
            Some(&key) => self.give_up(key, LostWhy::Evicted, now_ms),
            // Unreachable while the counts mirror `partials`; never loop on it.
            None => {
                self.per_source.remove(&source);
            }
        }
    }

    fn give_up(&mut self, key: Key, why: LostWhy, now_ms: u64) {
        match self.remove(&key) {
            Some(p) => {
                let count = u8::try_from(p.chunks.len()).unwrap_or(u8::MAX);
                self.lost.push(Lost { source: key.0, id: key.1, received: p.received, count, why });
                self.finish(key, now_ms);
            }
            None => {
                self.order.retain(|_, k| *k != key);
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.order.remove(&p.serial);
        self.bytes = self.bytes.saturating_sub(p.bytes);
        if let Some(s) = self.per_source.get_mut(&key.0) {
            s.0 = s.0.saturating_sub(1);
            s.1 = s.1.saturating_sub(p.bytes);
            if s.0 == 0 {
                self.per_source.remove(&key.0);
            }
        }
        Some(p)
    }

    fn finish(&mut self, key: Key, now_ms: u64) {
        while self.finished_order.len() >= self.limits.max_finished.max(1) {
            if let Some((k, _)) = self.finished_order.pop_front() {
                self.finished.remove(&k);
            }
        }
        self.finished.insert(key, now_ms);
        self.finished_order.push_back((key, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn chunk(id: u64, seq: u8, count: u8, payload: &[u8]) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&[seq, count]);
        d.extend_from_slice(payload);
        d
    }

    fn split(msg: &[u8], size: usize) -> Vec<Vec<u8>> {
        msg.chunks(size.max(1)).map(<[u8]>::to_vec).collect()
    }

    fn feed(r: &mut Reassembler, id: u64, parts: &[Vec<u8>], order: &[usize], now: u64) -> Vec<Outcome> {
        let count = parts.len() as u8;
        order
            .iter()
            .map(|&i| {
                let d = chunk(id, i as u8, count, &parts[i]);
                match parse(&d) {
                    Ok(Datagram::Chunk(c)) => r.insert(SRC, &c, now),
                    other => panic!("not a chunk: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(parse(b"{\"a\":1}"), Ok(Datagram::Whole(b"{\"a\":1}")));
        assert_eq!(parse(&[0x1e, 0x0f, 1, 2]), Err(ChunkError::Short { len: 4 }));
        assert_eq!(parse(&chunk(1, 0, 0, b"x")), Err(ChunkError::BadCount { count: 0 }));
        assert_eq!(parse(&chunk(1, 0, 129, b"x")), Err(ChunkError::BadCount { count: 129 }));
        assert_eq!(parse(&chunk(1, 3, 3, b"x")), Err(ChunkError::BadSeq { seq: 3, count: 3 }));
        let d = chunk(0x0102030405060708, 127, 128, b"");
        assert_eq!(
            parse(&d),
            Ok(Datagram::Chunk(Chunk { id: 0x0102030405060708, seq: 127, count: 128, payload: b"" }))
        );
    }

    #[test]
    fn out_of_order_with_duplicates_completes_once() {
        let mut r = Reassembler::new(Limits::default());
        let parts = split(b"hello, chunked world", 3);
        let out = feed(&mut r, 7, &parts, &[6, 0, 0, 3, 2, 1, 5, 4, 4, 6], 0);
        let complete: Vec<_> = out.iter().filter(|o| matches!(o, Outcome::Complete(_))).collect();
        assert_eq!(complete, vec![&Outcome::Complete(b"hello, chunked world".to_vec())]);
        assert_eq!(out.iter().filter(|o| **o == Outcome::Duplicate).count(), 3);
        assert_eq!((r.partials(), r.buffered()), (0, 0));
    }

    #[test]
    fn a_missing_chunk_expires_after_the_timeout_and_is_reported_once() {
        let mut r = Reassembler::new(Limits::default());
        let parts = split(b"0123456789", 2);
        assert!(feed(&mut r, 9, &parts, &[0, 1, 3, 4], 1_000).iter().all(|o| *o == Outcome::Pending));
        r.expire(5_999);
        assert_eq!(r.drain_lost().count(), 0, "not before 5 s");
        r.expire(6_000);
        let lost: Vec<Lost> = r.drain_lost().collect();
        assert_eq!(lost, vec![Lost { source: SRC, id: 9, received: 4, count: 5, why: LostWhy::Timeout }]);
        assert_eq!((r.partials(), r.buffered()), (0, 0));
        // A late chunk of the lost message neither completes it nor starts a new partial.
        assert_eq!(feed(&mut r, 9, &parts, &[2], 6_100), vec![Outcome::Duplicate]);
        r.expire(20_000);
        assert_eq!(r.drain_lost().count(), 0);
    }

    #[test]
    fn count_mismatch_is_refused() {
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.insert(SRC, &Chunk { id: 1, seq: 0, count: 3, payload: b"a" }, 0), Outcome::Pending);
        assert_eq!(
            r.insert(SRC, &Chunk { id: 1, seq: 1, count: 2, payload: b"b" }, 0),
            Outcome::Invalid(ChunkError::CountMismatch { id: 1, count: 2, expected: 3 })
        );
    }

    #[test]
    fn the_same_id_from_two_sources_does_not_mix() {
        let mut r = Reassembler::new(Limits::default());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(r.insert(SRC, &Chunk { id: 1, seq: 0, count: 2, payload: b"a" }, 0), Outcome::Pending);
        assert_eq!(r.insert(other, &Chunk { id: 1, seq: 1, count: 2, payload: b"Z" }, 0), Outcome::Pending);
        assert_eq!(
            r.insert(SRC, &Chunk { id: 1, seq: 1, count: 2, payload: b"b" }, 0),
            Outcome::Complete(b"ab".to_vec())
        );
    }

    #[test]
    fn memory_bounds_evict_the_oldest() {
        let mut r = Reassembler::new(Limits { max_partials: 2, max_bytes: 10, ..Limits::default() });
        for id in 0..3u64 {
            r.insert(SRC, &Chunk { id, seq: 0, count: 2, payload: b"xx" }, id);
        }
        let lost: Vec<u64> = r.drain_lost().map(|l| l.id).collect();
        assert_eq!(lost, vec![0], "the partial cap pushed out the oldest");
        r.insert(SRC, &Chunk { id: 9, seq: 0, count: 2, payload: b"0123456789a" }, 5);
        let lost: Vec<(u64, LostWhy)> = r.drain_lost().map(|l| (l.id, l.why)).collect();
        assert_eq!(lost, vec![(1, LostWhy::Evicted), (2, LostWhy::Evicted), (9, LostWhy::Evicted)]);
        assert_eq!((r.partials(), r.buffered()), (0, 0));
    }

    #[test]
    fn a_flooding_source_evicts_only_its_own_partials() {
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let limits = Limits { max_partials_per_source: 3, max_bytes_per_source: 100, ..Limits::default() };
        let mut r = Reassembler::new(limits);
        r.insert(other, &Chunk { id: 1, seq: 0, count: 2, payload: b"other's" }, 0);
        for id in 10..20u64 {
            r.insert(SRC, &Chunk { id, seq: 0, count: 2, payload: b"flood" }, id);
        }
        let lost: Vec<(IpAddr, u64)> = r.drain_lost().map(|l| (l.source, l.id)).collect();
        assert_eq!(lost, (10..17).map(|id| (SRC, id)).collect::<Vec<_>>(), "the flooder's oldest, never the other's");
        assert_eq!(
            r.insert(other, &Chunk { id: 1, seq: 1, count: 2, payload: b" message" }, 30),
            Outcome::Complete(b"other's message".to_vec())
        );
        // The byte cap per source too: one big partial pushes out the flooder's others.
        r.insert(SRC, &Chunk { id: 50, seq: 0, count: 2, payload: &[b'x'; 99] }, 40);
        let lost: Vec<u64> = r.drain_lost().map(|l| l.id).collect();
        assert_eq!(lost, vec![17, 18, 19]);
        assert_eq!((r.partials(), r.buffered()), (1, 99));
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(ds in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..60),
                                           magic in proptest::collection::vec(any::<bool>(), 60), step in 0u64..3000) {
            let mut r = Reassembler::new(Limits { max_partials: 4, max_bytes: 64, max_finished: 8, ..Limits::default() });
            for (i, mut d) in ds.into_iter().enumerate() {
                if magic[i] {
                    let mut m = MAGIC.to_vec();
                    m.append(&mut d);
                    d = m;
                }
                let now = i as u64 * step;
                if let Ok(Datagram::Chunk(c)) = parse(&d) {
                    r.insert(SRC, &c, now);
                }
                r.expire(now);
                r.drain_lost().for_each(drop);
                prop_assert!(r.partials() <= 4 && r.buffered() <= 64);
            }
        }

        #[test]
        fn shuffled_chunks_with_duplicates_reassemble_exactly(
            msg in proptest::collection::vec(any::<u8>(), 1..6000),
            size in 50usize..1500,
            seed in any::<u64>(),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let parts = split(&msg, size);
            prop_assume!(parts.len() <= 128);
            let mut order: Vec<usize> = (0..parts.len()).collect();
            order.extend(dups.iter().map(|d| d.index(parts.len())));
            // Deterministic Fisher-Yates from the seed.
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembler::new(Limits::default());
            let out = feed(&mut r, seed, &parts, &order, 0);
            let complete: Vec<&Outcome> = out.iter().filter(|o| matches!(o, Outcome::Complete(_))).collect();
            let want = Outcome::Complete(msg.clone());
            prop_assert_eq!(complete, vec![&want]);
            prop_assert_eq!(out.iter().filter(|o| **o == Outcome::Duplicate).count(), dups.len());
            r.expire(60_000);
            prop_assert_eq!(r.drain_lost().count(), 0);
            prop_assert_eq!((r.partials(), r.buffered()), (0, 0));
        }

        #[test]
        fn a_message_missing_any_chunk_is_lost_after_the_timeout(
            n in 2usize..=128, missing in any::<prop::sample::Index>(), start in 0u64..1_000_000,
        ) {
            let parts: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 10]).collect();
            let gone = missing.index(n);
            let order: Vec<usize> = (0..n).filter(|i| *i != gone).collect();
            let mut r = Reassembler::new(Limits::default());
            prop_assert!(feed(&mut r, 42, &parts, &order, start).iter().all(|o| *o == Outcome::Pending));
            r.expire(start + 4_999);
            prop_assert_eq!(r.drain_lost().count(), 0);
            r.expire(start + 5_000);
            let lost: Vec<Lost> = r.drain_lost().collect();
            prop_assert_eq!(lost, vec![Lost { source: SRC, id: 42, received: (n - 1) as u8, count: n as u8, why: LostWhy::Timeout }]);
        }
    }
}
