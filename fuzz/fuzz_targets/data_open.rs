//! Arbitrary bytes as a sealed datagram: header decode → encode → compare, then open.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Instant;
use weft_crypto::wire::DataHeader;
use weft_crypto::{DATA_HEADER_LEN, PayloadKind, Session};
use weft_fuzz::sessions;

static SESSIONS: OnceLock<(Instant, Session, Session)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = DataHeader::parse(data) {
        let mut out = [0u8; DATA_HEADER_LEN];
        h.write(&mut out);
        assert_eq!(&out[..], &data[..DATA_HEADER_LEN]);
    }
    let (now, a, b) = SESSIONS.get_or_init(|| {
        let now = Instant::now();
        let (a, b) = sessions(now);
        (now, a, b)
    });
    // Random bytes never authenticate.
    let mut copy = data.to_vec();
    assert!(b.open_in_place(&mut copy, *now).is_err());
    // And a real packet with this payload round-trips.
    let mut p = vec![0u8; weft_crypto::DATA_OVERHEAD + data.len()];
    p[DATA_HEADER_LEN..DATA_HEADER_LEN + data.len()].copy_from_slice(data);
    a.seal_in_place(PayloadKind::Control, &mut p, *now).unwrap();
    let o = b.open_in_place(&mut p, *now).unwrap();
    assert_eq!(&p[o.range()], data);
});
