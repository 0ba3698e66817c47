//! Arbitrary bytes as a handshake initiation: the parser, then the responder. Random bytes
//! never get past the join-secret check, so the input also drives a real initiation with
//! arbitrary clocks on both sides, which reaches the timestamp and skew checks behind it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use weft_crypto::wire::Initiation;
use weft_crypto::{HandshakeError, MAX_CLOCK_SKEW, Timestamp};
use weft_fuzz::{SeededRng, node, wall};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Initiation::parse(data) {
        // A parsed view's fields are in bounds and re-read the same bytes.
        assert_eq!(view.sender_index().to_le_bytes(), data[4..8]);
        assert_eq!(&view.ephemeral()[..], &data[8..40]);
    }
    let mut b = node(2);
    // Random bytes never know the join secret: nothing may pass, and no DH may happen.
    assert!(b.handle_initiation(data, 2, wall(), &mut SeededRng::new(3)).is_err());
    assert_eq!(b.dh_operations(), 0);

    if data.len() >= 16 {
        let clock = |b: &[u8]| {
            let nanos = u64::from_le_bytes(b.try_into().unwrap());
            Timestamp::from_unix(Duration::from_nanos(nanos))
        };
        let (theirs, ours) = (clock(&data[..8]), clock(&data[8..16]));
        let a = node(1);
        let (_i, init) = a.initiate(7, None, theirs, &mut SeededRng::new(5)).unwrap();
        let within = theirs.to_unix().abs_diff(ours.to_unix()) <= MAX_CLOCK_SKEW;
        match b.handle_initiation(&init, 2, ours, &mut SeededRng::new(6)) {
            Ok(_) => assert!(within),
            Err(HandshakeError::Stale { .. }) => assert!(!within),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
});
