//! Where each tailed file is read to, saved only once the records up to there
//! are committed. An append-only log of `key → position` lines (the last one
//! of a key wins), each with its own CRC so a torn tail after a crash is
//! skipped, never misread; rewritten whole (temporary file, fsync, rename,
//! fsync of the directory) when it grows past a few times its live size.
//!
//! A checkpoint is never ahead of the archive: a crash at any moment repeats
//! at most the records of the commits whose positions were not yet written,
//! and loses none.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::identity::{Fingerprint, Key};

/// Where one file is committed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The fingerprint of the file's first bytes: an inode reused by another file does not match.
    pub fp: Fingerprint,
    /// Committed (durable in the archive) up to here: where reading resumes.
    pub offset: u64,
    /// Handed to the store up to here (at least `offset`): at a start, the
    /// bytes between the two may be archived already and are read again.
    pub sent: u64,
    /// For people reading the file; identity is the key and the fingerprint.
    pub path: PathBuf,
}

/// A file listener's checkpoints (`state/files/<listener>.positions`): an append-only log of changes, compacted when it grows.
pub struct Checkpoints {
    path: PathBuf,
    log: File,
    log_bytes: u64,
    map: HashMap<Key, Entry>,
    /// Changes not yet appended: `None` forgets the key.
    changed: HashMap<Key, Option<Entry>>,
    /// No checkpoint existed: the listener's very first start.
    pub fresh: bool,
    /// Lines skipped at load (torn or corrupt), for the log.
    pub skipped_lines: usize,
}

impl Checkpoints {
    /// Load (or create) `dir/<listener>.positions`.
    pub fn open(dir: &Path, listener: &str) -> io::Result<Checkpoints> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{listener}.positions"));
        let (text, fresh) = match std::fs::read(&path) {
            Ok(t) => (t, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), true),
            Err(e) => return Err(e),
        };
        let mut map = HashMap::new();
        let mut skipped_lines = 0;
        for line in text.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match parse(line) {
                Some((k, Some(e))) => {
                    map.insert(k, e);
                }
                Some((k, None)) => {
                    map.remove(&k);
                }
                None => skipped_lines += 1,
            }
        }
        let mut cp = Checkpoints {
            log: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            log_bytes: 0,
            map,
            changed: HashMap::new(),
            fresh,
            skipped_lines,
        };
        // Start from a clean snapshot: no torn line stays in front of new appends.
        cp.compact()?;
        Ok(cp)
    }

    /// The checkpoint of a file, by device and inode.
    pub fn get(&self, k: &Key) -> Option<&Entry> {
        self.map.get(k)
    }

    /// Every file checkpointed.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.map.keys().copied()
    }

    /// Files checkpointed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No file checkpointed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Change a file's checkpoint (appended at the next flush).
    pub fn set(&mut self, k: Key, e: Entry) {
        if self.map.get(&k) != Some(&e) {
            self.map.insert(k, e.clone());
            self.changed.insert(k, Some(e));
        }
    }

    /// Drop a file's checkpoint (it is gone and read to its end).
    pub fn forget(&mut self, k: Key) {
        if self.map.remove(&k).is_some() {
            self.changed.insert(k, None);
        }
    }

    /// Append what changed (one write); rewrite the file when the log is
    /// much longer than what it holds.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.changed.len() * 96);
        for (k, e) in self.changed.drain() {
            line(&mut out, k, e.as_ref());
        }
        self.log.write_all(&out)?;
        self.log_bytes += out.len() as u64;
        if self.log_bytes > (64 << 10).max(self.map.len() as u64 * 96 * 4) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrite the log as one line per file, durably.
    pub fn compact(&mut self) -> io::Result<()> {
        self.changed.clear();
        let mut out = Vec::with_capacity(self.map.len() * 96);
        let mut keys: Vec<_> = self.map.keys().copied().collect();
        keys.sort();
        for k in keys {
            line(&mut out, k, self.map.get(&k));
        }
        let tmp = self.path.with_extension("positions.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.log = OpenOptions::new().append(true).open(&self.path)?;
        self.log_bytes = out.len() as u64;
        Ok(())
    }
}

/// `<crc32> <dev> <ino> <fp_len> <fp_hash> <offset> <sent> <path>` or
/// `<crc32> <dev> <ino> forget`; the CRC covers what follows it.
fn line(out: &mut Vec<u8>, k: Key, e: Option<&Entry>) {
    let body = match e {
        Some(e) => {
            // A path is information only: a newline in it must not split the line.
            let path = e.path.to_string_lossy().replace(['\n', '\r'], "?");
            format!("{} {} {} {:016x} {} {} {}", k.dev, k.ino, e.fp.len, e.fp.hash, e.offset, e.sent, path)
        }
        None => format!("{} {} forget", k.dev, k.ino),
    };
    let _ = writeln!(out, "{:08x} {body}", crc32fast::hash(body.as_bytes()));
}

fn parse(line: &[u8]) -> Option<(Key, Option<Entry>)> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, body) = line.split_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut f = body.splitn(7, ' ');
    let dev = f.next()?.parse().ok()?;
    let ino = f.next()?.parse().ok()?;
    let key = Key { dev, ino };
    let third = f.next()?;
    if third == "forget" {
        return Some((key, None));
    }
    let fp = Fingerprint { len: third.parse().ok()?, hash: u64::from_str_radix(f.next()?, 16).ok()? };
    let offset = f.next()?.parse().ok()?;
    let sent = f.next()?.parse().ok()?;
    let path = PathBuf::from(f.next()?);
    Some((key, Some(Entry { fp, offset, sent, path })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_of_a_key_wins_and_a_torn_tail_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let k = Key { dev: 1, ino: 2 };
        let e =
            |o| Entry { fp: Fingerprint { len: 10, hash: 7 }, offset: o, sent: o + 1, path: "/var/log/a b.log".into() };
        {
            let mut cp = Checkpoints::open(d.path(), "f").unwrap();
            assert!(cp.fresh);
            cp.set(k, e(10));
            cp.flush().unwrap();
            cp.set(k, e(20));
            cp.set(Key { dev: 1, ino: 3 }, e(5));
            cp.flush().unwrap();
            cp.forget(Key { dev: 1, ino: 3 });
            cp.flush().unwrap();
        }
        let p = d.path().join("f.positions");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"deadbeef 1 2 10 0000000000000007 999 999 /torn").unwrap();
        let cp = Checkpoints::open(d.path(), "f").unwrap();
        assert!(!cp.fresh);
        assert_eq!(cp.skipped_lines, 1);
        assert_eq!(cp.get(&k), Some(&e(20)));
        assert_eq!(cp.len(), 1);
    }
}
