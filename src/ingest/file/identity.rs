//! Which file is which. Device and inode say where a file is; the first bytes
//! say what it is. An inode freed by a deleted file and given to a new one has
//! other first bytes (logs start with a time), so it is read from its start
//! instead of from the old file's offset (Vector's file source does the same
//! with a checksum of the first line).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// How many first bytes make the fingerprint: enough to hold a timestamped
/// first line or two.
pub const FP_BYTES: usize = 1024;

/// Where a file is: its device and inode (a rename keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The device.
    pub dev: u64,
    /// The inode.
    pub ino: u64,
}

impl Key {
    /// The key of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> Key {
        Key { dev: m.dev(), ino: m.ino() }
    }
}

/// FNV-1a of the first `len` bytes: stable across Rust versions, unlike
/// `DefaultHasher`, because it is written into checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Bytes hashed: up to [`FP_BYTES`].
    pub len: u32,
    /// FNV-1a of them.
    pub hash: u64,
}

impl Fingerprint {
    /// Of the first `min(size, FP_BYTES)` bytes of `f`.
    pub fn of(f: &File, size: u64) -> io::Result<Fingerprint> {
        let len = size.min(FP_BYTES as u64) as usize;
        Ok(Fingerprint { len: len as u32, hash: hash_prefix(f, len)? })
    }

    /// Whether `f` (now `size` long) begins with the bytes this was taken of.
    pub fn matches(&self, f: &File, size: u64) -> io::Result<bool> {
        if size < u64::from(self.len) {
            return Ok(false);
        }
        Ok(hash_prefix(f, self.len as usize)? == self.hash)
    }

    /// Whether it covers fewer than [`FP_BYTES`]: taken again as the file grows.
    pub fn is_short(&self) -> bool {
        (self.len as usize) < FP_BYTES
    }
}

fn hash_prefix(f: &File, len: usize) -> io::Result<u64> {
    let mut buf = [0u8; FP_BYTES];
    let buf = &mut buf[..len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], got as u64)? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while fingerprinted")),
            n => got += n,
        }
    }
    Ok(fnv1a(buf))
}

/// 64-bit FNV-1a of `b`.
pub fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_with_other_first_bytes_does_not_match() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, b"2026-12-04T10:00:00 first\n").unwrap();
        let f = File::open(&p).unwrap();
        let fp = Fingerprint::of(&f, f.metadata().unwrap().len()).unwrap();
        assert!(fp.matches(&f, f.metadata().unwrap().len()).unwrap());
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"more\n").unwrap();
        assert!(fp.matches(&f, f.metadata().unwrap().len()).unwrap(), "growth keeps the identity");
        std::fs::write(&p, b"2026-12-04T11:00:00 other\n").unwrap();
        let f = File::open(&p).unwrap();
        assert!(!fp.matches(&f, f.metadata().unwrap().len()).unwrap());
        std::fs::write(&p, b"short").unwrap();
        assert!(!fp.matches(&f, 5).unwrap(), "shorter than the fingerprint: another file");
    }
}
