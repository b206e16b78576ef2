//! Per-source limits: token buckets in records/s and bytes/s keyed by the
//! source address, so one noisy or hostile source cannot take what others
//! need. Untrusted listeners get them by default.
//!
//! ## Bounded cost whatever the number of sources
//! A flood of datagrams from many addresses (trivial with UDP; with IPv6 one
//! host owns 2^64 of them) must cost neither time per record nor memory:
//! - IPv6 sources are keyed by their /64 (`source_ipv6_prefix`): one host,
//!   one bucket.
//! - Buckets live in [`SHARDS`] maps, each behind its own lock: a record
//!   costs one hash and one uncontended lock, whatever the count.
//! - Each shard keeps two generations: a source is looked up in the current
//!   one, then in the previous one (and moved back); every [`FORGET_AFTER`]
//!   the previous generation is dropped whole and the current one becomes
//!   previous. Nothing ever scans the map per record, and a source idle for
//!   a generation is forgotten (its bucket would be full again anyway: the
//!   burst is one second's worth).
//! - At most `max_sources` are tracked. Beyond that, a new source shares a
//!   bucket with its /24 (IPv4) or /48 (IPv6) neighbours, and once those
//!   aggregates are full too, one global bucket: every record is still
//!   charged to some bucket with the per-source rate (a flood from many
//!   addresses gets one source's share), and each record charged to a
//!   shared bucket is counted (`ferry_source_limit_shared_records_total`).
//!
//! Memory is therefore bounded by `max_sources` (about 100 bytes each).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

/// Independent maps, each with its own lock.
pub const SHARDS: usize = 64;
/// A generation's length: a source idle this long (up to twice) is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How sources are told apart and how many are tracked.
#[derive(Clone, Copy, Debug)]
pub struct Tracking {
    /// Sources tracked one by one at most (per listener).
    pub max_sources: usize,
    /// IPv6 sources are keyed by this prefix length (bits, 1 to 128).
    pub ipv6_prefix: u8,
}

impl Default for Tracking {
    fn default() -> Tracking {
        Tracking { max_sources: 100_000, ipv6_prefix: 64 }
    }
}

/// Which bucket a record was charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The source's own bucket.
    Source,
    /// Shared with the source's /24 (IPv4) or /48 (IPv6).
    Aggregate,
    /// The listener's one bucket, for sources beyond any table.
    Global,
}

/// Counters of records charged to shared buckets, and of tracked sources.
#[derive(Clone, Default)]
pub struct Meters {
    /// `ferry_source_limit_shared_records_total{bucket="aggregate"}`.
    pub aggregate: Option<IntCounter>,
    /// `ferry_source_limit_shared_records_total{bucket="global"}`.
    pub global: Option<IntCounter>,
    /// `ferry_source_limit_tracked_sources`.
    pub tracked: Option<IntGauge>,
}

/// Limits of one listener, per source address.
pub struct SourceLimits {
    records: Option<f64>,
    bytes: Option<f64>,
    tracking: Tracking,
    shards: Box<[Mutex<Shard>]>,
    /// Per shard: individual sources, and aggregates.
    source_cap: usize,
    aggregate_cap: usize,
    global: Mutex<Bucket>,
    hasher: Keyed,
    meters: Meters,
}

#[derive(Clone, Copy)]
struct Bucket {
    records: f64,
    bytes: f64,
    last: Instant,
}

/// A source or an aggregate: (kind, address bits).
type Key = (Kind, u128);

/// A multiply-xor hash keyed per process: the keys are 17 bytes, and
/// SipHash cost as much as the rest of a lookup. Collisions chosen by a
/// sender cannot cost more than a scan of one shard, whose size the cap
/// bounds, and the key is random, so they cannot be chosen blind.
#[derive(Clone, Copy)]
struct Keyed(u64);

impl BuildHasher for Keyed {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 32);
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x5851_f42d_4c95_7f2d).rotate_left(23);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    V4,
    V6,
    /// An IPv4 /24.
    Net4,
    /// An IPv6 /48.
    Net6,
}

