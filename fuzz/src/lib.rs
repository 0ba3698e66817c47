//! Shared set-up for the fuzz targets: deterministic keys and states, so a crash reproduces.

use std::time::{Duration, Instant};
// Reproducible, not secure: fuzzing needs the former.
pub use weft_crypto::SeededRng;
use weft_crypto::wire::{INITIATION_LEN, RESPONSE_LEN};
use weft_crypto::{Handshaker, Initiator, JoinSecret, KeyPair, Responding, Session, Timestamp};

pub const SECRET: &[u8] = b"fuzzing join secret, long enough";

pub fn wall() -> Timestamp {
    Timestamp::from_unix(Duration::from_secs(1_800_000_000))
}

/// The derived join secret, made once: Argon2id takes tens of milliseconds, which per input
/// would leave the fuzzer a few dozen runs a second.
pub fn join_secret() -> JoinSecret {
    static DERIVED: std::sync::OnceLock<JoinSecret> = std::sync::OnceLock::new();
    DERIVED
        .get_or_init(|| JoinSecret::new(SECRET, weft_crypto::DEFAULT_CLUSTER_NAME).unwrap())
        .clone()
}

pub fn node(seed: u64) -> Handshaker {
    Handshaker::new(KeyPair::generate(&mut SeededRng::new(seed)), join_secret())
}

/// An initiator from node 1 and a responder (node 2) that answered it, with the messages.
pub struct Pair {
    pub a: Handshaker,
    pub b: Handshaker,
    pub initiator: Initiator,
    pub responding: Responding,
    pub initiation: [u8; INITIATION_LEN],
    pub response: [u8; RESPONSE_LEN],
}

pub fn pair() -> Pair {
    let mut rng = SeededRng::new(7);
    let a = node(1);
    let mut b = node(2);
    let (initiator, initiation) = a.initiate(1, None, wall(), &mut rng).unwrap();
    let (responding, response) = b
        .handle_initiation(&initiation, 2, wall(), &mut rng)
        .unwrap();
    Pair {
        a,
        b,
        initiator,
        responding,
        initiation,
        response,
    }
}

/// Two established sessions (a's, b's).
pub fn sessions(now: Instant) -> (Session, Session) {
    let mut p = pair();
    let (sa, fin) =
        p.a.handle_response(p.initiator, &p.response, now)
            .map_err(|r| r.error)
            .unwrap();
    let sb =
        p.b.handle_finish(p.responding, &fin, now)
            .map_err(|r| r.error)
            .unwrap();
    (sa, sb)
}
