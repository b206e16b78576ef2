//! One frame's records, decoded for a bus: every record of a frame sits in
//! one buffer, so a sink publishes a frame with no allocation per record.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::escape::unescape_into;
use crate::store::frame::{DataDecoder, DecodeError, Frame, FrameHeader};
use crate::store::reader::{SegmentReader, Step};

/// Where records come from: one node's stream of one site. Sequence numbers
/// are contiguous per origin, and a bus keeps one origin in one partition.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The site whose records these are.
    pub site: String,
    /// The stream.
    pub stream: String,
    /// The node that wrote them.
    pub node: String,
    /// `site/node/stream`: the Kafka key, and the prefix of every message id.
    pub key: String,
}

impl Origin {
    /// An origin with its `key`.
    pub fn new(site: &str, stream: &str, node: &str) -> Origin {
        Origin { site: site.into(), stream: stream.into(), node: node.into(), key: format!("{site}/{node}/{stream}") }
    }

    /// A `{site}` `{stream}` `{node}` template filled in for this origin.
    pub fn render(&self, template: &str) -> String {
        template.replace("{site}", &self.site).replace("{stream}", &self.stream).replace("{node}", &self.node)
    }

    /// The message id of record `seq`: `site/node/stream/seq`, the same
    /// every time the record is sent, so a consumer can drop duplicates.
    pub fn message_id(&self, seq: u64) -> String {
        format!("{}/{seq}", self.key)
    }
}

/// The records of one frame (those at or after a cursor's sequence number).
#[derive(Debug)]
pub struct Batch {
    /// Where the records come from.
    pub origin: Arc<Origin>,
    /// The segment, relative to `archive/`.
    pub rel: PathBuf,
    /// Frame start and end offsets in the segment.
    pub offset: u64,
    /// Offset after the frame: where the next read starts.
    pub end: u64,
    /// Sequence number of record 0 of this batch.
    pub first_seq: u64,
    /// Sequence number after the frame's last record.
    pub next_seq: u64,
    /// Receive time of the frame's first and last record (ms): each record
    /// was received in between (a commit spans at most `commit_interval`).
    pub first_ms: i64,
    /// Receive time of the frame's last record (ms).
    pub last_ms: i64,
    buf: Vec<u8>,
    ends: Vec<u32>,
    /// Indexes not to publish (records already dead-lettered), sorted.
    pub skip: Vec<u32>,
}

impl Batch {
    /// Records in the batch (skipped ones included).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// No records: the frame's were all below the cursor.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Record `i` as it was received (unescaped).
    pub fn record(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }

    /// The sequence number of record `i`.
    pub fn seq(&self, i: usize) -> u64 {
        self.first_seq + i as u64
    }

    /// Record `i` is already dead-lettered: not to publish.
    pub fn skipped(&self, i: usize) -> bool {
        !self.skip.is_empty() && self.skip.binary_search(&(i as u32)).is_ok()
    }

    /// Bytes held (what the in-flight limit counts).
    pub fn bytes(&self) -> usize {
        self.buf.len() + self.ends.len() * 4
    }
}

/// What reading at a position found.
#[derive(Debug)]
pub enum Read {
    /// A whole frame's records.
    Batch(Batch),
    /// No whole frame at the position yet (an open segment's end).
    Nothing,
    /// A damaged frame in the middle of the file: whole frames resume at `next`.
    Damaged {
        /// Offset of the damaged frame.
        at: u64,
        /// Offset of the next whole frame.
        next: u64,
        /// What is wrong with it.
        error: DecodeError,
    },
}

/// Reads and decodes frames; keeps its decompressor and scratch between calls.
pub struct FrameDecoder {
    dec: DataDecoder,
    raw: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with its decompressor.
    pub fn new() -> io::Result<FrameDecoder> {
        Ok(FrameDecoder { dec: DataDecoder::new()?, raw: Vec::new() })
    }

