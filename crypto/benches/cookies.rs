//! What a responder spends on an initiation at each step of the screen, beside the full
//! answer: `cargo bench -p weft-crypto --bench cookies`.
//!
//! - `screen_bad_mac1`: a non-member's initiation refused at `mac1`;
//! - `screen_not_under_load`: a member's, `mac1` checked, nothing else;
//! - `screen_cookie_reply`: under load without `mac2`, the cookie reply made;
//! - `screen_proven`: under load with a valid `mac2`;
//! - `handle_initiation`: the whole answer (three X25519 operations).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use divan::{Bencher, black_box};
use weft_crypto::{Handshaker, JoinSecret, KeyPair, Screened, SeededRng, Timestamp};

fn main() {
    divan::main();
}

const SECRET: &[u8] = b"benchmark join secret";

fn node(seed: u64, secret: &[u8]) -> Handshaker {
    let mut rng = SeededRng::new(seed);
    Handshaker::new(
        KeyPair::generate(&mut rng),
        JoinSecret::new(secret, weft_crypto::DEFAULT_CLUSTER_NAME).unwrap(),
    )
}

fn wall() -> Timestamp {
    Timestamp::from_unix(Duration::from_secs(1_800_000_000))
}

fn from() -> SocketAddr {
    "198.18.0.1:6786".parse().unwrap()
}

fn screen(bencher: Bencher, secret: &[u8], under_load: bool, with_cookie: bool) {
    let mut rng = SeededRng::new(1);
    let a = node(1, secret);
    let mut b = node(2, SECRET);
    let now = Instant::now();
    let (i, mut init) = a.initiate(1, None, wall(), &mut rng).unwrap();
    if with_cookie {
        let Ok(Screened::CookieReply(reply)) =
            b.screen_initiation(&init, from(), true, now, &mut rng)
        else {
            panic!("no cookie reply");
        };
        let cookie = a.open_cookie_reply(&i, &reply).unwrap();
        init = i.initiation(Some(&cookie));
    }
    bencher.bench_local(|| {
        black_box(b.screen_initiation(black_box(&init), from(), under_load, now, &mut rng))
    });
}

#[divan::bench]
fn screen_bad_mac1(bencher: Bencher) {
    screen(bencher, b"another cluster's join secret", true, false);
}

#[divan::bench]
fn screen_not_under_load(bencher: Bencher) {
    screen(bencher, SECRET, false, false);
}

#[divan::bench]
fn screen_cookie_reply(bencher: Bencher) {
    screen(bencher, SECRET, true, false);
}

#[divan::bench]
fn screen_proven(bencher: Bencher) {
    screen(bencher, SECRET, true, true);
}

// 2,000 iterations (and any warm-up), fewer than the 8,192 initiations made: none is answered twice.
#[divan::bench(sample_count = 20, sample_size = 100)]
fn handle_initiation(bencher: Bencher) {
    let mut rng = SeededRng::new(1);
    let a = node(1, SECRET);
    let mut b = node(2, SECRET);
    // Fresh initiations, so none is refused as a replay.
    let inits: Vec<_> = (0..8192)
        .map(|i| a.initiate(i, None, wall(), &mut rng).unwrap().1)
        .collect();
    let mut next = 0;
    bencher.bench_local(|| {
        next += 1;
        assert!(
            b.handle_initiation(&inits[next], 2, wall(), &mut rng)
                .is_ok()
        );
    });
}
