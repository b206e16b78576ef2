//! Per-source limits: token buckets in records/s and bytes/s keyed by the
//! source address, so one noisy or hostile source cannot take what others
//! need. Untrusted listeners get them by default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of one listener, per source address.
pub struct SourceLimits {
    records: Option<f64>,
    bytes: Option<f64>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    records: f64,
    bytes: f64,
    last: Instant,
}

/// Sources idle this long are forgotten (their bucket would be full anyway).
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl SourceLimits {
    /// `records`/`bytes` per second; `None` = unlimited. Bursts up to one second's worth.
    pub fn new(records: Option<f64>, bytes: Option<f64>) -> SourceLimits {
        SourceLimits { records, bytes, buckets: Mutex::new(HashMap::new()) }
    }

    pub fn is_unlimited(&self) -> bool {
        self.records.is_none() && self.bytes.is_none()
    }

    fn with_bucket<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut map = self.buckets.lock().expect("not poisoned");
        if map.len() > 100_000 {
            map.retain(|_, b| now.duration_since(b.last) < FORGET_AFTER);
        }
        let b = map.entry(ip).or_insert(Bucket {
            records: self.records.unwrap_or(0.0),
            bytes: self.bytes.unwrap_or(0.0),
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        if let Some(r) = self.records {
            b.records = (b.records + dt * r).min(r);
        }
        if let Some(r) = self.bytes {
            b.bytes = (b.bytes + dt * r).min(r);
        }
        f(b)
    }

    /// All or nothing (a batch with one answer, e.g. HTTP): take `records`
    /// and `bytes`, or say how long until they would fit.
    pub fn take_all(&self, ip: IpAddr, records: u64, bytes: u64, now: Instant) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
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
}
