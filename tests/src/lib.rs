//! weft-tests: shared harness for weft's integration tests: the deterministic simulator
//! ([`sim`]) that the `tests/tests/mesh_*.rs` scenarios and `examples/simulate.rs` drive, the
//! end-to-end harness ([`e2e`]) of the `tests/tests/e2e_*.rs` tests, built on the lab crate,
//! and the fake Kubernetes API server ([`fake_kube`]) of the discovery and lab tests.

pub mod e2e;
pub mod fake_kube;
pub mod nat;
pub mod sim;

pub use sim::{
    JOIN_SECRET, LinkConfig, NatKind, NodeSpec, Sim, SimRng, UnderlayStats, ipv4_packet,
    seed_from_env,
};

/// A cluster of `n` nodes started at once, each knowing only node 0, which founds the
/// address space.
pub fn star(sim: &mut Sim, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let mut spec =
                NodeSpec::new(format!("node-{i}"), if i == 0 { vec![] } else { vec![0] });
            spec.found = i == 0;
            sim.add(spec)
        })
        .collect()
}

/// One line per node: name, tunnels up, members known, block; then totals. The whole mesh at
/// a glance, for the example and for failing tests.
pub fn summary(sim: &Sim) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for i in 0..sim.len() {
        if !sim.is_running(i) {
            let _ = writeln!(out, "{:>10}  (down)", sim.name(i));
            continue;
        }
        let n = sim.node(i);
        let up = n.up_peers().count();
        let relayed = n
            .up_peers()
            .filter(|p| matches!(n.path(p), Some(weft_mesh::NextHop::Relay { .. })))
            .count();
        let members = n.members().alive().count();
        let block = n.block().map(|b| b.to_string()).unwrap_or_else(|| {
            format!(
                "waiting: {}",
                n.waiting().map(|w| w.to_string()).unwrap_or_default()
            )
        });
        let _ = writeln!(
            out,
            "{:>10}  up {up:>4} (relayed {relayed})  members {members:>4}  block {block}",
            sim.name(i)
        );
    }
    let (up, pairs) = sim.mesh_progress();
    let _ = writeln!(
        out,
        "tunnels up {up}/{pairs} (ordered pairs); every block known everywhere: {}",
        sim.all_know_all_blocks()
    );
    out
}
