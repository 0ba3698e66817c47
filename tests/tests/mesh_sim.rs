//! The simulator itself: a seed replays a run exactly; and the bounded handshake queue.

use std::time::Duration;

use weft_mesh::DropReason;
use weft_tests::sim::DataPath;
use weft_tests::{LinkConfig, Sim, star, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    the_same_seed_replays_the_same_run,
    without_an_owner_nodes_wait_and_say_why_external_blocks_bypass,
    clock_skew_within_bounds_joins_beyond_is_refused,
);

fn run(seed: u64, data_path: DataPath) -> (String, u64, u64, u64) {
    let mut sim = Sim::with_data_path(seed, data_path);
    sim.default_link = LinkConfig {
        loss: 0.05,
        reorder: 0.1,
        duplicate: 0.02,
        ..LinkConfig::default()
    };
    star(&mut sim, 12);
    sim.run_for(Duration::from_secs(20));
    let gossip: u64 = (0..12).map(|i| sim.node(i).stats().gossip_bytes).sum();
    (
        summary(&sim),
        sim.events_processed(),
        sim.underlay.lost,
        gossip,
    )
}

fn the_same_seed_replays_the_same_run(data_path: DataPath) {
    let a = run(11, data_path);
    let b = run(11, data_path);
    assert_eq!(a, b, "same seed, same run");
    let c = run(12, data_path);
    assert_ne!(
        (a.1, a.2, a.3),
        (c.1, c.2, c.3),
        "another seed, another run"
    );
}

mod packets_wait_for_the_handshake_and_overflow_is_counted {
    use super::DataPath;

    #[test]
    fn node() {
        super::packets_wait_for_the_handshake_and_overflow_is_counted(DataPath::Node)
    }

    #[test]
    fn data_plane() {
        super::packets_wait_for_the_handshake_and_overflow_is_counted(DataPath::DataPlane)
    }
}

/// Packets for a peer whose session is not up wait in a bounded queue; the overflow is
/// dropped and counted, the rest is delivered once the handshake completes.
fn packets_wait_for_the_handshake_and_overflow_is_counted(data_path: DataPath) {
    let mut sim = Sim::with_data_path(weft_tests::seed_from_env(13), data_path);
    star(&mut sim, 3);
    let ok = sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(ok.is_some());
    let packets: Vec<_> = (0..100).map(|t| sim.packet(1, 2, t)).collect();
    sim.crash(2);
    sim.run_for(Duration::from_secs(40));
    assert!(!sim.node(1).is_up(&sim.id(2)), "peer declared dead");
    sim.send_packets(1, packets);
    let limit = weft_mesh::node::QUEUE_LIMIT as u64;
    assert_eq!(
        sim.node(1).drops().get(&DropReason::QueueFull).copied(),
        Some(100 - limit)
    );
    sim.restart(2, false);
    sim.run_for(Duration::from_secs(15));
    let delivered = sim.take_tun(2).len() as u64;
    assert_eq!(
        delivered,
        limit,
        "the queue is delivered; drops at 1: {:?}, at 2: {:?}",
        sim.node(1).drops(),
        sim.node(2).drops()
    );
}

/// With no owner of free space anywhere (nobody founded the address space), nodes wait, say
/// why (an event and their status), and never guess a block; a block given from outside
/// (podCIDR) is used at once and routed to by the others.
fn without_an_owner_nodes_wait_and_say_why_external_blocks_bypass(data_path: DataPath) {
    use weft_mesh::{Event, WaitReason};
    let mut sim = Sim::with_data_path(weft_tests::seed_from_env(14), data_path);
    for i in 0..3 {
        sim.add(weft_tests::NodeSpec::new(
            format!("node-{i}"),
            if i == 0 { vec![] } else { vec![0] },
        ));
    }
    let mut ext = weft_tests::NodeSpec::new("external", vec![0]);
    ext.pod_cidr = Some("10.200.7.0/24".parse().unwrap());
    let e = sim.add(ext);
    sim.run_for(Duration::from_secs(20));
    assert!(sim.full_mesh());
    for i in 0..3 {
        let n = sim.node(i);
        assert_eq!(n.block(), None, "node {i} never guesses");
        assert_eq!(n.waiting(), Some(&WaitReason::NoOwnerWithFreeSpace));
        assert_eq!(n.status().waiting, Some(WaitReason::NoOwnerWithFreeSpace));
        assert!(sim.events(i).iter().any(|ev| matches!(
            ev,
            Event::BlockWaiting {
                reason: WaitReason::NoOwnerWithFreeSpace
            }
        )));
    }
    assert_eq!(sim.node(e).block(), Some("10.200.7.0/24".parse().unwrap()));
    let routes = sim.node(1).routes();
    assert_eq!(routes.owner("10.200.7.9".parse().unwrap()), Some(sim.id(e)));
    assert!(
        sim.ownership().is_empty(),
        "nobody owns anything under the protocol"
    );
}

/// Wall clocks: a node 20 s off still joins; one 5 minutes off (past the handshake's
/// `MAX_CLOCK_SKEW`) is refused and counted, and never gets a tunnel.
fn clock_skew_within_bounds_joins_beyond_is_refused(data_path: DataPath) {
    let mut sim = Sim::with_data_path(weft_tests::seed_from_env(15), data_path);
    star(&mut sim, 3);
    let mut near = weft_tests::NodeSpec::new("skewed-20s", vec![0]);
    near.skew_secs = 20;
    let near = sim.add(near);
    let mut far = weft_tests::NodeSpec::new("skewed-300s", vec![0]);
    far.skew_secs = -300;
    let far = sim.add(far);
    sim.run_for(Duration::from_secs(30));
    assert!(sim.node(near).is_up(&sim.id(0)));
    assert_eq!(sim.node(far).up_peers().count(), 0);
    assert!(
        sim.node(0)
            .drops()
            .get(&DropReason::HandshakeRejected)
            .is_some_and(|n| *n > 0)
    );
}
