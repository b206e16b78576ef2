//! A sink may never be silent. Every broker call is bounded ([`super::bus`]),
//! but an acknowledgement that never comes is not a call: a confirm lost
//! with its connection, a broker that takes messages and answers nothing,
//! a producer queue that drains nowhere. The watchdog looks only at the
//! outcome: the sink has records to deliver and no acknowledgement came
//! for `stall_after`. Then the sink says so (log, `ferry_sink_stalled`,
//! `ferry status`, the FerrySinkStalled alert), drops its connection and
//! starts again from its acknowledged positions; if that does not help
//! either, it says so again every `stall_after`.

use std::time::{Duration, Instant};

/// What the watchdog makes of the last interval.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delivering, or nothing to deliver.
    Fine,
    /// No acknowledgement for `stall_after` with records waiting; `silent`
    /// is how long since the last one (or since records began to wait).
    Stalled {
        /// Since the last acknowledgement (or since records began to wait).
        silent: Duration,
        /// The first verdict of this stall (log it loudly; later ones repeat it).
        first: bool,
    },
    /// Acknowledgements flow again (or nothing waits any more) after a stall.
    Recovered {
        /// How long the stall lasted.
        after: Duration,
    },
}

/// Watches one sink for acknowledgements that stop coming while records wait.
#[derive(Debug)]
pub struct Watchdog {
    stall_after: Duration,
    /// The last acknowledgement, or the last time nothing was waiting.
    last: Instant,
    /// When the current stall began (its last sign of life).
    stalled_since: Option<Instant>,
}

impl Watchdog {
    /// A watchdog that calls a sink stalled after `stall_after` without acknowledgements.
    pub fn new(stall_after: Duration, now: Instant) -> Watchdog {
        Watchdog { stall_after, last: now, stalled_since: None }
    }

    /// The broker acknowledged (or refused for good) a record.
    pub fn progress(&mut self, now: Instant) -> Verdict {
        self.last = now;
        match self.stalled_since.take() {
            Some(since) => Verdict::Recovered { after: now - since },
            None => Verdict::Fine,
        }
    }

    /// Look again; `pending` says whether records wait for the broker
    /// (published and unacknowledged, or on disk and not yet published).
    pub fn check(&mut self, pending: bool, now: Instant) -> Verdict {
        if !pending {
            return self.progress(now);
        }
        if now.saturating_duration_since(self.last) < self.stall_after {
            return Verdict::Fine;
        }
        let first = self.stalled_since.is_none();
        let since = *self.stalled_since.get_or_insert(self.last);
        // Armed again: the next verdict comes `stall_after` from now.
        self.last = now;
        Verdict::Stalled { silent: now - since, first }
    }

    /// In a stall now (between a `Stalled` verdict and the `Recovered` one).
    pub fn is_stalled(&self) -> bool {
        self.stalled_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(30);

    #[test]
    fn records_waiting_without_acknowledgement_stall_and_say_so_again() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(S, t0);
        assert_eq!(w.check(true, t0 + Duration::from_secs(29)), Verdict::Fine);
        assert_eq!(w.check(true, t0 + S), Verdict::Stalled { silent: S, first: true });
        assert!(w.is_stalled());
        assert_eq!(w.check(true, t0 + S + Duration::from_secs(1)), Verdict::Fine, "armed again, not every tick");
        assert_eq!(w.check(true, t0 + 2 * S), Verdict::Stalled { silent: 2 * S, first: false });
        assert_eq!(
            w.progress(t0 + 2 * S + Duration::from_secs(5)),
            Verdict::Recovered { after: 2 * S + Duration::from_secs(5) }
        );
        assert!(!w.is_stalled());
    }

    #[test]
    fn an_idle_sink_never_stalls() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(S, t0);
        assert_eq!(w.check(false, t0 + 10 * S), Verdict::Fine);
        // Records begin to wait now: the clock starts from the last idle look.
        assert_eq!(w.check(true, t0 + 10 * S + Duration::from_secs(29)), Verdict::Fine);
        assert!(matches!(w.check(true, t0 + 11 * S), Verdict::Stalled { first: true, .. }));
        assert!(matches!(w.check(false, t0 + 11 * S), Verdict::Recovered { .. }), "nothing waits any more");
    }

    #[test]
    fn acknowledgements_keep_it_fine() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(S, t0);
        for i in 1..100 {
            let now = t0 + Duration::from_secs(i * 10);
            assert_eq!(w.progress(now), Verdict::Fine);
            assert_eq!(w.check(true, now + Duration::from_secs(9)), Verdict::Fine);
        }
    }
}
