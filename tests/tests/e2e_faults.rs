//! End-to-end: a router killed under traffic and restarted, and a blocked underlay link
//! routed around through a relay and back. Both measure how long pod traffic stops, with a
//! UDP echo probe every 50 ms between two pods.

use std::time::{Duration, Instant};

use weft_tests::e2e::*;

/// The bound for traffic to resume after a router restart.
const RESTART_BOUND: Duration = Duration::from_secs(10);
/// The bound for traffic to continue through a relay after a link is blocked.
const RELAY_BOUND: Duration = Duration::from_secs(15);

/// The pod's IPv4 address as the kernel holds it (`ip -4 -o addr show dev eth0` in the pod).
fn kernel_address(lab: &Lab, pod: &str) -> String {
    let out = lab.lab(&[
        "exec", pod, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
    ]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on {pod}'s eth0: {out}"))
        .to_owned()
}

/// `kill -9` of a router under traffic, then a restart: pods keep their addresses, the
/// node its block, and pod traffic answers again within 10 s.
#[test]
fn a_killed_router_restarts_with_its_addresses_and_answers_within_10s() {
    if !can_run(
        "a_killed_router_restarts_with_its_addresses_and_answers_within_10s",
        &["ping"],
    ) {
        return;
    }
    let mut lab = Lab::up("e2ed1", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let pods_before = lab.pods.clone();
    let address = kernel_address(&lab, "n3-p1");
    let before = lab.status("n3");
    let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n3-p1").clone());
    let probe = Prober::start(&a.namespace, &b.namespace, b.address, 7000);
    assert!(
        probe.wait_steady_after(Instant::now(), 10, Duration::from_secs(10)),
        "no steady traffic before the crash"
    );
    let killed = Instant::now();
    lab.lab(&["router", "kill", "n3"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        probe
            .first_reply_after(killed + Duration::from_millis(300))
            .is_none(),
        "replies came while the router was dead: the probe measures nothing"
    );
    let restarted = Instant::now();
    lab.lab(&["router", "start", "n3"]);
    let resumed = probe.wait_reply_after(restarted, Duration::from_secs(20));
    report(&format!(
        "d: n3 killed under traffic, restarted 1 s later: first reply {resumed:?} after the \
         restart"
    ));
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "no reply within 20 s of the restart: {}\n{}",
            lab.status("n3"),
            lab.log_tail("n3")
        )
    });
    assert!(
        resumed <= RESTART_BOUND,
        "traffic answered {resumed:?} after the restart, over {RESTART_BOUND:?}"
    );
    lab.refresh();
    let after = lab.status("n3");
    assert_eq!(after["block"], before["block"], "n3 kept its pod block");
    assert_ne!(
        after["incarnation"], before["incarnation"],
        "a new run of n3"
    );
    assert_eq!(lab.pods, pods_before, "pods keep their addresses");
    assert_eq!(
        kernel_address(&lab, "n3-p1"),
        address,
        "and so do their interfaces"
    );
}

