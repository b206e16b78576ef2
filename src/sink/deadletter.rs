//! Records a broker refused for good (too large, invalid), kept under
//! `state/sinks/<name>.deadletter`: one JSON object per line with the
//! origin, sequence number, receive time, reason and the record itself
//! (`record` when it is UTF-8, else `record_hex`). Written and fsynced
//! before the cursor moves past the record: nothing is skipped silently.
//!
//! `jq -r .record state/sinks/kafka.deadletter` prints the records.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::Origin;
use crate::metrics::Metrics;
use crate::store::fs::Fs;
use crate::store::recover::read_state_lines;

/// One line of the dead-letter file: a refused record and where it came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    /// The origin's site.
    pub site: String,
    /// The origin's node.
    pub node: String,
    /// The origin's stream.
    pub stream: String,
    /// The record's sequence number in its origin.
    pub seq: u64,
    /// When the record was received, ms since the Unix epoch.
    pub received_ms: i64,
    /// Why the broker refused it (the `reason` label of `ferry_sink_dead_letters_total`).
    pub reason: String,
    /// The segment it was read from, relative to `archive/`.
    pub segment: String,
    /// The record as received, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record: Option<String>,
    /// The record in hex, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record_hex: Option<String>,
}

/// A sink's dead-letter file, and every record in it (so a re-read after a restart does not offer them again).
pub struct DeadLetters {
    file: PathBuf,
    fs: Fs,
    /// Origin key → sequence numbers of every record in the file: a re-read skips them.
    seen: HashMap<String, HashSet<u64>>,
}

impl DeadLetters {
    /// Open `state/sinks/<sink>.deadletter`, reading what it holds; damaged lines are skipped and counted.
    pub fn open(fs: &Fs, state_dir: &Path, sink: &str, metrics: &Metrics) -> io::Result<DeadLetters> {
        let file = state_dir.join("sinks").join(format!("{sink}.deadletter"));
        let mut seen: HashMap<String, HashSet<u64>> = HashMap::new();
        read_state_lines(
            &file,
            "dead_letter",
            "a dead-letter file",
            "that record may be offered to the broker again",
            metrics,
            |line| {
                serde_json::from_slice::<Entry>(line)
                    .map(|e| seen.entry(format!("{}/{}/{}", e.site, e.node, e.stream)).or_default().insert(e.seq))
                    .is_ok()
            },
        )?;
        Ok(DeadLetters { file, fs: fs.clone(), seen })
    }

    /// Record `seq` of `origin` is already dead-lettered.
    pub fn contains(&self, origin: &Origin, seq: u64) -> bool {
        self.seen.get(&origin.key).is_some_and(|s| s.contains(&seq))
    }

    /// Nothing dead-lettered yet.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Append one refused record (fsynced).
    pub fn add(
        &mut self,
        origin: &Origin,
        seq: u64,
        received_ms: i64,
        segment: &Path,
        reason: &str,
        record: &[u8],
    ) -> io::Result<()> {
        if self.contains(origin, seq) {
            return Ok(());
        }
        let (text, hex) = match std::str::from_utf8(record) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(crate::store::segment::hex(record))),
        };
        let e = Entry {
            site: origin.site.clone(),
            node: origin.node.clone(),
            stream: origin.stream.clone(),
            seq,
            received_ms,
            reason: reason.to_owned(),
            segment: segment.display().to_string(),
            record: text,
            record_hex: hex,
        };
        let line = serde_json::to_string(&e).map_err(io::Error::other)?;
        self.fs.append_line(&self.file, &line)?;
        self.seen.entry(origin.key.clone()).or_default().insert(seq);
        Ok(())
    }
}
