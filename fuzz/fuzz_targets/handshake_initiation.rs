//! Arbitrary bytes as a handshake initiation: the parser, the screen (mac1, and under load
//! mac2), then the responder. Random bytes never get past mac1, so the input also drives a
//! real initiation with arbitrary clocks on both sides, which reaches the timestamp and skew
//! checks behind it, and a cookie round trip from an arbitrary source address.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_crypto::wire::{INITIATION_LEN, Initiation};
use weft_crypto::{HandshakeError, MAX_CLOCK_SKEW, Screened, Timestamp};
use weft_fuzz::{SeededRng, node, wall};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Initiation::parse(data) {
        // A parsed view's fields are in bounds and re-read the same bytes.
        assert_eq!(view.sender_index().to_le_bytes(), data[4..8]);
        assert_eq!(&view.ephemeral()[..], &data[8..40]);
        assert_eq!(&view.mac1()[..], &data[68..84]);
        assert_eq!(&view.mac2()[..], &data[84..100]);
    }
    let mut b = node(2);
    let now = Instant::now();
    let from = SocketAddr::from((
        [198, 18, data.first().copied().unwrap_or(0), 1],
        u16::from_le_bytes([data.get(1).copied().unwrap_or(0), 0x1a]),
    ));
    // Random bytes never know the join secret: nothing may pass, and no DH may happen.
    for under_load in [false, true] {
        assert!(
            b.screen_initiation(data, from, under_load, now, &mut SeededRng::new(4))
                .is_err()
        );
    }
    assert!(
        b.handle_initiation(data, 2, wall(), &mut SeededRng::new(3))
            .is_err()
    );
    assert_eq!(b.dh_operations(), 0);

    if data.len() >= 16 {
        let clock = |b: &[u8]| {
            let nanos = u64::from_le_bytes(b.try_into().unwrap());
            Timestamp::from_unix(Duration::from_nanos(nanos))
        };
        let (theirs, ours) = (clock(&data[..8]), clock(&data[8..16]));
        let a = node(1);
        let (i, init) = a.initiate(7, None, theirs, &mut SeededRng::new(5)).unwrap();
        assert_eq!(init.len(), INITIATION_LEN);
        // Under load: a cookie reply, no DH; stamped with its cookie, proven.
        let reply = match b.screen_initiation(&init, from, true, now, &mut SeededRng::new(8)) {
            Ok(Screened::CookieReply(r)) => r,
            other => panic!("expected a cookie reply, got {other:?}"),
        };
        assert_eq!(b.dh_operations(), 0);
        let cookie = a.open_cookie_reply(&i, &reply).unwrap();
        let stamped = i.initiation(Some(&cookie));
        assert!(matches!(
            b.screen_initiation(&stamped, from, true, now, &mut SeededRng::new(8)),
            Ok(Screened::Proven)
        ));
        let within = theirs.to_unix().abs_diff(ours.to_unix()) <= MAX_CLOCK_SKEW;
        match b.handle_initiation(&init, 2, ours, &mut SeededRng::new(6)) {
            Ok(_) => assert!(within),
            Err(HandshakeError::Stale { .. }) => assert!(!within),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
});
