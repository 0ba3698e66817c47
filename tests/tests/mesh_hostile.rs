//! A hostile underlay: an on-path forger racing every handshake with a corrupted copy, and
//! spoofed datagrams meant to make a router reflect handshakes at a victim
//! (docs/design.md §3).

use std::net::SocketAddr;
use std::time::Duration;

use weft_crypto::wire::RESPONSE_LEN;
use weft_crypto::wire::{DataHeader, StaleIndex};
use weft_crypto::{DATA_OVERHEAD, Handshaker, KeyPair, PayloadKind, SeededRng, Timestamp};
use weft_mesh::DropReason;
use weft_mesh::node::{INITIATION_BURST, INITIATIONS_PER_SECOND, PENDING_LIMIT};
use weft_tests::sim::DataPath;
use weft_tests::{JOIN_SECRET, Sim, seed_from_env, star, summary};

weft_tests::both_data_paths!(
    a_forger_racing_every_handshake_stops_none,
    spoofed_datagrams_for_unknown_indices_reflect_fewer_bytes_than_they_carry,
    a_forged_stale_index_notice_starts_no_handshake,
    a_member_flooding_initiations_from_one_address_gets_a_few_answers,
    a_member_flooding_initiations_from_many_addresses_fills_only_the_pending_cap,
);

/// A sealed datagram of `len` bytes (at least [`DATA_OVERHEAD`]) under an index nobody holds.
fn unknown_index_datagram(kind: PayloadKind, index: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0x5a; len.max(DATA_OVERHEAD)];
    DataHeader {
        kind,
        receiver_index: index,
        counter: 7,
    }
    .write(&mut bytes);
    bytes
}

/// A spoofed source: its address, the datagrams (kind, length) sent from it in a round, and
/// whether in every round or the first only.
type Victim<'a> = (&'a str, &'a [(PayloadKind, usize)], bool);

fn settled(seed: u64, data_path: DataPath, n: usize) -> Sim {
    let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
    star(&mut sim, n);
    let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(took.is_some(), "seed {seed}: no mesh\n{}", summary(&sim));
    sim
}

fn drops(sim: &Sim, node: usize, reason: DropReason) -> u64 {
    sim.node(node).drops().get(&reason).copied().unwrap_or(0)
}

/// Every ordered pair sends one packet; panics unless each arrives.
fn every_pair_talks(sim: &mut Sim, round: u32, when: &str) {
    let n = sim.len();
    for (b, received) in sim.traffic_round(round).iter().enumerate() {
        let got = received.len();
        assert_eq!(
            got,
            n - 1,
            "seed {}: {when}: node {b} received {got} of {} packets\n{}",
            sim.seed,
            n - 1,
            summary(sim)
        );
    }
}

/// Every handshake message is raced by a copy with one bit flipped, delivered just ahead of
/// it: first in the last 16 bytes (the tag that fails last, after the state has moved), then
/// anywhere. Each forged copy is refused and leaves the handshake as it was, so the mesh forms
/// as without the forger, and the rekeys later on complete too.
fn a_forger_racing_every_handshake_stops_none(data_path: DataPath) {
    for (seed, tail) in [(81, 16), (82, usize::MAX)] {
        let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
        sim.forge_handshakes(tail);
        let n = 4;
        star(&mut sim, n);
        let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(200), |s| {
            s.full_mesh() && s.all_know_all_blocks()
        });
        assert!(
            took.is_some(),
            "seed {seed}, forging the last {tail} bytes: no mesh\n{}",
            summary(&sim)
        );
        let refused: u64 = (0..n)
            .map(|i| drops(&sim, i, DropReason::HandshakeRejected))
            .sum();
        assert!(refused > 0, "seed {seed}: the forger was not there");
        every_pair_talks(&mut sim, 0, "after the mesh formed");
        // Past the rekey time: the new sessions' handshakes were raced as well.
        sim.run_for(Duration::from_secs(150));
        every_pair_talks(&mut sim, 1, "after the rekeys");
        sim.assert_data_path_carried_traffic();
    }
}

