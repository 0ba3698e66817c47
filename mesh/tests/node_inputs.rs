//! A Node fed arbitrary bytes: never panics, and counts every refused datagram exactly once.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use weft_crypto::{Handshaker, JoinSecret, KeyPair, SeededRng, Timestamp};
use weft_mesh::{Config, Node};

fn node(now: Instant) -> Node {
    let mut config = Config::new("n");
    config.found_address_space = true;
    Node::new(
        config,
        Handshaker::new(
            KeyPair::from_private([3; 32]),
            JoinSecret::new(
                b"a join secret for the unit tests",
                weft_crypto::DEFAULT_CLUSTER_NAME,
            )
            .unwrap(),
        ),
        None,
        Box::new(SeededRng::new(5)),
        now,
        Timestamp::from_unix(Duration::from_secs(1_800_000_000)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_datagrams_are_counted_drops(datagrams in proptest::collection::vec(
        (0u8..8, proptest::collection::vec(any::<u8>(), 0..200)), 1..20)) {
        let now = Instant::now();
        let mut n = node(now);
        let from = "198.18.0.7:6786".parse().unwrap();
        for (kind, mut bytes) in datagrams.clone() {
            if !bytes.is_empty() {
                bytes[0] = kind; // steer towards each parser
            }
            n.handle_datagram(now, from, &bytes);
        }
        let dropped: u64 = n.drops().values().sum();
        prop_assert_eq!(dropped, datagrams.len() as u64);
        prop_assert!(n.poll_tun().is_none());
        prop_assert!(n.up_peers().next().is_none());
    }
}

#[test]
fn a_founder_has_its_block_and_a_single_deadline() {
    let now = Instant::now();
    let mut n = node(now);
    assert_eq!(n.block(), Some("10.32.0.0/24".parse().unwrap()));
    assert!(
        n.poll_timeout()
            .is_some_and(|t| t <= now + Duration::from_secs(5))
    );
    // Packets for nobody's block are dropped and counted, not queued.
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[3] = 20;
    p[16..20].copy_from_slice(&[10, 40, 0, 1]);
    n.handle_tun_packets(now, vec![p, vec![0x60; 40]]);
    assert_eq!(n.drops().get(&weft_mesh::DropReason::NoRoute), Some(&1));
    assert_eq!(n.drops().get(&weft_mesh::DropReason::NotIpv4), Some(&1));
}

#[test]
fn a_node_dials_its_seeds_as_it_starts() {
    let now = Instant::now();
    let seed: weft_mesh::Endpoint = "198.18.0.9:6786".parse().unwrap();
    let mut config = Config::new("n");
    config.seeds = vec![seed];
    let mut n = Node::new(
        config,
        Handshaker::new(
            KeyPair::from_private([4; 32]),
            JoinSecret::new(
                b"a join secret for the unit tests",
                weft_crypto::DEFAULT_CLUSTER_NAME,
            )
            .unwrap(),
        ),
        None,
        Box::new(SeededRng::new(6)),
        now,
        Timestamp::from_unix(Duration::from_secs(1_800_000_000)),
    );
    // At once, not at the first maintenance tick a second later: a restarted router carries
    // traffic again as soon as its seed answers.
    n.handle_timeout(now);
    let initiation = std::iter::from_fn(|| n.poll_transmit())
        .find(|t| t.destination == seed)
        .expect("an initiation to the seed");
    assert_eq!(initiation.bytes.first(), Some(&1), "a handshake initiation");
}
