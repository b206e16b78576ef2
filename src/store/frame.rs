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
//!
//! ## gzip segments (`compression = "gzip"`, `.log.gz`)
//! Each frame is one gzip member (RFC 1952), so `zcat`, `zgrep` and `gzip -t`
//! read a segment, sealed or open, as the concatenation it is:
//! ```text
//! gzip header      1f 8b 08 | FLG = FEXTRA (04) | MTIME 0 (u32) | XFL 0 | OS 3 |
//!                  XLEN u16 | subfield "FY" | LEN u16 | header (as above, from b"FRY")
//! data             raw deflate of the records | CRC32 of the records u32 | ISIZE u32
//! ```
//! `data_len` and `data_crc32` cover the data part (deflate and trailer) as
//! stored, exactly as they cover a zstd data frame.

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

/// How a segment's frames are compressed (its file name says which).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// A skippable frame with the header, then a zstd frame (`.log.zst`).
    #[default]
    Zstd,
    /// One gzip member, the header in FEXTRA (`.log.gz`).
    Gzip,
}

/// The gzip member header up to XLEN: FEXTRA only, no time, Unix.
const GZIP_HEAD: [u8; 10] = [0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 3];
/// Bytes before ferry's header in a gzip member: fixed header, XLEN, SI1 SI2, LEN.
const GZIP_PREFIX: usize = 10 + 2 + 2 + 2;

/// What a frame header says about its data frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// zstd or gzip: not in the header bytes but in how the frame is wrapped (the segment's file name says it too).
    pub codec: Codec,
    /// Reserved; written as 0 and not interpreted by this version.
    pub flags: u16,
    /// Length in bytes of the zstd data frame that follows the header.
    pub data_len: u32,
    /// Uncompressed length of the data (escaped lines with their LFs).
    pub raw_len: u32,
    /// Records in this frame: LF-terminated lines in the data.
    pub records: u32,
    /// Records in this frame that were cut to the listener's `max_record_bytes`.
    pub truncated: u32,
    /// Sequence number of the first record; per stream, continuous across segments.
    pub first_seq: u64,
    /// Receive time of the first and last record, ms since the Unix epoch.
    pub first_ms: i64,
    /// Receive time of the last record, ms since the Unix epoch.
    pub last_ms: i64,
    /// CRC32 of the data frame's bytes as stored (compressed): checked before decompressing.
    pub data_crc: u32,
    /// The stream the records were committed to (at most 255 bytes).
    pub stream: String,
}

