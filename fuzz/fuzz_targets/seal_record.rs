//! Seal records (and tombstones) as read from `state/`: parsed or refused
//! with a reason, and what parses writes back to itself.
#![no_main]
use ferry::store::segment::SealRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = SealRecord::parse(text) {
        assert_eq!(SealRecord::parse(&s.to_text()).as_ref(), Ok(&s));
    }
});
