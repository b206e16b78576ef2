//! Token bucket on bytes put on the wire.
//!
//! Payload is debited as it is handed to the transport, slice by slice, so a
//! transport's own buffering (QUIC accepts megabytes into a stream at once)
//! cannot turn into a burst; what the transport adds on top (TLS records,
//! QUIC headers, acknowledgements, retransmissions) is debited as soon as
//! its wire counter shows it. The cap therefore holds for the bytes the
//! network team measures.

use std::time::{Duration, Instant};

/// The rate cap of an uplink (`max_rate`, `burst`).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    wire_start: u64,
    payload: u64,
    overhead: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes filling at `rate` bytes per second; `wire` is the wire counter now.
    pub fn new(rate: f64, burst: u64, now: Instant, wire: u64) -> TokenBucket {
        TokenBucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
            wire_start: wire,
            payload: 0,
            overhead: 0,
        }
    }

    /// Largest slice to hand to the transport at once.
    pub fn slice(&self) -> usize {
        ((self.burst / 4.0) as usize).clamp(4 << 10, 64 << 10)
    }

    /// Refill for the time passed, debit transport overhead seen on the wire
    /// since the last call, and return how long to wait before sending more.
    pub fn wait_time(&mut self, now: Instant, wire: u64) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let over = wire.saturating_sub(self.wire_start).saturating_sub(self.payload);
        if over > self.overhead {
            self.tokens -= (over - self.overhead) as f64;
            self.overhead = over;
        }
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// New settings from a reload. What was sent stays paid for: the
    /// tokens (or the debt) carry over, capped by the new burst, so a lower
    /// cap is not preceded by a fresh burst and a higher one starts where
    /// the old one stood.
    pub fn retune(&mut self, rate: f64, burst: u64, now: Instant, wire: u64) {
        let _ = self.wait_time(now, wire);
        self.rate = rate;
        self.burst = burst as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    /// `n` payload bytes are being handed to the transport now.
    pub fn debit(&mut self, n: usize) {
        self.tokens -= n as f64;
        self.payload += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send as fast as allowed for 10 virtual seconds with a transport that
    /// adds `overhead` per payload byte; the wire rate must match the cap.
    fn run(overhead: f64) -> f64 {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000.0, 64 << 10, t0, 0);
        let (mut now, mut wire) = (t0, 0f64);
        while now < t0 + Duration::from_secs(10) {
            let w = b.wait_time(now, wire as u64);
            if w.is_zero() {
                let n = b.slice();
                b.debit(n);
                wire += n as f64 * (1.0 + overhead);
            } else {
                now += w;
            }
        }
        wire / 10.0
    }

    /// A reload from 1 MB/s to 200 kB/s mid-transfer: the 10 s after it
    /// carry 200 kB/s, not a fresh burst on top.
    #[test]
    fn a_retune_takes_effect_at_once_and_keeps_what_was_sent_paid_for() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000.0, 256 << 10, t0, 0);
        let (mut now, mut wire) = (t0, 0u64);
        let mut at_retune = None;
        while now < t0 + Duration::from_secs(15) {
            if at_retune.is_none() && now >= t0 + Duration::from_secs(5) {
                b.retune(200_000.0, 256 << 10, now, wire);
                at_retune = Some(wire);
            }
            let w = b.wait_time(now, wire);
            if w.is_zero() {
                let n = b.slice();
                b.debit(n);
                wire += n as u64;
            } else {
                now += w;
            }
        }
        let after = (wire - at_retune.unwrap()) as f64 / 10.0;
        assert!((after - 200_000.0).abs() / 200_000.0 < 0.02, "{after} B/s after the retune");
    }

    #[test]
    fn wire_rate_matches_the_cap_whatever_the_transport_adds() {
        for overhead in [0.0, 0.001, 0.05, 0.2] {
            let rate = run(overhead);
            assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.02, "overhead {overhead}: {rate}");
        }
    }
}
