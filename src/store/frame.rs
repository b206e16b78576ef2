//! The frame: what one commit appends to a segment.
//!
//! ## Design constraints
//! - Every standard tool must read a segment as plain compressed text:
//!   `zstdcat` skips skippable frames and prints data frames.
//! - Resume, audit and crash recovery must work from headers alone, without
//!   decompressing: the header gives the data frame's length and checksum.
//! - A torn write must be detectable at the tail of a file.
//!
//! ## Layout (all integers little-endian)
//! ```text
//! skippable frame  magic 0x184D2A5E (u32) | header length (u32) | header
//! header           b"FRY" | version u8 (=1) | flags u16 | data_len u32 |
//!                  raw_len u32 | records u32 | truncated u32 | first_seq u64 |
//!                  first_ms i64 | last_ms i64 | data_crc32 u32 |
//!                  stream_len u8 | stream bytes | header_crc32 u32
//! data frame       one standard zstd frame (content size + content checksum)
//!                  of LF-terminated, escaped records (see `escape.rs`)
//! ```
//! `data_crc32` covers the data frame's bytes as stored; `header_crc32`
//! covers the header before it. A frame is whole when both check and the
//! file holds all `data_len` bytes.

use std::fmt;

/// The zstd skippable-frame magic ferry uses (range 0x184D2A50..=0x184D2A5F).
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Header format version this build writes and reads.
pub const VERSION: u8 = 1;
const HEADER_MAGIC: &[u8; 3] = b"FRY";
/// Fixed part of the header before the stream name.
const FIXED_LEN: usize = 3 + 1 + 2 + 4 + 4 + 4 + 4 + 8 + 8 + 8 + 4 + 1;
/// Longest header we accept; guards against reading garbage lengths.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + 255 + 4;
/// Largest data frame we accept when reading (a commit is at most 64 MiB raw).
pub const MAX_DATA_LEN: u32 = 256 << 20;

/// What a frame header says about its data frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub flags: u16,
    /// Length in bytes of the zstd data frame that follows the header.
    pub data_len: u32,
    /// Uncompressed length of the data (escaped lines with their LFs).
    pub raw_len: u32,
    pub records: u32,
    /// Records in this frame that were cut to the listener's `max_record_bytes`.
    pub truncated: u32,
    /// Sequence number of the first record; per stream, continuous across segments.
    pub first_seq: u64,
    /// Receive time of the first and last record, ms since the Unix epoch.
    pub first_ms: i64,
    pub last_ms: i64,
    pub data_crc: u32,
    pub stream: String,
}

/// Why bytes at an offset are not a whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: the normal state of a torn tail.
    Incomplete {
        needed: usize,
    },
    BadMagic(u32),
    BadHeaderLength(u32),
    BadHeaderMagic,
    UnsupportedVersion(u8),
    HeaderChecksum,
    DataTooLarge(u32),
    DataChecksum {
        expected: u32,
        actual: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} more bytes needed)")
            }
            FrameError::BadMagic(m) => write!(f, "not a ferry frame (magic {m:#010x})"),
            FrameError::BadHeaderLength(l) => write!(f, "implausible header length {l}"),
            FrameError::BadHeaderMagic => write!(f, "skippable frame is not a ferry header"),
            FrameError::UnsupportedVersion(v) => {
                write!(f, "frame format version {v} is not supported (this build reads {VERSION})")
            }
            FrameError::HeaderChecksum => write!(f, "header checksum mismatch"),
            FrameError::DataTooLarge(l) => write!(f, "implausible data length {l}"),
            FrameError::DataChecksum { expected, actual } => {
                write!(f, "data checksum mismatch (header says {expected:#010x}, data has {actual:#010x})")
            }
        }
    }
}

impl FrameHeader {
    /// Bytes of the skippable frame (magic, length, header).
    pub fn encoded_len(&self) -> usize {
        8 + FIXED_LEN + self.stream.len() + 4
    }

    /// Bytes of the whole frame: skippable header frame plus data frame.
    pub fn frame_len(&self) -> u64 {
        self.encoded_len() as u64 + u64::from(self.data_len)
    }

