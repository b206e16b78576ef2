//! Reversible line escaping: one record is always exactly one line.
//!
//! A record may contain any bytes. In the archive, `\` becomes `\\`, LF `\n`,
//! CR `\r` and NUL `\0`; every other byte (invalid UTF-8 included) is kept as
//! received, so `zstdgrep` sees the message as it was sent. [`unescape`]
//! reverses it exactly; an unknown escape (only possible in a hand-edited
//! file) is kept literally.

use memchr::{memchr, memchr3};

/// Append `record`, escaped, to `out` (no trailing LF). Returns whether the
/// record held a NUL byte, which the scan finds anyway (callers flag it).
#[inline]
pub fn escape_into(record: &[u8], out: &mut Vec<u8>) -> bool {
    let mut rest = record;
    let mut nul = false;
    loop {
        // Two SIMD searches beat a byte loop for the common case of records
        // with nothing to escape; NUL is only looked for before the first hit.
        let a = memchr3(b'\\', b'\n', b'\r', rest);
        let hit = memchr(0, &rest[..a.unwrap_or(rest.len())]).or(a);
        match hit {
            None => {
                out.extend_from_slice(rest);
                return nul;
            }
            Some(i) => {
                nul |= rest[i] == 0;
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(match rest[i] {
                    b'\\' => b"\\\\",
                    b'\n' => b"\\n",
                    b'\r' => b"\\r",
                    _ => b"\\0",
                });
                rest = &rest[i + 1..];
            }
        }
    }
}

/// True when `record` holds a byte that [`escape_into`] rewrites.
#[inline]
pub fn needs_escape(record: &[u8]) -> bool {
    memchr3(b'\\', b'\n', b'\r', record).is_some() || memchr(0, record).is_some()
}

/// Reverse [`escape_into`] for one line (without its LF).
pub fn unescape(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    unescape_into(line, &mut out);
    out
}

/// [`unescape`] appending to `out`: batch decoders reuse one buffer.
pub fn unescape_into(line: &[u8], out: &mut Vec<u8>) {
    if memchr(b'\\', line).is_none() {
        out.extend_from_slice(line);
        return;
    }
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' && i + 1 < line.len() {
            let r = match line[i + 1] {
                b'\\' => Some(b'\\'),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b'0' => Some(0),
                _ => None,
            };
            if let Some(r) = r {
                out.push(r);
                i += 2;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn esc(r: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        escape_into(r, &mut v);
        v
    }

    #[test]
    fn examples() {
        assert_eq!(esc(b"plain"), b"plain");
        assert_eq!(esc(b"a\nb\rc\0d\\e"), b"a\\nb\\rc\\0d\\\\e");
        assert_eq!(unescape(b"a\\nb\\rc\\0d\\\\e"), b"a\nb\rc\0d\\e");
        assert_eq!(unescape(b"trailing\\"), b"trailing\\");
        assert_eq!(unescape(b"\\x"), b"\\x");
    }

    proptest! {
        #[test]
        fn escape_then_unescape_is_identity(r in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(unescape(&esc(&r)), r);
        }

        #[test]
        fn any_bytes_are_one_line(r in proptest::collection::vec(any::<u8>(), 0..512)) {
            let e = esc(&r);
            prop_assert!(!e.contains(&b'\n') && !e.contains(&b'\r') && !e.contains(&0));
            prop_assert_eq!(needs_escape(&r), e != r);
            let mut v = Vec::new();
            prop_assert_eq!(escape_into(&r, &mut v), r.contains(&0));
        }
    }
}
