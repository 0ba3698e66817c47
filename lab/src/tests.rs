//! The lab against the real kernel: namespaces, veths, the switch filter and the real
//! weft-cni binary. Needs root; without it the tests say so loudly, and fail under CI=true
//! ([`capability::can_run`]).

use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Whether this test may make namespaces (loud skip; a failure under CI=true).
fn can_run(test: &str) -> bool {
    capability::can_run(test, LAB_TOOLS)
}

/// The weft and weft-cni built beside this test binary (target/debug/).
fn bins() -> Binaries {
    Binaries::beside_test_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Removes the lab when the test ends, passed or failed.
struct LabGuard(&'static str);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = down(self.0) {
            eprintln!("cleaning up lab {}: {e:#}", self.0);
        }
    }
}

fn spec(prefix: &str, nodes: usize, pods: usize) -> LabSpec {
    LabSpec {
        prefix: prefix.into(),
        nodes,
        pods,
        nat: BTreeSet::new(),
        nat_kind: BTreeMap::new(),
        netem: BTreeMap::new(),
        blocked: BTreeSet::new(),
        routers: false,
        wrong_secret: BTreeSet::new(),
        delay_line: false,
        offload: None,
        kubernetes: None,
        api: false,
        model: None,
    }
}

fn ping(ns: &str, to: &str) -> bool {
    sys::exec_in(ns, "ping", &["-c", "1", "-W", "2", to]).is_ok()
}

fn leftovers(prefix: &str) -> Vec<String> {
    let names = Names::new(prefix);
    sys::namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| names.owns(n))
        .collect()
}

#[test]
fn up_attaches_pods_with_weft_cni_and_down_removes_everything() {
    if !can_run("up_attaches_pods_with_weft_cni_and_down_removes_everything") {
        return;
    }
    let prefix = "tlab1";
    let _guard = LabGuard(prefix);
    let state = up(&spec(prefix, 2, 2), &bins()).unwrap();
    assert_eq!(state.nodes.len(), 2);
    assert_eq!(state.pods.len(), 4);
    let addrs: BTreeSet<_> = state.pods.iter().map(|p| p.address).collect();
    assert_eq!(addrs.len(), 4, "pod addresses are distinct: {addrs:?}");
    for p in &state.pods {
        let node = state.nodes.iter().find(|n| n.name == p.node).unwrap();
        assert!(
            node.block.contains(&p.address),
            "{p:?} outside {}",
            node.block
        );
    }
    // Pods on one node reach each other and their gateway over the node's bridge.
    let (a, b) = (&state.pods[0], &state.pods[1]);
    assert_eq!(a.node, b.node);
    assert!(ping(&a.namespace, &b.address.to_string()));
    assert!(ping(
        &a.namespace,
        &state.nodes[0].block.addr().to_string().replace(".0", ".1")
    ));
    // Nodes reach each other over the underlay.
    assert!(ping(
        &state.nodes[0].namespace,
        &state.nodes[1].underlay.addr().to_string()
    ));
    // status reads back what up saved.
    assert_eq!(status(prefix).unwrap(), state);

    assert_eq!(down(prefix).unwrap(), 7, "underlay + 2 nodes + 4 pods");
    assert!(leftovers(prefix).is_empty());
    assert!(!lab_dir(prefix).exists());
    assert!(status(prefix).unwrap_err().to_string().contains("no lab"));
}

#[test]
fn the_switch_blocks_links_and_nat_nodes_reach_out() {
    if !can_run("the_switch_blocks_links_and_nat_nodes_reach_out") {
        return;
    }
    let prefix = "tlab2";
    let _guard = LabGuard(prefix);
    let mut s = spec(prefix, 3, 0);
    s.nat.insert(3);
    s.blocked.insert((1, 2));
    let state = up(&s, &bins()).unwrap();
    let ns = |i: usize| state.nodes[i - 1].namespace.clone();
    let addr = |i: usize| state.nodes[i - 1].underlay.addr().to_string();
    assert!(!ping(&ns(1), &addr(2)), "1-2 is blocked");
    assert!(ping(&ns(1), &addr(3)), "1 reaches 3's NAT box");
    assert!(ping(&ns(3), &addr(2)), "3 reaches out through its NAT");
    assert!(state.nodes[2].behind_nat);
}

#[test]
fn a_failed_up_leaves_nothing_and_up_sweeps_a_crashed_run() {
    if !can_run("a_failed_up_leaves_nothing_and_up_sweeps_a_crashed_run") {
        return;
    }
    let prefix = "tlab3";
    let _guard = LabGuard(prefix);
    // A crashed run left a namespace behind.
    sys::run("ip", &["netns", "add", "tlab3-n9"]).unwrap();
    // weft-cni that always fails: up must fail, and remove both its work and the leftover.
    let broken = Binaries {
        cni: PathBuf::from("/bin/false"),
        ..bins()
    };
    let err = up(&spec(prefix, 2, 1), &broken).unwrap_err();
    assert!(format!("{err:#}").contains("attaching pod"), "{err:#}");
    assert!(leftovers(prefix).is_empty(), "{:?}", leftovers(prefix));
    assert!(!lab_dir(prefix).exists());
}
