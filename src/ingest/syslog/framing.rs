//! Syslog stream framing (RFC 6587), as a pure decoder: bytes in, records
//! out, no sockets and no clock.
//!
//! The framing is detected once per connection from its first byte: a digit
//! means octet counting (`LEN SP MSG`), anything else LF-terminated lines
//! (non-transparent framing). GELF over TCP is the same decoder with NUL as
//! the terminator and no detection ([`Decoder::nul_delimited`]). A record longer than `max_record` is cut to
//! `max_record` bytes, returned with `truncated = true`, and the rest of it is
//! skipped without buffering. A malformed or absurd octet count loses the
//! stream's synchronisation: that is a fatal [`FramingError`] for the
//! connection, never for the node.

use std::fmt;

/// Octet counts with more digits than this are garbage, whatever follows.
const MAX_COUNT_DIGITS: usize = 9;

/// How a stream connection's records are delimited (RFC 6587), detected from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `LEN SP MSG`: the first byte was a digit.
    OctetCounting,
    /// Records end with the decoder's terminator: LF for syslog, NUL for GELF.
    LineFeed,
}

/// Why a connection's stream cannot be decoded further.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// The octet count has a byte that is not a digit before its space.
    NotANumber {
        /// The byte found.
        found: u8,
    },
    /// The octet count is larger than any record we would accept.
    TooLarge {
        /// The count announced.
        count: u64,
        /// The largest accepted (`max_count`).
        limit: usize,
    },
}

impl FramingError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::NotANumber { .. } => "bad_octet_count",
            FramingError::TooLarge { .. } => "octet_count_too_large",
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::NotANumber { found } => {
                write!(f, "octet count is not a number (byte {:?} before the space)", *found as char)
            }
            FramingError::TooLarge { count, limit } => {
                write!(f, "octet count {count} exceeds the limit of {limit} bytes")
            }
        }
    }
}

/// The outcome of one decoding step over the unread input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Not enough input for anything; read more.
    Incomplete,
    /// `consumed` bytes were discarded (the tail of a truncated record, an
    /// empty line).
    Skip {
        /// Bytes to drop from the input.
        consumed: usize,
    },
    /// A record: `input[start..start + len]`; then drop `consumed` bytes.
    Record {
        /// Offset of the record in the input.
        start: usize,
        /// The record's length (at most `max_record`).
        len: usize,
        /// Bytes to drop from the input, the record and its delimiter included.
        consumed: usize,
        /// The record was longer than `max_record` and is cut; the rest is skipped.
        truncated: bool,
    },
    /// The stream cannot be decoded further: close the connection.
    Error(FramingError),
}

/// Per-connection decoder state.
#[derive(Debug)]
pub struct Decoder {
    framing: Option<Framing>,
    max_record: usize,
    /// Largest octet count accepted (longer ones, up to this, are truncated).
    max_count: usize,
    /// Bytes still to discard of a truncated record (`None` = not skipping).
    /// For LF framing, `Some(u64::MAX)` means "until the next terminator".
    skipping: Option<u64>,
    /// What ends a record in `LineFeed` framing.
    terminator: u8,
}

impl Decoder {
    /// `max_record`: longest record kept; `max_count`: the octet count above
    /// which the peer is considered broken.
    pub fn new(max_record: usize, max_count: usize) -> Decoder {
        Decoder { framing: None, max_record, max_count: max_count.max(max_record), skipping: None, terminator: b'\n' }
    }

    /// GELF over TCP: records end with NUL, never octet-counted; a last
    /// record without its NUL at end of stream is still a record.
    pub fn nul_delimited(max_record: usize) -> Decoder {
        let max_record = max_record.max(1);
        Decoder { framing: Some(Framing::LineFeed), max_record, max_count: max_record, skipping: None, terminator: 0 }
    }

    /// The framing detected (or set); `None` before the first byte.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// True when a partial record is buffered or being skipped.
    pub fn mid_record(&self, unread: &[u8]) -> bool {
        self.skipping.is_some() || !unread.is_empty()
    }

    /// Decode the next step from `input` (the unread bytes).
    pub fn next(&mut self, input: &[u8]) -> Next {
        if input.is_empty() {
            return Next::Incomplete;
        }
        let framing = *self.framing.get_or_insert(if input[0].is_ascii_digit() {
            Framing::OctetCounting
        } else {
            Framing::LineFeed
        });
        match framing {
            Framing::LineFeed => self.next_line(input),
            Framing::OctetCounting => self.next_counted(input),
        }
    }

