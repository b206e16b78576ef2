//! The store's notion of "now", injectable so hour rotation and retention by
//! age are tested without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, and a monotonic count beside it so
/// jumps of the wall clock can be told from time passing.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Milliseconds on a clock that never jumps (only differences mean anything).
    fn monotonic_ms(&self) -> i64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_millis() as i64
    }
}

/// "Now" for deciding what is old: the wall clock, except that it never
/// runs ahead of the time that really passed. A clock that leaps a day
/// forward does not make a day of fresh data look expired; a clock set back
/// is followed (deleting less is safe).
#[derive(Debug, Default)]
pub struct AgeClock(std::sync::Mutex<Option<(i64, i64)>>);

impl AgeClock {
    /// Now, for ages; logs once per leap.
    pub fn now_ms(&self, clock: &dyn Clock) -> i64 {
        let (wall, mono) = (clock.now_ms(), clock.monotonic_ms());
        let mut last = self.0.lock().expect("not poisoned");
        let now = match *last {
            None => wall,
            Some((prev, prev_mono)) => {
                let bound = prev + (mono - prev_mono).max(0);
                if wall > bound + 60_000 {
                    tracing::warn!(
                        leap_ms = wall - bound,
                        "the wall clock leapt forward: ages for retention count only the time that really passed"
                    );
                }
                wall.min(bound)
            }
        };
        *last = Some((now, mono));
        now
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests): [`advance`](Self::advance)
/// is time passing, [`set`](Self::set) a jump of the wall clock alone.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>, Arc<AtomicI64>);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(ms)), Arc::new(AtomicI64::new(0)))
    }
    /// Set the wall clock (a jump: monotonic time does not move).
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst)
    }
    /// Let `ms` pass (wall and monotonic time both move).
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
        self.1.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn monotonic_ms(&self) -> i64 {
        self.1.load(Ordering::SeqCst)
    }
}

/// (year, month, day, hour) in UTC for a Unix time in ms.
pub fn utc_hour(ms: i64) -> (i32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, hour)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time in ms (for people: logs, reports).
pub fn rfc3339_secs(ms: i64) -> String {
    let (y, mo, d, h) = utc_hour(ms);
    let s = ms.div_euclid(1000).rem_euclid(3600);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{:02}:{:02}Z", s / 60, s % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(utc_hour(0), (1970, 1, 1, 0));
        // 2026-11-23T17:15:38Z
        assert_eq!(utc_hour(1_795_454_138_000), (2026, 11, 23, 17));
        // 2024-02-29T23:59:59Z
        assert_eq!(utc_hour(1_709_251_199_000), (2024, 2, 29, 23));
        assert_eq!(utc_hour(1_709_251_200_000), (2024, 3, 1, 0));
    }
}
