//! Reading segments frame by frame, from headers alone. Recovery, `ferry
//! verify`, `cat`/`grep`/`audit` walk segments through this one reader,
//! whether the bytes come from a file or, by ranged GETs, from a bucket.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use memchr::memmem;

use super::frame::{DataDecoder, DecodeError, FrameError, FrameHeader, MAX_HEADER_LEN, SKIPPABLE_MAGIC};

/// One step of a walk through a segment.
#[derive(Debug)]
pub enum Step {
    /// A whole frame whose checksums hold; [`SegmentReader::data`] has its zstd data frame.
    Frame {
        /// Where the frame starts.
        offset: u64,
        /// Its header.
        header: FrameHeader,
    },
    /// Clean end of file.
    End,
    /// The bytes at `offset` are not a whole frame.
    Bad {
        /// Where the bad bytes start.
        offset: u64,
        /// What is wrong with them.
        error: FrameError,
    },
}

/// Positional reads of a segment's bytes: a file, or an object in a
/// bucket (`query::bucket`).
pub trait ReadAt: Send {
    /// Fill `buf` from `offset`, or fail (short is an error).
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Walks the frames of one segment with positional reads.
pub struct SegmentReader {
    file: Box<dyn ReadAt>,
    len: u64,
    offset: u64,
    head: Vec<u8>,
    data: Vec<u8>,
}

impl SegmentReader {
    /// A reader of the file at `path`, from its start.
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SegmentReader::new(Box::new(file), len))
    }

    /// A reader of `len` bytes from `source`.
    pub fn new(source: Box<dyn ReadAt>, len: u64) -> SegmentReader {
        SegmentReader { file: source, len, offset: 0, head: Vec::new(), data: Vec::new() }
    }

    /// File length when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes from the start that are whole frames so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The data frame of the last [`Step::Frame`] returned.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Read and check the next frame. After `Bad` the reader stays put.
    pub fn next_frame(&mut self) -> io::Result<Step> {
        if self.offset >= self.len {
            return Ok(Step::End);
        }
        let offset = self.offset;
        match self.frame_at(offset)? {
            Ok(header) => {
                self.offset += header.frame_len();
                Ok(Step::Frame { offset, header })
            }
            Err(error) => Ok(Step::Bad { offset, error }),
        }
    }

    /// The next frame's header only: its data is neither read nor checked
    /// (readers that select frames by header skip the rest unread; see
    /// [`read_data`](Self::read_data)). A header whose frame does not fit in
    /// the file is [`Step::Bad`] (a frame being written, or a torn tail).
    pub fn next_header(&mut self) -> io::Result<Step> {
        if self.offset >= self.len {
            return Ok(Step::End);
        }
        let offset = self.offset;
        let avail = self.len - offset;
        let want = (8 + MAX_HEADER_LEN as u64).min(avail) as usize;
        self.head.resize(want, 0);
        self.file.read_exact_at(&mut self.head, offset)?;
        match FrameHeader::decode(&self.head) {
            Ok(h) if h.frame_len() <= avail => {
                self.offset += h.frame_len();
                Ok(Step::Frame { offset, header: h })
            }
            Ok(h) => Ok(Step::Bad { offset, error: FrameError::Incomplete { needed: h.frame_len() as usize } }),
            Err(error) => Ok(Step::Bad { offset, error }),
        }
    }

    /// Read and check the data of the frame at `offset` (as returned by
    /// [`next_header`](Self::next_header)) into [`data`](Self::data).
    pub fn read_data(&mut self, offset: u64, header: &FrameHeader) -> io::Result<Result<(), FrameError>> {
        let data_at = offset + header.encoded_len() as u64;
        let have = (self.len.saturating_sub(data_at)).min(u64::from(header.data_len)) as usize;
        self.data.resize(have, 0);
        self.file.read_exact_at(&mut self.data, data_at)?;
        Ok(header.check_data(&self.data))
    }

    /// The records of the frame at `offset` (as returned by
    /// [`next_header`](Self::next_header)) into `raw`: its data read,
    /// checked and decompressed. The inner `Err` says why this frame cannot
    /// be read; the outer one that the source could not be read at all.
    pub fn read_records(
        &mut self,
        offset: u64,
        header: &FrameHeader,
        dec: &mut DataDecoder,
        raw: &mut Vec<u8>,
    ) -> io::Result<Result<(), DecodeError>> {
        if let Err(e) = self.read_data(offset, header)? {
            return Ok(Err(e.into()));
        }
        Ok(dec.decompress(header, &self.data, raw).map_err(DecodeError::from))
    }

    /// The records of the frame the last [`Step::Frame`] of
    /// [`next_frame`](Self::next_frame) returned, whose data is already read
    /// and checked.
    pub fn records(&self, header: &FrameHeader, dec: &mut DataDecoder, raw: &mut Vec<u8>) -> Result<(), DecodeError> {
        dec.decompress(header, &self.data, raw).map_err(DecodeError::from)
    }

    /// Decode and check the frame at `offset`, reading its data into `self.data`.
    fn frame_at(&mut self, offset: u64) -> io::Result<Result<FrameHeader, FrameError>> {
        let avail = self.len - offset;
        let want = (8 + MAX_HEADER_LEN as u64).min(avail) as usize;
        self.head.resize(want, 0);
        self.file.read_exact_at(&mut self.head, offset)?;
        let header = match FrameHeader::decode(&self.head) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let data_at = offset + header.encoded_len() as u64;
        let have = (self.len - data_at).min(u64::from(header.data_len)) as usize;
        self.data.resize(have, 0);
        self.file.read_exact_at(&mut self.data, data_at)?;
        Ok(header.check_data(&self.data).map(|()| header))
    }

    /// Continue the walk at `offset` (after damage, at the next whole frame).
    pub fn seek(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The first whole frame starting after `from`, if any: tells a torn tail
    /// (none) from damage in the middle of a file (some).
    pub fn next_valid_frame_after(&mut self, from: u64) -> io::Result<Option<u64>> {
        const WINDOW: u64 = 1 << 20;
        let magic = SKIPPABLE_MAGIC.to_le_bytes();
        let mut buf = vec![0u8; WINDOW as usize];
        let mut pos = from + 1;
        while pos < self.len {
            let n = (self.len - pos).min(WINDOW) as usize;
            self.file.read_exact_at(&mut buf[..n], pos)?;
            let candidates: Vec<u64> = memmem::find_iter(&buf[..n], &magic).map(|i| pos + i as u64).collect();
            for c in candidates {
                if self.frame_at(c)?.is_ok() {
                    return Ok(Some(c));
                }
            }
            // Overlap by 3 bytes so a magic split across windows is still seen.
            pos += (n as u64).saturating_sub(3).max(1);
        }
        Ok(None)
    }
}
