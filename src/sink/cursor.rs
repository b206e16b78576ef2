//! A sink's durable position: how far into each undelivered segment the
//! broker has acknowledged every record. `state/sinks/<name>.cursor`, one
//! line per segment in progress (`offset next_seq path`), replaced
//! atomically; fully delivered segments go to the sink's delivered list.
//!
//! The cursor only ever lags the broker: it is written after the
//! acknowledgements it records. A crash therefore re-sends what was acked
//! since the last write (duplicates with the same message ids), never skips.
//!
//! The [`Writer`] follows the acknowledgements closely without slowing
//! them: the sink offers the positions at most every [`WRITE_EVERY`], a
//! task of its own writes and fsyncs them, and an offer made while a write
//! is under way replaces any older one still waiting. After a crash the
//! sink therefore repeats what was in flight plus what the broker
//! acknowledged in the last write interval and one write's time.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::store::fs::Fs;
use crate::store::recover::read_state_lines;
use crate::store::segment::SegmentName;

/// A position in a segment: the frame offset to read next, and the first
/// sequence number not yet acknowledged (records of that frame below it
/// were acknowledged). `next_seq == 0` means "from the frame's first record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Offset of the frame to read next.
    pub offset: u64,
    /// First sequence number not yet acknowledged; 0: from the frame's first record.
    pub next_seq: u64,
}

/// `state/sinks/<sink>.cursor`: where the sink's positions are kept.
pub fn cursor_file(state_dir: &Path, sink: &str) -> PathBuf {
    state_dir.join("sinks").join(format!("{sink}.cursor"))
}

/// Read the cursor file. Damaged lines are skipped, logged with the line
/// number and counted: those segments start again from their beginning.
pub fn load(file: &Path, metrics: &Metrics) -> io::Result<HashMap<PathBuf, Pos>> {
    let mut out = HashMap::new();
    read_state_lines(
        file,
        "sink_cursor",
        "a sink cursor",
        "that segment is delivered again from its start",
        metrics,
        |line| parse_line(line).map(|(rel, pos)| out.insert(rel, pos)).is_some(),
    )?;
    Ok(out)
}

fn parse_line(line: &[u8]) -> Option<(PathBuf, Pos)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let offset = parts.next()?.parse().ok()?;
    let next_seq = parts.next()?.parse().ok()?;
    let rel = PathBuf::from(parts.next()?);
    SegmentName::parse_rel(&rel)?;
    Some((rel, Pos { offset, next_seq }))
}

/// Replace the cursor file with `positions` (a crash leaves the old or the new one).
pub fn store<'a>(fs: &Fs, file: &Path, positions: impl Iterator<Item = (&'a Path, Pos)>) -> io::Result<()> {
    let mut text = String::new();
    for (rel, p) in positions {
        if p.offset > 0 || p.next_seq > 0 {
            text.push_str(&format!("{} {} {}\n", p.offset, p.next_seq, rel.display()));
        }
    }
    fs.write_atomic(file, text.as_bytes())
}

/// How often the sink offers its positions to the writer, at most.
pub const WRITE_EVERY: Duration = Duration::from_millis(10);

/// Positions to write: every segment in progress.
pub type Positions = Arc<Vec<(PathBuf, Pos)>>;

/// The cursor file's own writer task.
pub struct Writer {
    tx: watch::Sender<Option<Positions>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Start the writer task of `file`.
    pub fn start(fs: Fs, file: PathBuf, sink: String, metrics: Metrics) -> Writer {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(write_loop(fs, file, sink, metrics, rx));
        Writer { tx, task }
    }

    /// Write these positions soon; replaces an offer not yet taken.
    pub fn offer(&self, positions: Positions) {
        self.tx.send_replace(Some(positions));
    }

    /// Write the last offer (if not written yet) and stop.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Write what is offered, newest first; a failed write is counted, logged
/// and tried again (with any newer offer) after a pause.
async fn write_loop(fs: Fs, file: PathBuf, sink: String, m: Metrics, mut rx: watch::Receiver<Option<Positions>>) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut failing = false;
    // `changed` still yields an offer made before the sink let go.
    while rx.changed().await.is_ok() {
        let Some(positions) = rx.borrow_and_update().clone() else { continue };
        let (fs2, file2) = (fs.clone(), file.clone());
        let r =
            tokio::task::spawn_blocking(move || store(&fs2, &file2, positions.iter().map(|(r, p)| (r.as_path(), *p))))
                .await
                .expect("cursor write task");
        match r {
            Ok(()) if failing => {
                failing = false;
                info!(sink = %sink, "the sink cursor is written again");
            }
            Ok(()) => {}
            Err(e) => {
                m.sink.error(&sink, &super::Trouble::StateWrite);
                if !failing {
                    warn!(sink = %sink, file = %file.display(), error = %e,
                        "cannot write the sink cursor (kept in memory; retried every second)");
                }
                failing = true;
                if rx.has_changed().is_err() {
                    // Stopping: the cursor on disk is older (duplicates, never loss).
                    return;
                }
                tokio::time::sleep(RETRY).await;
                // Retry with these positions unless newer ones came.
                if matches!(rx.has_changed(), Ok(false)) {
                    rx.mark_changed();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damaged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.cursor");
        let rel = PathBuf::from("sg1/live/2026-11-30/live-2026-11-30T12-edge-00000003.log.zst");
        let fs = Fs::real();
        store(&fs, &file, [(rel.as_path(), Pos { offset: 4096, next_seq: 77 })].into_iter()).unwrap();
        let m = Metrics::new();
        let got = load(&file, &m).unwrap();
        assert_eq!(got.get(&rel), Some(&Pos { offset: 4096, next_seq: 77 }));
        let mut text = std::fs::read(&file).unwrap();
        text.extend_from_slice(b"12 x not/a/segment\n\xff\xfe\n");
        std::fs::write(&file, text).unwrap();
        let got = load(&file, &m).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(m.store.state_repaired.with_label_values(&["sink_cursor"]).get(), 2);
    }
}
