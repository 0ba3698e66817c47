//! The NetworkPolicy rules in a kernel: a model rendered by `weft_router::nftables::policy`,
//! loaded with `nft -f` into a namespace that stands for a node, and real TCP and UDP probes
//! between its pods, a pod of another node routed in, and the node itself, checked against
//! `weft_policy::allows` for every pair. No router runs: this tests the rules alone.
//!
//! The node: a bridge (10.32.1.1/24) with pods x/a, x/b and y/c on veths, and `tun0`, a veth
//! to the "remote" namespace standing for the mesh (pod y/r, 10.32.2.2, on node n2).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use weft_policy::{Local, Model, Protocol, Side, allows, compute};
use weft_router::nftables::policy::{Enforcement, Way, counter_name};
use weft_router::nftables::{Rules, TABLE};
use weft_tests::e2e::{in_netns, run};

const PREFIX: &str = "polr";
const NODE: &str = "polr-node";
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 32, 1, 1);
const TUN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// (namespace, pod, address, node): the first three are this node's.
const PODS: [(&str, &str, Ipv4Addr, &str); 4] = [
    ("x", "a", Ipv4Addr::new(10, 32, 1, 2), "n1"),
    ("x", "b", Ipv4Addr::new(10, 32, 1, 3), "n1"),
    ("y", "c", Ipv4Addr::new(10, 32, 1, 4), "n1"),
    ("y", "r", Ipv4Addr::new(10, 32, 2, 2), "n2"),
];

/// The port of the pods' long-lived TCP echo.
const ECHO_PORT: u16 = 82;

const PROBES: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];

/// Every namespace of the test: gone when dropped, also on failure.
struct Namespaces;

impl Namespaces {
    fn names() -> Vec<String> {
        let pods = PODS.iter().map(|(_, p, _, _)| format!("{PREFIX}-{p}"));
        std::iter::once(NODE.to_owned()).chain(pods).collect()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in Self::names() {
            let _ = run(Path::new("ip"), &["netns", "del", &ns]);
        }
    }
}

fn sh(args: &[&str]) {
    let (ok, _, err) = run(Path::new(args[0]), &args[1..]);
    assert!(ok, "{}: {err}", args.join(" "));
}

fn pod_ns(pod: &str) -> String {
    format!("{PREFIX}-{pod}")
}

/// The node, its bridge, three local pods and the remote pod behind `tun0`.
fn build() -> Namespaces {
    for ns in Namespaces::names() {
        let _ = run(Path::new("ip"), &["netns", "del", &ns]);
    }
    let guard = Namespaces;
    for ns in Namespaces::names() {
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        NODE,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&["ip", "-n", NODE, "link", "add", "br0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        NODE,
        "addr",
        "add",
        "10.32.1.1/24",
        "dev",
        "br0",
    ]);
    sh(&["ip", "-n", NODE, "link", "set", "br0", "up"]);
    for (_, pod, ip, node) in PODS {
        let ns = pod_ns(pod);
        let (node_end, addr) = if node == "n1" {
            (format!("v-{pod}"), format!("{ip}/24"))
        } else {
            ("tun0".to_owned(), format!("{ip}/32"))
        };
        sh(&[
            "ip", "-n", NODE, "link", "add", &node_end, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        if node == "n1" {
            sh(&[
                "ip", "-n", NODE, "link", "set", &node_end, "master", "br0", "up",
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "10.32.1.1",
            ]);
        } else {
            sh(&[
                "ip",
                "-n",
                NODE,
                "addr",
                "add",
                "198.18.0.1/30",
                "dev",
                "tun0",
            ]);
            sh(&["ip", "-n", NODE, "link", "set", "tun0", "up"]);
            sh(&[
                "ip",
                "-n",
                NODE,
                "route",
                "add",
                "10.32.2.0/24",
                "via",
                "198.18.0.2",
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                "198.18.0.2/30",
                "dev",
                "eth0",
            ]);
            let src = ip.to_string();
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "10.32.1.0/24",
                "via",
                "198.18.0.1",
                "src",
                &src,
            ]);
        }
    }
    guard
}

/// Bridged traffic reaches the IP hooks when the host sysctl or the bridge's own flag says
/// so; the test sets each of them explicitly rather than inherit the machine's default.
fn bridge_calls_iptables(sysctl: bool, bridge_flag: bool) {
    let v = |on| if on { "1" } else { "0" };
    sh(&[
        "ip",
        "netns",
        "exec",
        NODE,
        "sysctl",
        "-qw",
        &format!("net.bridge.bridge-nf-call-iptables={}", v(sysctl)),
    ]);
    sh(&[
        "ip",
        "-n",
        NODE,
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "nf_call_iptables",
        v(bridge_flag),
    ]);
}

