//! Arbitrary bytes as a sealed datagram: checked view → header encode → compare, then open.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Instant;
use weft_crypto::wire::Sealed;
use weft_crypto::{DATA_HEADER_LEN, PayloadKind, Session};
use weft_fuzz::sessions;

static SESSIONS: OnceLock<(Instant, Session, Session)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (now, a, b) = SESSIONS.get_or_init(|| {
        let now = Instant::now();
        let (a, b) = sessions(now);
        (now, a, b)
    });
    let mut copy = data.to_vec();
    if let Ok(mut sealed) = Sealed::parse(&mut copy[..]) {
        let mut out = [0u8; DATA_HEADER_LEN];
        sealed.header().write(&mut out);
        assert_eq!(&out[..], &data[..DATA_HEADER_LEN]);
        // Random bytes never authenticate.
        assert!(b.open_in_place(&mut sealed, *now).is_err());
    }
    // And a real packet with this payload round-trips.
    let mut p = vec![0u8; weft_crypto::DATA_OVERHEAD + data.len()];
    p[DATA_HEADER_LEN..DATA_HEADER_LEN + data.len()].copy_from_slice(data);
    a.seal_in_place(PayloadKind::Control, &mut p, *now).unwrap();
    let mut sealed = Sealed::parse(&mut p[..]).unwrap();
    assert_eq!(sealed.kind(), PayloadKind::Control);
    let o = b.open_in_place(&mut sealed, *now).unwrap();
    assert_eq!(&p[o.range()], data);
});
