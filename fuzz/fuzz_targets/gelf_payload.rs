//! GELF payloads: gzip, zlib or plain JSON, decompressed within a bound.
#![no_main]
use ferry::ingest::gelf::decode::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decode(data, 1 << 16) {
        let _ = format!("{d:?}");
    }
});
