//! Rates for `ferry status`: counters sampled every few seconds, so a
//! status page can say records/s and bytes/s over the last ~10 s instead of
//! totals since start. Only the counters the page shows are kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::proto::{MetricFamily, MetricType};

use crate::metrics::Metrics;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// Rates are over at least this long, when the samples reach back so far.
const WINDOW: Duration = Duration::from_secs(10);

/// (family, its first label's value) → counter value.
type Sample = BTreeMap<(&'static str, String), f64>;

/// The counters rated, and the label that keys each.
pub const RATED: [(&str, &str); 6] = [
    ("ferry_received_records_total", "listener"),
    ("ferry_received_bytes_total", "listener"),
    ("ferry_committed_records_total", "stream"),
    ("ferry_committed_bytes_total", "stream"),
    ("ferry_uplink_wire_bytes_total", "uplink"),
    ("ferry_uplink_acked_bytes_total", "uplink"),
];

fn take(fams: &[MetricFamily]) -> Sample {
    let mut out = Sample::new();
    for (name, label) in RATED {
        for (k, v) in series(fams, name, &[label]) {
            *out.entry((name, k.into_iter().next().unwrap_or_default())).or_insert(0.0) += v;
        }
    }
    out
}

#[derive(Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, Sample)>>,
}

impl Rates {
    /// Sample now (every [`EVERY`], by the admin server).
    pub fn sample(&self, m: &Metrics) {
        let s = take(&m.registry.gather());
        let mut q = self.samples.lock().expect("not poisoned");
        let now = Instant::now();
        q.push_back((now, s));
        while q.len() > 2 && now.duration_since(q[1].0) >= WINDOW {
            q.pop_front();
        }
    }

    /// Per second, since the newest sample at least [`WINDOW`] old (else the
    /// oldest); `None` before there is one.
    pub fn per_sec(&self, fams: &[MetricFamily]) -> Option<BTreeMap<(&'static str, String), f64>> {
        let q = self.samples.lock().expect("not poisoned");
        let now = Instant::now();
        let (at, old) = q.iter().rev().find(|(t, _)| now.duration_since(*t) >= WINDOW).or(q.front())?;
        let dt = now.duration_since(*at).as_secs_f64();
        if dt < 0.5 {
            return None;
        }
        Some(
            take(fams)
                .into_iter()
                .map(|(k, v)| {
                    let before = old.get(&k).copied().unwrap_or(0.0);
                    (k, (v - before).max(0.0) / dt)
                })
                .collect(),
        )
    }
}

/// Sample values of one metric family, keyed by the values of `labels`, in
/// that order (the registry returns labels sorted by name).
pub(super) fn series(fams: &[MetricFamily], name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    if let Some(f) = fams.iter().find(|f| f.name() == name) {
        for m in f.get_metric() {
            let pairs = m.get_label();
            let labels = labels
                .iter()
                .map(|want| pairs.iter().find(|l| l.name() == *want).map(|l| l.value().to_owned()).unwrap_or_default())
                .collect();
            let v = match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => continue,
            };
            out.insert(labels, v);
        }
    }
    out
}
