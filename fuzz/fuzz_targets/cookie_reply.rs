//! Arbitrary bytes as a cookie reply to a real initiation: the parser, then the initiator.
//! Only the reply its responder made opens; anything else is refused and leaves the
//! initiator able to open the real one and finish its handshake.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Instant;
use weft_crypto::wire::{COOKIE_REPLY_LEN, CookieReply, INITIATION_LEN};
use weft_crypto::{MessageType, Screened};
use weft_fuzz::{SeededRng, pair};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = CookieReply::parse(data) {
        assert_eq!(data.len(), COOKIE_REPLY_LEN);
        assert_eq!(MessageType::of(data), Ok(MessageType::CookieReply));
        assert_eq!(view.receiver_index().to_le_bytes(), data[4..8]);
        assert_eq!(&view.nonce()[..], &data[8..32]);
        assert_eq!(view.sealed(), &data[32..]);
        // Smaller than what it answers: no amplification.
        assert!(data.len() < INITIATION_LEN);
    }
    let mut p = pair();
    let from: SocketAddr = "198.18.0.1:6786".parse().unwrap();
    let now = Instant::now();
    let real = match p
        .b
        .screen_initiation(&p.initiation, from, true, now, &mut SeededRng::new(9))
    {
        Ok(Screened::CookieReply(r)) => r,
        other => panic!("expected a cookie reply, got {other:?}"),
    };
    match p.a.open_cookie_reply(&p.initiator, data) {
        Ok(_) => assert_eq!(data, &real[..]),
        Err(_) => assert_ne!(data, &real[..]),
    }
    // Whatever came before, the real reply opens and the handshake completes.
    let cookie = p.a.open_cookie_reply(&p.initiator, &real).unwrap();
    let stamped = p.initiator.initiation(Some(&cookie));
    assert!(matches!(
        p.b.screen_initiation(&stamped, from, true, now, &mut SeededRng::new(10)),
        Ok(Screened::Proven)
    ));
    assert!(p.a.handle_response(p.initiator, &p.response, now).is_ok());
});
