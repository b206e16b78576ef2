//! The multipart uploads this node has open, `state/buckets/<name>.uploads`
//! (`<staging key> <upload id>` per line): S3 can list them, but
//! `object_store` cannot, and this node must abort only its own. A line is
//! written before the first part and rewritten without it once the upload
//! is completed or aborted; the next start aborts whatever is left.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::store::fs::Fs;

/// The multipart uploads this node has open in one bucket, and their file.
pub struct Uploads {
    file: PathBuf,
    fs: Fs,
    open: Mutex<Vec<(String, String)>>,
}

impl Uploads {
    /// Read the file (a missing one is empty).
    pub fn load(fs: &Fs, file: PathBuf) -> io::Result<Uploads> {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // A torn last line names no upload we could abort: dropped.
        let open = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, id)| !k.is_empty() && !id.is_empty())
            .map(|(k, id)| (k.to_owned(), id.to_owned()))
            .collect();
        Ok(Uploads { file, fs: fs.clone(), open: Mutex::new(open) })
    }

    /// Every upload open: `(staging key, upload id)`.
    pub fn list(&self) -> Vec<(String, String)> {
        self.open.lock().expect("not poisoned").clone()
    }

    /// Note an upload before its first part.
    pub fn add(&self, key: &str, id: &str) -> io::Result<()> {
        self.open.lock().expect("not poisoned").push((key.to_owned(), id.to_owned()));
        self.fs.append_line(&self.file, &format!("{key} {id}"))
    }

    /// Forget an upload completed or aborted (the file is rewritten).
    pub fn remove(&self, key: &str, id: &str) -> io::Result<()> {
        let mut open = self.open.lock().expect("not poisoned");
        open.retain(|(k, i)| !(k == key && i == id));
        let text: String = open.iter().map(|(k, i)| format!("{k} {i}\n")).collect();
        self.fs.write_atomic(&self.file, text.as_bytes())
    }
}
