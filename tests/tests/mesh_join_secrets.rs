//! Rotating the join secret in three steps (docs/design.md §3) across a running mesh with one
//! node a step behind: no session drops, every pair keeps talking, all end on the new secret,
//! and a node that knows only the old one is refused afterwards.

use std::time::Duration;

use weft_mesh::{DropReason, Event, JoinSecretUse};
use weft_tests::sim::{DataPath, JOIN_SECRET};
use weft_tests::{NodeSpec, Sim, seed_from_env, star, summary};

weft_tests::both_data_paths!(
    a_three_step_rotation_with_a_node_lagging_a_step_never_drops_a_session
);

const NEW: &[u8] = b"the rotated-in join secret, 32 bytes";
const N: usize = 6;
/// The node that lags a step.
const LAG: usize = 5;

fn text(lines: &[&[u8]]) -> Vec<u8> {
    lines.join(&b'\n')
}

fn peer_downs(sim: &Sim) -> usize {
    (0..N)
        .map(|i| {
            sim.events(i)
                .iter()
                .filter(|e| matches!(e, Event::PeerDown { .. }))
                .count()
        })
        .sum()
}

/// How many peers of node `i` have a session made with a secret other than its primary (the
/// router's gauge).
fn not_on_primary(sim: &Sim, i: usize) -> usize {
    sim.node(i)
        .status()
        .peers
        .iter()
        .filter(|p| p.join_secret.is_some_and(|u| u != JoinSecretUse::Primary))
        .count()
}

/// Traffic rounds between every pair for `secs` virtual seconds (one round every 2.5 s):
/// panics unless every packet of every round arrives.
fn talk_for(sim: &mut Sim, round: &mut u32, secs: u64, when: &str) {
    for _ in 0..secs * 2 / 5 {
        *round += 1;
        for (b, received) in sim.traffic_round(*round).iter().enumerate() {
            assert_eq!(
                received.len(),
                N - 1,
                "seed {}: {when}, round {round}: node {b} received {} of {} packets\n{}",
                sim.seed,
                received.len(),
                N - 1,
                summary(sim)
            );
        }
        sim.run_for(Duration::from_secs(2));
    }
}

fn a_three_step_rotation_with_a_node_lagging_a_step_never_drops_a_session(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(21), data_path);
    star(&mut sim, N);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(took.is_some(), "no mesh\n{}", summary(&sim));
    let mut round = 0;
    talk_for(&mut sim, &mut round, 5, "before the rotation");
    let downs = peer_downs(&sim);
    let old = JOIN_SECRET;
    let all_but_lag: Vec<usize> = (0..N).filter(|i| *i != LAG).collect();

    // Step 1 everywhere but the lagging node: accept the new secret.
    for &i in &all_but_lag {
        sim.set_join_secrets(i, &text(&[old, NEW]));
    }
    talk_for(&mut sim, &mut round, 10, "step 1");
    // Step 2 likewise: initiate with the new one. The lagging node is still at step 0: the
    // others' initiations to it fail, its own (old secret) are accepted. Run past the rekey
    // time so that every session is re-made at least once while the steps differ.
    for &i in &all_but_lag {
        sim.set_join_secrets(i, &text(&[NEW, old]));
    }
    talk_for(&mut sim, &mut round, 10, "step 2 beside step 0");
    for &i in &all_but_lag {
        let n = sim.node(i);
        for p in n.status().peers {
            let want = if p.id == sim.id(LAG) {
                JoinSecretUse::Other
            } else {
                JoinSecretUse::Primary
            };
            assert_eq!(p.join_secret, Some(want), "node {i}, peer {:?}", p.name);
        }
    }
    let handshakes_before = sim.node(LAG).stats().handshakes;
    talk_for(
        &mut sim,
        &mut round,
        200,
        "step 2 beside step 0, through rekeys",
    );
    assert!(
        sim.node(LAG).stats().handshakes >= handshakes_before + (N as u64 - 1),
        "the lagging node's sessions were re-made (with the old secret) meanwhile"
    );
    assert_eq!(
        not_on_primary(&sim, 0),
        1,
        "only the lagging node is on the old secret"
    );
    // The lagging node catches up, a step at a time.
    sim.set_join_secrets(LAG, &text(&[old, NEW]));
    talk_for(&mut sim, &mut round, 10, "lagging node at step 1");
    sim.set_join_secrets(LAG, &text(&[NEW, old]));
    talk_for(&mut sim, &mut round, 10, "everyone at step 2");
    for i in 0..N {
        assert_eq!(
            not_on_primary(&sim, i),
            0,
            "node {i}: the gauge reads 0\n{}",
            summary(&sim)
        );
    }
    // Step 3: the old secret is removed.
    for i in 0..N {
        sim.set_join_secrets(i, NEW);
    }
    talk_for(&mut sim, &mut round, 10, "step 3");
    assert_eq!(
        peer_downs(&sim),
        downs,
        "a session dropped during the rotation"
    );
    assert!(sim.full_mesh());

    // A node that knows only the old secret no longer gets in.
    let rejected = |sim: &Sim| -> u64 {
        (0..N)
            .map(|i| {
                sim.node(i)
                    .drops()
                    .get(&DropReason::BadMac1)
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let before = rejected(&sim);
    let late = sim.add(NodeSpec::new("late", vec![0, 1]));
    sim.run_for(Duration::from_secs(30));
    assert_eq!(
        sim.node(late).up_peers().count(),
        0,
        "a node with the old secret joined"
    );
    assert!(
        rejected(&sim) > before,
        "its initiations were refused at mac1"
    );
}
