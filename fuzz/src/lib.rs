//! Shared set-up for the fuzz targets: deterministic keys and states, so a crash reproduces.

use std::time::{Duration, Instant};
use weft_crypto::{
    Handshaker, Initiator, JoinSecret, KeyPair, Random, Responding, Session, Timestamp,
};

/// splitmix64: reproducible, not secure; fuzzing needs the former.
pub struct FuzzRng(pub u64);

impl Random for FuzzRng {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *b = (z ^ (z >> 31)) as u8;
        }
    }
}

pub const SECRET: &[u8] = b"fuzzing join secret, long enough";

pub fn wall() -> Timestamp {
    Timestamp::from_unix(Duration::from_secs(1_800_000_000))
}

pub fn node(seed: u64) -> Handshaker {
    Handshaker::new(
        KeyPair::generate(&mut FuzzRng(seed)),
        JoinSecret::new(SECRET).unwrap(),
    )
}

/// An initiator from node 1 and a responder (node 2) that answered it, with the messages.
pub struct Pair {
    pub a: Handshaker,
    pub b: Handshaker,
    pub initiator: Initiator,
    pub responding: Responding,
    pub initiation: [u8; 68],
    pub response: [u8; 108],
}

pub fn pair() -> Pair {
    let mut rng = FuzzRng(7);
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
