//! What the tests that drive the store through the library (no node
//! process) share: a validated config, batches and their commit, and a
//! retention hold on everything.

use std::path::Path;

use ferry::config::{validate, Config};
use ferry::store::escape::escape_into;
use ferry::store::retention::Hold;
use ferry::store::{Batch, Store};

/// The validated config of node `site`/`name` with its data in `dir`, no
/// admin listener, `store` as the lines of its `[store]` table (sub-tables
/// such as `[store.retention]` included) and one `[[stream]]` per name in
/// `streams`.
pub fn config_of(site: &str, name: &str, dir: &Path, store: &str, streams: &[&str]) -> Config {
    let mut text = format!(
        "[node]\nsite = \"{site}\"\nname = \"{name}\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"\"\n[store]\n{store}\n",
        dir.display()
    );
    for s in streams {
        text.push_str(&format!("[[stream]]\nname = \"{s}\"\n"));
    }
    validate(&text, "test.toml").unwrap()
}

/// [`config_of`] node `s1`/`n1` with one stream, `live`.
pub fn config(dir: &Path, store: &str) -> Config {
    config_of("s1", "n1", dir, store, &["live"])
}

/// A batch of `data` (records as a listener escapes them, each ending in
/// LF), `records` of them, received at `ms`.
pub fn raw_batch(data: Vec<u8>, records: u32, ms: i64) -> Batch {
    Batch { listener: "test".into(), data, records, truncated: 0, first_ms: ms, last_ms: ms, ack: None }
}

/// A batch of `lines`, escaped as a listener would, received at `ms`.
pub fn batch(lines: &[Vec<u8>], ms: i64) -> Batch {
    let mut data = Vec::new();
    for l in lines {
        escape_into(l, &mut data);
        data.push(b'\n');
    }
    raw_batch(data, lines.len() as u32, ms)
}

/// Submit `b` to `stream` and flush: one commit.
pub async fn commit(store: &Store, stream: &str, b: Batch) {
    let h = store.stream(stream).unwrap();
    h.submit(b).await.map_err(|e| e.0).unwrap();
    h.flush().await.unwrap();
}

/// A retention hold on every segment: an uplink that still needs them all.
pub struct HoldAll;

impl Hold for HoldAll {
    fn holds(&self, _: &Path) -> bool {
        true
    }
}
