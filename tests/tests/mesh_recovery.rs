//! Traffic across faults, as the end-to-end fault tests drive it, on the
//! simulator: a pod pings another every 50 ms and the other answers; we measure when answers
//! stop and come back. Each test reproduces the sequence an end-to-end run showed.

use std::time::Duration;

use weft_mesh::{DropReason, NextHop};
use weft_tests::sim::DataPath;
use weft_tests::{Sim, seed_from_env, star, summary};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(
    a_restarted_peer_keeps_the_session_formed_with_its_new_run,
    a_silent_direct_path_moves_the_session_to_a_relay_and_back,
    a_restarted_node_without_seeds_is_found_again_within_10s,
);

/// The probe period of the end-to-end prober.
const TICK: Duration = Duration::from_millis(50);

/// A request/answer prober between host `a` and host `b`, as `e2e_support::Prober`.
struct Echo {
    a: usize,
    b: usize,
    to_b: Vec<u8>,
    to_a: Vec<u8>,
    /// Virtual times (since the start of the sim) at which `a` got an answer.
    answers: Vec<Duration>,
}

impl Echo {
    fn new(sim: &Sim, a: usize, b: usize) -> Self {
        Self {
            a,
            b,
            to_b: sim.packet(a, b, 1),
            to_a: sim.packet(b, a, 2),
            answers: Vec::new(),
        }
    }

    /// Runs for `d`, one request per tick.
    fn run(&mut self, sim: &mut Sim, d: Duration) {
        let end = sim.elapsed() + d;
        while sim.elapsed() < end {
            if sim.is_running(self.a) {
                sim.send_packets(self.a, vec![self.to_b.clone()]);
            }
            sim.run_for(TICK);
            if sim.is_running(self.b) {
                let got = sim.take_tun(self.b).len();
                if got > 0 {
                    sim.send_packets(self.b, vec![self.to_a.clone(); got]);
                }
            }
            if sim.is_running(self.a) && !sim.take_tun(self.a).is_empty() {
                self.answers.push(sim.elapsed());
            }
        }
    }

    /// The first answer at or after `t`, as a delay from `t`.
    fn first_after(&self, t: Duration) -> Option<Duration> {
        self.answers.iter().find(|x| **x >= t).map(|x| *x - t)
    }

    /// The longest time without an answer between `from` and `to`.
    fn longest_gap(&self, from: Duration, to: Duration) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for x in self.answers.iter().filter(|x| **x >= from && **x <= to) {
            gap = gap.max(*x - last);
            last = *x;
        }
        gap.max(to - last)
    }
}

fn settled(seed: u64, data_path: DataPath) -> Sim {
    let mut sim = Sim::with_data_path(seed_from_env(seed), data_path);
    star(&mut sim, 3);
    let ok = sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    assert!(
        ok.is_some(),
        "seed {}: not settled\n{}",
        sim.seed,
        summary(&sim)
    );
    sim
}

/// d. A router killed under traffic and restarted 1 s later with its key and state: traffic
/// answers again within 10 s and then stays up. The bug: the peer formed a session with the
/// new run, then learned of the restart by gossip and closed that fresh session, which the
/// restarted side kept using until DEAD_AFTER (30 s).
fn a_restarted_peer_keeps_the_session_formed_with_its_new_run(data_path: DataPath) {
    for (seed, victim, other) in [(41, 2, 1), (42, 1, 2), (43, 2, 1), (44, 0, 2)] {
        let mut sim = settled(seed, data_path);
        let mut echo = Echo::new(&sim, other, victim);
        echo.run(&mut sim, Duration::from_secs(3));
        sim.crash(victim);
        echo.run(&mut sim, Duration::from_secs(1));
        sim.restart(victim, false);
        let restarted = sim.elapsed();
        echo.run(&mut sim, Duration::from_secs(60));
        let resumed = echo.first_after(restarted);
        eprintln!("seed {seed}: host {victim} restarted: first answer after {resumed:?}");
        let resumed = resumed.unwrap_or_else(|| panic!("seed {seed}: no answer"));
        assert!(
            resumed <= Duration::from_secs(10),
            "seed {seed}: {resumed:?}"
        );
        let gap = echo.longest_gap(restarted + resumed, sim.elapsed());
        assert!(
            gap <= Duration::from_secs(1),
            "seed {seed}: traffic stopped again for {gap:?} after resuming\n{}",
            summary(&sim)
        );
        let v = sim.id(victim);
        assert!(sim.node(other).is_up(&v) && sim.node(victim).is_up(&sim.id(other)));
        sim.assert_data_path_carried_traffic();
    }
}

