//! The link protocol, version 2: a pure codec (bytes ⇄ messages), with no
//! sockets and no clock, so it is tested and fuzzed on its own.
//!
//! ## Design constraints
//! - The receiver is authoritative for offsets: the uplink asks what it holds
//!   and resumes there; a lost state file on either side costs a question,
//!   never data.
//! - Appends are positional and idempotent: an append at the wrong offset is
//!   refused with the right one, so a retransmission after a reconnect can
//!   neither duplicate nor skip bytes.
//! - Frames travel as they are on disk (no recompression), so a sealed
//!   mirror segment is byte-identical to its origin and the seal's SHA-256
//!   proves it.
//!
//! ## Messages
//! Every message is `len: u32 BE | type: u8 | body`, `len` counting type and
//! body, at most [`MAX_MESSAGE`]. Integers are big-endian; strings are
//! `u16 length | UTF-8`.
//! ```text
//! uplink → receiver                      receiver → uplink
//! 1 HELLO  magic "FERRY" ver:u16 node    129 WELCOME ver:u16 [epoch:u64, v2]
//! 2 OPEN   id:u32 path                   130 REFUSE code:u16 reason     (then close)
//! 3 APPEND id:u32 offset:u64 frames..    131 HAVE  id:u32 len:u64 sealed:u8
//! 4 SEAL   id:u32 len:u64 sha256[32]     132 ACK   id:u32 len:u64       (durable length)
//! 5 PING   nonce:u64                     133 WRONG_OFFSET id:u32 expected:u64
//! 6 GONE   id:u32 tombstone path (v2)    134 SEALED id:u32 ok:u8
//!                                        135 PONG  nonce:u64
//!                                        136 ERROR id:u32 code:u16 reason (segment-level)
//! ```
//! `id` names a segment for the life of one connection (OPEN binds it to a
//! path relative to `archive/`). APPEND carries whole frames only.
//!
//! GONE (version 2) says that the origin deleted a segment before any
//! uplink delivered it (`on_full = "drop_oldest"`), with what its seal
//! record said: `len:u64 frames:u64 records:u64 first_seq:u64 next_seq:u64
//! sealed_ms:i64 sha256[32]`, then the path. The receiver keeps it as a
//! tombstone for `ferry audit` and answers SEALED (ok = 1: noted, or the
//! segment is sealed here anyway) or ERROR.
//!
//! WELCOME (version 2) carries the receiver's state epoch: a number drawn
//! when its state directory was created. An uplink that finds it changed
//! (the receiver lost its seal records and tombstones, or it is another
//! receiver) offers every segment it still holds again, so the receiver
//! seals what it has, against the origin's checksums, and gets the rest.
//!
//! ## Versions
//! HELLO carries the highest version the uplink speaks; a receiver answers
//! WELCOME with the highest both speak, or REFUSE `version_unsupported`
//! below [`MIN_VERSION`]. An uplink refused that way by an older receiver
//! offers the version below on its next connection, so edges can be
//! upgraded before central.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// TLS ALPN protocol name; a peer without it fails the handshake.
pub const ALPN: &[u8] = b"ferry/1";
/// Highest protocol version this build speaks.
pub const VERSION: u16 = 2;
/// Lowest version this build still speaks (receivers of version 1 know no GONE).
pub const MIN_VERSION: u16 = 1;
const MAGIC: &[u8; 5] = b"FERRY";
/// Largest message accepted (a chunk of whole frames plus headers).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Largest chunk of frames an uplink puts in one APPEND.
pub const MAX_APPEND: usize = 4 << 20;

/// Numbered error codes on the wire. Never renumber, never reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    /// The uplink offered a version below [`MIN_VERSION`]; it offers the one below its last on the next connection.
    VersionUnsupported = 1,
    /// The first message was not HELLO.
    BadHello = 2,
    /// The peer's certificate does not allow writing under that site.
    NotAuthorized = 3,
    /// OPEN or GONE named something that is not a segment path under `archive/`.
    InvalidPath = 4,
    /// APPEND carried bytes that are not whole, valid frames.
    InvalidFrame = 5,
    /// A message longer than [`MAX_MESSAGE`].
    MessageTooLarge = 6,
    /// The receiver's disk failed otherwise: nothing was written; retry later.
    Io = 7,
    /// The mirror is not the origin's copy. Reserved: this build answers such a SEAL with SEALED ok = 0.
    ChecksumMismatch = 8,
    /// A message out of order (a second HELLO, an id never opened, GONE in version 1) or one that does not decode.
    ProtocolViolation = 9,
    /// The receiver is stopping; the uplink reconnects, to it or the next address.
    ShuttingDown = 10,
    /// The receiver's disk is full: nothing was written; retry later.
    NoSpace = 11,
    /// The receiver's filesystem is read-only: nothing was written; retry later.
    ReadOnly = 12,
    /// The peer's certificate was revoked (a CRL reloaded while it was
    /// connected); its next handshake fails too.
    CertificateRevoked = 13,
    /// A code this build does not know (a newer peer's).
    Unknown = 0xffff,
}

