//! End-to-end: a node with the wrong join secret, a node behind NAT, a lossy and slow link,
//! and garbage thrown at the weft port and the control socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use weft_crypto::wire::{FINISH_LEN, INITIATION_LEN, RESPONSE_LEN};
use weft_tests::e2e::*;

/// A node with the wrong join secret gets no tunnel, and no pod traffic passes to or
/// from it.
#[test]
fn a_node_with_the_wrong_secret_gets_no_tunnel_and_no_traffic() {
    if !can_run(
        "a_node_with_the_wrong_secret_gets_no_tunnel_and_no_traffic",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up(
        "e2ec",
        &["--nodes", "3", "--pods", "1", "--wrong-secret", "3"],
    );
    assert!(
        lab.wait_peer("n1", "n2", Duration::from_secs(30), |_| true)
            .is_some()
    );
    // Give the outsider time for several handshake attempts with its seed (n1).
    let rejected = |lab: &Lab| {
        status_drops(&lab.status("n1"))
            .iter()
            .filter(|(reason, _)| same_reason(reason, "bad_mac1"))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let start = std::time::Instant::now();
    while rejected(&lab) == 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rejected(&lab) > 0,
        "n1 rejected no handshake, so the outsider never tried: the test proves nothing. \
         n1: {}\nn3: {}",
        lab.status("n1"),
        lab.log_tail("n3")
    );
    let (a, b, c) = (
        lab.pod("n1-p1").clone(),
        lab.pod("n2-p1").clone(),
        lab.pod("n3-p1").clone(),
    );
    // Pod traffic both ways, while the outsider keeps trying.
    for (from, to) in [(&a, &c), (&b, &c), (&c, &a), (&c, &b)] {
        assert!(
            !lab.ping(&from.name, to.address),
            "{} reached {}",
            from.name,
            to.name
        );
        let got = udp_arrivals(&from.namespace, &to.namespace, to.address, 40);
        assert_eq!(got, 0, "UDP from {} reached {}", from.name, to.name);
    }
    // The members still reach each other.
    assert!(lab.ping("n1-p1", b.address));

    for (node, others) in [("n1", ["n2", "n3"]), ("n2", ["n1", "n3"])] {
        let s = lab.status(node);
        assert_eq!(s["members"], 2, "{node} knows only the members: {s}");
        let peers: Vec<&str> = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "established" || p["state"] == "rekeying")
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(peers, [others[0]], "{node}'s tunnels: {s}");
    }
    let outsider = lab.status("n3");
    let tunnels = outsider["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "established" || p["state"] == "rekeying")
        .count();
    assert_eq!(tunnels, 0, "the outsider has a tunnel: {outsider}");
    assert_eq!(outsider["members"], 1, "{outsider}");
    report(&format!(
        "c: outsider n3 refused; n1 drops {:?}",
        status_drops(&lab.status("n1"))
    ));
}

/// Whether a drop reason as reported is `want` (`HandshakeRejected` and `handshake_rejected`
/// are the same reason; the report's spelling is the router's to choose).
fn same_reason(reported: &str, want: &str) -> bool {
    let plain = |s: &str| s.replace('_', "").to_lowercase();
    plain(reported) == plain(want)
}

/// How many of `count` UDP datagrams sent from `from_ns` reach a socket in `to_ns`.
fn udp_arrivals(from_ns: &str, to_ns: &str, to: std::net::Ipv4Addr, count: usize) -> usize {
    let rx = in_netns(to_ns, || UdpSocket::bind("0.0.0.0:7100")).expect("bind");
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    spray(
        from_ns,
        SocketAddr::from((to, 7100)),
        (0..count).map(|i| vec![i as u8; 100]).collect(),
    );
    let mut buf = [0u8; 200];
    let mut got = 0;
    while rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// A node behind NAT joins, and its pods are reachable from the other nodes' pods.
#[test]
fn a_node_behind_nat_joins_and_its_pods_are_reachable() {
    if !can_run(
        "a_node_behind_nat_joins_and_its_pods_are_reachable",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("e2ef", &["--nodes", "3", "--pods", "1", "--nat", "3"]);
    assert!(
        lab.node("n3").underlay.addr().octets()[..3] == [198, 18, 1],
        "n3 is behind NAT"
    );
    lab.wait_full_mesh(Duration::from_secs(30));
    let nat = lab.peer("n1", "n3").expect("n1 knows n3");
    let endpoint = nat["endpoint"].as_str().unwrap_or("").to_owned();
    assert!(
        endpoint.starts_with("198.18.1.3:"),
        "n1 reaches n3 at its NAT box's address, not its private one: {nat}"
    );
    let c = lab.pod("n3-p1").clone();
    for other in ["n1-p1", "n2-p1"] {
        let o = lab.pod(other).clone();
        // The first packets may wait for a handshake: reachable means an answer within 10 s.
        let within = Duration::from_secs(10);
        assert!(
            lab.reaches(other, c.address, within).is_some(),
            "{other} -> n3-p1: {:?}",
            lab.peer(&o.node, "n3")
        );
        assert!(
            lab.reaches("n3-p1", o.address, within).is_some(),
            "n3-p1 -> {other}: {:?}",
            lab.peer("n3", &o.node)
        );
        for (from, to, port) in [(&o, &c, 5001u16), (&c, &o, 5002)] {
            let t = transfer(
                &from.namespace,
                &to.namespace,
                to.address,
                port,
                Payload::Random {
                    seed: port.into(),
                    bytes: 5_000_000,
                },
                None,
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.name, to.name));
            assert!(t.intact(), "{} -> {}: {t:?}", from.name, to.name);
        }
    }
    report(&format!(
        "f: n3 behind NAT reached by n1 at {endpoint} ({}); pods reach it both ways",
        nat["path"]
    ));
}

/// 5% loss and 20 ms delay on node 2's link (both ways): transfers through it complete
/// intact. Loss is the lab's nftables rule on the switch; the delay is `tc netem` where the
/// kernel has it, else the lab's userspace delay line.
#[test]
fn a_transfer_over_a_lossy_slow_link_completes_intact() {
    if !can_run(
        "a_transfer_over_a_lossy_slow_link_completes_intact",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up(
        "e2eg",
        &[
            "--nodes",
            "3",
            "--pods",
            "1",
            "--netem",
            "2:loss=5%,delay=20ms",
        ],
    );
    lab.wait_full_mesh(Duration::from_secs(60));
    // The impairment is real: node to node, the round trip through n2's link takes 40 ms or
    // more, and some pings are lost.
    let n1 = lab.node("n1").namespace.clone();
    let out = {
        let (_, out, _) = run(
            std::path::Path::new("ip"),
            &[
                "netns",
                "exec",
                &n1,
                "ping",
                "-q",
                "-c",
                "200",
                "-i",
                "0.01",
                "-W",
                "1",
                &lab.node("n2").underlay.addr().to_string(),
            ],
        );
        out
    };
    let loss: f64 = out
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next()?.parse().ok())
        .unwrap_or_else(|| panic!("ping output: {out}"));
    let min_rtt: f64 = out
        .split(" = ")
        .nth(1)
        .and_then(|v| v.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("ping output: {out}"));
    assert!(min_rtt >= 40.0, "round trip over n2's link {min_rtt} ms");
    assert!(
        (2.0..30.0).contains(&loss),
        "round-trip loss over n2's link {loss}% (5% each way)"
    );
    let clean = {
        let (_, out, _) = run(
            std::path::Path::new("ip"),
            &[
                "netns",
                "exec",
                &n1,
                "ping",
                "-q",
                "-c",
                "5",
                "-i",
                "0.01",
                &lab.node("n3").underlay.addr().to_string(),
            ],
        );
        out
    };
    assert!(clean.contains(" 0% packet loss"), "n1-n3 is clean: {clean}");

    let (a, b, c) = (
        lab.pod("n1-p1").clone(),
        lab.pod("n2-p1").clone(),
        lab.pod("n3-p1").clone(),
    );
    let mut rates = Vec::new();
    for (from, to, port) in [(&a, &b, 5001u16), (&b, &c, 5002)] {
        let t = transfer(
            &from.namespace,
            &to.namespace,
            to.address,
            port,
            Payload::Random {
                seed: port.into(),
                bytes: 10_000_000,
            },
            None,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.name, to.name));
        assert!(t.intact(), "{} -> {}: {t:?}", from.name, to.name);
        rates.push(format!(
            "{} -> {} {:.1} MB/s",
            from.name,
            to.name,
            t.mbytes_per_sec()
        ));
    }
    report(&format!(
        "g: n2's link: min RTT {min_rtt} ms, {loss}% round-trip ping loss; 10 MB transfers \
         intact: {}",
        rates.join(", ")
    ));
}

/// Garbage of every kind for the weft port: random bytes of random lengths, every message
/// type cut short, and messages of the right length with the wrong content.
fn garbage() -> Vec<Vec<u8>> {
    let mut rng = Pattern::new(99);
    let mut random = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };
    let mut out = Vec::new();
    for i in 0..300 {
        let len = [0, 1, 2, 7, 13, 28, 29, 64, 72, 100, 140, 500, 1400][i % 13];
        out.push(random(len));
    }
    // The full lengths of each type (data/control/relay: header 13 + tag 16, relay 80), and
    // the current handshake version, to get past the first check.
    let version = weft_crypto::wire::PROTOCOL_VERSION;
    for (ty, full) in [
        (1u8, INITIATION_LEN),
        (2, RESPONSE_LEN),
        (3, FINISH_LEN),
        (4, 29),
        (5, 29),
        (6, 80),
    ] {
        for len in 1..full {
            let mut d = random(len);
            d[0] = ty;
            if len > 1 {
                d[1] = version;
            }
            out.push(d);
        }
        for extra in [0usize, 20, 1000] {
            let mut d = random(full + extra);
            d[0] = ty;
            d[1] = version;
            out.push(d);
        }
    }
    out
}

