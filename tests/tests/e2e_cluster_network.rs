//! End-to-end: what a Kubernetes cluster needs from its pod network besides pod-to-pod, in a
//! lab that looks like the world real nodes live in ([`Lab::add_world`]: a default route on
//! every node, a host outside the cluster): fail-closed while a router is down, the nodes'
//! own traffic to pods, and pod traffic to outside the cluster.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use weft_tests::e2e::*;

/// The cluster range of the lab's routers (the router's default).
const RANGE: &str = "10.32.0.0/12";

/// The address a node answers with in the mesh: its block's network address, held by
/// weft-tun.
fn mesh_address(lab: &Lab, node: &str) -> Ipv4Addr {
    let block: ipnet::Ipv4Net = lab.status(node)["block"]
        .as_str()
        .expect("a block")
        .parse()
        .unwrap();
    block.network()
}

/// The row that matters most: while a node's router is dead, a pod's packets for the cluster
/// range and the node's own do not leave on the underlay in plaintext, though the node has a
/// default route there; once the router runs again traffic flows (encrypted) again. And
/// `weft uninstall` takes the blackhole away once the router is gone for good.
#[test]
fn a_dead_router_leaks_no_pod_packet_onto_the_underlay() {
    if !can_run(
        "a_dead_router_leaks_no_pod_packet_onto_the_underlay",
        &["tcpdump", "ping"],
    ) {
        return;
    }
    let lab = Lab::up("hfc", &["--nodes", "2", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    lab.add_world();
    let (p1, p2) = (lab.pod("n1-p1").clone(), lab.pod("n2-p1").clone());
    let u = weft_lab::Names::new(&lab.prefix).underlay_ns();
    let pcap = lab.dir().join("underlay.pcap");

    let capture = Capture::start(&u, "sw", &pcap);
    // The control: a pod's datagram to outside the cluster range does cross the switch, so
    // the capture would see a pod payload if one leaked.
    send_marked(
        &p1.namespace,
        SocketAddr::new(OUTSIDE.into(), 9),
        b"WEFT-CONTROL-0001",
        5,
    );
    lab.lab(&["router", "kill", "n1"]);
    let (ok, routes, _) = lab.on_node("n1", &["ip", "route", "show", RANGE]);
    assert!(ok && routes.contains("blackhole"), "no blackhole: {routes}");
    let to = SocketAddr::new(p2.address.into(), 9);
    send_marked(&p1.namespace, to, b"WEFT-LEAK-FROM-POD", 50);
    send_marked(&lab.node("n1").namespace, to, b"WEFT-LEAK-FROM-NODE", 50);
    lab.lab(&["router", "start", "n1"]);
    let resumed = lab.reaches("n1-p1", p2.address, Duration::from_secs(20));
    send_marked(&p1.namespace, to, b"WEFT-AFTER-RESTART", 20);
    let frames = capture.stop();
    report(&format!(
        "hfc: {} frames on the underlay across the kill and restart; pod traffic answered \
         again after {resumed:?} pings",
        frames.len()
    ));
    assert!(
        frames_carry(&frames, b"WEFT-CONTROL-0001") > 0,
        "the capture did not see the control datagrams: it proves nothing"
    );
    assert_eq!(
        frames_carry(&frames, b"WEFT-LEAK-FROM-POD"),
        0,
        "a pod's packets left on the underlay in plaintext while its router was dead"
    );
    assert_eq!(
        frames_carry(&frames, b"WEFT-LEAK-FROM-NODE"),
        0,
        "the node's packets for a pod left on the underlay in plaintext while its router \
         was dead"
    );
    assert!(
        resumed.is_some(),
        "no pod traffic after the restart: {}",
        lab.log_tail("n1")
    );
    assert_eq!(
        frames_carry(&frames, b"WEFT-AFTER-RESTART"),
        0,
        "pod traffic after the restart is not encrypted"
    );

    // Taking weft off the node: the router stopped, `weft uninstall` leaves no route for the
    // range, and says there is nothing left when run again.
    lab.lab(&["router", "stop", "n1"]);
    let weft = lab.weft.to_str().unwrap().to_owned();
    let (ok, out, err) = lab.on_node("n1", &[&weft, "uninstall", "--cluster-range", RANGE]);
    assert!(ok && out.contains("blackhole"), "{out}{err}");
    let (_, routes, _) = lab.on_node("n1", &["ip", "route", "show", RANGE]);
    assert!(routes.trim().is_empty(), "left behind: {routes}");
    let (ok, out, _) = lab.on_node("n1", &[&weft, "uninstall", "--cluster-range", RANGE]);
    assert!(ok && out.contains("nothing"), "{out}");
    drop(lab);
    assert!(
        !Path::new("/run/netns/hfc-o").exists(),
        "weft lab down leaves the outside namespace behind"
    );
}

/// A node's own processes (kubelet probes, the API server calling a webhook) reach pods on
/// other nodes, with the node's mesh address as their source, which the receiving router
/// accepts; and pods answer the node.
#[test]
fn a_node_reaches_pods_on_other_nodes_from_its_mesh_address() {
    if !can_run(
        "a_node_reaches_pods_on_other_nodes_from_its_mesh_address",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("hht", &["--nodes", "2", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    lab.add_world();
    let p2 = lab.pod("n2-p1").clone();
    let _echo = Echo::start(&p2.namespace, 7100);
    let seen = ask_echo(
        &lab.node("n1").namespace,
        SocketAddr::new(p2.address.into(), 7100),
        Duration::from_secs(10),
    );
    assert_eq!(
        seen,
        Some(mesh_address(&lab, "n1")),
        "node n1 -> pod on n2: {}\n{}",
        lab.status("n2"),
        lab.log_tail("n2")
    );
    let (ok, out, _) = lab.on_node(
        "n1",
        &["ping", "-c", "1", "-W", "2", &p2.address.to_string()],
    );
    assert!(ok, "node n1 cannot ping a pod on n2: {out}");
    // And back: a pod pings the other node's mesh address.
    assert!(
        lab.reaches("n2-p1", mesh_address(&lab, "n1"), Duration::from_secs(5))
            .is_some(),
        "a pod on n2 does not reach node n1's mesh address"
    );
}

/// Egress: a pod reaches a host outside the cluster (which has no route back to the pods)
/// and another node's host address (the API server's, a hostNetwork pod's), both seeing the
/// pod's node's underlay address; and weft's table goes with `weft uninstall`.
#[test]
fn pods_reach_the_outside_and_other_nodes_hosts_masqueraded() {
    if !can_run(
        "pods_reach_the_outside_and_other_nodes_hosts_masqueraded",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("heg", &["--nodes", "2", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let outside = lab.add_world();
    let p1 = lab.pod("n1-p1").clone();
    let n1 = lab.node("n1").underlay.addr();
    let n2 = lab.node("n2").clone();

    let _far = Echo::start(&outside, 7200);
    let seen = ask_echo(
        &p1.namespace,
        SocketAddr::new(OUTSIDE.into(), 7200),
        Duration::from_secs(5),
    );
    assert_eq!(seen, Some(n1), "pod -> outside");

    let _host = Echo::start(&n2.namespace, 7201);
    let seen = ask_echo(
        &p1.namespace,
        SocketAddr::new(n2.underlay.addr().into(), 7201),
        Duration::from_secs(5),
    );
    assert_eq!(seen, Some(n1), "pod -> another node's host address");

    // Pod to pod keeps the pod's address.
    let p2 = lab.pod("n2-p1").clone();
    let _pod = Echo::start(&p2.namespace, 7202);
    let seen = ask_echo(
        &p1.namespace,
        SocketAddr::new(p2.address.into(), 7202),
        Duration::from_secs(5),
    );
    assert_eq!(seen, Some(p1.address), "pod -> pod is not masqueraded");

    lab.lab(&["router", "stop", "n1"]);
    let weft = lab.weft.to_str().unwrap().to_owned();
    let (ok, out, err) = lab.on_node("n1", &[&weft, "uninstall", "--cluster-range", RANGE]);
    assert!(ok && out.contains("table ip weft"), "{out}{err}");
    let (_, tables, _) = lab.on_node("n1", &["nft", "list", "tables"]);
    assert!(!tables.contains("weft"), "left behind: {tables}");
}

/// kube-proxy's nftables rules as kube-proxy writes them (DNAT in its services chain, a
/// 0x4000 mark on what comes from outside the cluster range, masquerade of marked packets in
/// postrouting), on node n1, for a Service whose one endpoint is a pod on n2.
fn kube_proxy_rules(endpoint: SocketAddr) -> String {
    format!(
        "table ip kube-proxy {{
 chain mark-for-masquerade {{
  mark set mark or 0x4000
 }}
 chain services {{
  ip daddr 10.96.0.10 udp dport 80 ip saddr != {RANGE} jump mark-for-masquerade
  ip daddr 10.96.0.10 udp dport 80 dnat to {endpoint}
  fib daddr type local udp dport 30080 jump mark-for-masquerade
  fib daddr type local udp dport 30080 dnat to {endpoint}
 }}
 chain masquerading {{
  type nat hook postrouting priority srcnat; policy accept;
  mark and 0x4000 == 0 return
  mark set mark xor 0x4000
  masquerade fully-random
 }}
 chain nat-prerouting {{
  type nat hook prerouting priority dstnat; policy accept;
  jump services
 }}
 chain nat-output {{
  type nat hook output priority -100; policy accept;
  jump services
 }}
}}
"
    )
}

/// Services through kube-proxy's rules: a NodePort reached from outside the cluster on n1
/// and a ClusterIP reached by node n1 itself both land on a pod on n2 (kube-proxy's
/// masquerade takes n1's mesh address); a pod's ClusterIP traffic keeps the pod's address.
#[test]
fn node_ports_and_cluster_ips_reach_pods_on_other_nodes() {
    if !can_run(
        "node_ports_and_cluster_ips_reach_pods_on_other_nodes",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("hsv", &["--nodes", "2", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let outside = lab.add_world();
    let (p1, p2) = (lab.pod("n1-p1").clone(), lab.pod("n2-p1").clone());
    let _echo = Echo::start(&p2.namespace, 7300);
    let rules = kube_proxy_rules(SocketAddr::new(p2.address.into(), 7300));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node("n1").namespace, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(rules.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n1_mesh = mesh_address(&lab, "n1");
    let node_port = SocketAddr::new(lab.node("n1").underlay.addr().into(), 30080);
    let cluster_ip = SocketAddr::new(Ipv4Addr::new(10, 96, 0, 10).into(), 80);

    let seen = ask_echo(&outside, node_port, Duration::from_secs(5));
    assert_eq!(
        seen,
        Some(n1_mesh),
        "outside -> NodePort on n1 -> pod on n2"
    );
    let seen = ask_echo(
        &lab.node("n1").namespace,
        cluster_ip,
        Duration::from_secs(5),
    );
    assert_eq!(seen, Some(n1_mesh), "node n1 -> ClusterIP -> pod on n2");
    let seen = ask_echo(&p1.namespace, cluster_ip, Duration::from_secs(5));
    assert_eq!(
        seen,
        Some(p1.address),
        "pod on n1 -> ClusterIP -> pod on n2"
    );
}
