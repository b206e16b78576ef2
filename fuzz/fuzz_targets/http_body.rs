//! HTTP request bodies: Content-Encoding (none, gzip, zstd) within
//! `max_body_bytes`, then NDJSON or plain lines.
#![no_main]
use ferry::ingest::http::{body_lines, decode_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else { return };
    let encoding = [None, Some("gzip"), Some("zstd"), Some("identity"), Some("br")][usize::from(knobs % 5)];
    if let Ok(raw) = decode_body(encoding, body, 1 << 16) {
        assert!(raw.len() <= 1 << 16 || encoding.is_none() || encoding == Some("identity"));
        if let Ok(lines) = body_lines(&raw, knobs & 0x80 != 0) {
            assert!(lines.iter().all(|l| !l.is_empty() && !l.contains(&b'\n')));
        }
    }
});