/// e. The underlay between two nodes is blocked under traffic: the session moves to a relay
/// within 15 s (the failover bound we hold the mesh to), and back to the direct path once the block is lifted.
fn a_silent_direct_path_moves_the_session_to_a_relay_and_back(data_path: DataPath) {
    let (a, relay, c) = (1, 0, 2);
    for seed in [51, 52, 53] {
        let mut sim = settled(seed, data_path);
        let mut echo = Echo::new(&sim, a, c);
        echo.run(&mut sim, Duration::from_secs(3));
        sim.block(a, c);
        let blocked = sim.elapsed();
        echo.run(&mut sim, Duration::from_secs(30));
        let resumed = echo.first_after(blocked + Duration::from_millis(200));
        eprintln!("seed {seed}: blocked: first answer after {resumed:?}");
        let resumed = resumed.unwrap_or_else(|| panic!("seed {seed}: no answer"));
        assert!(
            resumed <= Duration::from_secs(15),
            "seed {seed}: {resumed:?}"
        );
        let gap = echo.longest_gap(blocked + resumed, sim.elapsed());
        assert!(gap <= Duration::from_secs(1), "seed {seed}: gap {gap:?}");
        let (ida, idr, idc) = (sim.id(a), sim.id(relay), sim.id(c));
        assert!(
            matches!(sim.node(a).path(&idc), Some(NextHop::Relay { via, .. }) if via == idr),
            "seed {seed}: {:?}",
            sim.node(a).path(&idc)
        );
        assert!(matches!(sim.node(c).path(&ida), Some(NextHop::Relay { via, .. }) if via == idr));
        // The relay forwarded the probes (it holds no key for the pair: mesh_paths e).
        let relayed = sim.node(relay).stats().relayed;
        assert!(relayed > 100, "seed {seed}: relayed {relayed}");

        sim.unblock(a, c);
        let lifted = sim.elapsed();
        echo.run(&mut sim, Duration::from_secs(30));
        let direct = |sim: &Sim, x: usize, y: usize| {
            matches!(sim.node(x).path(&sim.id(y)), Some(NextHop::Direct(_)))
        };
        assert!(
            direct(&sim, a, c) && direct(&sim, c, a),
            "seed {seed}: not direct again 30 s after the block was lifted: {:?} {:?}",
            sim.node(a).path(&idc),
            sim.node(c).path(&ida)
        );
        let before = sim.node(relay).stats().relayed;
        echo.run(&mut sim, Duration::from_secs(3));
        assert!(
            sim.node(relay).stats().relayed - before < 10,
            "seed {seed}: still relayed"
        );
        let gap = echo.longest_gap(lifted, sim.elapsed());
        assert!(gap <= Duration::from_secs(1), "seed {seed}: gap {gap:?}");
        sim.assert_data_path_carried_traffic();
    }
}

/// d, second part: the founder (started without seeds) is killed and restarted with no
/// seeds. It knows nobody; the others send under sessions it lost. They must find it again,
/// and traffic from its pods answer, within 10 s.
fn a_restarted_node_without_seeds_is_found_again_within_10s(data_path: DataPath) {
    let (founder, other) = (0, 2);
    for seed in [61, 62, 63] {
        let mut sim = settled(seed, data_path);
        let mut echo = Echo::new(&sim, founder, other);
        echo.run(&mut sim, Duration::from_secs(3));
        sim.crash(founder);
        echo.run(&mut sim, Duration::from_secs(1));
        sim.restart(founder, false);
        let restarted = sim.elapsed();
        echo.run(&mut sim, Duration::from_secs(30));
        let resumed = echo.first_after(restarted);
        eprintln!("seed {seed}: founder restarted: first answer after {resumed:?}");
        let resumed = resumed.unwrap_or_else(|| {
            panic!(
                "seed {seed}: no answer\n{}\n{:?}",
                summary(&sim),
                sim.node(founder).drops()
            )
        });
        assert!(
            resumed <= Duration::from_secs(10),
            "seed {seed}: {resumed:?}"
        );
        assert!(
            sim.full_mesh() && sim.all_know_all_blocks(),
            "seed {seed}\n{}",
            summary(&sim)
        );
        let unknown = sim.node(founder).drops().get(&DropReason::UnknownIndex);
        eprintln!("seed {seed}: unknown index drops at the founder: {unknown:?}");
        sim.assert_data_path_carried_traffic();
    }
}
