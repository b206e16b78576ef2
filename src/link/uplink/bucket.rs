//! Token bucket on bytes put on the wire. It is debited after the fact with
//! what the transport actually sent (TLS records, QUIC packets with their
//! overhead), so the cap holds for the bytes the network team measures.

use std::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    last_wire: u64,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u64, now: Instant, wire: u64) -> TokenBucket {
        TokenBucket { rate, burst: burst as f64, tokens: burst as f64, last: now, last_wire: wire }
    }

    /// Refill for the time passed and debit what went on the wire since the
    /// last call; the time to wait before sending more (zero if allowed now).
    pub fn wait_time(&mut self, now: Instant, wire: u64) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= wire.saturating_sub(self.last_wire) as f64;
        self.last_wire = wire;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_matches_the_cap() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000.0, 64 << 10, t0, 0);
        let (mut now, mut wire) = (t0, 0u64);
        // Send 16 KiB chunks as fast as allowed for 10 virtual seconds.
        while now < t0 + Duration::from_secs(10) {
            let w = b.wait_time(now, wire);
            if w.is_zero() {
                wire += 16 << 10;
            } else {
                now += w;
            }
        }
        let rate = wire as f64 / 10.0;
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.02, "{rate}");
    }
}
