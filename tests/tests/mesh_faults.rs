//! A partition that heals, and restarts with the same key and a new one.

use std::time::Duration;

use weft_mesh::{Command, Event, Liveness};
use weft_tests::sim::DataPath;
use weft_tests::{NodeSpec, Sim, seed_from_env, star, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    c_partition_for_120s_then_heal_full_mesh_within_30s_blocks_never_shared,
    d_restart_with_same_key_keeps_block_new_key_is_new_member,
    forgetting_a_live_member_is_refuted_and_it_comes_back,
);

fn settle(sim: &mut Sim, limit: Duration, what: &str) -> Duration {
    let took = sim.run_until(limit, Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    eprintln!("{}", summary(sim));
    let took =
        took.unwrap_or_else(|| panic!("seed {}: {what}: not settled in {limit:?}", sim.seed));
    eprintln!("{what}: settled in {took:?}");
    took
}

/// c. Partition into two halves for 120 s, then heal: full mesh again within 30 s; no block
/// has two owners at any step. A node joins each half during the partition: each gets a
/// block from an owner on its side, or waits and says why; none guesses.
fn c_partition_for_120s_then_heal_full_mesh_within_30s_blocks_never_shared(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(3), data_path);
    sim.check_ownership_every_step();
    let n = 30;
    star(&mut sim, n);
    settle(&mut sim, Duration::from_secs(30), "before the partition");

    let mut groups: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    groups.extend([0, 1]);
    sim.partition(groups);
    // Joiners on each side, seeded with a node of their side.
    let a = sim.add(NodeSpec::new("joiner-even", vec![2]));
    let b = sim.add(NodeSpec::new("joiner-odd", vec![3]));
    sim.run_for(Duration::from_secs(120));
    let evens: Vec<usize> = (0..n).step_by(2).chain([a]).collect();
    let odds: Vec<usize> = (1..n).step_by(2).chain([b]).collect();
    assert!(sim.full_mesh_among(&evens), "each side stays meshed");
    assert!(sim.full_mesh_among(&odds), "each side stays meshed");
    assert!(
        !sim.node(0).is_up(&sim.id(1)),
        "tunnels across the partition died"
    );
    for j in [a, b] {
        let node = sim.node(j);
        assert!(
            node.block().is_some() || node.waiting().is_some(),
            "a joiner has a block or says why it waits"
        );
    }

    sim.heal();
    let took = settle(&mut sim, Duration::from_secs(30), "after healing");
    assert!(took <= Duration::from_secs(30));
    assert!(sim.ownership_checks() > n as u64);
}

/// d. A node restarts with its key: its block and peers come back. With a new key it is a new
/// member, its old record is tombstoned, and its old block can be taken over explicitly.
fn d_restart_with_same_key_keeps_block_new_key_is_new_member(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(4), data_path);
    sim.check_ownership_every_step();
    let n = 12;
    star(&mut sim, n);
    settle(&mut sim, Duration::from_secs(30), "start");
    let k = 5;
    let old_id = sim.id(k);
    let old_block = sim.node(k).block().unwrap();
    let old_incarnation = sim.node(0).members().get(&old_id).unwrap().incarnation;

    sim.crash(k);
    sim.run_for(Duration::from_secs(40));
    assert!(!sim.node(0).is_up(&old_id), "peers noticed it is gone");
    sim.restart(k, false);
    settle(
        &mut sim,
        Duration::from_secs(30),
        "restart with the same key",
    );
    assert_eq!(sim.id(k), old_id);
    assert_eq!(
        sim.node(k).block(),
        Some(old_block),
        "block kept across restart"
    );
    let rec = sim.node(0).members().get(&old_id).unwrap();
    assert!(
        rec.incarnation > old_incarnation,
        "a new incarnation supersedes"
    );

    // New key: a new member with a new block; the old record becomes a tombstone.
    sim.restart(k, true);
    let new_id = sim.id(k);
    assert_ne!(new_id, old_id);
    settle(&mut sim, Duration::from_secs(30), "restart with a new key");
    let new_block = sim.node(k).block().unwrap();
    assert_ne!(
        new_block, old_block,
        "the old block still belongs to the old id"
    );
    for i in 0..n {
        let r = sim.node(i).members().get(&old_id).unwrap();
        assert!(
            matches!(
                r.liveness,
                Liveness::Departed {
                    taken_over: false,
                    ..
                }
            ),
            "node {i} tombstoned the old record"
        );
        assert!(!sim.node(i).is_up(&old_id));
    }

    // The operator declares the old identity gone: node 1 takes its block over.
    sim.with_node(1, |n, now| {
        n.handle_command(now, Command::TakeOverBlocks(old_id))
    });
    assert!(
        sim.events(1)
            .iter()
            .any(|e| matches!(e, Event::BlocksTakenOver { from, .. } if *from == old_id))
    );
    sim.run_for(Duration::from_secs(10));
    let owned = sim.node(1).address_space().owned();
    assert!(owned.iter().any(|o| o.contains(&old_block)));
    for i in 0..n {
        let r = sim.node(i).members().get(&old_id).unwrap();
        assert!(matches!(
            r.liveness,
            Liveness::Departed {
                taken_over: true,
                ..
            }
        ));
    }
    // Taking over a live peer is refused.
    let live = sim.id(2);
    sim.with_node(1, |n, now| {
        n.handle_command(now, Command::TakeOverBlocks(live))
    });
    assert!(
        sim.events(1)
            .iter()
            .any(|e| matches!(e, Event::CommandRefused { .. }))
    );
    sim.assert_single_owners();
}

/// Forgetting a live member: it is tombstoned everywhere, refutes the tombstone with a new
/// incarnation through the others, and the full mesh comes back.
fn forgetting_a_live_member_is_refuted_and_it_comes_back(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(17), data_path);
    star(&mut sim, 6);
    settle(&mut sim, Duration::from_secs(30), "start");
    let victim = sim.id(4);
    let before = sim.node(4).status().incarnation;
    sim.with_node(1, |n, now| n.handle_command(now, Command::Forget(victim)));
    assert!(!sim.node(1).is_up(&victim));
    settle(&mut sim, Duration::from_secs(60), "after forget");
    assert!(sim.node(4).status().incarnation > before, "refuted");
    for i in 0..6 {
        assert!(
            sim.node(i)
                .members()
                .get(&victim)
                .is_some_and(|r| r.is_alive())
        );
    }
}
