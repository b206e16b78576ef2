//! GELF datagrams: chunk headers parsed, chunks reassembled from several
//! sources under small limits, which must hold whatever arrives.
#![no_main]
use ferry::ingest::gelf::chunk::{parse, Datagram, Limits, Reassembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        timeout_ms: 50,
        max_partials: 4,
        max_bytes: 4096,
        max_finished: 8,
        max_partials_per_source: 2,
        max_bytes_per_source: 2048,
    };
    let mut r = Reassembler::new(limits);
    // Datagrams separated by 0xff 0xfe; the byte before each says who sent it and when.
    let mut now = 0u64;
    for d in data.split(|b| *b == 0xfe) {
        let Some((&who, d)) = d.split_first() else { continue };
        now += u64::from(who & 0x0f) * 10;
        if let Ok(Datagram::Chunk(c)) = parse(d) {
            let ip = std::net::IpAddr::from([10, 0, 0, who >> 4]);
            r.insert(ip, &c, now);
        }
        r.expire(now);
        assert!(r.partials() <= 4 && r.buffered() <= 4096, "{} {}", r.partials(), r.buffered());
        r.drain_lost().for_each(drop);
    }
});
