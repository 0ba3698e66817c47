//! Key pinning ([`Command::Pin`]), as Kubernetes discovery uses it: nodes that know each
//! other only through pins (no seeds) form a mesh; a node whose handshake key differs from
//! the key pinned at its endpoint is refused by everyone; a node dropped from the pins and
//! forgotten loses its tunnels and its routes and does not come back.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_crypto::KeyPair;
use weft_mesh::{Command, DropReason, PeerId};
use weft_tests::sim::DataPath;
use weft_tests::{NodeSpec, Sim, SimRng, seed_from_env, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    pinned_nodes_find_each_other_without_seeds,
    a_key_other_than_the_pinned_one_is_refused_until_the_pin_is_right,
    an_unpinned_and_forgotten_node_loses_tunnels_and_routes_for_good,
    a_forgotten_node_pinned_again_comes_back,
    nodes_pinned_at_once_keep_talking_past_the_previous_sessions_grace,
    nodes_pinned_at_once_over_bad_links_never_go_silent,
);

/// Three nodes with podCIDR-style blocks and no seeds.
fn three(sim: &mut Sim) {
    for i in 0..3 {
        let mut spec = NodeSpec::new(format!("node-{i}"), vec![]);
        spec.pod_cidr = Some(format!("10.32.{i}.0/24").parse().unwrap());
        sim.add(spec);
    }
}

fn pins(sim: &Sim, keys: &[(usize, PeerId)]) -> BTreeMap<PeerId, std::net::SocketAddr> {
    keys.iter().map(|(i, id)| (*id, sim.endpoint(*i))).collect()
}

fn pin(sim: &mut Sim, node: usize, pins: BTreeMap<PeerId, std::net::SocketAddr>) {
    sim.with_node(node, |n, now| n.handle_command(now, Command::Pin(pins)));
}

/// Pins every node's key at every node, all at the same moment; returns the keys pinned.
fn pin_everyone_at_once(sim: &mut Sim) -> Vec<(usize, PeerId)> {
    let all: Vec<(usize, PeerId)> = (0..sim.len()).map(|i| (i, sim.id(i))).collect();
    for i in 0..sim.len() {
        let p = pins(sim, &all);
        pin(sim, i, p);
    }
    all
}

fn drops(sim: &Sim, node: usize, reason: DropReason) -> u64 {
    sim.node(node).drops().get(&reason).copied().unwrap_or(0)
}

fn pinned_nodes_find_each_other_without_seeds(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(61), data_path);
    three(&mut sim);
    pin_everyone_at_once(&mut sim);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(
        took.is_some(),
        "seed {}: no mesh from pins alone\n{}",
        sim.seed,
        summary(&sim)
    );
    for i in 0..3 {
        assert_eq!(drops(&sim, i, DropReason::NotPinned), 0);
    }
}

fn a_key_other_than_the_pinned_one_is_refused_until_the_pin_is_right(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(62), data_path);
    three(&mut sim);
    // Node 2's endpoint carries a key node 2 does not hold: whoever answers there is refused.
    let impostor = PeerId::from(KeyPair::generate(&mut SimRng::new(7)).public());
    let wrong = [(0, sim.id(0)), (1, sim.id(1)), (2, impostor)];
    let right: Vec<(usize, PeerId)> = (0..3).map(|i| (i, sim.id(i))).collect();
    for i in 0..2 {
        let p = pins(&sim, &wrong);
        pin(&mut sim, i, p);
    }
    let p = pins(&sim, &right);
    pin(&mut sim, 2, p);
    sim.run_for(Duration::from_secs(30));
    eprintln!("{}", summary(&sim));
    let (id0, id1, id2) = (sim.id(0), sim.id(1), sim.id(2));
    assert!(sim.node(0).is_up(&id1) && sim.node(1).is_up(&id0));
    for i in 0..2 {
        assert!(
            !sim.node(i).is_up(&id2),
            "node {i} accepted the unpinned key"
        );
        assert!(!sim.node(i).holds_session_with(&id2));
        // Node 2's record (and block) never reached them: gossip needs a session.
        let block2 = sim.node(2).block().unwrap();
        assert_eq!(sim.node(i).routes().owner(block2.network()), None);
    }
    // Node 2 may count a session it initiated as up until it times out unconfirmed, but
    // nothing ever came back under it: it learned no other member.
    assert_eq!(sim.node(2).members().alive().count(), 1);
    let refused = drops(&sim, 0, DropReason::NotPinned) + drops(&sim, 1, DropReason::NotPinned);
    assert!(refused > 0, "the refusals are counted as not_pinned");

    // With the right key pinned, node 2 joins.
    for i in 0..2 {
        let p = pins(&sim, &right);
        pin(&mut sim, i, p);
    }
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(took.is_some(), "seed {}\n{}", sim.seed, summary(&sim));
}

fn an_unpinned_and_forgotten_node_loses_tunnels_and_routes_for_good(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(63), data_path);
    three(&mut sim);
    let all = pin_everyone_at_once(&mut sim);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(took.is_some(), "seed {}\n{}", sim.seed, summary(&sim));

    // Node 2's Node object is deleted: the others drop its pin and forget it. Node 2 keeps
    // running with its old pins, as a router whose Node was deleted does.
    let id2 = sim.id(2);
    let block2 = sim.node(2).block().unwrap();
    for i in 0..2 {
        let p = pins(&sim, &all[..2]);
        pin(&mut sim, i, p);
        sim.with_node(i, |n, now| n.handle_command(now, Command::Forget(id2)));
    }
    sim.run_for(Duration::from_secs(60));
    eprintln!("{}", summary(&sim));
    for i in 0..2 {
        assert!(!sim.node(i).is_up(&id2));
        assert!(!sim.node(i).holds_session_with(&id2));
        assert_eq!(sim.node(i).routes().owner(block2.network()), None);
    }
    let (id0, id1) = (sim.id(0), sim.id(1));
    assert!(sim.node(0).is_up(&id1) && sim.node(1).is_up(&id0));
}