    /// Last record's sequence number + 1.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.records)
    }

    /// Append the skippable frame to `out`.
    ///
    /// # Panics
    /// If the stream name is longer than 255 bytes (config validation caps it at 64).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let name = self.stream.as_bytes();
        let name_len = u8::try_from(name.len()).expect("stream names are at most 64 bytes");
        let hlen = FIXED_LEN + name.len() + 4;
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
        let start = out.len();
        out.extend_from_slice(HEADER_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.truncated.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.first_ms.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out.extend_from_slice(&self.data_crc.to_le_bytes());
        out.push(name_len);
        out.extend_from_slice(name);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decode the skippable frame at the start of `buf`. Does not look at the
    /// data frame; see [`check_data`].
    pub fn decode(buf: &[u8]) -> Result<FrameHeader, FrameError> {
        if buf.len() < 8 {
            return Err(FrameError::Incomplete { needed: 8 - buf.len() });
        }
        let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        if magic != SKIPPABLE_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let hlen = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        if (hlen as usize) < FIXED_LEN + 4 || hlen as usize > MAX_HEADER_LEN {
            return Err(FrameError::BadHeaderLength(hlen));
        }
        let hlen = hlen as usize;
        if buf.len() < 8 + hlen {
            return Err(FrameError::Incomplete { needed: 8 + hlen - buf.len() });
        }
        let h = &buf[8..8 + hlen];
        let (body, crc) = h.split_at(hlen - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FrameError::HeaderChecksum);
        }
        if &body[0..3] != HEADER_MAGIC {
            return Err(FrameError::BadHeaderMagic);
        }
        if body[3] != VERSION {
            return Err(FrameError::UnsupportedVersion(body[3]));
        }
        let mut r = Cursor { b: body, at: 4 };
        let flags = r.u16();
        let data_len = r.u32();
        let raw_len = r.u32();
        let records = r.u32();
        let truncated = r.u32();
        let first_seq = r.u64();
        let first_ms = r.u64() as i64;
        let last_ms = r.u64() as i64;
        let data_crc = r.u32();
        let name_len = body[r.at] as usize;
        r.at += 1;
        if r.at + name_len != body.len() {
            return Err(FrameError::BadHeaderLength(hlen as u32));
        }
        if data_len > MAX_DATA_LEN {
            return Err(FrameError::DataTooLarge(data_len));
        }
        let stream = String::from_utf8_lossy(&body[r.at..]).into_owned();
        Ok(FrameHeader { flags, data_len, raw_len, records, truncated, first_seq, first_ms, last_ms, data_crc, stream })
    }

    /// Check that `data` is this header's data frame, whole and unaltered.
    pub fn check_data(&self, data: &[u8]) -> Result<(), FrameError> {
        if data.len() < self.data_len as usize {
            return Err(FrameError::Incomplete { needed: self.data_len as usize - data.len() });
        }
        let actual = crc32fast::hash(&data[..self.data_len as usize]);
        if actual != self.data_crc {
            return Err(FrameError::DataChecksum { expected: self.data_crc, actual });
        }
        Ok(())
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let v = self.b[self.at..self.at + N].try_into().expect("length checked by caller");
        self.at += N;
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Compresses commit payloads into frames, reusing its zstd context and
/// output buffer across commits.
pub struct FrameEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

/// What goes into a frame besides the data.
#[derive(Clone, Debug)]
pub struct FrameMeta<'a> {
    pub stream: &'a str,
    pub records: u32,
    pub truncated: u32,
    pub first_seq: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl FrameEncoder {
    pub fn new(level: i32) -> std::io::Result<FrameEncoder> {
        let mut zstd = zstd::bulk::Compressor::new(level)?;
        zstd.include_checksum(true)?;
        zstd.include_contentsize(true)?;
        Ok(FrameEncoder { zstd, scratch: Vec::new() })
    }

    /// Compress `raw` (escaped, LF-terminated lines) and write the whole frame
    /// into `out` (cleared first). Returns the header written.
    pub fn encode(&mut self, meta: &FrameMeta<'_>, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<FrameHeader> {
        self.scratch.clear();
        self.scratch.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        self.zstd.compress_to_buffer(raw, &mut self.scratch)?;
        let header = FrameHeader {
            flags: 0,
            data_len: self.scratch.len() as u32,
            raw_len: raw.len() as u32,
            records: meta.records,
            truncated: meta.truncated,
            first_seq: meta.first_seq,
            first_ms: meta.first_ms,
            last_ms: meta.last_ms,
            data_crc: crc32fast::hash(&self.scratch),
            stream: meta.stream.to_owned(),
        };
        out.clear();
        out.reserve(header.encoded_len() + self.scratch.len());
        header.encode_into(out);
        out.extend_from_slice(&self.scratch);
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (FrameHeader, Vec<u8>) {
        let mut enc = FrameEncoder::new(1).unwrap();
        let meta = FrameMeta { stream: "live", records: 2, truncated: 0, first_seq: 7, first_ms: 1, last_ms: 2 };
        let mut out = Vec::new();
        let h = enc.encode(&meta, b"one\ntwo\n", &mut out).unwrap();
        (h, out)
    }

    #[test]
    fn round_trip_and_zstd_reads_it() {
        let (h, out) = sample();
        let d = FrameHeader::decode(&out).unwrap();
        assert_eq!(d, h);
        d.check_data(&out[d.encoded_len()..]).unwrap();
        // A standard zstd decoder skips the header frame and yields the lines.
        let plain = zstd::stream::decode_all(&out[..]).unwrap();
        assert_eq!(plain, b"one\ntwo\n");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let (_, out) = sample();
        for cut in 0..out.len() {
            let r = FrameHeader::decode(&out[..cut]).and_then(|h| h.check_data(&out[h.encoded_len()..cut]));
            assert!(matches!(r, Err(FrameError::Incomplete { .. })), "cut {cut}: {r:?}");
        }
    }

    #[test]
    fn flipped_bits_are_detected() {
        let (_, out) = sample();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            let r = FrameHeader::decode(&bad).and_then(|h| h.check_data(&bad[h.encoded_len()..]));
            assert!(r.is_err(), "flip at {i} went unnoticed");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = FrameHeader::decode(&b);
        }

        #[test]
        fn decode_never_panics_after_valid_magic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
            v.extend_from_slice(&b);
            let _ = FrameHeader::decode(&v);
        }
    }
}
