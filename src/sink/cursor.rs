//! A sink's durable position: how far into each undelivered segment the
//! broker has acknowledged every record. `state/sinks/<name>.cursor`, one
//! line per segment in progress (`offset next_seq path`), replaced
//! atomically; fully delivered segments go to the sink's delivered list.
//!
//! The cursor only ever lags the broker: it is written after the
//! acknowledgements it records. A crash therefore re-sends what was acked
//! since the last write (duplicates with the same message ids), never skips.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::metrics::Metrics;
use crate::store::fs::Fs;
use crate::store::recover::read_state_lines;
use crate::store::segment::SegmentName;

/// A position in a segment: the frame offset to read next, and the first
/// sequence number not yet acknowledged (records of that frame below it
/// were acknowledged). `next_seq == 0` means "from the frame's first record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub offset: u64,
    pub next_seq: u64,
}

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
        assert_eq!(m.state_repaired.with_label_values(&["sink_cursor"]).get(), 2);
    }
}
