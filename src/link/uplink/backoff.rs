//! When to dial again after a failed attempt or a lost session.
//!
//! A dial to a receiver that is down is cheap (a refused TCP connection, a
//! few QUIC Initial packets), while every second spent waiting after it came
//! back is a second of lag. So the wait doubles from `backoff_min` only up
//! to `backoff_max` (default 1 s): a link is back within about that long
//! after an outage of any length. Each wait is drawn between half and all of
//! the step (jitter), so a thousand edges that lost the same central do not
//! dial it in step. A receiver that *refuses* the link (a certificate it
//! does not accept, a protocol version) will not change its mind in a
//! second: refusals back off further, up to [`REFUSED_MAX`].

use std::time::Duration;

use rand::Rng;

/// Longest wait after the receiver refused the link.
pub const REFUSED_MAX: Duration = Duration::from_secs(30);

/// Waits between reconnects: doubling from `min` to `max`, jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, step: min }
    }

    /// The link worked: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The wait before the next attempt; the step doubles up to `max`.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let wait = jitter(self.step, rng);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// The wait after a refusal: doubles up to [`REFUSED_MAX`] (or `max`
    /// when that is longer).
    pub fn next_refused(&mut self, rng: &mut impl Rng) -> Duration {
        let wait = jitter(self.step, rng);
        self.step = (self.step * 2).min(self.max.max(REFUSED_MAX));
        wait
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    d.mul_f64(rng.random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn waits_never_exceed_the_ceiling_and_are_jittered() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..50).map(|_| b.next(&mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(waits[0] <= Duration::from_millis(100) && waits[0] >= Duration::from_millis(50));
        let late: std::collections::HashSet<_> = waits[10..].iter().collect();
        assert!(late.len() > 30, "jittered, not in step");
        b.reset();
        assert!(b.next(&mut rng) <= Duration::from_millis(100));
        for _ in 0..20 {
            b.next_refused(&mut rng);
        }
        assert!(b.next_refused(&mut rng) >= REFUSED_MAX / 2);
    }
}