impl Code {
    /// A refusal the receiver may lift by itself (its disk recovers): the
    /// uplink keeps the segment and offers it again after a backoff.
    pub fn is_transient(self) -> bool {
        matches!(self, Code::NoSpace | Code::ReadOnly | Code::Io)
    }

    /// The code for a failed disk operation at the receiver.
    pub fn of_io(e: &std::io::Error) -> Code {
        match crate::store::fs::Trouble::of(e) {
            crate::store::fs::Trouble::DiskFull => Code::NoSpace,
            crate::store::fs::Trouble::ReadOnly => Code::ReadOnly,
            crate::store::fs::Trouble::Io => Code::Io,
        }
    }

    /// The code on the wire; numbers this build does not know are [`Code::Unknown`].
    pub fn from_u16(v: u16) -> Code {
        match v {
            1 => Code::VersionUnsupported,
            2 => Code::BadHello,
            3 => Code::NotAuthorized,
            4 => Code::InvalidPath,
            5 => Code::InvalidFrame,
            6 => Code::MessageTooLarge,
            7 => Code::Io,
            8 => Code::ChecksumMismatch,
            9 => Code::ProtocolViolation,
            10 => Code::ShuttingDown,
            11 => Code::NoSpace,
            12 => Code::ReadOnly,
            13 => Code::CertificateRevoked,
            _ => Code::Unknown,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::VersionUnsupported => "version_unsupported",
            Code::BadHello => "bad_hello",
            Code::NotAuthorized => "not_authorized",
            Code::InvalidPath => "invalid_path",
            Code::InvalidFrame => "invalid_frame",
            Code::MessageTooLarge => "message_too_large",
            Code::Io => "io_error",
            Code::ChecksumMismatch => "checksum_mismatch",
            Code::ProtocolViolation => "protocol_violation",
            Code::ShuttingDown => "shutting_down",
            Code::NoSpace => "no_space",
            Code::ReadOnly => "read_only",
            Code::CertificateRevoked => "certificate_revoked",
            Code::Unknown => "unknown",
        }
    }
}

