//! GELF payloads: gzip, zlib or plain, told apart by their first bytes as
//! Graylog does. Inflation stops one byte past `max_record_bytes`, so a
//! decompression bomb costs at most that much memory, and what is cut is
//! kept as a truncated record rather than lost.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read};

/// How a GELF payload is encoded, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Starts with the gzip magic `1f 8b`.
    Gzip,
    /// A zlib header (`78 ..`, with a valid header checksum).
    Zlib,
    /// Anything else: the JSON as it is.
    Plain,
}

impl Encoding {
    /// The encoding of a payload, from its first bytes.
    pub fn of(m: &[u8]) -> Encoding {
        match m {
            [0x1f, 0x8b, ..] => Encoding::Gzip,
            // 0x78: deflate with a 32 KiB window, what every zlib sender
            // writes. The header checksum, and no preset dictionary (which
            // no GELF sender uses), keep plain text such as "x " from matching.
            [b0 @ 0x78, b1, ..] if (u16::from(*b0) * 256 + u16::from(*b1)) % 31 == 0 && b1 & 0x20 == 0 => {
                Encoding::Zlib
            }
            _ => Encoding::Plain,
        }
    }

    /// For messages: `gzip`, `zlib`, `plain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zlib => "zlib",
            Encoding::Plain => "plain",
        }
    }
}

/// A compressed payload that does not decompress.
#[derive(Debug)]
pub struct DecodeError {
    /// What the payload looked like.
    pub encoding: Encoding,
    /// What inflating it said.
    pub error: io::Error,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable {} payload: {}", self.encoding.as_str(), self.error)
    }
}

/// One message's record: at most `max` bytes, `truncated` if there was more.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The record: the payload, inflated if it was compressed.
    pub data: Cow<'a, [u8]>,
    /// There was more than `max` bytes; the rest is dropped.
    pub truncated: bool,
}

/// Decode one whole (or reassembled) message into its record.
pub fn decode(m: &[u8], max: usize) -> Result<Decoded<'_>, DecodeError> {
    let enc = Encoding::of(m);
    let (data, truncated) = match enc {
        Encoding::Plain => Ok((Cow::Borrowed(&m[..m.len().min(max)]), m.len() > max)),
        Encoding::Gzip => inflate(flate2::read::GzDecoder::new(m), m.len(), max),
        Encoding::Zlib => inflate(flate2::read::ZlibDecoder::new(m), m.len(), max),
    }
    .map_err(|error| DecodeError { encoding: enc, error })?;
    Ok(Decoded { data: strip_terminator(data, truncated), truncated })
}

/// Some senders end a datagram with the NUL (or LF) that frames GELF over
/// TCP; it is framing, not message. A cut record keeps its last byte.
fn strip_terminator(data: Cow<'_, [u8]>, truncated: bool) -> Cow<'_, [u8]> {
    if truncated || !matches!(data.last(), Some(0 | b'\n')) {
        return data;
    }
    match data {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..b.len() - 1]),
        Cow::Owned(mut v) => {
            v.pop();
            Cow::Owned(v)
        }
    }
}

/// Read at most `max + 1` bytes of `r`: the extra byte only says "cut".
/// The buffer starts from a guess and doubles, never past `max + 1`.
fn inflate<'a>(mut r: impl Read, compressed: usize, max: usize) -> io::Result<(Cow<'a, [u8]>, bool)> {
    let limit = max.saturating_add(1);
    let mut out = vec![0u8; compressed.saturating_mul(4).max(256).min(limit)];
    let mut len = 0;
    loop {
        if len == out.len() {
            let grown = out.len().saturating_mul(2).min(limit);
            out.reserve_exact(grown - out.len());
            out.resize(grown, 0);
        }
        match r.read(&mut out[len..]) {
            Ok(0) => {
                out.truncate(len);
                return Ok((Cow::Owned(out), false));
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if len >= limit {
            out.truncate(max);
            return Ok((Cow::Owned(out), true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    const MSG: &[u8] = br#"{"version":"1.1","host":"web-01","short_message":"GET /"}"#;

    #[test]
    fn zlib_gzip_and_plain_all_decode() {
        for (wire, enc) in [(gzip(MSG), Encoding::Gzip), (zlib(MSG), Encoding::Zlib), (MSG.to_vec(), Encoding::Plain)] {
            assert_eq!(Encoding::of(&wire), enc);
            let d = decode(&wire, 1024).unwrap();
            assert_eq!((&*d.data, d.truncated), (MSG, false), "{enc:?}");
        }
    }

    #[test]
    fn every_compression_level_of_zlib_is_recognised() {
        for level in 0..=9 {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::new(level));
            e.write_all(MSG).unwrap();
            assert_eq!(Encoding::of(&e.finish().unwrap()), Encoding::Zlib, "level {level}");
        }
        assert_eq!(Encoding::of(b"x marks the spot"), Encoding::Plain);
    }

    #[test]
    fn a_trailing_nul_or_lf_is_framing() {
        let mut m = MSG.to_vec();
        m.push(0);
        assert_eq!(&*decode(&m, 1024).unwrap().data, MSG);
        m.pop();
        m.push(b'\n');
        assert_eq!(&*decode(&gzip(&m), 1024).unwrap().data, MSG);
    }

    #[test]
    fn a_gzip_bomb_is_cut_at_the_limit() {
        let mut big = br#"{"short_message":""#.to_vec();
        big.resize(64 << 20, b'A');
        let bomb = gzip(&big);
        assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
        let max = 64 << 10;
        let d = decode(&bomb, max).unwrap();
        assert!(d.truncated);
        assert_eq!(&*d.data, &big[..max]);
        let Cow::Owned(v) = d.data else { panic!("inflated data is owned") };
        assert!(v.capacity() <= max + 1, "capacity {}", v.capacity());
    }

    #[test]
    fn plain_longer_than_the_limit_is_cut() {
        let d = decode(MSG, 10).unwrap();
        assert_eq!((&*d.data, d.truncated), (&MSG[..10], true));
        let z = zlib(MSG);
        let d = decode(&z, MSG.len()).unwrap();
        assert_eq!((&*d.data, d.truncated), (MSG, false), "exactly at the limit is not cut");
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let mut g = gzip(MSG);
        let n = g.len();
        g.truncate(n - 10);
        assert_eq!(decode(&g, 1024).unwrap_err().encoding, Encoding::Gzip);
        let mut z = zlib(MSG);
        z[5] ^= 0xff;
        z[6] ^= 0xff;
        assert!(decode(&z, 1024).is_err());
        assert!(decode(&[0x1f, 0x8b], 1024).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2000), prefix in 0usize..3, max in 1usize..5000) {
            let mut m = match prefix {
                0 => vec![0x1f, 0x8b],
                1 => vec![0x78, 0x9c],
                _ => vec![],
            };
            m.extend_from_slice(&body);
            if let Ok(d) = decode(&m, max) {
                prop_assert!(d.data.len() <= max);
            }
        }

        #[test]
        fn compressed_messages_round_trip(body in proptest::collection::vec(any::<u8>(), 1..20_000), max in 1usize..30_000) {
            prop_assume!(!matches!(body.last(), Some(0 | b'\n')));
            for wire in [gzip(&body), zlib(&body)] {
                let d = decode(&wire, max).unwrap();
                let n = body.len().min(max);
                prop_assert_eq!(&*d.data, &body[..n]);
                prop_assert_eq!(d.truncated, body.len() > max);
            }
        }
    }
}
