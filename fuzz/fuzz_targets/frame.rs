//! Segment frames as read from disk or received over the link: the header,
//! the checksums of the data, and a chunk of whole frames as a receiver
//! checks it.
#![no_main]
use ferry::store::frame::FrameHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FrameHeader::decode(data) {
        let at = h.encoded_len().min(data.len());
        let _ = h.check_data(&data[at..]);
    }
    let _ = ferry::mirror::check_frames(data);
});