/// d, in full: after `kill -9` and a restart traffic does not only answer again, it stays up
/// (20 probe replies in a row) and a paced 40 MB TCP flow across the crash arrives intact.
/// Done for a plain node (n3) and for the node that founded the address space (n1).
#[test]
fn a_killed_router_restarts_and_traffic_stays_up() {
    if !can_run("a_killed_router_restarts_and_traffic_stays_up", &["ping"]) {
        return;
    }
    let mut lab = Lab::up("e2ed", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let pods_before = lab.pods.clone();
    let addresses: Vec<String> = ["n1-p1", "n3-p1"]
        .iter()
        .map(|p| kernel_address(&lab, p))
        .collect();

    for (victim, round) in [("n3", 0u16), ("n1", 1)] {
        let block = lab.status(victim)["block"].clone();
        let incarnation = lab.status(victim)["incarnation"].as_u64();
        let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n3-p1").clone());
        let probe = Prober::start(&a.namespace, &b.namespace, b.address, 7000 + round);
        // A paced 40 MB flow (about 6 MB/s) that runs across the crash and must arrive whole.
        let flow = std::thread::spawn(move || {
            transfer(
                &a.namespace,
                &b.namespace,
                b.address,
                6000 + round,
                Payload::Random {
                    seed: 7,
                    bytes: 40_000_000,
                },
                Some(Duration::from_millis(10)),
                // Bulk TCP has been seen to stall for about a minute after the founder's
                // restart while the probes flowed again within a second (reported): the bound
                // here is on arriving intact, the 10 s bound is on the probes.
                Duration::from_secs(120),
            )
        });
        assert!(
            probe.wait_steady_after(Instant::now(), 10, Duration::from_secs(10)),
            "no steady traffic before the crash"
        );
        let killed = Instant::now();
        lab.lab(&["router", "kill", victim]);
        std::thread::sleep(Duration::from_secs(1));
        let silent = probe.first_reply_after(killed + Duration::from_millis(300));
        assert!(
            silent.is_none(),
            "replies came while the router of {victim} was dead: the probe measures nothing"
        );
        let restarted = Instant::now();
        lab.lab(&["router", "start", victim]);
        let resumed = probe.wait_reply_after(restarted, Duration::from_secs(20));
        let steady = probe.wait_steady_after(restarted, 20, Duration::from_secs(20));
        let t = flow.join().expect("flow thread");
        lab.refresh();
        report(&format!(
            "d: {victim} killed under traffic, restarted 1 s later: first reply {:?} after the \
             restart ({:?} after the kill); 40 MB flow across it: {:?}",
            resumed,
            resumed.map(|r| r + (restarted - killed)),
            t.as_ref()
                .map(|t| format!("intact {} in {:.1}s", t.intact(), t.secs))
        ));
        let resumed = resumed.unwrap_or_else(|| {
            panic!(
                "no reply within 20 s of restarting {victim}: {}\n{}",
                lab.status(victim),
                lab.log_tail(victim)
            )
        });
        assert!(
            resumed <= RESTART_BOUND,
            "traffic resumed {resumed:?} after restarting {victim}, over {RESTART_BOUND:?}"
        );
        assert!(steady, "traffic did not stay up after restarting {victim}");
        let t = t.unwrap_or_else(|e| panic!("the flow across the crash of {victim}: {e}"));
        assert!(t.intact(), "the flow across the crash of {victim}: {t:?}");

        let after = lab.status(victim);
        assert_eq!(after["block"], block, "{victim} kept its pod block");
        assert_ne!(
            after["incarnation"].as_u64(),
            incarnation,
            "a new run of {victim}"
        );
        assert_eq!(lab.pods, pods_before, "pods keep their addresses");
        let now: Vec<String> = ["n1-p1", "n3-p1"]
            .iter()
            .map(|p| kernel_address(&lab, p))
            .collect();
        assert_eq!(now, addresses, "the pods' interfaces keep their addresses");
    }
    // Every pod still reaches every other one.
    for a in &lab.pods {
        for b in &lab.pods {
            if a != b {
                assert!(lab.ping(&a.name, b.address), "{} -> {}", a.name, b.name);
            }
        }
    }
}

/// With the underlay between node 1 and node 3 blocked, traffic between their pods
/// continues through node 2 within 15 s; after the block is lifted it goes direct again.
#[test]
fn a_blocked_link_is_routed_through_a_relay_and_back() {
    if !can_run(
        "a_blocked_link_is_routed_through_a_relay_and_back",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("e2ee", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let direct = |p: &str| p == "direct";
    assert!(
        lab.wait_peer("n1", "n3", Duration::from_secs(5), direct)
            .is_some()
    );
    let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n3-p1").clone());
    let probe = Prober::start(&a.namespace, &b.namespace, b.address, 7000);
    assert!(
        probe.wait_steady_after(Instant::now(), 10, Duration::from_secs(10)),
        "no steady traffic before the block"
    );
    let relayed = |lab: &Lab| {
        metric(&lab.metrics("n2"), "weft_relayed_total")
            .unwrap_or_else(|| panic!("no weft_relayed_total in n2's metrics"))
    };
    let relayed_before = relayed(&lab);

    let blocked = Instant::now();
    lab.lab(&["block", "1-3"]);
    let resumed = probe.wait_reply_after(blocked + Duration::from_millis(200), RELAY_BOUND * 2);
    let steady = probe.wait_steady_after(blocked, 20, RELAY_BOUND * 2);
    let via = |p: &str| p == "via n2";
    let path13 = lab.wait_peer("n1", "n3", Duration::from_secs(5), via);
    let path31 = lab.wait_peer("n3", "n1", Duration::from_secs(5), via);
    report(&format!(
        "e: 1-3 blocked: first reply {resumed:?} after the block; n1 lists n3 via n2: {}; \
         n3 lists n1 via n2: {}",
        path13.is_some(),
        path31.is_some()
    ));
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "no traffic within {:?} of the block: n1 {}\n{}",
            RELAY_BOUND * 2,
            lab.status("n1"),
            lab.log_tail("n1")
        )
    });
    assert!(
        resumed <= RELAY_BOUND,
        "traffic resumed {resumed:?} after the block, over {RELAY_BOUND:?}"
    );
    assert!(steady, "traffic through the relay is not steady");
    assert!(
        path13.is_some(),
        "n1's path to n3: {:?}",
        lab.peer("n1", "n3")
    );
    assert!(
        path31.is_some(),
        "n3's path to n1: {:?}",
        lab.peer("n3", "n1")
    );
    // The metrics snapshot is rebuilt at most once a second and the failover is now about a
    // second old here: give the count a few seconds to show it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relayed(&lab) <= relayed_before + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        relayed(&lab) > relayed_before + 50,
        "n2 forwarded the probes: weft_relayed_total {} -> {}",
        relayed_before,
        relayed(&lab)
    );

    let lifted = Instant::now();
    lab.lab(&["unblock", "1-3"]);
    let back = lab.wait_peer("n1", "n3", Duration::from_secs(90), direct);
    let back31 = lab.wait_peer("n3", "n1", Duration::from_secs(30), direct);
    report(&format!(
        "e: block lifted: n1 -> n3 direct again after {back:?}, n3 -> n1 after {:?}",
        back31.map(|_| lifted.elapsed())
    ));
    assert!(
        back.is_some() && back31.is_some(),
        "not direct again 90 s after the block was lifted: n1 {:?}, n3 {:?}",
        lab.peer("n1", "n3"),
        lab.peer("n3", "n1")
    );
    // Direct means n2 forwards nothing more of the probes. The metrics are a snapshot up to
    // a second old: the first reading waits past that, or it can predate the switch and
    // the window below count relaying that happened before both were direct (16 probes
    // once in CI).
    std::thread::sleep(Duration::from_millis(1500));
    let r1 = relayed(&lab);
    std::thread::sleep(Duration::from_secs(2));
    let r2 = relayed(&lab);
    assert!(
        r2 - r1 < 10,
        "n2 still relays while n1 and n3 report a direct path: {r1} -> {r2}"
    );
    assert!(
        probe.wait_steady_after(Instant::now(), 10, Duration::from_secs(10)),
        "traffic not steady on the direct path"
    );
}

/// The value of an unlabelled metric in a Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// d, second part: the founder restarted with only the seeds it was first started with
/// (none) must be found again by the nodes that know it, as a node whose seeds are gone
/// would be.
#[test]
fn a_restarted_router_without_seeds_is_found_again_within_10s() {
    if !can_run(
        "a_restarted_router_without_seeds_is_found_again_within_10s",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("e2ed2", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n3-p1").clone());
    let probe = Prober::start(&a.namespace, &b.namespace, b.address, 7000);
    assert!(
        probe.wait_steady_after(Instant::now(), 10, Duration::from_secs(10)),
        "no steady traffic before the crash"
    );
    lab.lab(&["router", "kill", "n1"]);
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    lab.lab(&["router", "start", "n1", "--original-seeds"]);
    let resumed = probe.wait_reply_after(restarted, Duration::from_secs(45));
    report(&format!(
        "d2: n1 restarted without seeds: first reply {resumed:?} after the restart"
    ));
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "no reply within 45 s: n1 {}\n{}",
            lab.status("n1"),
            lab.log_tail("n1")
        )
    });
    assert!(
        resumed <= RESTART_BOUND,
        "traffic resumed {resumed:?} after the restart, over {RESTART_BOUND:?}"
    );
}