/// TCP and UDP servers on 80 and 81 in every pod: TCP sends one byte and closes, UDP echoes.
/// TCP 82 echoes for as long as the client keeps the connection.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start() -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (_, pod, _, _) in PODS {
            let (tcp, udp, echo) = in_netns(&pod_ns(pod), || {
                let tcp: Vec<TcpListener> = [80, 81]
                    .iter()
                    .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("tcp bind"))
                    .collect();
                let udp: Vec<UdpSocket> = [80, 81]
                    .iter()
                    .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("udp bind"))
                    .collect();
                let echo = TcpListener::bind(("0.0.0.0", ECHO_PORT)).expect("tcp bind");
                (tcp, udp, echo)
            });
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                for l in &tcp {
                    l.set_nonblocking(true).unwrap();
                }
                for u in &udp {
                    u.set_nonblocking(true).unwrap();
                }
                echo.set_nonblocking(true).unwrap();
                let mut open: Vec<TcpStream> = Vec::new();
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((s, _)) = echo.accept() {
                        s.set_nonblocking(true).unwrap();
                        open.push(s);
                    }
                    open.retain_mut(|s| match s.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => std::io::Write::write_all(s, &buf[..n]).is_ok(),
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    });
                    for l in &tcp {
                        if let Ok((mut s, _)) = l.accept() {
                            let _ = std::io::Write::write_all(&mut s, b"k");
                        }
                    }
                    for u in &udp {
                        if let Ok((n, from)) = u.recv_from(&mut buf) {
                            let _ = u.send_to(&buf[..n], from);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection from namespace `ns`, or the error after a second.
fn connect(ns: &str, to: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let to = SocketAddr::from((to, port));
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1))
    })
}

