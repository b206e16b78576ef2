//! What of the archive an uplink still has to deliver, read from disk: the
//! store's files are the only queue (no in-memory backlog), so memory stays
//! bounded however far behind a link is.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::metrics::Metrics;
pub use crate::store::delivered::Delivered;
use crate::store::fs::Fs;
use crate::store::reader::{SegmentReader, Step};
use crate::store::recover::list_repaired;

/// A segment on disk that is not yet delivered.
pub use crate::store::segment::OnDisk as Local;

/// Every undelivered segment under `archive/`, oldest first. A damaged
/// seal record is re-derived from its segment on the way (logged, counted).
pub fn scan(
    fs: &Fs,
    archive_dir: &Path,
    state_dir: &Path,
    delivered: &Delivered,
    now_ms: i64,
    metrics: &Metrics,
) -> io::Result<Vec<Local>> {
    list_repaired(fs, archive_dir, state_dir, |rel| delivered.contains(rel), now_ms, metrics)
}

/// Whole frames of `path` from `from`, up to about `max` bytes (at least one
/// frame). Returns the bytes, and the first record time of the chunk.
pub fn read_chunk(path: &Path, from: u64, max: usize) -> io::Result<(Vec<u8>, i64)> {
    let mut r = SegmentReader::open(path)?;
    r.seek(from);
    let mut end = from;
    let mut first_ms = 0;
    while let Step::Frame { offset, header } = r.next_frame()? {
        let next = offset + header.frame_len();
        if end > from && next - from > max as u64 {
            break;
        }
        if end == from {
            first_ms = header.first_ms;
        }
        end = next;
        if end - from >= max as u64 {
            break;
        }
    }
    let mut buf = vec![0u8; (end - from) as usize];
    File::open(path)?.read_exact_at(&mut buf, from)?;
    Ok((buf, first_ms))
}
