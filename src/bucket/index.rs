//! A segment's time index, uploaded beside it as `<rel>.idx`, so that a
//! reader of the bucket fetches only the frames of a time range by ranged
//! GETs, with one small GET first, instead of walking every frame header
//! (one request each) or the whole object.
//!
//! The segment's frames are cut into blocks of whole frames of about
//! [`BLOCK`] bytes; a block records its byte range and the earliest and
//! latest receive time of its frames. Times are a min and a max, not the
//! first and last frame's: a clock set back inside a segment cannot hide
//! frames from a reader (a block is read when its span overlaps the range).
//!
//! ```text
//! ferry-index=1
//! <start> <end> <min_ms> <max_ms>
//! ```
//!
//! A reader trusts an index only when its blocks run from 0 to the object's
//! length without a hole; otherwise (another tool wrote it, a torn upload)
//! it reads the object whole. The index is derived from the segment's
//! bytes: two nodes uploading the same segment write the same index.

use std::io;
use std::path::Path;

use crate::store::reader::{SegmentReader, Step};

/// Bytes of frames per block: a 256 MiB hour is 256 blocks, a 10 KiB index.
pub const BLOCK: u64 = 1 << 20;

const MAGIC: &str = "ferry-index=1";

/// A run of whole frames of about [`BLOCK`] bytes: its byte range and the receive times its frames span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Offset of its first frame.
    pub start: u64,
    /// Offset after its last frame.
    pub end: u64,
    /// Earliest receive time of its records, ms since the Unix epoch.
    pub min_ms: i64,
    /// Latest receive time of its records, ms since the Unix epoch.
    pub max_ms: i64,
}

/// The blocks of the first `len` bytes of the segment at `path`, from its
/// frame headers. Bytes that are not whole frames (damage) end up in a
/// block that every range reads.
pub fn build(path: &Path, len: u64) -> io::Result<Vec<Block>> {
    let mut r = SegmentReader::open(path)?;
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    loop {
        match r.next_header()? {
            Step::Frame { offset, header } if offset < len => {
                let (lo, hi) = (header.first_ms.min(header.last_ms), header.first_ms.max(header.last_ms));
                let end = offset + header.frame_len();
                let b = cur.get_or_insert(Block { start: offset, end, min_ms: lo, max_ms: hi });
                b.end = end;
                b.min_ms = b.min_ms.min(lo);
                b.max_ms = b.max_ms.max(hi);
                if b.end - b.start >= BLOCK {
                    out.extend(cur.take());
                }
            }
            _ => break,
        }
    }
    out.extend(cur.take());
    let covered = out.last().map_or(0, |b| b.end);
    if covered < len {
        out.push(Block { start: covered, end: len, min_ms: i64::MIN, max_ms: i64::MAX });
    }
    Ok(out)
}

/// The index as uploaded: the magic line, then one `start end min_ms max_ms` line per block.
pub fn to_text(blocks: &[Block]) -> String {
    let mut s = String::with_capacity(16 + blocks.len() * 48);
    s.push_str(MAGIC);
    s.push('\n');
    for b in blocks {
        s.push_str(&format!("{} {} {} {}\n", b.start, b.end, b.min_ms, b.max_ms));
    }
    s
}

/// What is wrong with an index text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The first line is not the magic: another tool's object, or no index.
    #[error("not a ferry index (first line is not {MAGIC})")]
    NotAnIndex,
    /// A line (1-based) that is not four numbers.
    #[error("line {0}: not `start end min_ms max_ms`")]
    Line(usize),
    /// A block that does not start where the one before ended (or at 0).
    #[error("line {line}: block {start}..{end} does not follow at {expect}")]
    Gap {
        /// The line, 1-based.
        line: usize,
        /// The block's start.
        start: u64,
        /// The block's end.
        end: u64,
        /// Where it should start.
        expect: u64,
    },
    /// The blocks end before the object does.
    #[error("covers {covered} bytes of {len}")]
    Short {
        /// Where the last block ends.
        covered: u64,
        /// The object's length.
        len: u64,
    },
}

/// The blocks of an index text, checked to cover `0..len` whole.
pub fn parse(text: &str, len: u64) -> Result<Vec<Block>, IndexError> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(IndexError::NotAnIndex);
    }
    let mut out: Vec<Block> = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let bad = || IndexError::Line(n + 2);
        let [a, b, c, d] = f[..] else { return Err(bad()) };
        let block = Block {
            start: a.parse().map_err(|_| bad())?,
            end: b.parse().map_err(|_| bad())?,
            min_ms: c.parse().map_err(|_| bad())?,
            max_ms: d.parse().map_err(|_| bad())?,
        };
        let expect = out.last().map_or(0, |p| p.end);
        if block.start != expect || block.end <= block.start {
            return Err(IndexError::Gap { line: n + 2, start: block.start, end: block.end, expect });
        }
        out.push(block);
    }
    let covered = out.last().map_or(0, |b| b.end);
    if covered != len {
        return Err(IndexError::Short { covered, len });
    }
    Ok(out)
}

/// The byte spans whose frames may hold records received in `from..to`,
/// adjacent blocks merged.
pub fn spans(blocks: &[Block], from_ms: Option<i64>, to_ms: Option<i64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks {
        let wanted = from_ms.is_none_or(|f| b.max_ms >= f) && to_ms.is_none_or(|t| b.min_ms < t);
        if !wanted {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == b.start => last.1 = b.end,
            _ => out.push((b.start, b.end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(start: u64, end: u64, min_ms: i64, max_ms: i64) -> Block {
        Block { start, end, min_ms, max_ms }
    }

    #[test]
    fn an_index_round_trips_and_must_cover_the_object() {
        let blocks = vec![b(0, 10, 5, 9), b(10, 25, 9, 20), b(25, 30, 1, 2)];
        assert_eq!(parse(&to_text(&blocks), 30).unwrap(), blocks);
        assert!(parse(&to_text(&blocks), 31).unwrap_err().to_string().contains("covers 30 bytes of 31"));
        let holed = to_text(&[b(0, 10, 5, 9), b(11, 30, 9, 20)]);
        assert!(parse(&holed, 30).unwrap_err().to_string().contains("does not follow at 10"));
        assert!(parse("ferry-index=1\n0 x 1 2\n", 1).unwrap_err().to_string().contains("line 2"));
        assert!(parse("something else\n", 0).is_err());
    }

    #[test]
    fn spans_take_every_block_that_may_hold_the_range_merged() {
        // The third block's clock went back: it is read for an early range too.
        let blocks = vec![b(0, 10, 100, 199), b(10, 20, 200, 299), b(20, 30, 50, 400), b(30, 40, 400, 499)];
        assert_eq!(spans(&blocks, Some(200), Some(300)), vec![(10, 30)]);
        assert_eq!(spans(&blocks, Some(60), Some(99)), vec![(20, 30)]);
        assert_eq!(spans(&blocks, Some(450), None), vec![(30, 40)]);
        assert_eq!(spans(&blocks, None, None), vec![(0, 40)]);
        assert_eq!(spans(&blocks, Some(1000), None), vec![]);
    }
}
