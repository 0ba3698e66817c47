//! The Node's side of the data-plane split (docs/design.md §2): the snapshot workers seal and open
//! with, and the activity they report back instead of showing the Node every packet.

use std::time::Duration;

use weft_crypto::wire::Sealed;
use weft_crypto::{DATA_HEADER_LEN, DATA_OVERHEAD, PayloadKind, TAG_LEN};
use weft_mesh::{DataActivity, DropReason, NextHop, Received};
use weft_tests::sim::{DataPath, DataPlaneStats};
use weft_tests::{NodeSpec, Sim, seed_from_env, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    a_packet_sealed_from_one_snapshot_opens_with_the_peers,
    reported_activity_counts_as_traffic_and_keeps_keepalives_quiet,
    direct_traffic_is_sealed_and_opened_beside_the_node_and_reported,
    a_spoofed_source_is_refused_and_counted_at_the_receiver,
);

fn two_nodes(seed: u64, data_path: DataPath) -> Sim {
    let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
    for i in 0..2 {
        let mut spec = NodeSpec::new(format!("node-{i}"), if i == 0 { vec![] } else { vec![0] });
        spec.found = i == 0;
        sim.add(spec);
    }
    let ok = sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(
        ok.is_some(),
        "seed {}: not settled\n{}",
        sim.seed,
        summary(&sim)
    );
    // Let both sides confirm their sessions (the gossip under them does).
    sim.run_for(Duration::from_secs(3));
    sim
}

