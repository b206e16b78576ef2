//! The link protocol, both directions: any bytes decode to messages or a
//! clean error, and every message decoded encodes back to what decodes to
//! itself.
#![no_main]
use bytes::BytesMut;
use ferry::link::proto::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = Msg::decode(&mut buf) {
        let mut again = BytesMut::new();
        m.encode(&mut again);
        assert_eq!(Msg::decode(&mut again).ok().flatten().as_ref(), Some(&m));
        assert!(again.is_empty());
    }
});