    /// The frame at `offset` of `path`, without the records before `from_seq`.
    pub fn read(
        &mut self,
        archive_dir: &Path,
        rel: &Path,
        origin: &Arc<Origin>,
        offset: u64,
        from_seq: u64,
    ) -> io::Result<Read> {
        let mut r = SegmentReader::open(&archive_dir.join(rel))?;
        r.seek(offset);
        let header = match r.next_frame()? {
            Step::Frame { header, .. } => header,
            Step::End => return Ok(Read::Nothing),
            Step::Bad { offset, error } => {
                return Ok(match r.next_valid_frame_after(offset)? {
                    Some(next) => Read::Damaged { at: offset, next, error: error.into() },
                    // A torn or growing tail: whole frames may still come.
                    None => Read::Nothing,
                });
            }
        };
        // A whole frame whose data does not give its records is damage too:
        // the next frame starts right after it.
        if let Err(error) = r.records(&header, &mut self.dec, &mut self.raw) {
            return Ok(Read::Damaged { at: offset, next: offset + header.frame_len(), error });
        }
        Ok(Read::Batch(self.split(&header, origin, rel, offset, from_seq)))
    }

    fn split(&self, h: &FrameHeader, origin: &Arc<Origin>, rel: &Path, offset: u64, from_seq: u64) -> Batch {
        let skip_n = from_seq.saturating_sub(h.first_seq).min(u64::from(h.records)) as usize;
        let mut buf = Vec::with_capacity(self.raw.len());
        let mut ends = Vec::with_capacity(h.records as usize - skip_n);
        for (_, line) in (Frame { header: h, records: &self.raw }).records().skip(skip_n) {
            unescape_into(line, &mut buf);
            ends.push(buf.len() as u32);
        }
        Batch {
            origin: origin.clone(),
            rel: rel.to_owned(),
            offset,
            end: offset + h.frame_len(),
            first_seq: h.first_seq + skip_n as u64,
            next_seq: h.next_seq(),
            first_ms: h.first_ms,
            last_ms: h.last_ms,
            buf,
            ends,
            skip: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame::{Codec, FrameEncoder, FrameMeta};

    /// The sinks read gzip segments (`compression = "gzip"`) like zstd ones:
    /// the records of each frame, from a cursor's sequence number on.
    #[test]
    fn a_sink_reads_the_records_of_gzip_and_zstd_frames() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let dir = tempfile::tempdir().unwrap();
            let rel = PathBuf::from("sg1/live/2026-12-04/live-2026-12-04T10-n1-00000000.log");
            std::fs::create_dir_all(dir.path().join("sg1/live/2026-12-04")).unwrap();
            let mut enc = FrameEncoder::with(codec, 1).unwrap();
            let (mut file, mut one) = (Vec::new(), Vec::new());
            for f in 0..2u64 {
                let meta =
                    FrameMeta { stream: "live", records: 2, truncated: 0, first_seq: f * 2, first_ms: 1, last_ms: 2 };
                let raw = format!("r{} a\\\\b\nr{}\n", f * 2, f * 2 + 1);
                enc.encode(&meta, raw.as_bytes(), &mut one).unwrap();
                file.extend_from_slice(&one);
            }
            std::fs::write(dir.path().join(&rel), &file).unwrap();
            let origin = Arc::new(Origin::new("sg1", "live", "n1"));
            let mut dec = FrameDecoder::new().unwrap();
            let Read::Batch(b) = dec.read(dir.path(), &rel, &origin, 0, 1).unwrap() else {
                panic!("{codec:?}: a batch")
            };
            assert_eq!((b.len(), b.first_seq, b.record(0)), (1, 1, &b"r1"[..]), "{codec:?}");
            let Read::Batch(b) = dec.read(dir.path(), &rel, &origin, b.end, 2).unwrap() else { panic!("{codec:?}") };
            assert_eq!((b.len(), b.record(0), b.record(1)), (2, &b"r2 a\\b"[..], &b"r3"[..]), "{codec:?}");
            assert_eq!(b.end, file.len() as u64);
        }
    }
}
