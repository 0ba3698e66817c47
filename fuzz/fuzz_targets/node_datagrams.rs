//! A mesh Node fed arbitrary datagrams from a few endpoints, with time moving between them:
//! it must never panic, whatever arrives (every malformed datagram is a counted drop).
//!
//! Input: a sequence of `[selector, len_lo, len_hi, bytes...]` records; the selector's low
//! two bits pick the source endpoint, bit 2 advances the clock by the selector in 100 ms
//! steps and runs the timers, bit 3 sends the bytes to the TUN side instead.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_crypto::{Handshaker, KeyPair, Random, Timestamp};
use weft_mesh::{Config, Node};

struct Rng(u64);

impl Random for Rng {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (self.0 ^ (self.0 >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            *b = (z >> 56) as u8;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let keypair = KeyPair::from_private([7; 32]);
    let secret = weft_fuzz::join_secret();
    let mut config = Config::new("fuzz");
    config.found_address_space = true;
    config.seeds = vec!["198.18.0.9:6786".parse().unwrap()];
    let mut node = Node::new(
        config,
        Handshaker::new(keypair, secret),
        None,
        Box::new(Rng(1)),
        now,
        Timestamp::from_unix(Duration::from_secs(1_800_000_000)),
    );
    let sources = [
        "198.18.0.9:6786",
        "198.18.0.10:6786",
        "198.19.0.1:40000",
        "[2001:db8::1]:6786",
    ]
    .map(|s| s.parse().unwrap());
    let mut rest = data;
    while let [selector, lo, hi, tail @ ..] = rest {
        let len = (u16::from_le_bytes([*lo, *hi]) as usize).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        if selector & 4 != 0 {
            now += Duration::from_millis(100 * u64::from(*selector >> 3));
            node.handle_timeout(now);
        }
        if selector & 8 != 0 {
            node.handle_tun_packets(now, [bytes.to_vec()]);
        } else {
            node.handle_datagram(now, sources[(selector & 3) as usize], bytes);
        }
        while node.poll_event().is_some() {}
        while node.poll_transmit().is_some() {}
        while node.poll_tun().is_some() {}
        let _ = node.poll_timeout();
    }
});