/// No reflection (docs/design.md §3): sealed datagrams under unknown indices from spoofed
/// sources never make the routers send a source more bytes than it sent them, whether it sent
/// one smallest datagram (a keepalive's 29 bytes), one every 2 s, or a mix of sizes, for 40 s.
/// (A 29-byte datagram used to be answered with up to three 68-byte initiations.)
fn spoofed_datagrams_for_unknown_indices_reflect_fewer_bytes_than_they_carry(data_path: DataPath) {
    let smallest = [(PayloadKind::Control, DATA_OVERHEAD)];
    let mixed = [
        (PayloadKind::Data, DATA_OVERHEAD),
        (PayloadKind::Data, 64),
        (PayloadKind::Control, 100),
        (PayloadKind::Data, 1400),
    ];
    let victims: [Victim; 3] = [
        ("198.18.250.1:6786", &smallest, false),
        ("198.18.250.2:41000", &smallest, true),
        ("198.18.250.3:6786", &mixed, true),
    ];
    for seed in [91, 92] {
        let n = 3;
        let mut sim = settled(seed, data_path, n);
        let unknown_before: u64 = (0..n)
            .map(|i| drops(&sim, i, DropReason::UnknownIndex))
            .sum();
        let mut forged = vec![0u64; victims.len()];
        let mut datagrams = 0;
        for (addr, _, _) in &victims {
            sim.watch(addr.parse().unwrap());
        }
        for round in 0..20u32 {
            for (v, (addr, sends, every_round)) in victims.iter().enumerate() {
                if round > 0 && !every_round {
                    continue;
                }
                let from: SocketAddr = addr.parse().unwrap();
                for (i, (kind, len)) in sends.iter().enumerate() {
                    let index = 0x5eed_0000 + (round << 8) + ((v as u32) << 4) + i as u32;
                    let bytes = unknown_index_datagram(*kind, index, *len);
                    for to in 0..n {
                        forged[v] += bytes.len() as u64;
                        datagrams += 1;
                        sim.inject(to, from, bytes.clone());
                    }
                }
            }
            sim.run_for(Duration::from_secs(2));
        }
        for (v, (addr, _, _)) in victims.iter().enumerate() {
            let reflected = sim.bytes_sent_to(addr.parse().unwrap());
            eprintln!(
                "seed {seed}: {addr}: sent {} B, got back {reflected} B",
                forged[v]
            );
            assert!(
                reflected <= forged[v],
                "seed {seed}: the routers sent {addr} {reflected} B for its {} B",
                forged[v]
            );
        }
        let unknown: u64 = (0..n)
            .map(|i| drops(&sim, i, DropReason::UnknownIndex))
            .sum();
        assert_eq!(
            unknown - unknown_before,
            datagrams,
            "seed {seed}: every forgery is counted"
        );
        every_pair_talks(&mut sim, 0, "after the forgeries");
    }
}

/// A stale-index notice is not authenticated: one that names no session of ours (a forger
/// guessing, from a member's own endpoint) is counted and starts no handshake.
fn a_forged_stale_index_notice_starts_no_handshake(data_path: DataPath) {
    for seed in [93, 94] {
        let mut sim = settled(seed, data_path, 3);
        let (target, posing_as) = (1, 0);
        let from = sim.endpoint(posing_as);
        let handshakes = sim.node(target).stats().handshakes;
        let before = drops(&sim, target, DropReason::UnknownIndex);
        for i in 0..50u32 {
            let notice = StaleIndex {
                receiver_index: 0x5eed_1000 + i,
                counter: 0,
            };
            sim.inject(target, from, notice.encode().to_vec());
        }
        sim.run_for(Duration::from_secs(3));
        assert_eq!(
            sim.node(target).stats().handshakes,
            handshakes,
            "seed {seed}: a forged notice started a handshake"
        );
        assert_eq!(drops(&sim, target, DropReason::UnknownIndex) - before, 50);
    }
}

/// A rogue member (it knows the join secret) that floods valid initiations: each is a new
/// handshake the victim must answer with Diffie-Hellman unless a budget stops it.
struct Flooder {
    handshaker: Handshaker,
    rng: SeededRng,
    index: u32,
}

impl Flooder {
    fn new(seed: u64) -> Self {
        let mut rng = SeededRng::new(seed);
        let key = KeyPair::generate(&mut rng);
        let secret = weft_tests::sim::join_secret(JOIN_SECRET);
        Self {
            handshaker: Handshaker::new_insecure_for_simulation(key, secret),
            rng,
            index: 0,
        }
    }

