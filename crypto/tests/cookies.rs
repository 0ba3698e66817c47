//! `mac1`, `mac2` and cookie replies (`crypto/src/cookie.rs`): what a responder under load
//! spends on an initiation, and what a cookie reply can and cannot change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_crypto::wire::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MAC_LEN, MessageType, PROTOCOL_VERSION, WireError,
};
use weft_crypto::{
    COOKIE_SECRET_LIFETIME, HandshakeError, Handshaker, JoinSecret, KeyPair, Screened, SeededRng,
    Timestamp,
};

const SECRET: &[u8] = b"correct horse battery staple";

fn node(seed: u64, secret: &[u8]) -> Handshaker {
    let mut rng = SeededRng::new(seed);
    Handshaker::new(
        KeyPair::generate(&mut rng),
        JoinSecret::new(secret, weft_crypto::DEFAULT_CLUSTER_NAME).unwrap(),
    )
}

fn wall(secs: u64) -> Timestamp {
    Timestamp::from_unix(Duration::from_secs(1_800_000_000 + secs))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cookie_reply(s: Screened) -> [u8; COOKIE_REPLY_LEN] {
    match s {
        Screened::CookieReply(r) => r,
        other => panic!("expected a cookie reply, got {other:?}"),
    }
}

#[test]
fn a_bad_mac1_is_refused_before_any_noise_processing() {
    let mut rng = SeededRng::new(1);
    let a = node(10, SECRET);
    let outsider = node(11, b"a different secret, sixteen+");
    let mut b = node(20, SECRET);
    let now = Instant::now();
    let from = addr("198.18.0.1:6786");
    let (_i, init) = a.initiate(1, None, wall(0), &mut rng).unwrap();
    let (_o, stranger) = outsider.initiate(1, None, wall(0), &mut rng).unwrap();
    for under_load in [false, true] {
        for bad in [
            stranger,
            {
                let mut m = init;
                m[INITIATION_LEN - 2 * MAC_LEN] ^= 1;
                m
            },
            {
                // Any byte mac1 covers, the Noise message included.
                let mut m = init;
                m[50] ^= 0x80;
                m
            },
        ] {
            assert_eq!(
                b.screen_initiation(&bad, from, under_load, now, &mut rng)
                    .unwrap_err(),
                HandshakeError::BadMac1
            );
            assert_eq!(
                b.handle_initiation(&bad, 2, wall(0), &mut rng).unwrap_err(),
                HandshakeError::BadMac1
            );
        }
    }
    assert_eq!(b.dh_operations(), 0);
    // Nothing of the refused copy was kept: the real initiation is not taken for a replay.
    assert!(matches!(
        b.screen_initiation(&init, from, false, now, &mut rng),
        Ok(Screened::Unproven)
    ));
    b.handle_initiation(&init, 2, wall(0), &mut rng).unwrap();
    assert_eq!(b.dh_operations(), 3);
}

#[test]
fn under_load_an_initiation_without_mac2_gets_a_small_cookie_reply_and_no_diffie_hellman() {
    let mut rng = SeededRng::new(2);
    let a = node(10, SECRET);
    let mut b = node(20, SECRET);
    let now = Instant::now();
    let from = addr("198.18.0.1:6786");
    let (initiator, init) = a.initiate(7, None, wall(0), &mut rng).unwrap();
    assert_eq!(&init[INITIATION_LEN - MAC_LEN..], &[0; MAC_LEN]);
    let reply = cookie_reply(
        b.screen_initiation(&init, from, true, now, &mut rng)
            .unwrap(),
    );
    assert!(reply.len() < init.len(), "a cookie reply amplifies");
    assert_eq!(MessageType::of(&reply), Ok(MessageType::CookieReply));
    assert_eq!(reply[4..8], 7u32.to_le_bytes());
    assert_eq!(b.dh_operations(), 0);

    // The initiator opens it and sends the same initiation stamped with mac2: proven.
    let cookie = a.open_cookie_reply(&initiator, &reply).unwrap();
    let stamped = initiator.initiation(Some(&cookie));
    assert_eq!(
        stamped[..INITIATION_LEN - MAC_LEN],
        init[..INITIATION_LEN - MAC_LEN]
    );
    assert_ne!(stamped, init);
    let later = now + Duration::from_millis(50);
    assert!(matches!(
        b.screen_initiation(&stamped, from, true, later, &mut rng),
        Ok(Screened::Proven)
    ));
    assert_eq!(b.dh_operations(), 0);
    // It completes the handshake as the initiation without mac2 would have.
    let (responding, resp) = b.handle_initiation(&stamped, 2, wall(0), &mut rng).unwrap();
    let (_sa, fin) = a
        .handle_response(initiator, &resp, later)
        .map_err(|r| r.error)
        .unwrap();
    b.handle_finish(responding, &fin, later)
        .map_err(|r| r.error)
        .unwrap();

    // The cookie proves that address and port only, and for the secret's lifetime only.
    let (i2, init2) = a.initiate(8, None, wall(1), &mut rng).unwrap();
    let stamped2 = i2.initiation(Some(&cookie));
    assert!(matches!(
        b.screen_initiation(&stamped2, from, true, later, &mut rng),
        Ok(Screened::Proven)
    ));
    for elsewhere in ["198.18.0.2:6786", "198.18.0.1:6787", "[2001:db8::1]:6786"] {
        cookie_reply(
            b.screen_initiation(&stamped2, addr(elsewhere), true, later, &mut rng)
                .unwrap(),
        );
    }
    let rotated = now + COOKIE_SECRET_LIFETIME;
    cookie_reply(
        b.screen_initiation(&stamped2, from, true, rotated, &mut rng)
            .unwrap(),
    );
    // Not under load, mac2 is not looked at.
    assert!(matches!(
        b.screen_initiation(&init2, from, false, rotated, &mut rng),
        Ok(Screened::Unproven)
    ));
}

#[test]
fn a_forged_or_stray_cookie_reply_is_refused_and_changes_nothing() {
    let mut rng = SeededRng::new(3);
    let a = node(10, SECRET);
    let mut b = node(20, SECRET);
    let outsider = node(30, b"a different secret, sixteen+");
    let now = Instant::now();
    let from = addr("198.18.0.1:6786");
    let (initiator, init) = a.initiate(7, None, wall(0), &mut rng).unwrap();
    let reply = cookie_reply(
        b.screen_initiation(&init, from, true, now, &mut rng)
            .unwrap(),
    );

    // Every bit of every byte flipped.
    for byte in 0..COOKIE_REPLY_LEN {
        for bit in [0, 7] {
            let mut forged = reply;
            forged[byte] ^= 1 << bit;
            assert!(
                a.open_cookie_reply(&initiator, &forged).is_err(),
                "byte {byte} bit {bit}"
            );
        }
    }
    // A genuine reply to another initiation (same index, another mac1).
    let (_other, other_init) = a.initiate(7, None, wall(1), &mut rng).unwrap();
    let stray = cookie_reply(
        b.screen_initiation(&other_init, from, true, now, &mut rng)
            .unwrap(),
    );
    assert_eq!(
        a.open_cookie_reply(&initiator, &stray).unwrap_err(),
        HandshakeError::Authentication
    );
    // A reply from a router of another cluster to our initiation, mac1 made good for it.
    let mut restamped = init;
    outsider.stamp_mac1(&mut restamped);
    let mut outsider_b = node(31, b"a different secret, sixteen+");
    let foreign = cookie_reply(
        outsider_b
            .screen_initiation(&restamped, from, true, now, &mut rng)
            .unwrap(),
    );
    assert_eq!(
        a.open_cookie_reply(&initiator, &foreign).unwrap_err(),
        HandshakeError::Authentication
    );
    assert!(matches!(
        a.open_cookie_reply(&initiator, &reply[..40]),
        Err(HandshakeError::Malformed(WireError::Length { .. }))
    ));
    // The initiator is as it was: the real reply opens, the handshake completes.
    assert!(a.open_cookie_reply(&initiator, &reply).is_ok());
    let (_responding, resp) = b.handle_initiation(&init, 2, wall(0), &mut rng).unwrap();
    assert!(a.handle_response(initiator, &resp, now).is_ok());
}

#[test]
fn a_message_of_the_old_version_is_refused_as_such() {
    let mut rng = SeededRng::new(4);
    let mut b = node(20, SECRET);
    let now = Instant::now();
    // A version-1 initiation: 68 bytes, no MACs.
    let mut old = [0u8; 68];
    old[0] = MessageType::HandshakeInitiation as u8;
    old[1] = PROTOCOL_VERSION - 1;
    let err = b
        .screen_initiation(&old, addr("198.18.0.1:6786"), true, now, &mut rng)
        .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Malformed(WireError::UnsupportedVersion(PROTOCOL_VERSION - 1))
    );
    assert!(
        err.to_string().contains("unsupported protocol version 1"),
        "{err}"
    );
    assert_eq!(b.dh_operations(), 0);
}