/// Two generations of buckets.
struct Generations {
    cur: HashMap<Key, Bucket, Keyed>,
    old: HashMap<Key, Bucket, Keyed>,
}

impl Generations {
    fn new(k: Keyed) -> Generations {
        Generations { cur: HashMap::with_hasher(k), old: HashMap::with_hasher(k) }
    }

    fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }

    /// The bucket of `key`, created full if there is room; `None` if not.
    fn get(&mut self, key: Key, cap: usize, fresh: Bucket) -> Option<(&mut Bucket, bool)> {
        if !self.cur.contains_key(&key) {
            if let Some(b) = self.old.remove(&key) {
                self.cur.insert(key, b);
            } else if self.len() >= cap {
                return None;
            } else {
                return Some((self.cur.entry(key).or_insert(fresh), true));
            }
        }
        Some((self.cur.get_mut(&key).expect("present"), false))
    }
}

struct Shard {
    sources: Generations,
    aggregates: Generations,
    since: Instant,
}

impl SourceLimits {
    /// `records`/`bytes` per second; `None` = unlimited. Bursts up to one second's worth.
    pub fn new(records: Option<f64>, bytes: Option<f64>) -> SourceLimits {
        SourceLimits::with(records, bytes, Tracking::default(), Meters::default())
    }

