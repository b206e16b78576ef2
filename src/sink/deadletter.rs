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

#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub site: String,
    pub node: String,
    pub stream: String,
    pub seq: u64,
    pub received_ms: i64,
    pub reason: String,
    pub segment: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record_hex: Option<String>,
}

pub struct DeadLetters {
    file: PathBuf,
    fs: Fs,
    /// Origin key → sequence numbers of every record in the file: a re-read skips them.
    seen: HashMap<String, HashSet<u64>>,
}

impl DeadLetters {
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

    pub fn contains(&self, origin: &Origin, seq: u64) -> bool {
        self.seen.get(&origin.key).is_some_and(|s| s.contains(&seq))
    }

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
