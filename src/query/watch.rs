//! The audit's facts as metrics, so an alert can say "sg1 has no complete
//! hour at central for 3 hours" without anyone running `ferry audit`:
//! `ferry_audit_complete_hour_seconds` (end of the newest hour complete and
//! closed, per origin) and `ferry_audit_gaps` (gaps found now, per origin
//! and reason).
//!
//! A refresh reads seal records, not segments (a sealed segment's facts are
//! in its seal; the file's length comes from the listing), and walks the
//! frame headers of the segments still being written only. It runs when the
//! archive's layout changed (a segment created, sealed, deleted, a tombstone
//! noted), at most every [`MIN_SPACING`], and every [`EVERY`] anyway. Frame
//! checksums are `ferry verify`'s and `ferry audit`'s job.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::audit::{self, Facts, Report};
use crate::metrics::Metrics;
use crate::store::changes::Changes;
use crate::store::segment::{list_segments, list_tombstones};

/// A refresh at least this often.
pub const EVERY: Duration = Duration::from_secs(300);
/// And at most this often, however often the layout changes.
pub const MIN_SPACING: Duration = Duration::from_secs(10);

/// What one origin's series were last set to, to zero those that vanish.
type Labels = Vec<String>;

/// The facts of every segment and tombstone of the archive, cheaply.
pub fn facts(archive: &Path, state: &Path) -> io::Result<Vec<Facts>> {
    let mut out = Vec::new();
    for d in list_segments(archive, state, |_| false)? {
        let path = archive.join(&d.rel);
        match d.seal {
            Some(seal) => out.push(Facts::sealed(path, d.name, d.len, seal)),
            None => match Facts::read(&path, d.name, Some(state), archive) {
                Ok(f) => out.push(f),
                // Deleted since the listing (retention): gone from the facts too.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
        }
    }
    for (rel, name, seal) in list_tombstones(state) {
        if let Ok(seal) = seal {
            out.push(Facts::gone(name, archive.join(rel), seal));
        }
    }
    Ok(out)
}

/// Set the metrics from a report; series seen before and absent now go to 0.
pub fn publish(report: &Report, metrics: &Metrics, seen: &mut HashSet<Labels>) {
    let mut now: HashSet<Labels> = HashSet::new();
    for ((site, stream, node), hour) in report.newest_complete() {
        if let Ok(ms) = super::time::parse_time(&hour, 0) {
            metrics.store.audit_complete_hour.with_label_values(&[&site, &stream, &node]).set((ms + 3_600_000) / 1000);
        }
    }
    let mut counts: std::collections::BTreeMap<Labels, i64> = Default::default();
    for g in &report.gaps {
        *counts.entry(vec![g.site.clone(), g.stream.clone(), g.node.clone(), g.reason.to_owned()]).or_default() += 1;
    }
    for (labels, n) in counts {
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        metrics.store.audit_gaps.with_label_values(&l).set(n);
        now.insert(labels);
    }
    for old in seen.difference(&now) {
        let l: Vec<&str> = old.iter().map(String::as_str).collect();
        metrics.store.audit_gaps.with_label_values(&l).set(0);
    }
    seen.extend(now);
}

/// One refresh: list, audit, publish.
pub fn refresh(archive: &Path, state: &Path, metrics: &Metrics, seen: &mut HashSet<Labels>) -> io::Result<Report> {
    let report = audit::audit(&facts(archive, state)?);
    publish(&report, metrics, seen);
    Ok(report)
}

/// Refresh on layout changes (spaced) and every [`EVERY`], until `stop`.
pub async fn run(archive: PathBuf, state: PathBuf, metrics: Metrics, changes: Arc<Changes>, stop: CancellationToken) {
    let mut sub = changes.subscribe();
    let mut seen = HashSet::new();
    let mut due = true;
    let mut last = Instant::now() - EVERY;
    loop {
        if due || last.elapsed() >= EVERY {
            let wait = MIN_SPACING.saturating_sub(last.elapsed());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let (a, s, m) = (archive.clone(), state.clone(), metrics.clone());
            let mut sn = std::mem::take(&mut seen);
            let r = tokio::task::spawn_blocking(move || {
                let r = refresh(&a, &s, &m, &mut sn);
                (r, sn)
            })
            .await;
            match r {
                Ok((Ok(_), sn)) => seen = sn,
                Ok((Err(e), sn)) => {
                    seen = sn;
                    warn!(error = %e, "cannot audit the archive for the metrics");
                }
                Err(e) => warn!(error = %e, "audit task failed"),
            }
            last = Instant::now();
            due = false;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sub.changed() => due = sub.take().relist,
            _ = tokio::time::sleep(EVERY.saturating_sub(last.elapsed())) => {}
        }
    }
}