/// Whether a new connection from namespace `ns` to `to` gets an answer within a second.
fn reaches(ns: &str, to: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
    let to = SocketAddr::from((to, port));
    in_netns(ns, move || match protocol {
        Protocol::Tcp => {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(1) if b == *b"k")
        }
        Protocol::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(250)))
                .unwrap();
            let start = Instant::now();
            let mut buf = [0u8; 64];
            while start.elapsed() < Duration::from_secs(1) {
                let _ = s.send_to(b"probe", to);
                if let Ok((n, from)) = s.recv_from(&mut buf)
                    && from == to
                    && &buf[..n] == b"probe"
                {
                    return true;
                }
            }
            false
        }
        Protocol::Sctp => unreachable!("not probed"),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn world() -> (Vec<Pod>, Vec<Namespace>) {
    let pods = PODS
        .iter()
        .map(|(ns, pod, ip, node)| {
            from_json(json!({
                "metadata": {"namespace": ns, "name": pod, "labels": {"pod": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ip.to_string()},
            }))
        })
        .collect();
    let namespaces = ["x", "y"]
        .iter()
        .map(|ns| from_json(json!({"metadata": {"name": ns, "labels": {"ns": ns}}})))
        .collect();
    (pods, namespaces)
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    from_json(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
}

/// Runs `nft -f -` with `script` inside namespace `ns`: its error output on failure.
fn nft_in(ns: &str, script: &str) -> Result<(), String> {
    let script = script.to_owned();
    let out = in_netns(ns, move || {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        child.wait_with_output().expect("nft")
    });
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Loads `model` for node n1 into the node's table (with the masquerade, as the router will).
fn load(model: &Model) {
    let rules = Rules {
        cluster_range: "10.32.0.0/12".parse().unwrap(),
        tun: "tun0".into(),
        masquerade: true,
        exempt: vec![],
    };
    let script = rules.script_with(&Enforcement::render(model, &[BRIDGE_IP, TUN_IP]));
    if let Err(e) = nft_in(NODE, &script) {
        panic!("nft -f: {e}\n{script}");
    }
}

/// The named counters of weft's table that counted a packet.
fn nonzero_counters() -> Vec<String> {
    let (ok, out, err) = run(
        Path::new("ip"),
        &[
            "netns", "exec", NODE, "nft", "-j", "list", "counters", "table", "ip", TABLE,
        ],
    );
    assert!(ok, "nft list counters: {err}");
    let v: Value = serde_json::from_str(&out).expect("nft -j output");
    let mut names: Vec<String> = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("counter"))
        .filter(|c| c["packets"].as_u64().unwrap_or(0) > 0)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Probes every pair and the node → pod paths in parallel; returns the mismatches with the
/// engine's verdict and the counters the engine says the drops must have hit.
fn check_grid(model: &Model) -> (Vec<String>, Vec<String>) {
    let mut jobs = Vec::new();
    for (_, src, src_ip, _) in PODS {
        for (_, dst, dst_ip, _) in PODS {
            if src == dst {
                continue;
            }
            for (protocol, port) in PROBES {
                let ns = pod_ns(src);
                let verdict = allows(model, src_ip.into(), dst_ip.into(), protocol, port);
                jobs.push((
                    format!("{src} -> {dst} {protocol} {port}"),
                    verdict,
                    std::thread::spawn(move || reaches(&ns, dst_ip, protocol, port)),
                ));
            }
        }
    }
    let mut node_jobs = Vec::new();
    for (_, dst, dst_ip, _) in PODS.into_iter().filter(|p| p.3 == "n1") {
        node_jobs.push((
            format!("node -> {dst} TCP 80"),
            std::thread::spawn(move || reaches(NODE, dst_ip, Protocol::Tcp, 80)),
        ));
    }
    let mut wrong = Vec::new();
    let mut counted = Vec::new();
    for (what, verdict, job) in jobs {
        let reached = job.join().unwrap();
        if reached != verdict.is_allowed() {
            wrong.push(format!(
                "{what}: reached {reached}, engine says {verdict:?}"
            ));
        }
        // The egress chain runs first: a packet it drops never meets the ingress chain.
        match (&verdict.egress, &verdict.ingress) {
            (Side::Denied(by), _) => {
                counted.extend(by.iter().map(|p| counter_name(Way::Egress, p)))
            }
            (_, Side::Denied(by)) => {
                counted.extend(by.iter().map(|p| counter_name(Way::Ingress, p)))
            }
            _ => {}
        }
    }
    for (what, job) in node_jobs {
        if !job.join().unwrap() {
            wrong.push(format!("{what}: the node must always reach its pods"));
        }
    }
    counted.sort();
    counted.dedup();
    (wrong, counted)
}

#[test]
fn rendered_rules_give_the_engines_reachability_for_every_pair() {
    if !weft_tests::e2e::can_run(
        "rendered_rules_give_the_engines_reachability_for_every_pair",
        &[],
    ) {
        return;
    }
    let _namespaces = build();
    let _servers = Servers::start();
    let (pods, namespaces) = world();
    let web = policy(
        "x",
        "web",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                 "ports": [{"port": 81, "protocol": "UDP"}]},
            ],
        }),
    );
    let b_closed = policy(
        "x",
        "b-closed",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}),
    );
    let c_out = policy(
        "y",
        "c-out",
        json!({
            "podSelector": {"matchLabels": {"pod": "c"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": "10.32.2.0/24"}}], "ports": [{"port": 80, "endPort": 81}]},
                {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}],
                 "ports": [{"protocol": "UDP"}]},
            ],
        }),
    );
    let only_remote = policy(
        "x",
        "only-remote",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.2.0/24"}}]}]}),
    );
    let steps: [(&str, Vec<NetworkPolicy>); 3] = [
        (
            "three policies",
            vec![web.clone(), b_closed.clone(), c_out.clone()],
        ),
        ("replaced by x/only-remote", vec![c_out, only_remote]),
        ("none", vec![]),
    ];
    bridge_calls_iptables(true, false);
    for (step, policies) in &steps {
        let model = compute(policies, &pods, &namespaces, Local::Node("n1"));
        assert!(model.problems().is_empty(), "{:?}", model.problems());
        load(&model);
        let (wrong, expected_counters) = check_grid(&model);
        assert!(wrong.is_empty(), "step {step}:\n{}", wrong.join("\n"));
        assert_eq!(
            nonzero_counters(),
            expected_counters,
            "step {step}: counters"
        );
        if policies.is_empty() {
            let (_, out, _) = run(
                Path::new("ip"),
                &["netns", "exec", NODE, "nft", "list", "table", "ip", TABLE],
            );
            assert!(
                !out.contains("hook forward"),
                "no policy, no filter chain:\n{out}"
            );
        }
    }

    // A connection stays up through every replacement of the table, whether the new rules
    // still allow it or not: only new connections are judged (docs/networkpolicy.md).
    let a = PODS[0].2;
    let c_to_a_82 = |policies: &[NetworkPolicy]| {
        let model = compute(policies, &pods, &namespaces, Local::Node("n1"));
        load(&model);
        allows(&model, PODS[2].2.into(), a.into(), Protocol::Tcp, ECHO_PORT).is_allowed()
    };
    let a_82 = policy(
        "x",
        "a-82",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                            "ports": [{"port": ECHO_PORT}]}]}),
    );
    assert!(c_to_a_82(std::slice::from_ref(&a_82)));
    let mut held =
        connect(&pod_ns("c"), a, ECHO_PORT).expect("c reaches a's echo while a-82 allows it");
    held.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut echoes = |round: &str| {
        std::io::Write::write_all(&mut held, round.as_bytes()).unwrap();
        let mut back = vec![0u8; round.len()];
        held.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{round}: the open connection broke: {e}"));
        assert_eq!(back, round.as_bytes());
    };
    echoes("before");
    assert!(c_to_a_82(&[a_82, b_closed.clone()]), "still allowed");
    echoes("still allowed");
    assert!(!c_to_a_82(&[web]), "x/web allows c nothing on TCP 82");
    echoes("no longer allowed");
    assert!(
        connect(&pod_ns("c"), a, ECHO_PORT).is_err(),
        "a new connection is judged by the new rules"
    );

    // Without the host sysctl, the bridge's own flag is enough; with neither, bridged
    // traffic between two pods of the node never meets the rules (docs/networkpolicy.md).
    let model = compute(&[b_closed], &pods, &namespaces, Local::Node("n1"));
    load(&model);
    let a_to_b = |model: &Model| {
        let b = PODS[1].2;
        let v = allows(model, PODS[0].2.into(), b.into(), Protocol::Tcp, 80);
        (reaches(&pod_ns("a"), b, Protocol::Tcp, 80), v.is_allowed())
    };
    bridge_calls_iptables(false, true);
    assert_eq!(a_to_b(&model), (false, false), "bridge flag alone");
    bridge_calls_iptables(false, false);
    assert_eq!(
        a_to_b(&model),
        (true, false),
        "neither: bridged traffic is not judged"
    );
    // Routed traffic is judged either way.
    assert!(!reaches(&pod_ns("r"), PODS[1].2, Protocol::Tcp, 80));
}