/// One message of the link protocol, either way (see the module docs for the wire layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// uplink → receiver, first: the highest version the uplink speaks and its node name (the certificate's name wins
    /// if they differ).
    Hello {
        /// Highest protocol version the uplink speaks.
        version: u16,
        /// The uplink's node name.
        node: String,
    },
    /// uplink → receiver: binds `id` to a segment path for this connection; answered by HAVE.
    Open {
        /// The connection-local name of the segment from now on.
        id: u32,
        /// The segment's path relative to `archive/`: `site/stream/date/file`.
        path: String,
    },
    /// uplink → receiver: whole frames to write at `offset`; answered by ACK once durable, or WRONG_OFFSET.
    Append {
        /// The segment, as OPEN bound it.
        id: u32,
        /// Where the frames go: the receiver refuses any other offset than its current length.
        offset: u64,
        /// Whole frames, as they are on disk, at most [`MAX_APPEND`] bytes.
        frames: Bytes,
    },
    /// uplink → receiver: the segment is complete at the origin; answered by SEALED.
    Seal {
        /// The segment, as OPEN bound it.
        id: u32,
        /// The sealed segment's length at the origin.
        len: u64,
        /// The SHA-256 of the whole segment at the origin.
        sha256: [u8; 32],
    },
    /// uplink → receiver: a keepalive; answered by PONG with the same nonce.
    Ping {
        /// Echoed in PONG, to match the answer.
        nonce: u64,
    },
    /// uplink → receiver (version 2): the origin deleted a segment before any uplink delivered it; answered by SEALED
    /// or ERROR.
    Gone {
        /// A connection-local id for the answer.
        id: u32,
        /// The deleted segment's path relative to `archive/`.
        path: String,
        /// What the deleted segment's seal record said.
        tombstone: Tombstone,
    },
    /// `epoch` is 0 (and not on the wire) in version 1.
    Welcome {
        /// The version both speak: the lower of the uplink's and the receiver's highest.
        version: u16,
        /// The receiver's state epoch: when it changes, the uplink offers every segment again.
        epoch: u64,
    },
    /// receiver → uplink: the connection is refused; the receiver closes it after this.
    Refuse {
        /// Why, as a number the uplink acts on.
        code: Code,
        /// Why, for the logs.
        reason: String,
    },
    /// receiver → uplink, the answer to OPEN: how much of the segment the receiver holds, where the uplink resumes.
    Have {
        /// The segment, as OPEN bound it.
        id: u32,
        /// Bytes the receiver holds (durably).
        len: u64,
        /// The receiver has sealed it already: nothing more to send.
        sealed: bool,
    },
    /// receiver → uplink: the segment is durable up to `len`.
    Ack {
        /// The segment, as OPEN bound it.
        id: u32,
        /// The durable length: what the uplink may count as delivered.
        len: u64,
    },
    /// receiver → uplink: an APPEND at another offset than the receiver's length; nothing written.
    WrongOffset {
        /// The segment, as OPEN bound it.
        id: u32,
        /// The receiver's length: where the uplink resumes.
        expected: u64,
    },
    /// receiver → uplink, the answer to SEAL or GONE.
    Sealed {
        /// The segment, as OPEN or GONE named it.
        id: u32,
        /// SEAL: the mirror matched the length and SHA-256 and is sealed. GONE: the tombstone is noted (or the segment
        /// is sealed here anyway).
        ok: bool,
    },
    /// receiver → uplink, the answer to PING.
    Pong {
        /// PING's nonce.
        nonce: u64,
    },
    /// receiver → uplink: one segment's operation failed; the connection stays up.
    Error {
        /// The segment, as OPEN or GONE named it.
        id: u32,
        /// Why, as a number the uplink acts on ([`Code::is_transient`]: retry later).
        code: Code,
        /// Why, for the logs.
        reason: String,
    },
}

/// A deleted segment's seal record as GONE carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The segment's sealed length in bytes.
    pub len: u64,
    /// Frames it held.
    pub frames: u64,
    /// Records it held.
    pub records: u64,
    /// The sequence number of its first record.
    pub first_seq: u64,
    /// The sequence number after its last record: the next segment's `first_seq`.
    pub next_seq: u64,
    /// When it was sealed, in Unix milliseconds.
    pub sealed_ms: i64,
    /// The SHA-256 of the whole segment.
    pub sha256: [u8; 32],
}

const TOMBSTONE_LEN: usize = 6 * 8 + 32;

impl Tombstone {
    /// `None` when the record holds no valid SHA-256.
    pub fn of_seal(s: &crate::store::segment::SealRecord) -> Option<Tombstone> {
        Some(Tombstone {
            len: s.len,
            frames: s.frames,
            records: s.records,
            first_seq: s.first_seq,
            next_seq: s.next_seq,
            sealed_ms: s.sealed_ms,
            sha256: s.sha256_bytes()?,
        })
    }

    /// The seal record the receiver writes for the tombstone.
    pub fn to_seal(&self) -> crate::store::segment::SealRecord {
        crate::store::segment::SealRecord {
            len: self.len,
            sha256: crate::store::segment::hex(&self.sha256),
            frames: self.frames,
            records: self.records,
            first_seq: self.first_seq,
            next_seq: self.next_seq,
            sealed_ms: self.sealed_ms,
        }
    }
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    /// A type byte no message has.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body is shorter or longer than its type requires, or a string is not UTF-8.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The code a receiver refuses with.
    pub fn code(&self) -> Code {
        match self {
            DecodeError::TooLarge(_) => Code::MessageTooLarge,
            _ => Code::ProtocolViolation,
        }
    }
}

