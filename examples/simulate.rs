//! Runs a small weft mesh in the deterministic simulator and prints how it converged.
//!
//! ```text
//! cargo run --example simulate -- [NODES] [LOSS] [SEED]
//! cargo run --example simulate -- 20 0.05 42
//! ```
//!
//! Every node starts knowing only node 0 (which founds the address space). The run prints a
//! line per second of virtual time until every pair has a tunnel and every node knows every
//! block, then the whole mesh at a glance: per node, tunnels up (and how many relayed),
//! members known and its block.

use std::time::Duration;

use weft_tests::{LinkConfig, Sim, star, summary};

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let loss: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.0);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);

    let mut sim = Sim::new(seed);
    sim.default_link = LinkConfig {
        loss,
        reorder: loss,
        ..LinkConfig::default()
    };
    println!(
        "{nodes} nodes, {:.1}% loss and reordering per link, seed {seed}",
        loss * 100.0
    );
    star(&mut sim, nodes);
    let limit = Duration::from_secs(120);
    let took = sim.run_until(limit, Duration::from_secs(1), |s| {
        let (up, pairs) = s.mesh_progress();
        let blocks = (0..s.len())
            .filter(|i| s.node(*i).block().is_some())
            .count();
        println!(
            "t={:>5.1}s  tunnels {up:>5}/{pairs}  nodes with a block {blocks:>3}/{}",
            s.elapsed().as_secs_f64(),
            s.len()
        );
        s.full_mesh() && s.all_know_all_blocks()
    });
    println!();
    print!("{}", summary(&sim));
    let u = sim.underlay;
    println!(
        "underlay: {} datagrams sent, {} delivered, {} lost, {} refused by NATs, {} cut",
        u.sent, u.delivered, u.lost, u.nat_refused, u.cut
    );
    match took {
        Some(t) => println!("converged in {:.1} s of virtual time", t.as_secs_f64()),
        None => {
            println!("did not converge within {limit:?}");
            std::process::exit(1);
        }
    }
}
