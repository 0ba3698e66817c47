//! The Node's side of the data-plane split (DESIGN.md §2): the snapshot workers seal and open
//! with, and the activity they report back instead of showing the Node every packet.

use std::time::Duration;

use weft_crypto::{DATA_HEADER_LEN, PayloadKind, TAG_LEN};
use weft_mesh::{DataActivity, DropReason, NextHop, Received};
use weft_tests::{NodeSpec, Sim, seed_from_env, summary};

fn two_nodes(seed: u64) -> Sim {
    let mut sim = Sim::new(seed_from_env(seed));
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
#[test]
fn a_packet_sealed_from_one_snapshot_opens_with_the_peers() {
    let mut sim = two_nodes(11);
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
    let opened = receiving
        .session
        .open_in_place(&mut datagram, now)
        .expect("opens");
    assert_eq!(&datagram[opened.range()], &packet[..]);
    // The replay window is the Node's too: the same datagram does not open twice, whoever
    // tries.
    assert!(receiving.session.open_in_place(&mut datagram, now).is_err());
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
#[test]
fn reported_activity_counts_as_traffic_and_keeps_keepalives_quiet() {
    let mut sim = two_nodes(12);
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
                    sent: Some((now, now)),
                    received_bytes: 500,
                    received: Some((now, endpoint)),
                }],
            )
        });
    }
    let after = peer_bytes(&sim, a, idb);
    // The Node's own control datagrams count as well.
    assert!(after.0 - before.0 >= 120_000, "tx bytes from reports");
    assert!(after.1 - before.1 >= 60_000, "rx bytes from reports");
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

fn peer_bytes(sim: &Sim, i: usize, peer: weft_mesh::PeerId) -> (u64, u64) {
    let s = sim.node(i).status();
    let p = s.peers.iter().find(|p| p.id == peer).expect("peer listed");
    (p.tx_bytes, p.rx_bytes)
}