impl Msg {
    fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => 1,
            Msg::Open { .. } => 2,
            Msg::Append { .. } => 3,
            Msg::Seal { .. } => 4,
            Msg::Ping { .. } => 5,
            Msg::Gone { .. } => 6,
            Msg::Welcome { .. } => 129,
            Msg::Refuse { .. } => 130,
            Msg::Have { .. } => 131,
            Msg::Ack { .. } => 132,
            Msg::WrongOffset { .. } => 133,
            Msg::Sealed { .. } => 134,
            Msg::Pong { .. } => 135,
            Msg::Error { .. } => 136,
        }
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        out.put_u8(self.kind());
        match self {
            Msg::Hello { version, node } => {
                out.put_slice(MAGIC);
                out.put_u16(*version);
                put_str(out, node);
            }
            Msg::Open { id, path } => {
                out.put_u32(*id);
                put_str(out, path);
            }
            Msg::Append { id, offset, frames } => {
                out.put_u32(*id);
                out.put_u64(*offset);
                out.put_slice(frames);
            }
            Msg::Seal { id, len, sha256 } => {
                out.put_u32(*id);
                out.put_u64(*len);
                out.put_slice(sha256);
            }
            Msg::Ping { nonce } | Msg::Pong { nonce } => out.put_u64(*nonce),
            Msg::Gone { id, path, tombstone: t } => {
                out.put_u32(*id);
                for v in [t.len, t.frames, t.records, t.first_seq, t.next_seq] {
                    out.put_u64(v);
                }
                out.put_i64(t.sealed_ms);
                out.put_slice(&t.sha256);
                put_str(out, path);
            }
            Msg::Welcome { version, epoch } => {
                out.put_u16(*version);
                if *version >= 2 {
                    out.put_u64(*epoch);
                }
            }
            Msg::Refuse { code, reason } => {
                out.put_u16(*code as u16);
                put_str(out, reason);
            }
            Msg::Have { id, len, sealed } => {
                out.put_u32(*id);
                out.put_u64(*len);
                out.put_u8(u8::from(*sealed));
            }
            Msg::Ack { id, len } => {
                out.put_u32(*id);
                out.put_u64(*len);
            }
            Msg::WrongOffset { id, expected } => {
                out.put_u32(*id);
                out.put_u64(*expected);
            }
            Msg::Sealed { id, ok } => {
                out.put_u32(*id);
                out.put_u8(u8::from(*ok));
            }
            Msg::Error { id, code, reason } => {
                out.put_u32(*id);
                out.put_u16(*code as u16);
                put_str(out, reason);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Bytes on the wire for this message.
    pub fn encoded_len(&self) -> usize {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.len()
    }

    /// Decode one message from the front of `buf`, consuming it. `Ok(None)`
    /// means more bytes are needed.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Msg>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_MESSAGE {
            return Err(DecodeError::TooLarge(len));
        }
        if len == 0 {
            return Err(DecodeError::Malformed("empty"));
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let kind = body.get_u8();
        let msg = decode_body(kind, &mut body)?;
        if body.has_remaining() && !matches!(msg, Msg::Append { .. }) {
            return Err(DecodeError::Malformed("oversized"));
        }
        Ok(Some(msg))
    }
}