/// Garbage and truncated datagrams at the weft port, and malformed control requests,
/// crash nothing; the datagrams are counted as drops by reason, in `weft status --json` and
/// in `weft_drops_total{reason=...}`.
#[test]
fn garbage_crashes_nothing_and_is_counted_by_reason() {
    if !can_run(
        "garbage_crashes_nothing_and_is_counted_by_reason",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("e2eh", &["--nodes", "2", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let target = SocketAddr::from((lab.node("n1").underlay.addr(), WEFT_PORT));
    let before = status_drops(&lab.status("n1"));
    let datagrams = garbage();
    let sent = datagrams.len() as u64;
    // From n2's namespace: an attacker on the underlay, with another source port.
    spray(&lab.node("n2").namespace, target, datagrams);
    std::thread::sleep(Duration::from_millis(500));

    let after = status_drops(&lab.status("n1"));
    // The router rebuilds its metrics at most once a second, on a turn of its loop (a status
    // request is one): wait until the scrape has caught up with the status read above.
    let mut metrics = metric_drops(&lab.metrics("n1"));
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15)
        && !after
            .iter()
            .all(|(r, n)| metrics.get(r).is_some_and(|m| m >= n))
    {
        std::thread::sleep(Duration::from_millis(1100));
        lab.status("n1");
        metrics = metric_drops(&lab.metrics("n1"));
    }
    let counted: u64 = after
        .iter()
        .map(|(r, n)| n - before.get(r).copied().unwrap_or(0))
        .sum();
    let grew: Vec<String> = after
        .iter()
        .filter(|(r, n)| **n > before.get(*r).copied().unwrap_or(0))
        .map(|(r, n)| format!("{r} +{}", n - before.get(r).copied().unwrap_or(0)))
        .collect();
    report(&format!(
        "h: {sent} garbage datagrams sent, {counted} drops counted: {}",
        grew.join(", ")
    ));
    assert!(
        counted >= sent,
        "only {counted} of {sent} garbage datagrams were counted as drops: {after:?}"
    );
    assert!(grew.len() >= 2, "drops are told apart by reason: {grew:?}");
    for (reason, n) in &after {
        assert!(
            metrics.get(reason).is_some_and(|m| m >= n),
            "weft_drops_total{{reason=\"{reason}\"}} is {:?}, status says {n}",
            metrics.get(reason)
        );
    }

    // Malformed control requests: each is answered with an error, none stops the router.
    let socket = lab.node("n1").control_socket();
    let mut long = vec![b'{'; 10_000];
    long.push(b'\n');
    let requests: Vec<Vec<u8>> = vec![
        b"hello\n".to_vec(),
        b"{}\n".to_vec(),
        b"[]\n".to_vec(),
        b"{\"command\":\"reboot\"}\n".to_vec(),
        b"{\"command\":\"status\",\"verbose\":true}\n".to_vec(),
        b"{\"command\":\"connect\",\"endpoint\":\"not an endpoint\"}\n".to_vec(),
        b"{\"command\":\"forget\",\"peer\":\"not a key\"}\n".to_vec(),
        b"{\"command\":\"forget\"}\n".to_vec(),
        b"\xff\xfe\xfd\n".to_vec(),
        b"{\"command\":\"status\"".to_vec(), // cut short, then the connection closes
        long,
        Vec::new(), // connect and close at once
    ];
    for r in &requests {
        let mut s = UnixStream::connect(&socket).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A write may fail once the router has refused an over-long request: that is fine.
        let _ = s.write_all(r);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if !r.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
                panic!(
                    "{:?} got no JSON answer ({e}): {answer:?}",
                    String::from_utf8_lossy(r)
                )
            });
            assert_eq!(
                v["result"],
                "error",
                "{:?} was not refused: {v}",
                String::from_utf8_lossy(r)
            );
        }
    }

    // Nothing crashed: both routers run and answer, and pods still talk through the mesh.
    for node in ["n1", "n2"] {
        let pid = lab.node(node).router_pid.expect("router pid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the router of {node} died:\n{}",
            lab.log_tail(node)
        );
        lab.status(node);
    }
    assert!(lab.ping("n1-p1", lab.pod("n2-p1").address));
    assert!(lab.ping("n2-p1", lab.pod("n1-p1").address));
}

/// h, second part: malformed control requests are counted by reason too, like datagrams.
#[test]
fn malformed_control_requests_are_counted_by_reason() {
    if !can_run("malformed_control_requests_are_counted_by_reason", &[]) {
        return;
    }
    let lab = Lab::up("e2eh2", &["--nodes", "1", "--pods", "0"]);
    let total = |lab: &Lab| -> u64 { status_drops(&lab.status("n1")).values().sum() };
    let before = total(&lab);
    let socket = lab.node("n1").control_socket();
    let bad: [&[u8]; 4] = [
        b"hello\n",
        b"{}\n",
        b"{\"command\":\"reboot\"}\n",
        b"{\"command\":\"status\",\"verbose\":true}\n",
    ];
    for r in bad {
        let mut s = UnixStream::connect(&socket).expect("control socket");
        s.write_all(r).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
    }
    let after = total(&lab);
    assert!(
        after >= before + bad.len() as u64,
        "{} malformed control requests, drops {before} -> {after}: {}",
        bad.len(),
        lab.status("n1")["drops"]
    );
}
