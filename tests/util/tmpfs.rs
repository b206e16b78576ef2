//! A small real disk for a test: a tmpfs, unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for one test, unmounted on drop (also when it fails).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} (the tests run as root in CI): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path: path.to_owned() }
    }

    /// Take all but `leave` bytes of the free space with a filler file.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
        let free = ferry::store::fs::Fs::real().space(&self.path).unwrap().free_bytes;
        let filler = self.path.join("filler");
        let f = std::fs::File::create(&filler).unwrap();
        // Written, not sparse: tmpfs counts only pages that exist.
        let mut left = free.saturating_sub(leave);
        let chunk = vec![0x5au8; 1 << 20];
        let mut w = std::io::BufWriter::new(f);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        std::io::Write::flush(&mut w).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
