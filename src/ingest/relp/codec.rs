//! RELP framing (rsyslog's reliable event logging protocol), as a pure
//! decoder and encoder: no sockets, no clock.
//!
//! ```text
//! FRAME   = TXNR SP COMMAND SP DATALEN [SP DATA] LF
//! TXNR    = 1..999999999          COMMAND = 1*32ALPHA
//! DATALEN = 0..MAX                DATA    = DATALEN octets
//! ```
//! The server answers each transaction with `TXNR rsp LEN 200 OK` (or a
//! 5xx), and may end a session with `0 serverclose 0`.

use std::fmt;

/// One RELP frame, borrowing its data from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The transaction number, which the answer repeats.
    pub txnr: u64,
    /// `open`, `syslog`, `close`, ...
    pub command: &'a [u8],
    /// The command's data (a syslog record for `syslog`); empty when `DATALEN` is 0.
    pub data: &'a [u8],
}

/// Why bytes are not a RELP frame: the session cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelpError {
    /// The transaction number is not 1 to 9 digits.
    BadTxnr,
    /// The command is not 1 to 32 letters.
    BadCommand,
    /// The data length is not a number.
    BadDatalen,
    /// The data length is above the limit (the ceiling of `max_record_bytes`).
    TooLarge {
        /// The length announced.
        len: u64,
        /// The largest accepted.
        limit: usize,
    },
    /// The frame does not end with LF after its data.
    MissingTrailer,
}

impl fmt::Display for RelpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelpError::BadTxnr => f.write_str("transaction number is not a number"),
            RelpError::BadCommand => f.write_str("command is not 1-32 letters"),
            RelpError::BadDatalen => f.write_str("data length is not a number"),
            RelpError::TooLarge { len, limit } => write!(f, "data length {len} exceeds the limit of {limit}"),
            RelpError::MissingTrailer => f.write_str("frame does not end with LF"),
        }
    }
}

impl RelpError {
    /// The `reason` label of `ferry_framing_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            RelpError::TooLarge { .. } => "relp_too_large",
            _ => "relp_malformed",
        }
    }
}

/// Decode one frame from the front of `buf`: `Ok(None)` means more input is
/// needed; `Ok(Some((frame, consumed)))` a whole frame.
pub fn decode(buf: &[u8], max_data: usize) -> Result<Option<(Frame<'_>, usize)>, RelpError> {
    let mut at = 0;
    let Some(txnr) = number(buf, &mut at, 9, RelpError::BadTxnr)? else { return Ok(None) };
    let start = at;
    while at < buf.len() && buf[at].is_ascii_alphabetic() {
        at += 1;
        if at - start > 32 {
            return Err(RelpError::BadCommand);
        }
    }
    if at == buf.len() {
        return Ok(None);
    }
    if at == start || buf[at] != b' ' {
        return Err(RelpError::BadCommand);
    }
    let command = &buf[start..at];
    at += 1;
    // DATALEN ends with SP (data follows) or LF (no data).
    let lstart = at;
    while at < buf.len() && buf[at].is_ascii_digit() {
        at += 1;
        if at - lstart > 10 {
            return Err(RelpError::BadDatalen);
        }
    }
    if at == buf.len() {
        return Ok(None);
    }
    if at == lstart {
        return Err(RelpError::BadDatalen);
    }
    let len: u64 = std::str::from_utf8(&buf[lstart..at]).expect("digits").parse().map_err(|_| RelpError::BadDatalen)?;
    if len > max_data as u64 {
        return Err(RelpError::TooLarge { len, limit: max_data });
    }
    let len = len as usize;
    match buf[at] {
        b'\n' if len == 0 => return Ok(Some((Frame { txnr, command, data: &[] }, at + 1))),
        b' ' => at += 1,
        _ => return Err(RelpError::BadDatalen),
    }
    if buf.len() < at + len + 1 {
        return Ok(None);
    }
    let data = &buf[at..at + len];
    if buf[at + len] != b'\n' {
        return Err(RelpError::MissingTrailer);
    }
    Ok(Some((Frame { txnr, command, data }, at + len + 1)))
}

/// Parse digits then SP; `None` when the input ends first.
fn number(buf: &[u8], at: &mut usize, max_digits: usize, err: RelpError) -> Result<Option<u64>, RelpError> {
    let start = *at;
    while *at < buf.len() && buf[*at].is_ascii_digit() {
        *at += 1;
        if *at - start > max_digits {
            return Err(err);
        }
    }
    if *at == buf.len() {
        return Ok(None);
    }
    if *at == start || buf[*at] != b' ' {
        return Err(err);
    }
    let n = std::str::from_utf8(&buf[start..*at]).expect("digits").parse().map_err(|_| err)?;
    *at += 1;
    Ok(Some(n))
}

/// Append a response frame `TXNR rsp LEN DATA LF`.
pub fn encode_rsp(txnr: u64, data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{txnr} rsp {}", data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames() {
        let input = b"1 open 12 relp_version\n2 syslog 5 hello\n3 close 0\n";
        let (f, n) = decode(input, 100).unwrap().unwrap();
        assert_eq!((f.txnr, f.command, f.data), (1, &b"open"[..], &b"relp_version"[..]));
        let (f, m) = decode(&input[n..], 100).unwrap().unwrap();
        assert_eq!((f.txnr, f.command, f.data), (2, &b"syslog"[..], &b"hello"[..]));
        let (f, _) = decode(&input[n + m..], 100).unwrap().unwrap();
        assert_eq!((f.txnr, f.command, f.data), (3, &b"close"[..], &b""[..]));
        for cut in 0..input.len().min(23) {
            assert_eq!(decode(&input[..cut], 100), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(decode(b"x syslog 1 a\n", 100), Err(RelpError::BadTxnr));
        assert_eq!(decode(b"1 sys1og 1 a\n", 100), Err(RelpError::BadCommand));
        assert_eq!(decode(b"1 syslog z\n", 100), Err(RelpError::BadDatalen));
        assert_eq!(decode(b"1 syslog 5 abcdeX", 100), Err(RelpError::MissingTrailer));
        assert!(matches!(decode(b"1 syslog 500 ", 100), Err(RelpError::TooLarge { .. })));
        let mut out = Vec::new();
        encode_rsp(7, b"200 OK", &mut out);
        assert_eq!(out, b"7 rsp 6 200 OK\n");
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b, 64);
        }

        #[test]
        fn round_trip(txnr in 1u64..999_999_999, data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut wire = format!("{txnr} syslog {}", data.len()).into_bytes();
            if !data.is_empty() { wire.push(b' '); wire.extend_from_slice(&data); }
            wire.push(b'\n');
            let (f, n) = decode(&wire, 1000).unwrap().unwrap();
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(f.txnr, txnr);
            prop_assert_eq!(f.data, &data[..]);
        }
    }
}