    /// A fresh initiation, timestamped by the simulator's wall clock.
    fn initiation(&mut self, sim: &Sim) -> Vec<u8> {
        self.index += 1;
        let wall = Timestamp::from_unix(Duration::from_secs(1_800_000_000) + sim.elapsed());
        let (_state, msg) = self
            .handshaker
            .initiate(self.index, None, wall, &mut self.rng)
            .unwrap();
        msg.to_vec()
    }
}

/// Every flood datagram is accounted for: answered, or dropped under one of the budgets.
fn flood_accounted(sim: &Sim, target: usize, before: &[u64; 3], answered: u64, sent: u64) {
    let now = flood_drops(sim, target);
    let dropped: u64 = now.iter().zip(before).map(|(a, b)| a - b).sum();
    assert_eq!(
        answered + dropped,
        sent,
        "seed {}: {answered} answered and {dropped} dropped of {sent}",
        sim.seed
    );
}

fn flood_drops(sim: &Sim, target: usize) -> [u64; 3] {
    [
        drops(sim, target, DropReason::InitiationRateLimited),
        drops(sim, target, DropReason::PendingFull),
        drops(sim, target, DropReason::HandshakeRejected),
    ]
}

/// A member flooding initiations from one address for 4 s (2,000 of them) gets the burst
/// and the per-address rate answered, no more; the rest are counted before any
/// Diffie-Hellman, and the mesh goes on working.
fn a_member_flooding_initiations_from_one_address_gets_a_few_answers(data_path: DataPath) {
    for seed in [95, 96] {
        let mut sim = settled(seed, data_path, 3);
        let target = 1;
        let from: SocketAddr = "198.18.251.1:6786".parse().unwrap();
        sim.watch(from);
        let before = flood_drops(&sim, target);
        let mut flooder = Flooder::new(seed);
        let mut sent = 0u64;
        for _ in 0..40 {
            for _ in 0..50 {
                let msg = flooder.initiation(&sim);
                sim.inject(target, from, msg);
                sent += 1;
            }
            sim.run_for(Duration::from_millis(100));
        }
        sim.run_for(Duration::from_secs(1));
        let answered = sim.bytes_sent_to(from) / RESPONSE_LEN as u64;
        let allowed = u64::from(INITIATION_BURST + 5 * INITIATIONS_PER_SECOND);
        eprintln!("seed {seed}: {sent} initiations from one address, {answered} answered");
        assert!(
            answered <= allowed,
            "seed {seed}: {answered} of {sent} answered (at most {allowed})"
        );
        flood_accounted(&sim, target, &before, answered, sent);
        every_pair_talks(&mut sim, 0, "after the flood");
    }
}

/// A member flooding initiations from many addresses (each within its own budget) fills
/// the pending handshakes up to their cap and no further: memory stays bounded, every
/// initiation is accounted for, and the mesh goes on working.
fn a_member_flooding_initiations_from_many_addresses_fills_only_the_pending_cap(
    data_path: DataPath,
) {
    for seed in [97, 98] {
        let mut sim = settled(seed, data_path, 3);
        let target = 2;
        let before = flood_drops(&sim, target);
        let mut flooder = Flooder::new(seed);
        let mut sent = 0u64;
        let mut peak = 0;
        for round in 0..10u32 {
            for i in 0..400u32 {
                let n = round * 400 + i;
                let from = SocketAddr::from(([198, 19, 200 + (n >> 8) as u8, n as u8], 6786));
                sim.watch(from);
                let msg = flooder.initiation(&sim);
                sim.inject(target, from, msg);
                sent += 1;
            }
            sim.run_for(Duration::from_millis(100));
            peak = peak.max(sim.node(target).pending_handshakes());
        }
        sim.run_for(Duration::from_secs(1));
        eprintln!("seed {seed}: {sent} initiations from as many addresses, pending at most {peak}");
        assert!(
            peak <= PENDING_LIMIT,
            "seed {seed}: {peak} handshakes pending (cap {PENDING_LIMIT})"
        );
        let answered: u64 = (0..sent as u32)
            .map(|n| {
                let from = SocketAddr::from(([198, 19, 200 + (n >> 8) as u8, n as u8], 6786));
                sim.bytes_sent_to(from) / RESPONSE_LEN as u64
            })
            .sum();
        assert_eq!(answered, PENDING_LIMIT as u64, "seed {seed}");
        flood_accounted(&sim, target, &before, answered, sent);
        every_pair_talks(&mut sim, 0, "after the flood");
    }
}
