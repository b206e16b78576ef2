//! RFC 6587 framing (octet counting and LF, NUL for GELF over TCP), fed in
//! arbitrary pieces: every step stays within the unread bytes, every record
//! within `max_record`.
#![no_main]
use ferry::ingest::syslog::framing::{Decoder, Next};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, data)) = data.split_first() else { return };
    let max = 1 + usize::from(knobs & 0x3f) * 8;
    let mut d = if knobs & 0x80 != 0 { Decoder::nul_delimited(max) } else { Decoder::new(max, max * 4) };
    let piece = 1 + usize::from(knobs & 0x40) / 8;
    let mut unread: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match d.next(&unread) {
            Next::Incomplete => {
                if fed >= data.len() {
                    break;
                }
                let n = piece.min(data.len() - fed);
                unread.extend_from_slice(&data[fed..fed + n]);
                fed += n;
            }
            Next::Skip { consumed } => {
                assert!(consumed > 0 && consumed <= unread.len());
                unread.drain(..consumed);
            }
            Next::Record { start, len, consumed, .. } => {
                assert!(start + len <= consumed && consumed <= unread.len() && consumed > 0);
                assert!(len <= max);
                unread.drain(..consumed);
            }
            Next::Error(_) => return,
        }
    }
    if let Some((rec, _)) = d.finish(&unread) {
        assert!(rec.len() <= unread.len());
    }
});