fn decode_body(kind: u8, b: &mut Bytes) -> Result<Msg, DecodeError> {
    fn need(b: &Bytes, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if b.remaining() < n {
            Err(DecodeError::Malformed(what))
        } else {
            Ok(())
        }
    }
    Ok(match kind {
        1 => {
            need(b, 7, "HELLO")?;
            if &b[..5] != MAGIC {
                return Err(DecodeError::Malformed("HELLO"));
            }
            b.advance(5);
            let version = b.get_u16();
            Msg::Hello { version, node: get_str(b, "HELLO")? }
        }
        2 => {
            need(b, 4, "OPEN")?;
            let id = b.get_u32();
            Msg::Open { id, path: get_str(b, "OPEN")? }
        }
        3 => {
            need(b, 12, "APPEND")?;
            let id = b.get_u32();
            let offset = b.get_u64();
            Msg::Append { id, offset, frames: b.split_off(0) }
        }
        4 => {
            need(b, 44, "SEAL")?;
            let id = b.get_u32();
            let len = b.get_u64();
            let mut sha256 = [0u8; 32];
            b.copy_to_slice(&mut sha256);
            Msg::Seal { id, len, sha256 }
        }
        5 | 135 => {
            need(b, 8, "PING")?;
            let nonce = b.get_u64();
            if kind == 5 {
                Msg::Ping { nonce }
            } else {
                Msg::Pong { nonce }
            }
        }
        6 => {
            need(b, 4 + TOMBSTONE_LEN, "GONE")?;
            let id = b.get_u32();
            let (len, frames, records, first_seq, next_seq) =
                (b.get_u64(), b.get_u64(), b.get_u64(), b.get_u64(), b.get_u64());
            let sealed_ms = b.get_i64();
            let mut sha256 = [0u8; 32];
            b.copy_to_slice(&mut sha256);
            let tombstone = Tombstone { len, frames, records, first_seq, next_seq, sealed_ms, sha256 };
            Msg::Gone { id, tombstone, path: get_str(b, "GONE")? }
        }
        129 => {
            need(b, 2, "WELCOME")?;
            let version = b.get_u16();
            let epoch = if version >= 2 {
                need(b, 8, "WELCOME")?;
                b.get_u64()
            } else {
                0
            };
            Msg::Welcome { version, epoch }
        }
        130 => {
            need(b, 2, "REFUSE")?;
            let code = Code::from_u16(b.get_u16());
            Msg::Refuse { code, reason: get_str(b, "REFUSE")? }
        }
        131 => {
            need(b, 13, "HAVE")?;
            Msg::Have { id: b.get_u32(), len: b.get_u64(), sealed: b.get_u8() != 0 }
        }
        132 => {
            need(b, 12, "ACK")?;
            Msg::Ack { id: b.get_u32(), len: b.get_u64() }
        }
        133 => {
            need(b, 12, "WRONG_OFFSET")?;
            Msg::WrongOffset { id: b.get_u32(), expected: b.get_u64() }
        }
        134 => {
            need(b, 5, "SEALED")?;
            Msg::Sealed { id: b.get_u32(), ok: b.get_u8() != 0 }
        }
        136 => {
            need(b, 6, "ERROR")?;
            let id = b.get_u32();
            let code = Code::from_u16(b.get_u16());
            Msg::Error { id, code, reason: get_str(b, "ERROR")? }
        }
        t => return Err(DecodeError::UnknownType(t)),
    })
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn get_str(b: &mut Bytes, what: &'static str) -> Result<String, DecodeError> {
    if b.remaining() < 2 {
        return Err(DecodeError::Malformed(what));
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return Err(DecodeError::Malformed(what));
    }
    let s = b.split_to(n);
    String::from_utf8(s.to_vec()).map_err(|_| DecodeError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello { version: VERSION, node: "relay-1".into() },
            Msg::Open { id: 7, path: "sg1/live/2026-11-23/x.log.zst".into() },
            Msg::Append { id: 7, offset: 1234, frames: Bytes::from_static(b"frames") },
            Msg::Seal { id: 7, len: 99, sha256: [3; 32] },
            Msg::Ping { nonce: 5 },
            Msg::Gone {
                id: 8,
                path: "sg1/live/2026-11-23/x.log.zst".into(),
                tombstone: Tombstone {
                    len: 1,
                    frames: 2,
                    records: 3,
                    first_seq: 4,
                    next_seq: 7,
                    sealed_ms: -1,
                    sha256: [9; 32],
                },
            },
            Msg::Welcome { version: 1, epoch: 0 },
            Msg::Welcome { version: 2, epoch: 77 },
            Msg::Refuse { code: Code::NotAuthorized, reason: "no".into() },
            Msg::Have { id: 1, len: 2, sealed: true },
            Msg::Ack { id: 1, len: 2 },
            Msg::WrongOffset { id: 1, expected: 3 },
            Msg::Sealed { id: 1, ok: false },
            Msg::Pong { nonce: 6 },
            Msg::Error { id: 1, code: Code::InvalidFrame, reason: "bad".into() },
        ]
    }

    #[test]
    fn every_message_round_trips_even_byte_by_byte() {
        let mut wire = BytesMut::new();
        for m in all() {
            m.encode(&mut wire);
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(m) = Msg::decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, all());
    }

    #[test]
    fn oversized_and_unknown_are_errors() {
        let mut b = BytesMut::from(&((MAX_MESSAGE as u32 + 1).to_be_bytes())[..]);
        assert_eq!(Msg::decode(&mut b), Err(DecodeError::TooLarge(MAX_MESSAGE + 1)));
        let mut b = BytesMut::from(&[0, 0, 0, 1, 77][..]);
        assert_eq!(Msg::decode(&mut b), Err(DecodeError::UnknownType(77)));
        let mut b = BytesMut::from(&[0, 0, 0, 2, 132, 0][..]);
        assert!(matches!(Msg::decode(&mut b), Err(DecodeError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = BytesMut::from(&v[..]);
            while let Ok(Some(_)) = Msg::decode(&mut b) {}
        }

        #[test]
        fn any_typed_body_never_panics(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::new();
            b.put_u32(body.len() as u32 + 1);
            b.put_u8(kind);
            b.put_slice(&body);
            let _ = Msg::decode(&mut b);
        }
    }
}
