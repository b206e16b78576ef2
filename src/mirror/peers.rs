//! Who wrote into this mirror: every peer certificate the receivers have
//! authenticated (site, node, serial), one line each in `state/peers`, and
//! which of them a CRL in force revokes (`state/revoked`).
//!
//! A revocation does not delete what the node wrote before it: the data is
//! kept, and `ferry audit` marks its origin as written by a node revoked at
//! that time. The CRL names serial numbers only; this book is what turns a
//! serial back into the site and node whose segments are here.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PEERS: &str = "peers";
const REVOKED: &str = "revoked";

/// One certificate seen on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The site its certificate names.
    pub site: String,
    /// The node its certificate names.
    pub node: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// When it was first seen (ms since the epoch), or revoked (in `state/revoked`).
    pub at_ms: i64,
}

impl Peer {
    fn line(&self) -> String {
        format!("{} {} {} {}\n", self.site, self.node, self.serial, self.at_ms)
    }

    fn parse(line: &str) -> Option<Peer> {
        let mut f = line.split(' ');
        let (site, node, serial, at) = (f.next()?, f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Peer { site: site.into(), node: node.into(), serial: serial.into(), at_ms: at.parse().ok()? })
    }
}

/// The `state/peers` file, appended to the first time a certificate is seen.
pub struct PeerBook {
    path: PathBuf,
    seen: Mutex<HashSet<(String, String, String)>>,
}

impl PeerBook {
    /// The book of `state_dir/peers`.
    pub fn open(state_dir: &Path) -> PeerBook {
        let path = state_dir.join(PEERS);
        let seen = read(&path).into_iter().map(|p| (p.site, p.node, p.serial)).collect();
        // A line torn by a crash is ended, so the next one stands alone.
        if fs::read(&path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n')) {
            let _ = OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(b"\n"));
        }
        PeerBook { path, seen: Mutex::new(seen) }
    }

    /// Note a peer authenticated now. A write error is returned for the log;
    /// the session goes on (this book marks data, it does not guard it).
    pub fn saw(&self, site: &str, node: &str, serial: &str, now_ms: i64) -> std::io::Result<()> {
        let mut seen = self.seen.lock().expect("not poisoned");
        if !seen.insert((site.to_owned(), node.to_owned(), serial.to_owned())) {
            return Ok(());
        }
        let p = Peer { site: site.into(), node: node.into(), serial: serial.into(), at_ms: now_ms };
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(p.line().as_bytes())?;
        f.sync_data()
    }
}

/// Lines of a peers file; torn or foreign lines are skipped.
fn read(path: &Path) -> Vec<Peer> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(Peer::parse).collect()
}

/// Write `state/revoked`: the peers of `state/peers` whose serial is in
/// `revoked` (serial, revocation time in ms). Returns them. Replaced whole
/// (temporary file, rename), so a reader sees the old list or the new one.
pub fn note_revoked(state_dir: &Path, revoked: &[(String, i64)]) -> std::io::Result<Vec<Peer>> {
    let mut out = Vec::new();
    for p in read(&state_dir.join(PEERS)) {
        if let Some((_, at)) = revoked.iter().find(|(s, _)| *s == p.serial) {
            out.push(Peer { at_ms: *at, ..p });
        }
    }
    let path = state_dir.join(REVOKED);
    if out.is_empty() && !path.exists() {
        return Ok(out);
    }
    let tmp = state_dir.join(".revoked.tmp");
    let mut f = fs::File::create(&tmp)?;
    for p in &out {
        f.write_all(p.line().as_bytes())?;
    }
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(out)
}

/// The revoked peers a node noted in `state_dir` (none if it never did).
pub fn revoked(state_dir: &Path) -> Vec<Peer> {
    read(&state_dir.join(REVOKED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_serial_is_told_by_site_and_node() {
        let d = std::env::temp_dir().join(format!("ferry-peers-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let book = PeerBook::open(&d);
        book.saw("sg1", "r1", "0a1b", 1000).unwrap();
        book.saw("sg1", "r1", "0a1b", 2000).unwrap();
        book.saw("sg1", "r2", "ff00", 3000).unwrap();
        fs::OpenOptions::new().append(true).open(d.join(PEERS)).unwrap().write_all(b"torn li").unwrap();
        assert_eq!(read(&d.join(PEERS)).len(), 2, "seen once each; the torn line skipped");
        let book = PeerBook::open(&d);
        assert_eq!(book.seen.lock().unwrap().len(), 2);
        book.saw("sg2", "r3", "0c", 4000).unwrap();
        assert_eq!(read(&d.join(PEERS)).len(), 3, "a line after the torn one stands alone");
        let r = note_revoked(&d, &[("0a1b".into(), 5000)]).unwrap();
        assert_eq!(r, vec![Peer { site: "sg1".into(), node: "r1".into(), serial: "0a1b".into(), at_ms: 5000 }]);
        assert_eq!(revoked(&d), r);
        assert!(note_revoked(&d, &[]).unwrap().is_empty());
        assert!(revoked(&d).is_empty(), "a CRL without it takes the mark back");
        fs::remove_dir_all(&d).unwrap();
    }
}