/// Why bytes at an offset are not a whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: the normal state of a torn tail.
    Incomplete {
        /// Bytes still missing, at least.
        needed: usize,
    },
    /// The bytes start neither with ferry's skippable-frame magic nor like a gzip member: not a frame boundary.
    BadMagic(u32),
    /// The header length is beyond [`MAX_HEADER_LEN`] or shorter than its fixed part (gzip: or disagrees with XLEN).
    BadHeaderLength(u32),
    /// A skippable frame or gzip member that does not hold ferry's header (no `FRY`, or no `FY` subfield).
    BadHeaderMagic,
    /// A header format version this build does not read.
    UnsupportedVersion(u8),
    /// The header's CRC32 does not match: a damaged header.
    HeaderChecksum,
    /// The data length is beyond [`MAX_DATA_LEN`].
    DataTooLarge(u32),
    /// The data's CRC32 is not the header's: damaged data.
    DataChecksum {
        /// What the header says.
        expected: u32,
        /// What the bytes give.
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

impl std::error::Error for FrameError {}

/// Why a checked frame's data does not give its records.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The zstd data frame does not decompress.
    #[error("does not decompress: {0}")]
    Zstd(#[source] std::io::Error),
    /// A gzip member too short to hold its 8-byte trailer.
    #[error("gzip member shorter than its trailer")]
    ShortGzip,
    /// The deflate data does not inflate.
    #[error("does not inflate: {0}")]
    Inflate(#[source] flate2::DecompressError),
    /// The deflate stream ends before or after the member's trailer.
    #[error("deflate stream does not end where the member does")]
    DeflateEnd,
    /// The trailer's CRC32 is not that of the inflated records.
    #[error("gzip CRC32 of the records does not match")]
    GzipCrc,
    /// The data decompresses to another length than the header's `raw_len`.
    #[error("{got} bytes decompressed, header says {want}")]
    RawLen {
        /// Bytes the data gave.
        got: usize,
        /// The header's `raw_len`.
        want: u32,
    },
    /// The records are LF-terminated lines, one per record the header counts.
    #[error("frame says {want} records, data has {lines} lines")]
    Records {
        /// LF-terminated lines in the data.
        lines: u64,
        /// The header's `records`.
        want: u32,
    },
}

/// Why a frame cannot be read: its bytes are not a whole, checksummed
/// frame, or its data does not give its records. What every reader of the
/// archive (cat, grep, verify, audit, sinks) reports.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a whole, checksummed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame is whole but its data does not give its records.
    #[error(transparent)]
    Data(#[from] DataError),
}

impl FrameHeader {
    /// Bytes before the data: the skippable frame (magic, length, header),
    /// or the gzip member's header.
    pub fn encoded_len(&self) -> usize {
        let prefix = match self.codec {
            Codec::Zstd => 8,
            Codec::Gzip => GZIP_PREFIX,
        };
        prefix + FIXED_LEN + self.stream.len() + 4
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
        match self.codec {
            Codec::Zstd => {
                out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
                out.extend_from_slice(&(hlen as u32).to_le_bytes());
            }
            Codec::Gzip => {
                out.extend_from_slice(&GZIP_HEAD);
                out.extend_from_slice(&(hlen as u16 + 4).to_le_bytes());
                out.extend_from_slice(b"FY");
                out.extend_from_slice(&(hlen as u16).to_le_bytes());
            }
        }
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

    /// Decode the header at the start of `buf` (a zstd skippable frame or a
    /// gzip member's header). Does not look at the data; see [`check_data`].
    pub fn decode(buf: &[u8]) -> Result<FrameHeader, FrameError> {
        if buf.len() >= 2 && buf[0] == GZIP_HEAD[0] && buf[1] == GZIP_HEAD[1] {
            return Self::decode_gzip(buf);
        }
        if buf.len() < 8 {
            return Err(FrameError::Incomplete { needed: 8 - buf.len() });
        }
        let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        if magic != SKIPPABLE_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let hlen = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        Self::decode_body(buf, 8, hlen, Codec::Zstd)
    }

    fn decode_gzip(buf: &[u8]) -> Result<FrameHeader, FrameError> {
        if buf.len() < GZIP_PREFIX {
            return Err(FrameError::Incomplete { needed: GZIP_PREFIX - buf.len() });
        }
        if buf[..10] != GZIP_HEAD || &buf[12..14] != b"FY" {
            return Err(FrameError::BadHeaderMagic);
        }
        let xlen = u16::from_le_bytes([buf[10], buf[11]]);
        let hlen = u16::from_le_bytes([buf[14], buf[15]]);
        if xlen != hlen.wrapping_add(4) {
            return Err(FrameError::BadHeaderLength(u32::from(xlen)));
        }
        Self::decode_body(buf, GZIP_PREFIX, u32::from(hlen), Codec::Gzip)
    }

    /// The header proper (from b"FRY"), `hlen` bytes at `at` in `buf`.
    fn decode_body(buf: &[u8], at: usize, hlen: u32, codec: Codec) -> Result<FrameHeader, FrameError> {
        if (hlen as usize) < FIXED_LEN + 4 || hlen as usize > MAX_HEADER_LEN {
            return Err(FrameError::BadHeaderLength(hlen));
        }
        let hlen = hlen as usize;
        if buf.len() < at + hlen {
            return Err(FrameError::Incomplete { needed: at + hlen - buf.len() });
        }
        let h = &buf[at..at + hlen];
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
        Ok(FrameHeader {
            codec,
            flags,
            data_len,
            raw_len,
            records,
            truncated,
            first_seq,
            first_ms,
            last_ms,
            data_crc,
            stream,
        })
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

/// Compresses commit payloads into frames, reusing its compression context
/// and output buffer across commits.
pub struct FrameEncoder {
    codec: Codec,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    deflate: Option<flate2::Compress>,
    scratch: Vec<u8>,
}

/// What goes into a frame besides the data.
#[derive(Clone, Debug)]
pub struct FrameMeta<'a> {
    /// The stream committed to.
    pub stream: &'a str,
    /// Records in the commit.
    pub records: u32,
    /// Records cut to `max_record_bytes`.
    pub truncated: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Receive time of the first record, ms since the Unix epoch.
    pub first_ms: i64,
    /// Receive time of the last record, ms since the Unix epoch.
    pub last_ms: i64,
}

impl FrameEncoder {
    /// A zstd encoder at `level`.
    pub fn new(level: i32) -> std::io::Result<FrameEncoder> {
        FrameEncoder::with(Codec::Zstd, level)
    }

    /// An encoder of `codec` frames at `level` (zstd 1-19, gzip 1-9).
    pub fn with(codec: Codec, level: i32) -> std::io::Result<FrameEncoder> {
        let (zstd, deflate) = match codec {
            Codec::Zstd => {
                let mut z = zstd::bulk::Compressor::new(level)?;
                z.include_checksum(true)?;
                z.include_contentsize(true)?;
                (Some(z), None)
            }
            Codec::Gzip => {
                let level = flate2::Compression::new(level.clamp(1, 9) as u32);
                (None, Some(flate2::Compress::new(level, false)))
            }
        };
        Ok(FrameEncoder { codec, zstd, deflate, scratch: Vec::new() })
    }

    /// Compress `raw` (escaped, LF-terminated lines) and write the whole frame
    /// into `out` (cleared first). Returns the header written.
    pub fn encode(&mut self, meta: &FrameMeta<'_>, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<FrameHeader> {
        self.scratch.clear();
        match (&mut self.zstd, &mut self.deflate) {
            (Some(z), _) => {
                self.scratch.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                z.compress_to_buffer(raw, &mut self.scratch)?;
            }
            (None, Some(d)) => deflate_member_data(d, raw, &mut self.scratch)?,
            (None, None) => unreachable!("an encoder has one codec"),
        }
        let header = FrameHeader {
            codec: self.codec,
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

/// Raw deflate of `raw` and the gzip trailer (CRC32 and length of `raw`).
fn deflate_member_data(d: &mut flate2::Compress, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    d.reset();
    // Stored blocks bound what deflate can grow to: 5 bytes per 16 KiB block.
    out.reserve(raw.len() + raw.len() / 16_000 * 5 + 64);
    loop {
        let before_in = d.total_in() as usize;
        let status = d
            .compress_vec(&raw[before_in..], out, flate2::FlushCompress::Finish)
            .map_err(|e| std::io::Error::other(format!("deflate: {e}")))?;
        match status {
            flate2::Status::StreamEnd => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    Ok(())
}

/// A frame read whole: its header and its records as
/// [`DataDecoder::decompress`] gave them (escaped, each LF-terminated, as
/// many as the header counts: checked there).
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    /// The frame's header, checked.
    pub header: &'a FrameHeader,
    /// The records, escaped, each LF-terminated.
    pub records: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Each record with its sequence number, escaped, without its LF.
    pub fn records(&self) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        let records: &'a [u8] = self.records;
        (self.header.first_seq..).zip(records.split_inclusive(|b| *b == b'\n').map(|l| &l[..l.len() - 1]))
    }
}

/// Decompresses data frames of either codec, keeping its contexts between
/// frames: the one place a frame's data becomes its records.
pub struct DataDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    inflate: flate2::Decompress,
}

impl DataDecoder {
    /// A decoder for either codec; fails only if zstd cannot allocate its context.
    pub fn new() -> std::io::Result<DataDecoder> {
        Ok(DataDecoder { zstd: zstd::bulk::Decompressor::new()?, inflate: flate2::Decompress::new(false) })
    }

    /// The records of frame `h` whose data (checked by [`FrameHeader::check_data`])
    /// is `data`, into `raw` (cleared first). `Err` says why they cannot be had.
    pub fn decompress(&mut self, h: &FrameHeader, data: &[u8], raw: &mut Vec<u8>) -> Result<(), DataError> {
        raw.clear();
        raw.reserve(h.raw_len as usize);
        let data = &data[..data.len().min(h.data_len as usize)];
        match h.codec {
            Codec::Zstd => {
                self.zstd.decompress_to_buffer(data, raw).map_err(DataError::Zstd)?;
            }
            Codec::Gzip => {
                let Some(body) = data.len().checked_sub(8).map(|n| &data[..n]) else {
                    return Err(DataError::ShortGzip);
                };
                let trailer = &data[body.len()..];
                self.inflate.reset(false);
                // One extra byte of room: a stream longer than raw_len shows as more output.
                raw.reserve(1);
                let status = self
                    .inflate
                    .decompress_vec(body, raw, flate2::FlushDecompress::Finish)
                    .map_err(DataError::Inflate)?;
                if status != flate2::Status::StreamEnd {
                    return Err(DataError::DeflateEnd);
                }
                let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
                if crc != crc32fast::hash(raw) {
                    return Err(DataError::GzipCrc);
                }
            }
        }
        if raw.len() != h.raw_len as usize {
            return Err(DataError::RawLen { got: raw.len(), want: h.raw_len });
        }
        let lines = memchr::memchr_iter(b'\n', raw).count() as u64;
        if lines != u64::from(h.records) || raw.last().is_some_and(|b| *b != b'\n') {
            return Err(DataError::Records { lines, want: h.records });
        }
        Ok(())
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

    fn gzip_sample() -> (FrameHeader, Vec<u8>) {
        let mut enc = FrameEncoder::with(Codec::Gzip, 1).unwrap();
        let meta = FrameMeta { stream: "live", records: 2, truncated: 0, first_seq: 7, first_ms: 1, last_ms: 2 };
        let mut out = Vec::new();
        let h = enc.encode(&meta, b"one\ntwo\n", &mut out).unwrap();
        (h, out)
    }

    #[test]
    fn data_that_does_not_hold_the_counted_records_is_a_data_error() {
        for (codec, records, raw) in [
            (Codec::Zstd, 3, &b"one\ntwo\n"[..]),
            (Codec::Gzip, 1, &b"one\ntwo\n"[..]),
            (Codec::Zstd, 2, &b"one\ntwo"[..]),
        ] {
            let mut enc = FrameEncoder::with(codec, 1).unwrap();
            let meta = FrameMeta { stream: "live", records, truncated: 0, first_seq: 7, first_ms: 1, last_ms: 2 };
            let mut out = Vec::new();
            let h = enc.encode(&meta, raw, &mut out).unwrap();
            h.check_data(&out[h.encoded_len()..]).unwrap();
            let mut got = Vec::new();
            let e = DataDecoder::new().unwrap().decompress(&h, &out[h.encoded_len()..], &mut got).unwrap_err();
            assert!(matches!(e, DataError::Records { want, .. } if want == records), "{codec:?} {records}: {e}");
        }
        let (h, out) = sample();
        let mut raw = Vec::new();
        DataDecoder::new().unwrap().decompress(&h, &out[h.encoded_len()..], &mut raw).unwrap();
        let got: Vec<(u64, &[u8])> = Frame { header: &h, records: &raw }.records().collect();
        assert_eq!(got, [(7, &b"one"[..]), (8, &b"two"[..])]);
    }

    #[test]
    fn a_gzip_frame_is_a_gzip_member_that_decodes_back() {
        use std::io::Read;
        let (h, out) = gzip_sample();
        let d = FrameHeader::decode(&out).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.frame_len(), out.len() as u64);
        d.check_data(&out[d.encoded_len()..]).unwrap();
        let mut raw = Vec::new();
        DataDecoder::new().unwrap().decompress(&d, &out[d.encoded_len()..], &mut raw).unwrap();
        assert_eq!(raw, b"one\ntwo\n");
        // Two members read as one text by a standard gzip reader.
        let twice = [out.clone(), out].concat();
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&twice[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"one\ntwo\none\ntwo\n");
    }

    #[test]
    fn every_truncation_of_a_gzip_frame_is_incomplete_and_flips_are_detected() {
        let (_, out) = gzip_sample();
        for cut in 0..out.len() {
            let r = FrameHeader::decode(&out[..cut]).and_then(|h| h.check_data(&out[h.encoded_len()..cut]));
            assert!(matches!(r, Err(FrameError::Incomplete { .. })), "cut {cut}: {r:?}");
        }
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            let r = FrameHeader::decode(&bad).and_then(|h| h.check_data(&bad[h.encoded_len()..]));
            assert!(r.is_err(), "flip at {i} went unnoticed");
        }
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
        fn decode_never_panics_after_gzip_magic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = GZIP_HEAD.to_vec();
            v.extend_from_slice(&b);
            let _ = FrameHeader::decode(&v);
        }

        #[test]
        fn decode_never_panics_after_valid_magic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
            v.extend_from_slice(&b);
            let _ = FrameHeader::decode(&v);
        }
    }
}