/// The engine benchmark's cluster (300 pods, 100 policies), shared rather than copied.
#[path = "../../policy/benches/support/mod.rs"]
#[allow(dead_code)]
mod cluster300;

/// The rules for one node of the benchmark's cluster load, and load again over themselves (the
/// replacement the router will make on every change); so do every other node's, which
/// between them use every rule shape the renderer writes but SCTP. Reports the time n1's
/// steps took: a figure for docs/networkpolicy.md, not asserted.
#[test]
fn the_rules_for_300_pods_and_100_policies_load_and_replace_themselves() {
    let test = "the_rules_for_300_pods_and_100_policies_load_and_replace_themselves";
    if !weft_tests::e2e::can_run(test, &[]) {
        return;
    }
    const ALONE: &str = "polr-load";
    struct Gone;
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = run(Path::new("ip"), &["netns", "del", ALONE]);
        }
    }
    let _ = run(Path::new("ip"), &["netns", "del", ALONE]);
    sh(&["ip", "netns", "add", ALONE]);
    let _gone = Gone;
    let s = cluster300::snapshot();
    let start = Instant::now();
    let model = compute(&s.policies, &s.pods, &s.namespaces, Local::Node("n1"));
    let computed = start.elapsed();
    let enforcement = Enforcement::render(&model, &[Ipv4Addr::new(10, 32, 0, 0)]);
    let rendered = start.elapsed() - computed;
    let rules = Rules {
        cluster_range: "10.32.0.0/12".parse().unwrap(),
        tun: "weft-tun".into(),
        masquerade: true,
        exempt: vec![],
    };
    let script = rules.script_with(&enforcement);
    let isolated = model
        .pods()
        .iter()
        .filter(|p| p.ingress.is_isolated() || p.egress.is_isolated())
        .count();
    assert!(isolated > 0, "the benchmark cluster isolates pods on n1");
    for round in ["load", "replace"] {
        let start = Instant::now();
        let loaded = nft_in(ALONE, &script);
        let took = start.elapsed();
        if let Err(e) = loaded {
            panic!("{round}: {e}");
        }
        weft_tests::e2e::report(&format!(
            "policy rules for n1 ({} pods, {isolated} isolated, {} rules, {} bytes): compute {computed:?}, \
             render {rendered:?}, nft -f {round} {took:?}",
            model.pods().len(),
            script
                .lines()
                .filter(|l| l.contains(" return") || l.contains(" drop "))
                .count(),
            script.len(),
        ));
    }
    for n in 0..cluster300::NODES {
        let node = format!("n{n}");
        let model = compute(&s.policies, &s.pods, &s.namespaces, Local::Node(&node));
        let script =
            rules.script_with(&Enforcement::render(&model, &[Ipv4Addr::new(10, 32, 0, 0)]));
        if let Err(e) = nft_in(ALONE, &script) {
            panic!("{node}: {e}");
        }
    }
}
