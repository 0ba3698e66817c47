//! The engine's cost for the cluster size docs/networkpolicy.md quotes (benches/support):
//! 300 pods, 100 policies. `cargo bench -p weft-policy`.

mod support;

use divan::{Bencher, black_box};
use support::snapshot;
use weft_policy::{Local, Protocol, allows, compute};

fn main() {
    divan::main();
}

/// One node's model: what a router recomputes on every change.
#[divan::bench]
fn one_node(bencher: Bencher) {
    let s = snapshot();
    bencher.bench(|| {
        compute(
            black_box(&s.policies),
            &s.pods,
            &s.namespaces,
            Local::Node("n1"),
        )
    });
}

/// Every pod's model (ten nodes' work at once).
#[divan::bench]
fn whole_cluster(bencher: Bencher) {
    let s = snapshot();
    bencher.bench(|| compute(black_box(&s.policies), &s.pods, &s.namespaces, Local::All));
}

/// Explaining one connection against a computed model.
#[divan::bench]
fn one_verdict(bencher: Bencher) {
    let s = snapshot();
    let model = compute(&s.policies, &s.pods, &s.namespaces, Local::All);
    let (src, dst) = ("10.32.0.7".parse().unwrap(), "10.32.1.40".parse().unwrap());
    bencher.bench(|| allows(black_box(&model), src, dst, Protocol::Tcp, 8080));
}