fn a_forgotten_node_pinned_again_comes_back(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(64), data_path);
    three(&mut sim);
    let all = pin_everyone_at_once(&mut sim);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(took.is_some(), "seed {}\n{}", sim.seed, summary(&sim));
    let id2 = sim.id(2);
    for i in 0..2 {
        let p = pins(&sim, &all[..2]);
        pin(&mut sim, i, p);
        sim.with_node(i, |n, now| n.handle_command(now, Command::Forget(id2)));
    }
    sim.run_for(Duration::from_secs(10));
    assert!(!sim.node(0).is_up(&id2));
    // Its Node is registered again with the same key.
    for i in 0..2 {
        let p = pins(&sim, &all);
        pin(&mut sim, i, p);
    }
    let took = sim.run_until(Duration::from_secs(60), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(
        took.is_some(),
        "seed {}: not back\n{}",
        sim.seed,
        summary(&sim)
    );
}

/// Nodes pinned at the same moment must not both dial: handshakes that cross leave each side
/// sealing with a different session, and once the previous session's grace (10 s) is over
/// each drops what the other seals. Whatever the start, every pair must settle on sessions
/// both ends hold: packets between every pair, well past the grace, all arrive.
fn nodes_pinned_at_once_keep_talking_past_the_previous_sessions_grace(data_path: DataPath) {
    for seed in [65, 66, 67, 68] {
        let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
        three(&mut sim);
        pin_everyone_at_once(&mut sim);
        let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(100), |s| {
            s.full_mesh() && s.all_know_all_blocks()
        });
        assert!(took.is_some(), "seed {}\n{}", sim.seed, summary(&sim));
        // Routes are computed every second.
        sim.run_for(Duration::from_secs(2));
        for i in 0..3 {
            sim.take_tun(i);
        }
        // (Datagrams overtaking a finish while the tunnels formed may have been counted.)
        let unknown: Vec<u64> = (0..3)
            .map(|i| drops(&sim, i, DropReason::UnknownIndex))
            .collect();
        let (mut sent, mut lost) = (0, Vec::new());
        for round in 0..60u32 {
            sent += 6;
            for (b, received) in sim.traffic_round(round).iter().enumerate() {
                let got = received.len();
                if got != 2 {
                    lost.push((round, b, got));
                }
            }
        }
        assert!(
            lost.is_empty(),
            "seed {}: of {sent} packets over 30 s, rounds (round, to, of 2) short: {lost:?}\n{}",
            sim.seed,
            summary(&sim)
        );
        for (i, before) in unknown.iter().enumerate() {
            assert_eq!(
                drops(&sim, i, DropReason::UnknownIndex),
                *before,
                "seed {}: node {i} dropped datagrams sealed with a session it no longer holds",
                sim.seed
            );
        }
        sim.assert_data_path_carried_traffic();
    }
}

/// The same over slow, lossy, reordering links while the tunnels form (handshake messages
/// lost, data overtaking finishes, dials retried: crossings judged at different moments at
/// the two ends): once formed, no pair goes silent. Afterwards the links lose nothing, so a
/// pair that receives nothing for 1.5 s is a pair whose ends seal with sessions the other
/// side no longer holds. (Over seeds 80..400: 197 seeds had such a pair before crossed
/// handshakes were settled, none after.)
fn nodes_pinned_at_once_over_bad_links_never_go_silent(data_path: DataPath) {
    use weft_tests::LinkConfig;
    let bad = LinkConfig {
        latency: Duration::from_millis(80),
        jitter: Duration::from_millis(60),
        loss: 0.15,
        reorder: 0.1,
        ..LinkConfig::default()
    };
    let clean = LinkConfig {
        latency: Duration::from_millis(80),
        jitter: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    for seed in 80..200 {
        let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
        three(&mut sim);
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            sim.set_link(a, b, bad);
        }
        pin_everyone_at_once(&mut sim);
        let took = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
            s.full_mesh() && s.all_know_all_blocks()
        });
        assert!(took.is_some(), "seed {}\n{}", sim.seed, summary(&sim));
        // Still bad for a while: retried handshakes and dials complete on their own clocks.
        sim.run_for(Duration::from_secs(3));
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            sim.set_link(a, b, clean);
        }
        sim.run_for(Duration::from_secs(2));
        for i in 0..3 {
            sim.take_tun(i);
        }
        // For each ordered pair, the longest run of half-second rounds with nothing received.
        let mut silent = [[0u32; 3]; 3];
        let mut longest = [[0u32; 3]; 3];
        for round in 0..60u32 {
            for (b, received) in sim.traffic_round(round).iter().enumerate() {
                let mut from = [false; 3];
                for p in received {
                    // Source address: 10.32.<node>.2.
                    from[usize::from(p[14]).min(2)] = true;
                }
                for a in (0..3).filter(|a| *a != b) {
                    silent[a][b] = if from[a] { 0 } else { silent[a][b] + 1 };
                    longest[a][b] = longest[a][b].max(silent[a][b]);
                }
            }
        }
        for (a, row) in longest.iter().enumerate() {
            for (b, rounds) in row.iter().enumerate().filter(|(b, _)| *b != a) {
                assert!(
                    *rounds < 3,
                    "seed {}: node {a} -> node {b} silent for {rounds} rounds of 500 ms\n{}",
                    sim.seed,
                    summary(&sim)
                );
            }
        }
        sim.assert_data_path_carried_traffic();
    }
}
