//! RELP frames: every frame decoded consumes bytes it was given.
#![no_main]
use ferry::ingest::relp::codec::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match decode(&data[at..], 1 << 16) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && at + used <= data.len());
                at += used;
            }
            Ok(None) | Err(_) => return,
        }
    }
});