    /// Called at end of input: a last LF-framed line without its LF is still
    /// a record; anything else pending is an incomplete frame.
    pub fn finish<'a>(&mut self, input: &'a [u8]) -> Option<(&'a [u8], bool)> {
        if self.skipping.take().is_some() || input.is_empty() || self.framing != Some(Framing::LineFeed) {
            return None;
        }
        let n = input.len().min(self.max_record);
        Some((&input[..n], n < input.len()))
    }

    fn next_line(&mut self, input: &[u8]) -> Next {
        if self.skipping.is_some() {
            return match memchr::memchr(self.terminator, input) {
                Some(i) => {
                    self.skipping = None;
                    Next::Skip { consumed: i + 1 }
                }
                None => Next::Skip { consumed: input.len() },
            };
        }
        let window = &input[..input.len().min(self.max_record + 1)];
        match memchr::memchr(self.terminator, window) {
            Some(0) => Next::Skip { consumed: 1 },
            Some(i) => Next::Record { start: 0, len: i, consumed: i + 1, truncated: false },
            None if window.len() > self.max_record => {
                self.skipping = Some(u64::MAX);
                Next::Record { start: 0, len: self.max_record, consumed: self.max_record, truncated: true }
            }
            None => Next::Incomplete,
        }
    }

    fn next_counted(&mut self, input: &[u8]) -> Next {
        if let Some(left) = self.skipping {
            let n = (input.len() as u64).min(left);
            self.skipping = if n == left { None } else { Some(left - n) };
            return Next::Skip { consumed: n as usize };
        }
        // Between frames, tolerate stray LFs some senders add after each frame.
        if input[0] == b'\n' || input[0] == b'\r' {
            let n = input.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
            return Next::Skip { consumed: n };
        }
        let mut count: u64 = 0;
        let mut i = 0;
        loop {
            if i == input.len() {
                return Next::Incomplete;
            }
            let b = input[i];
            if b == b' ' && i > 0 {
                break;
            }
            if !b.is_ascii_digit() {
                return Next::Error(FramingError::NotANumber { found: b });
            }
            if i >= MAX_COUNT_DIGITS {
                return Next::Error(FramingError::TooLarge {
                    count: count * 10 + u64::from(b - b'0'),
                    limit: self.max_count,
                });
            }
            count = count * 10 + u64::from(b - b'0');
            i += 1;
        }
        if count > self.max_count as u64 {
            return Next::Error(FramingError::TooLarge { count, limit: self.max_count });
        }
        let start = i + 1;
        let count = count as usize;
        if count <= self.max_record {
            if input.len() < start + count {
                return Next::Incomplete;
            }
            // rsyslog's and syslog-ng's RFC 5424 templates end in LF, which they
            // count into the frame: it is framing, not message (so `zstdgrep 'x$'` works).
            let len = if count > 0 && input[start + count - 1] == b'\n' { count - 1 } else { count };
            if len == 0 {
                return Next::Skip { consumed: start + count };
            }
            return Next::Record { start, len, consumed: start + count, truncated: false };
        }
        if input.len() < start + self.max_record {
            return Next::Incomplete;
        }
        self.skipping = Some((count - self.max_record) as u64);
        Next::Record { start, len: self.max_record, consumed: start + self.max_record, truncated: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in chunks of `chunk` bytes; collect records (and a fatal error).
    fn decode_all(input: &[u8], chunk: usize, max: usize) -> (Vec<(Vec<u8>, bool)>, Option<FramingError>) {
        let mut d = Decoder::new(max, 1 << 20);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.next(&buf) {
                    Next::Incomplete => break,
                    Next::Skip { consumed } => {
                        buf.drain(..consumed);
                    }
                    Next::Record { start, len, consumed, truncated } => {
                        out.push((buf[start..start + len].to_vec(), truncated));
                        buf.drain(..consumed);
                    }
                    Next::Error(e) => return (out, Some(e)),
                }
            }
        }
        if let Some((r, t)) = d.finish(&buf) {
            out.push((r.to_vec(), t));
        }
        (out, None)
    }

    #[test]
    fn line_feed() {
        let (r, e) = decode_all(b"<13>one\n<13>two\n\nthree", 3, 100);
        assert_eq!(e, None);
        let r: Vec<_> = r.into_iter().map(|x| x.0).collect();
        assert_eq!(r, vec![b"<13>one".to_vec(), b"<13>two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn octet_counting() {
        let (r, e) = decode_all(b"3 abc5 hello\n2 x\n", 1, 100);
        assert_eq!(e, None);
        let r: Vec<_> = r.into_iter().map(|x| x.0).collect();
        // A frame's final LF (rsyslog's templates end in one) is framing.
        assert_eq!(r, vec![b"abc".to_vec(), b"hello".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn long_records_are_truncated_and_stream_continues() {
        let mut input = vec![b'a'; 50];
        input.extend_from_slice(b"\nshort\n");
        let (r, _) = decode_all(&input, 7, 10);
        assert_eq!(r, vec![(vec![b'a'; 10], true), (b"short".to_vec(), false)]);

        let mut input = b"50 ".to_vec();
        input.extend_from_slice(&[b'b'; 50]);
        input.extend_from_slice(b"2 ok");
        let (r, _) = decode_all(&input, 4, 10);
        assert_eq!(r, vec![(vec![b'b'; 10], true), (b"ok".to_vec(), false)]);
    }

    #[test]
    fn bad_counts_are_errors() {
        assert_eq!(decode_all(b"12a ", 10, 100).1, Some(FramingError::NotANumber { found: b'a' }));
        assert!(matches!(decode_all(b"99999999999999 x", 100, 100).1, Some(FramingError::TooLarge { .. })));
        assert!(matches!(decode_all(b"2000000 x", 100, 100).1, Some(FramingError::TooLarge { .. })));
    }

    fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20)
    }

    /// Feed `input` in pieces of `step` bytes, as reads would deliver it.
    fn split_all(input: &[u8], max: usize, step: usize) -> Vec<(Vec<u8>, bool)> {
        let mut s = Decoder::nul_delimited(max);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                match s.next(&buf[pos..]) {
                    Next::Incomplete => break,
                    Next::Skip { consumed } => pos += consumed,
                    Next::Record { len, consumed, truncated, .. } => {
                        out.push((buf[pos..pos + len].to_vec(), truncated));
                        pos += consumed;
                    }
                    Next::Error(e) => panic!("NUL framing has no framing errors: {e}"),
                }
            }
            buf.drain(..pos);
        }
        out.extend(s.finish(&buf).map(|(r, t)| (r.to_vec(), t)));
        out
    }

    #[test]
    fn nul_delimited_with_a_final_unterminated_message() {
        let got = split_all(b"{\"a\":1}\0\0{\"b\":2}\0{\"c\":3}", 100, 3);
        let want: Vec<(Vec<u8>, bool)> =
            [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"].iter().map(|r| (r.to_vec(), false)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_long_message_is_cut_and_the_next_one_kept() {
        let got = split_all(b"0123456789abc\0next\0", 4, 5);
        assert_eq!(got, vec![(b"0123".to_vec(), true), (b"next".to_vec(), false)]);
        assert_eq!(split_all(b"0123456789", 4, 2), vec![(b"0123".to_vec(), true)], "its tail is not a message");
    }

    proptest! {
        #[test]
        fn pieces_split_like_the_whole(input in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..500),
                                       max in 1usize..64, step in 1usize..50) {
            let whole = split_all(&input, max, input.len().max(1));
            prop_assert_eq!(&split_all(&input, max, step), &whole);
            for (r, t) in &whole {
                prop_assert!(!r.is_empty() && r.len() <= max && !r.contains(&0));
                prop_assert!(!t || r.len() == max);
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..400), chunk in 1usize..50, max in 1usize..64) {
            let _ = decode_all(&input, chunk, max);
        }

        #[test]
        fn octet_counted_round_trip(recs in frames(), chunk in 1usize..64) {
            let mut input = Vec::new();
            for r in &recs {
                input.extend_from_slice(format!("{} ", r.len()).as_bytes());
                input.extend_from_slice(r);
            }
            let (out, err) = decode_all(&input, chunk, 1000);
            prop_assert_eq!(err, None);
            let got: Vec<_> = out.into_iter().map(|x| x.0).collect();
            let want: Vec<Vec<u8>> = recs
                .iter()
                .map(|r| r.strip_suffix(b"\n").unwrap_or(r).to_vec())
                .filter(|r| !r.is_empty())
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn line_feed_round_trip(recs in proptest::collection::vec("[^\n0-9][^\n]{0,30}", 0..20), chunk in 1usize..64) {
            let mut input = Vec::new();
            for r in &recs {
                input.extend_from_slice(r.as_bytes());
                input.push(b'\n');
            }
            let (out, err) = decode_all(&input, chunk, 1000);
            prop_assert_eq!(err, None);
            let got: Vec<_> = out.into_iter().map(|x| x.0).collect();
            let want: Vec<Vec<u8>> = recs.iter().map(|r| r.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
