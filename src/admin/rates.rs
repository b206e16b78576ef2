//! Rates for `ferry status`: counters sampled every few seconds, so a
//! status page can say records/s and bytes/s over the last ~10 s instead of
//! totals since start. Only the counters the page shows are kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::MetricType;

use crate::metrics::Metrics;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// Rates are over at least this long, when the samples reach back so far.
const WINDOW: Duration = Duration::from_secs(10);

/// (family, its first label's value) → counter value.
type Sample = BTreeMap<(String, String), f64>;

/// The counters rated (each keyed by its first label).
fn rated(m: &Metrics) -> [&dyn Collector; 6] {
    [
        &m.ingest.received_records,
        &m.ingest.received_bytes,
        &m.store.committed_records,
        &m.store.committed_bytes,
        &m.link.uplink_wire_bytes,
        &m.link.uplink_acked_bytes,
    ]
}

fn take(m: &Metrics) -> Sample {
    let mut out = Sample::new();
    for c in rated(m) {
        let name = c.desc().first().map(|d| d.fq_name.clone()).unwrap_or_default();
        for (k, v) in series(c) {
            *out.entry((name.clone(), k.into_iter().next().unwrap_or_default())).or_insert(0.0) += v;
        }
    }
    out
}

/// Samples of the counters over the last ten seconds or so, for the per-second rates `/status` shows.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, Sample)>>,
}

impl Rates {
    /// Sample now (every [`EVERY`], by the admin server).
    pub fn sample(&self, m: &Metrics) {
        let s = take(m);
        let mut q = self.samples.lock().expect("not poisoned");
        let now = Instant::now();
        q.push_back((now, s));
        while q.len() > 2 && now.duration_since(q[1].0) >= WINDOW {
            q.pop_front();
        }
    }

    /// Per second, since the newest sample at least [`WINDOW`] old (else the
    /// oldest); `None` before there is one.
    pub fn per_sec(&self, m: &Metrics) -> Option<Sample> {
        let q = self.samples.lock().expect("not poisoned");
        let now = Instant::now();
        let (at, old) = q.iter().rev().find(|(t, _)| now.duration_since(*t) >= WINDOW).or(q.front())?;
        let dt = now.duration_since(*at).as_secs_f64();
        if dt < 0.5 {
            return None;
        }
        Some(
            take(m)
                .into_iter()
                .map(|(k, v)| {
                    let before = old.get(&k).copied().unwrap_or(0.0);
                    (k, (v - before).max(0.0) / dt)
                })
                .collect(),
        )
    }
}

/// Sample values of one metric, keyed by the values of its labels in
/// their declared order.
pub(super) fn series(c: &dyn Collector) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    let labels: Vec<String> = c.desc().first().map(|d| d.variable_labels.clone()).unwrap_or_default();
    for f in c.collect() {
        for m in f.get_metric() {
            // The registry returns labels sorted by name: put them back in order.
            let pairs = m.get_label();
            let key = labels
                .iter()
                .map(|want| pairs.iter().find(|l| l.name() == want).map(|l| l.value().to_owned()).unwrap_or_default())
                .collect();
            let v = match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => continue,
            };
            out.insert(key, v);
        }
    }
    out
}