    /// Like [`SourceLimits::new`], with how many sources to track one by one and the counters of shared buckets.
    pub fn with(records: Option<f64>, bytes: Option<f64>, tracking: Tracking, meters: Meters) -> SourceLimits {
        let now = Instant::now();
        let source_cap = (tracking.max_sources / SHARDS).max(1);
        let hasher = Keyed(rand::random::<u64>() | 1);
        SourceLimits {
            records,
            bytes,
            tracking,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        sources: Generations::new(hasher),
                        aggregates: Generations::new(hasher),
                        since: now,
                    })
                })
                .collect(),
            source_cap,
            // Aggregates stand for many sources each: a sixteenth as many.
            aggregate_cap: (source_cap / 16).max(1),
            global: Mutex::new(Bucket { records: records.unwrap_or(0.0), bytes: bytes.unwrap_or(0.0), last: now }),
            hasher,
            meters,
        }
    }

    /// Neither records nor bytes are limited: nothing to check per record.
    pub fn is_unlimited(&self) -> bool {
        self.records.is_none() && self.bytes.is_none()
    }

    /// The key of a source: IPv4 whole, IPv6 by its prefix.
    fn source_key(&self, ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => (Kind::V4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (Kind::V4, u128::from(u32::from(v4))),
                None => {
                    let bits = u32::from(self.tracking.ipv6_prefix.clamp(1, 128));
                    let mask = if bits == 128 { u128::MAX } else { !(u128::MAX >> bits) };
                    (Kind::V6, u128::from(v6) & mask)
                }
            },
        }
    }

    /// The key of the aggregate a source falls back to: its /24 or /48.
    fn aggregate_key(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => (Kind::Net4, u128::from(u32::from(v4) & 0xffff_ff00)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceLimits::aggregate_key(IpAddr::V4(v4)),
                None => (Kind::Net6, u128::from(v6) & !(u128::MAX >> 48)),
            },
        }
    }

    fn shard_of(&self, key: Key) -> &Mutex<Shard> {
        // The top bits: the maps inside use the low ones.
        &self.shards[(self.hasher.hash_one(key) >> 58) as usize % SHARDS]
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = b.last.max(now);
        if let Some(r) = self.records {
            b.records = (b.records + dt * r).min(r);
        }
        if let Some(r) = self.bytes {
            b.bytes = (b.bytes + dt * r).min(r);
        }
    }

    fn fresh(&self, now: Instant) -> Bucket {
        Bucket { records: self.records.unwrap_or(0.0), bytes: self.bytes.unwrap_or(0.0), last: now }
    }

    /// Run `f` on the bucket `ip` is charged to.
    fn with_bucket<T>(&self, ip: IpAddr, now: Instant, f: impl Fn(&mut Bucket) -> T) -> (T, Level) {
        let key = self.source_key(ip);
        if let Some(t) = self.in_shard(key, now, false, &f) {
            return (t, Level::Source);
        }
        let agg = SourceLimits::aggregate_key(ip);
        if let Some(t) = self.in_shard(agg, now, true, &f) {
            if let Some(c) = &self.meters.aggregate {
                c.inc();
            }
            return (t, Level::Aggregate);
        }
        if let Some(c) = &self.meters.global {
            c.inc();
        }
        let mut g = self.global.lock().expect("not poisoned");
        self.refill(&mut g, now);
        (f(&mut g), Level::Global)
    }

    fn in_shard<T>(&self, key: Key, now: Instant, aggregate: bool, f: &impl Fn(&mut Bucket) -> T) -> Option<T> {
        let mut shard = self.shard_of(key).lock().expect("not poisoned");
        let age = now.saturating_duration_since(shard.since);
        if age >= FORGET_AFTER {
            // A new generation: the previous one goes whole, at most once a
            // minute; both when the shard was idle longer than a generation.
            let mut dropped = shard.sources.old.len();
            let k = self.hasher;
            shard.sources.old = std::mem::replace(&mut shard.sources.cur, HashMap::with_hasher(k));
            shard.aggregates.old = std::mem::replace(&mut shard.aggregates.cur, HashMap::with_hasher(k));
            if age >= FORGET_AFTER * 2 {
                dropped += shard.sources.old.len();
                shard.sources.old.clear();
                shard.aggregates.old.clear();
            }
            shard.since = now;
            if let Some(g) = &self.meters.tracked {
                g.sub(dropped as i64);
            }
        }
        let fresh = self.fresh(now);
        let (gens, cap) =
            if aggregate { (&mut shard.aggregates, self.aggregate_cap) } else { (&mut shard.sources, self.source_cap) };
        let (b, created) = gens.get(key, cap, fresh)?;
        if created && !aggregate {
            if let Some(g) = &self.meters.tracked {
                g.inc();
            }
        }
        self.refill(b, now);
        Some(f(b))
    }

    /// All or nothing (a batch with one answer, e.g. HTTP): take `records`
    /// and `bytes`, or say how long until they would fit.
    pub fn take_all(&self, ip: IpAddr, records: u64, bytes: u64, now: Instant) -> Result<(), Duration> {
        self.take_all_at(ip, records, bytes, now).0
    }

    /// [`take_all`](Self::take_all), and which bucket paid.
    pub fn take_all_at(&self, ip: IpAddr, records: u64, bytes: u64, now: Instant) -> (Result<(), Duration>, Level) {
        if self.is_unlimited() {
            return (Ok(()), Level::Source);
        }
        self.with_bucket(ip, now, |b| {
            let mut wait: f64 = 0.0;
            if let Some(r) = self.records {
                wait = wait.max((records as f64 - b.records) / r);
            }
            if let Some(r) = self.bytes {
                wait = wait.max((bytes as f64 - b.bytes) / r);
            }
            if wait > 0.0 {
                return Err(Duration::from_secs_f64(wait));
            }
            if self.records.is_some() {
                b.records -= records as f64;
            }
            if self.bytes.is_some() {
                b.bytes -= bytes as f64;
            }
            Ok(())
        })
    }

    /// One record from a source that is acknowledged (RELP): `Ok` if it fits
    /// now, else how long to wait before it will. A record larger than one
    /// second's bytes is charged one second's worth, so it always fits at last.
    pub fn pace_one(&self, ip: IpAddr, bytes: usize, now: Instant) -> Result<(), Duration> {
        let bytes = match self.bytes {
            Some(r) => (bytes as f64).min(r) as u64,
            None => bytes as u64,
        };
        self.take_all(ip, 1, bytes, now)
    }

    /// One record of `bytes` from a stream source with no way to answer
    /// (syslog): true if it fits, false if it must be dropped (and counted).
    pub fn take_one(&self, ip: IpAddr, bytes: usize, now: Instant) -> bool {
        self.is_unlimited() || self.take_all(ip, 1, bytes as u64, now).is_ok()
    }

    /// Sources tracked one by one now (both generations).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("not poisoned").sources.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_exactly_its_rate() {
        let l = SourceLimits::new(Some(100.0), None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        // 10 seconds of 1000 records/s offered: 100/s + the initial second's burst pass.
        let mut passed = 0;
        for i in 0..10_000u64 {
            if l.take_one(ip, 10, t0 + Duration::from_micros(i * 1000)) {
                passed += 1;
            }
        }
        assert!((1090..=1101).contains(&passed), "{passed}");
        assert!(l.take_one(other, 10, t0 + Duration::from_secs(10)), "another source is unaffected");
        let e = l.take_all(ip, 500, 0, t0 + Duration::from_secs(10)).unwrap_err();
        assert!(e > Duration::from_secs(3), "{e:?}");
    }

    #[test]
    fn pacing_always_lets_a_record_through_eventually() {
        let l = SourceLimits::new(Some(10.0), Some(100.0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        // Larger than a second's bytes: charged a second's worth, so it fits once the bucket is full.
        assert_eq!(l.pace_one(ip, 5_000, t0), Ok(()));
        let wait = l.pace_one(ip, 5_000, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert_eq!(l.pace_one(ip, 5_000, t0 + wait + Duration::from_millis(1)), Ok(()));
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64_and_v4_mapped_ones_as_v4() {
        let l = SourceLimits::new(Some(5.0), None);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.source_key(a), l.source_key(b));
        assert_ne!(l.source_key(a), l.source_key(c));
        // One host walking its /64 gets one source's rate.
        let passed = (0..100u128)
            .filter(|i| {
                l.take_one(
                    IpAddr::V6(
                        (u128::from_be_bytes([0x20, 1, 0xd, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]) + i).into(),
                    ),
                    1,
                    t0,
                )
            })
            .count();
        assert_eq!(passed, 5);
        assert!(l.take_one(c, 1, t0), "the next /64 is another source");
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(l.source_key(v4), l.source_key(mapped));
        let whole = SourceLimits::with(
            Some(5.0),
            None,
            Tracking { ipv6_prefix: 128, ..Tracking::default() },
            Meters::default(),
        );
        assert_ne!(whole.source_key(a), whole.source_key(b));
    }

    #[test]
    fn beyond_max_sources_new_ones_share_their_24_then_one_global_bucket() {
        let meters = Meters {
            aggregate: Some(IntCounter::new("a", "a").unwrap()),
            global: Some(IntCounter::new("g", "g").unwrap()),
            tracked: Some(IntGauge::new("t", "t").unwrap()),
        };
        let l = SourceLimits::with(Some(1.0), None, Tracking { max_sources: 640, ipv6_prefix: 64 }, meters.clone());
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::V4((0x0a00_0000 + i).into());
        // 200,000 sources: memory stays at the cap, every record is charged somewhere.
        let mut levels = HashMap::new();
        for i in 0..200_000u32 {
            let (_, level) = l.take_all_at(ip(i), 1, 0, t0);
            *levels.entry(format!("{level:?}")).or_insert(0u64) += 1;
        }
        assert!(l.tracked() <= 640, "{}", l.tracked());
        assert_eq!(meters.tracked.as_ref().unwrap().get() as usize, l.tracked());
        let (src, agg, glob) = (levels["Source"], levels["Aggregate"], levels["Global"]);
        assert_eq!(src + agg + glob, 200_000);
        assert_eq!((agg, glob), (meters.aggregate.unwrap().get(), meters.global.unwrap().get()));
        assert!(src >= 500 && agg > 0 && glob > 0, "{levels:?}");
        // Two generations later the idle sources are forgotten: room again
        // for as many new ones.
        let t1 = t0 + FORGET_AFTER * 2 + Duration::from_secs(1);
        let own = (300_000..300_100u32).filter(|i| l.take_all_at(ip(*i), 1, 0, t1).1 == Level::Source).count();
        assert_eq!(own, 100);
    }
}