/// What a sending worker seals with one node's snapshot, a receiving worker opens with the
/// other's, exactly as the Node would: the two snapshots agree on the session and its index.
fn a_packet_sealed_from_one_snapshot_opens_with_the_peers(data_path: DataPath) {
    let mut sim = two_nodes(11, data_path);
    let (a, b) = (0, 1);
    let (ida, idb) = (sim.id(a), sim.id(b));
    let dp_a = sim.with_node(a, |n, now| n.data_plane(now));
    let dp_b = sim.with_node(b, |n, now| n.data_plane(now));

    let packet = sim.packet(a, b, 42);
    let dst = std::net::Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    assert_eq!(dp_a.routes.owner(dst), Some(idb), "a routes b's block to b");
    let path = &dp_a.peers[&idb];
    assert!(
        path.session.is_confirmed(),
        "only confirmed sessions are published"
    );
    let NextHop::Direct(endpoint) = path.next_hop else {
        panic!("a reaches b directly: {:?}", path.next_hop);
    };

    let mut datagram = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
    datagram[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(&packet);
    let now = sim.with_node(a, |_, now| now);
    path.session
        .seal_in_place(PayloadKind::Data, &mut datagram, now)
        .expect("seal");
    let index = u32::from_le_bytes(datagram[1..5].try_into().unwrap());
    let receiving = dp_b
        .receiving
        .get(&index)
        .unwrap_or_else(|| panic!("b's snapshot opens index {index:#x}"));
    assert_eq!(receiving.peer, ida);
    assert!(receiving.direct.is_some(), "b knows a's direct endpoint");
    let mut sealed = Sealed::parse(&mut datagram[..]).expect("a sealed datagram");
    let opened = receiving
        .session
        .open_in_place(&mut sealed, now)
        .expect("opens");
    assert_eq!(&sealed.as_bytes()[opened.range()], &packet[..]);
    // The replay window is the Node's too: the same datagram does not open twice, whoever
    // tries.
    assert!(receiving.session.open_in_place(&mut sealed, now).is_err());
    assert_eq!(
        sim.node(b).path(&ida),
        receiving.direct.map(NextHop::Direct),
        "b's workers take datagrams from a's current direct endpoint only"
    );
    assert!(matches!(sim.node(b).path(&ida), Some(NextHop::Direct(e)) if e != endpoint));

    // The same decisions through DataPlane::open, the receiving worker's call: a fresh
    // datagram from a's endpoint is delivered; the same from elsewhere is the Node's
    // (roaming), untouched; a replay or a flipped bit fails; a packet from outside a's block
    // is refused as spoofed, though authentic.
    let from = sim.node(b).path(&ida).map(|h| match h {
        NextHop::Direct(e) => e,
        NextHop::Relay { endpoint, .. } => endpoint,
    });
    let from = from.expect("b has a path to a");
    let seal = |packet: &[u8]| {
        let mut d = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
        d[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(packet);
        path.session
            .seal_in_place(PayloadKind::Data, &mut d, now)
            .unwrap();
        d
    };
    let mut d = seal(&packet);
    let mut elsewhere = d.clone();
    let roamed: std::net::SocketAddr = "198.18.9.9:6786".parse().unwrap();
    assert_eq!(dp_b.open(&mut elsewhere, roamed, now), Received::ToNode);
    assert_eq!(elsewhere, d, "a datagram for the Node is not opened");
    let mut tampered = d.clone();
    tampered[DATA_HEADER_LEN] ^= 1;
    assert_eq!(dp_b.open(&mut tampered, from, now), Received::Failed);
    assert_eq!(
        dp_b.open(&mut d, from, now),
        Received::Deliver {
            peer: ida,
            range: DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()
        }
    );
    assert_eq!(dp_b.open(&mut d, from, now), Received::Failed, "a replay");
    let mut spoofed = sim.packet(b, a, 7); // b's own block as the source
    spoofed[16..20].copy_from_slice(&packet[16..20]);
    let mut d = seal(&spoofed);
    assert!(matches!(
        dp_b.open(&mut d, from, now),
        Received::Refused { peer, reason: DropReason::SpoofedSource } if peer == ida
    ));

    // A new snapshot is built after any input; an unchanged Node hands out the same one.
    let again = sim.with_node(a, |n, now| n.data_plane(now));
    let twice = sim.with_node(a, |n, now| (n.data_plane(now), n.data_plane(now)));
    assert!(std::sync::Arc::ptr_eq(&twice.0, &twice.1));
    assert_eq!(again.peers.len(), dp_a.peers.len());
}

/// Workers' reports count as traffic: the byte counters grow, and the Node sends no
/// keepalive of its own while reports say data went out.
fn reported_activity_counts_as_traffic_and_keeps_keepalives_quiet(data_path: DataPath) {
    let mut sim = two_nodes(12, data_path);
    let (a, b) = (0, 1);
    let idb = sim.id(b);
    let endpoint = match sim.node(a).path(&idb) {
        Some(NextHop::Direct(e)) => e,
        other => panic!("direct path expected: {other:?}"),
    };
    let before = peer_bytes(&sim, a, idb);
    let control_before = sim.node(a).stats().control_bytes;
    // 12 s of reports, one every 100 ms, as a busy worker sends them.
    for _ in 0..120 {
        sim.run_for(Duration::from_millis(100));
        sim.with_node(a, |n, now| {
            n.handle_data_activity(
                now,
                &[DataActivity {
                    peer: idb,
                    sent_bytes: 1_000,
                    sent_packets: 1,
                    sent: Some((now, now)),
                    received_bytes: 500,
                    received_packets: 1,
                    received: Some((now, endpoint)),
                }],
            )
        });
    }
    let after = peer_bytes(&sim, a, idb);
    // The Node's own control datagrams count as well.
    assert!(after.0 - before.0 >= 120_000, "tx bytes from reports");
    assert!(after.1 - before.1 >= 60_000, "rx bytes from reports");
    // Packets are counted beside bytes, one per reported datagram at least.
    assert!(after.2 - before.2 >= 120, "tx packets from reports");
    assert!(after.3 - before.3 >= 120, "rx packets from reports");
    assert!(sim.node(a).is_up(&idb));
    // Gossip still flows (it is control traffic), but no more than without data: compare
    // with a quiet stretch of the same length.
    let busy = sim.node(a).stats().control_bytes - control_before;
    let quiet_start = sim.node(a).stats().control_bytes;
    sim.run_for(Duration::from_secs(12));
    let quiet = sim.node(a).stats().control_bytes - quiet_start;
    assert!(
        busy <= quiet,
        "reports suppress keepalives: {busy} control bytes while busy, {quiet} while quiet"
    );
}

/// Bytes and packets sent to and received from `peer`: (tx bytes, rx bytes, tx packets, rx
/// packets).
fn peer_bytes(sim: &Sim, i: usize, peer: weft_mesh::PeerId) -> (u64, u64, u64, u64) {
    let s = sim.node(i).status();
    let p = s.peers.iter().find(|p| p.id == peer).expect("peer listed");
    (p.tx_bytes, p.rx_bytes, p.tx_packets, p.rx_packets)
}

/// The simulator reports data-plane activity exactly as often as a router does.
#[test]
fn the_simulator_reports_activity_as_often_as_the_router() {
    assert_eq!(
        weft_tests::sim::REPORT_EVERY,
        weft_router::dataplane::REPORT_EVERY
    );
}

/// Direct traffic arrives whole on either path; on the data-plane path the simulated data
/// planes seal and open every packet themselves, and their reports keep the Node's byte
/// counters as if it had seen each one.
fn direct_traffic_is_sealed_and_opened_beside_the_node_and_reported(data_path: DataPath) {
    let mut sim = two_nodes(13, data_path);
    let (a, b) = (0, 1);
    let (ida, idb) = (sim.id(a), sim.id(b));
    sim.take_tun(b);
    let (sent_before, received_before) = (peer_bytes(&sim, a, idb).0, peer_bytes(&sim, b, ida).1);
    let packets: Vec<_> = (0..50).map(|t| sim.packet(a, b, t)).collect();
    sim.send_packets(a, packets.clone());
    sim.run_for(Duration::from_secs(1));
    let mut got = sim.take_tun(b);
    got.sort();
    let mut want = packets.clone();
    want.sort();
    assert_eq!(got, want, "seed {}: every packet arrives once", sim.seed);
    let sealed: u64 = packets
        .iter()
        .map(|p| (p.len() + DATA_OVERHEAD) as u64)
        .sum();
    assert!(peer_bytes(&sim, a, idb).0 - sent_before >= sealed);
    assert!(peer_bytes(&sim, b, ida).1 - received_before >= sealed);
    let stats = sim.data_plane_stats();
    match data_path {
        DataPath::DataPlane => {
            assert_eq!(stats.sealed, 50, "{stats:?}");
            assert_eq!(stats.opened, 50, "{stats:?}");
            assert_eq!(stats.packets_to_node, 0, "{stats:?}");
            // One report from each side (a's sending half, b's receiving half).
            assert_eq!(stats.reports, 2, "{stats:?}");
        }
        DataPath::Node => assert_eq!(stats, DataPlaneStats::default()),
    }
    sim.assert_data_path_carried_traffic();
}

/// An authentic packet whose source is outside its sender's block is refused at the
/// receiver and counted there as spoofed, whoever opened it (the Node, or the data plane,
/// which reports the drop).
fn a_spoofed_source_is_refused_and_counted_at_the_receiver(data_path: DataPath) {
    let mut sim = two_nodes(14, data_path);
    let (a, b) = (0, 1);
    sim.take_tun(b);
    let spoofed_before = drops(&sim, b, DropReason::SpoofedSource);
    let mut packet = sim.packet(a, b, 1);
    let foreign = sim.packet(b, a, 1); // its source is in b's own block
    packet[12..16].copy_from_slice(&foreign[12..16]);
    sim.send_packets(a, vec![packet]);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.take_tun(b).is_empty(), "seed {}", sim.seed);
    assert_eq!(
        drops(&sim, b, DropReason::SpoofedSource),
        spoofed_before + 1,
        "seed {}: {:?}",
        sim.seed,
        sim.data_plane_stats()
    );
    if data_path == DataPath::DataPlane {
        assert_eq!(sim.data_plane_stats().refused, 1);
    }
}

fn drops(sim: &Sim, i: usize, reason: DropReason) -> u64 {
    sim.node(i).drops().get(&reason).copied().unwrap_or(0)
}

/// Steady traffic on the data-plane path: the workers' activity reports (ten a second per
/// half) move the Node's clocks and counters but no session, path or route, so they do not
/// make the Node build its snapshot again; only its other inputs (gossip, keepalives,
/// timers) do.
#[test]
fn activity_reports_do_not_rebuild_the_snapshot() {
    let mut sim = two_nodes(17, DataPath::DataPlane);
    let (a, b) = (0, 1);
    let builds =
        |sim: &Sim| sim.node(a).stats().data_plane_builds + sim.node(b).stats().data_plane_builds;
    let (builds_before, reports_before) = (builds(&sim), sim.data_plane_stats().reports);
    // One packet each way every 5 ms for 20 s.
    for tick in 0..4000u32 {
        let (p, q) = (sim.packet(a, b, tick), sim.packet(b, a, tick));
        sim.send_packets(a, vec![p]);
        sim.send_packets(b, vec![q]);
        sim.run_for(Duration::from_millis(5));
    }
    let built = builds(&sim) - builds_before;
    let reports = sim.data_plane_stats().reports - reports_before;
    eprintln!(
        "seed {}: {reports} activity reports, {built} snapshots built",
        sim.seed
    );
    assert!(
        reports >= 700,
        "both halves of both nodes reported: {reports}"
    );
    assert!(
        built * 10 < reports,
        "seed {}: {built} snapshots built for {reports} activity reports",
        sim.seed
    );
    sim.assert_data_path_carried_traffic();
}
