//! Joining through one seed, on clean and lossy links, and many at once.

use std::time::Duration;

use weft_tests::sim::DataPath;
use weft_tests::{LinkConfig, NodeSpec, Sim, seed_from_env, star, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    a_fifty_nodes_from_one_seed_converge_within_30s,
    b_fifty_nodes_converge_with_loss_and_reordering_within_60s,
    g_twenty_nodes_joining_at_once_get_distinct_blocks_within_30s,
    every_pair_talks_the_moment_the_mesh_knows_every_block,
);

fn converge(sim: &mut Sim, limit: Duration) -> Duration {
    let took = sim.run_until(limit, Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    eprintln!("{}", summary(sim));
    let took = took.unwrap_or_else(|| {
        panic!(
            "seed {}: no full mesh with every block known within {limit:?}",
            sim.seed
        )
    });
    eprintln!("converged in {took:?} of virtual time");
    took
}

/// a. 50 nodes, each started knowing only node 0: every pair established and every node
/// knows every block within 30 virtual seconds.
fn a_fifty_nodes_from_one_seed_converge_within_30s(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(1), data_path);
    sim.check_ownership_every_step();
    star(&mut sim, 50);
    converge(&mut sim, Duration::from_secs(30));
    // Every block distinct, and every node's block is the one the others route to it.
    sim.assert_single_owners();
    let routes = sim.node(7).routes();
    for i in 0..50 {
        let block = sim.node(i).block().unwrap();
        assert_eq!(routes.owner(block.network()), Some(sim.id(i)));
    }
}

/// b. The same with 5% loss and reordering on every link, within 60 virtual seconds.
fn b_fifty_nodes_converge_with_loss_and_reordering_within_60s(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(2), data_path);
    sim.check_ownership_every_step();
    sim.default_link = LinkConfig {
        loss: 0.05,
        reorder: 0.05,
        duplicate: 0.01,
        jitter: Duration::from_millis(5),
        // The IPv6 minimum (RFC 8200 §5): no control datagram may need more.
        mtu: 1280,
        ..LinkConfig::default()
    };
    star(&mut sim, 50);
    converge(&mut sim, Duration::from_secs(60));
    assert!(sim.underlay.lost > 0, "the links did lose packets");
    assert_eq!(sim.underlay.too_big, 0, "nothing exceeded the MTU");
    sim.assert_single_owners();
}

/// g. 20 nodes join a running cluster at the same instant: distinct blocks, settled within 30
/// virtual seconds; the ownership invariant is checked at every step.
fn g_twenty_nodes_joining_at_once_get_distinct_blocks_within_30s(data_path: DataPath) {
    let mut sim = Sim::with_data_path(seed_from_env(7), data_path);
    sim.check_ownership_every_step();
    star(&mut sim, 3);
    converge(&mut sim, Duration::from_secs(30));
    for i in 3..23 {
        sim.add(NodeSpec::new(format!("node-{i}"), vec![0]));
    }
    converge(&mut sim, Duration::from_secs(30));
    let mut blocks: Vec<_> = (0..23).map(|i| sim.node(i).block().unwrap()).collect();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), 23, "every node has its own block");
    assert!(sim.ownership_checks() > 20);
}

/// Members starting together carry traffic between every pair from the moment every table
/// holds every block, not from each member's next route slot (up to `ROUTE_INTERVAL` later),
/// on either data path. (The Node's path used to route by the owners of its last route slot:
/// blocks claimed since were dropped as unroutable, and a restarted mesh could not reach its
/// newest blocks for up to a second after it formed.)
fn every_pair_talks_the_moment_the_mesh_knows_every_block(data_path: DataPath) {
    for seed in [31, 32, 33, 34] {
        let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
        let n = star(&mut sim, 4).len();
        // Finely stepped, so the traffic starts within a millisecond of the last block.
        let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(1), |s| {
            s.full_mesh() && s.all_know_all_blocks()
        });
        assert!(took.is_some(), "seed {seed}: no mesh\n{}", summary(&sim));
        for (b, received) in sim.traffic_round(0).iter().enumerate() {
            assert_eq!(
                received.len(),
                n - 1,
                "seed {seed}: node {b} received {} of {} packets sent as the mesh formed\n{}",
                received.len(),
                n - 1,
                summary(&sim)
            );
        }
    }
}
