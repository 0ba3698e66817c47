//! A hostile underlay: an on-path forger racing every handshake with a corrupted copy, and
//! spoofed datagrams meant to make a router reflect handshakes at a victim
//! (docs/design.md §3).

use std::time::Duration;

use weft_mesh::DropReason;
use weft_tests::sim::DataPath;
use weft_tests::{Sim, seed_from_env, star, summary};

weft_tests::both_data_paths!(a_forger_racing_every_handshake_stops_none,);

fn drops(sim: &Sim, node: usize, reason: DropReason) -> u64 {
    sim.node(node).drops().get(&reason).copied().unwrap_or(0)
}

/// Every ordered pair sends one packet; panics unless each arrives.
fn every_pair_talks(sim: &mut Sim, round: u32, when: &str) {
    let n = sim.len();
    for (b, received) in sim.traffic_round(round).iter().enumerate() {
        let got = received.len();
        assert_eq!(
            got,
            n - 1,
            "seed {}: {when}: node {b} received {got} of {} packets\n{}",
            sim.seed,
            n - 1,
            summary(sim)
        );
    }
}

/// Every handshake message is raced by a copy with one bit flipped, delivered just ahead of
/// it: first in the last 16 bytes (the tag that fails last, after the state has moved), then
/// anywhere. Each forged copy is refused and leaves the handshake as it was, so the mesh forms
/// as without the forger, and the rekeys later on complete too.
fn a_forger_racing_every_handshake_stops_none(data_path: DataPath) {
    for (seed, tail) in [(81, 16), (82, usize::MAX)] {
        let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
        sim.forge_handshakes(tail);
        let n = 4;
        star(&mut sim, n);
        let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
            s.full_mesh() && s.all_know_all_blocks()
        });
        assert!(
            took.is_some(),
            "seed {seed}, forging the last {tail} bytes: no mesh\n{}",
            summary(&sim)
        );
        let refused: u64 = (0..n)
            .map(|i| drops(&sim, i, DropReason::HandshakeRejected))
            .sum();
        assert!(refused > 0, "seed {seed}: the forger was not there");
        every_pair_talks(&mut sim, 0, "after the mesh formed");
        // Past the rekey time: the new sessions' handshakes were raced as well.
        sim.run_for(Duration::from_secs(150));
        every_pair_talks(&mut sim, 1, "after the rekeys");
        sim.assert_data_path_carried_traffic();
    }
}
