//! GELF over TCP frames each message with a NUL byte. A pure splitter, like
//! the syslog framing decoder: a message longer than `max` is cut to `max`
//! bytes (flagged truncated) and its rest skipped without buffering it.

pub use crate::ingest::syslog::framing::Next;

#[derive(Debug)]
pub struct Splitter {
    max: usize,
    /// Inside the tail of a message already cut and returned.
    skipping: bool,
}

impl Splitter {
    pub fn new(max: usize) -> Splitter {
        Splitter { max: max.max(1), skipping: false }
    }

    /// True when part of a message is buffered or being skipped.
    pub fn mid_record(&self, unread: &[u8]) -> bool {
        self.skipping || !unread.is_empty()
    }

    pub fn next(&mut self, input: &[u8]) -> Next {
        if input.is_empty() {
            return Next::Incomplete;
        }
        if self.skipping {
            return match memchr::memchr(0, input) {
                Some(i) => {
                    self.skipping = false;
                    Next::Skip { consumed: i + 1 }
                }
                None => Next::Skip { consumed: input.len() },
            };
        }
        let window = &input[..input.len().min(self.max + 1)];
        match memchr::memchr(0, window) {
            Some(0) => Next::Skip { consumed: 1 },
            Some(i) => Next::Record { start: 0, len: i, consumed: i + 1, truncated: false },
            None if window.len() > self.max => {
                self.skipping = true;
                Next::Record { start: 0, len: self.max, consumed: self.max, truncated: true }
            }
            None => Next::Incomplete,
        }
    }

    /// At end of stream: senders may omit the last NUL, so what is left is
    /// still a message (unless it is the tail of one already cut).
    pub fn finish<'a>(&mut self, input: &'a [u8]) -> Option<(&'a [u8], bool)> {
        if std::mem::take(&mut self.skipping) || input.is_empty() {
            return None;
        }
        let n = input.len().min(self.max);
        Some((&input[..n], n < input.len()))
    }
}

impl crate::ingest::syslog::stream::Frames for Splitter {
    fn next(&mut self, input: &[u8]) -> Next {
        Splitter::next(self, input)
    }
    fn mid_record(&self, unread: &[u8]) -> bool {
        Splitter::mid_record(self, unread)
    }
    fn finish<'a>(&mut self, input: &'a [u8]) -> Option<(&'a [u8], bool)> {
        Splitter::finish(self, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in pieces of `step` bytes, as reads would deliver it.
    fn split_all(input: &[u8], max: usize, step: usize) -> Vec<(Vec<u8>, bool)> {
        let mut s = Splitter::new(max);
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
                    Next::Error(e) => panic!("NUL splitting has no framing errors: {e}"),
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
}
