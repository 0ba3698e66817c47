//! Scenarios a, b and g: joining through one seed, on clean and lossy links, and all at once.

use std::time::Duration;

use weft_tests::{LinkConfig, Sim, seed_from_env, star, summary};

/// a. 50 nodes, each started knowing only node 0: every pair established and every node
/// knows every block within 30 virtual seconds.
#[test]
fn fifty_nodes_from_one_seed_converge_within_30s() {
    let mut sim = Sim::new(seed_from_env(1));
    star(&mut sim, 50);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    eprintln!("{}", summary(&sim));
    let took = took.unwrap_or_else(|| panic!("seed {}: no convergence in 30 s", sim.seed));
    eprintln!("converged in {took:?} of virtual time");
    sim.assert_single_owners();
}
