//! The simulator itself: a seed replays a run exactly; and the bounded handshake queue.

use std::time::Duration;

use weft_mesh::DropReason;
use weft_tests::{LinkConfig, Sim, star, summary};

fn run(seed: u64) -> (String, u64, u64, u64) {
    let mut sim = Sim::new(seed);
    sim.default_link = LinkConfig {
        loss: 0.05,
        reorder: 0.1,
        duplicate: 0.02,
        ..LinkConfig::default()
    };
    star(&mut sim, 12);
    sim.run_for(Duration::from_secs(20));
    let gossip: u64 = (0..12).map(|i| sim.node(i).stats().gossip_bytes).sum();
    (
        summary(&sim),
        sim.events_processed(),
        sim.underlay.lost,
        gossip,
    )
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(11);
    let b = run(11);
    assert_eq!(a, b, "same seed, same run");
    let c = run(12);
    assert_ne!(
        (a.1, a.2, a.3),
        (c.1, c.2, c.3),
        "another seed, another run"
    );
}

/// Packets for a peer whose session is not up wait in a bounded queue; the overflow is
/// dropped and counted, the rest is delivered once the handshake completes.
#[test]
fn packets_wait_for_the_handshake_and_overflow_is_counted() {
    let mut sim = Sim::new(weft_tests::seed_from_env(13));
    star(&mut sim, 3);
    let ok = sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(ok.is_some());
    let packets: Vec<_> = (0..100).map(|t| sim.packet(1, 2, t)).collect();
    sim.crash(2);
    sim.run_for(Duration::from_secs(40));
    assert!(!sim.node(1).is_up(&sim.id(2)), "peer declared dead");
    sim.send_packets(1, packets);
    let limit = weft_mesh::node::QUEUE_LIMIT as u64;
    assert_eq!(
        sim.node(1).drops().get(&DropReason::QueueFull).copied(),
        Some(100 - limit)
    );
    sim.restart(2, false);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(
        sim.take_tun(2).len() as u64,
        limit,
        "the queue is delivered"
    );
}
