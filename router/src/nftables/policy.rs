//! NetworkPolicy in the kernel: a [`weft_policy::Model`] of this node's pods rendered into
//! chains of weft's table, loaded in the same transaction as the masquerade
//! (docs/networkpolicy.md, "Enforcement").
//!
//! One filter chain on the `forward` hook judges what the node forwards to or from its pods:
//! tunnelled traffic (weft-tun ↔ bridge), traffic to and from outside the cluster, and traffic
//! between two pods of the node, which the bridge carries and br_netfilter hands to the IP
//! hooks (`net.bridge.bridge-nf-call-iptables=1`, which Kubernetes asks of every node for
//! kube-proxy). A `bridge`-family table would not need br_netfilter, but it needs conntrack
//! of its own (nf_conntrack_bridge, absent from kernels built without it, such as the
//! development machine's) to tell replies from new connections, and it would judge a pod's
//! traffic to a Service before kube-proxy's DNAT names the backend. Traffic between a pod and
//! its own node (kubelet probes) goes through the input and output hooks, never judged.
//!
//! Each isolated pod and direction gets a chain, named after the pod's first IPv4 address
//! (`in-10.32.1.2`, `out-10.32.1.2`): one `return` per allowed tuple, then a drop that counts
//! into one named counter per isolating policy (`deny-ingress/NS/NAME`,
//! `deny-egress/NS/NAME`), so a denial is reported for every policy that isolates the pod and
//! none of which allowed it. Pods no policy isolates appear nowhere.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use weft_policy::{Direction, Model, ObjectRef, Peers, PodRules, PortRange, Ports, Protocol};

/// The forward-hook chain.
pub const CHAIN: &str = "pod-policy";

/// nftables' limit on object and chain names, less the terminating NUL.
const MAX_NAME: usize = 255;
/// nftables keeps a rule comment of up to 128 bytes (NUL included).
const MAX_COMMENT: usize = 127;

/// Which end of a connection a chain judges for its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// What the pod receives: the peer is the source.
    Ingress,
    /// What the pod sends: the peer is the destination.
    Egress,
}

impl Way {
    fn word(self) -> &'static str {
        match self {
            Way::Ingress => "ingress",
            Way::Egress => "egress",
        }
    }

    /// The chain name's prefix.
    fn short(self) -> &'static str {
        match self {
            Way::Ingress => "in",
            Way::Egress => "out",
        }
    }

    /// The address that belongs to the peer.
    fn peer(self) -> &'static str {
        match self {
            Way::Ingress => "saddr",
            Way::Egress => "daddr",
        }
    }

    /// The address that belongs to the pod.
    fn own(self) -> &'static str {
        match self {
            Way::Ingress => "daddr",
            Way::Egress => "saddr",
        }
    }
}

/// The named counter that counts packets `policy` denied in direction `way`:
/// `deny-ingress/NS/NAME`. A name nftables could not hold (too long, or with characters the
/// API server never allows in a name) becomes `deny-ingress/h` and a stable 64-bit hash of
/// `NS/NAME`; whoever reads the counters maps them back with this same function.
pub fn counter_name(way: Way, policy: &ObjectRef) -> String {
    let plain = format!("deny-{}/{}/{}", way.word(), policy.namespace, policy.name);
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if plain.len() <= MAX_NAME && safe(&policy.namespace) && safe(&policy.name) {
        plain
    } else {
        format!(
            "deny-{}/h{:016x}",
            way.word(),
            fnv1a(policy.to_string().as_bytes())
        )
    }
}

/// FNV-1a: stable across builds and Rust versions, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The policy part of weft's table for one model: counters and chains, ready to go inside
/// `table ip weft { … }`. Empty when no local pod is isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforcement {
    text: String,
}

impl Enforcement {
    /// Renders `model` (this node's pods). `node` holds the node's own addresses: packets
    /// from them to its pods are let through before any pod chain (upstream: a pod's node may
    /// always reach it). Only IPv4 is rendered, as weft's pod network is IPv4.
    pub fn render(model: &Model, node: &[Ipv4Addr]) -> Self {
        let mut counters = Vec::new();
        let mut chains = String::new();
        let mut maps: [Vec<(Ipv4Addr, String)>; 2] = [Vec::new(), Vec::new()];
        for pod in model.pods() {
            // An address two pods report answers for the first (Model::pod_by_ip): one key
            // per address, or nftables refuses the map.
            let ips: Vec<Ipv4Addr> = pod
                .ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .filter(|ip| model.pod_by_ip(IpAddr::V4(*ip)).map(|p| &p.pod) == Some(&pod.pod))
                .collect();
            let Some(first) = ips.first() else { continue };
            for (i, way) in [Way::Egress, Way::Ingress].into_iter().enumerate() {
                let dir = match way {
                    Way::Ingress => &pod.ingress,
                    Way::Egress => &pod.egress,
                };
                if !dir.is_isolated() {
                    continue;
                }
                let chain = format!("{}-{first}", way.short());
                chains += &pod_chain(&chain, way, pod, &ips, dir);
                counters.extend(dir.isolated_by.iter().map(|p| counter_name(way, p)));
                maps[i].extend(ips.iter().map(|ip| (*ip, chain.clone())));
            }
        }
        if maps.iter().all(Vec::is_empty) {
            return Self::default();
        }
        counters.sort();
        counters.dedup();
        let mut text = String::new();
        for c in &counters {
            let _ = writeln!(text, " counter {c} {{\n }}");
        }
        let _ = writeln!(
            text,
            " chain {CHAIN} {{\n  type filter hook forward priority filter; policy accept;\n  \
             ct state established,related accept"
        );
        if !node.is_empty() {
            let _ = writeln!(text, "  ip saddr {} accept", set(node.iter()));
        }
        // Egress first: a packet leaves its source before it reaches its destination, and
        // the first chain to refuse it is the one whose counters say so.
        for (way, map) in [Way::Egress, Way::Ingress].into_iter().zip(&maps) {
            if map.is_empty() {
                continue;
            }
            let entries: Vec<String> = map
                .iter()
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            let _ = writeln!(text, "  ip {} vmap {{ {} }}", way.own(), entries.join(", "));
        }
        text += " }\n";
        text += &chains;
        Self { text }
    }

    /// The rendered counters and chains.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// One pod's chain for one direction: its own addresses (a pod is never denied itself, even
/// through a Service that sends it back), each allowed tuple, then the counted drop.
fn pod_chain(name: &str, way: Way, pod: &PodRules, ips: &[Ipv4Addr], dir: &Direction) -> String {
    let peer = way.peer();
    let mut s = format!(" chain {name} {{\n  ip {peer} {} return\n", set(ips.iter()));
    for allow in &dir.allow {
        let peers = match &allow.peers {
            Peers::Any => String::new(),
            Peers::Nets(nets) => {
                let v4 = v4_intervals(nets);
                if v4.is_empty() {
                    continue; // only IPv6 peers: nothing an IPv4 packet can match
                }
                format!("ip {peer} {} ", set(v4.iter()))
            }
        };
        let _ = writeln!(
            s,
            "  {peers}{}return comment \"{}\"",
            ports(allow.ports),
            comment(&allow.policy.to_string())
        );
    }
    let counters: Vec<String> = dir
        .isolated_by
        .iter()
        .map(|p| format!("counter name {}", counter_name(way, p)))
        .collect();
    let _ = writeln!(
        s,
        "  {} drop comment \"{}\"\n }}",
        counters.join(" "),
        comment(&format!("{} of {}", way.word(), pod.pod))
    );
    s
}

/// The IPv4 part of `nets` as nftables writes an interval set: adjacent prefixes merged into
/// one range (`0.0.0.0/0` less one address is two ranges, not 32 prefixes). nftables merges
/// them itself when it loads the set, but parsing and merging the prefixes made loading the
/// table markedly slower (docs/performance.md, NetworkPolicy).
fn v4_intervals(nets: &[IpNet]) -> Vec<String> {
    let mut ranges: Vec<(u32, u32)> = nets
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.broadcast()))),
            IpNet::V6(_) => None,
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if u64::from(first) <= u64::from(prev.1) + 1 => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
        .into_iter()
        .map(|(first, last)| {
            let size = u64::from(last) - u64::from(first) + 1;
            let (a, b) = (Ipv4Addr::from(first), Ipv4Addr::from(last));
            if size == 1 {
                a.to_string()
            } else if size.is_power_of_two() && u64::from(first) % size == 0 {
                format!("{a}/{}", 32 - size.trailing_zeros())
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

/// One element bare, several in braces.
fn set<T: ToString>(items: impl ExactSizeIterator<Item = T>) -> String {
    let one = items.len() == 1;
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    if one {
        items.concat()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// The match for `ports`, with a trailing space, or nothing for every protocol.
fn ports(ports: Ports) -> String {
    let Ports::Only { protocol, range } = ports else {
        return String::new();
    };
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    match range {
        PortRange::ALL => format!("meta l4proto {proto} "),
        PortRange { first, last } if first == last => format!("{proto} dport {first} "),
        PortRange { first, last } => format!("{proto} dport {first}-{last} "),
    }
}

/// A comment nftables takes as given: names come from the API server, which allows no quote
/// or backslash in them, but a comment must never be able to end its string.
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ./-_:".contains(c) {
                c
            } else {
                '?'
            }
        })
        .take(MAX_COMMENT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::{Value, json};
    use weft_policy::{Local, compute};

    fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
        let ips: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIPs": ips},
        }))
        .unwrap()
    }

    fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .unwrap()
    }

    fn model(pods: &[Pod], policies: &[NetworkPolicy]) -> Model {
        compute(policies, pods, &[] as &[Namespace], Local::Node("n1"))
    }

    fn node() -> Vec<Ipv4Addr> {
        vec![Ipv4Addr::new(10, 32, 1, 0), Ipv4Addr::new(198, 18, 0, 1)]
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod("x", "a", &["10.32.1.2"]),
            pod("x", "b", &["10.32.1.3"]),
            pod("y", "c", &["10.32.1.4"]),
        ]
    }

    /// The lines of one chain, without its braces.
    fn chain<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let start = text
            .find(&format!(" chain {name} {{\n"))
            .unwrap_or_else(|| panic!("no chain {name} in\n{text}"));
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| *l != " }")
            .map(str::trim)
            .collect()
    }

    #[test]
    fn no_isolated_pod_renders_nothing() {
        let elsewhere = policy(
            "z",
            "nobody-here",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        );
        let m = model(&pods(), &[elsewhere]);
        assert!(Enforcement::render(&m, &node()).is_empty());
    }

    #[test]
    fn an_isolated_pod_gets_a_chain_that_returns_what_is_allowed_and_counts_the_rest() {
        let web = policy(
            "x",
            "web",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                     "ports": [{"port": 80}, {"port": 81, "endPort": 90, "protocol": "UDP"}]},
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.32.0.0/11"]}}],
                     "ports": [{"protocol": "SCTP"}]},
                ],
            }),
        );
        let deny = policy("x", "deny-all", json!({"podSelector": {}}));
        let m = model(&pods(), &[web, deny]);
        let e = Enforcement::render(&m, &node());
        let text = e.as_str();
        let base = chain(text, CHAIN);
        assert_eq!(
            base,
            [
                "type filter hook forward priority filter; policy accept;",
                "ct state established,related accept",
                "ip saddr { 10.32.1.0, 198.18.0.1 } accept",
                "ip daddr vmap { 10.32.1.2 : jump in-10.32.1.2, 10.32.1.3 : jump in-10.32.1.3 }",
            ]
        );
        // x/a: itself, then each tuple, then a drop counted for both isolating policies.
        let a = chain(text, "in-10.32.1.2");
        assert_eq!(a[0], "ip saddr 10.32.1.2 return");
        assert!(
            a.contains(&"ip saddr 10.32.1.3 tcp dport 80 return comment \"x/web\""),
            "{a:#?}"
        );
        assert!(
            a.contains(&"ip saddr 10.32.1.3 udp dport 81-90 return comment \"x/web\""),
            "{a:#?}"
        );
        // 10.0.0.0/8 less 10.32.0.0/11: the halves on the way down, one per bit.
        let sctp = a
            .iter()
            .find(|l| l.contains("meta l4proto sctp"))
            .expect("sctp rule");
        assert!(sctp.starts_with("ip saddr { 10.0.0.0/11, "), "{sctp}");
        assert!(!sctp.contains("10.32.0.0/11"), "{sctp}");
        assert_eq!(
            *a.last().unwrap(),
            "counter name deny-ingress/x/deny-all counter name deny-ingress/x/web drop \
             comment \"ingress of x/a\""
        );
        // x/b: only deny-all isolates it and nothing allows it anything.
        assert_eq!(
            chain(text, "in-10.32.1.3"),
            [
                "ip saddr 10.32.1.3 return",
                "counter name deny-ingress/x/deny-all drop comment \"ingress of x/b\""
            ]
        );
        // y/c is isolated by nothing: untouched.
        assert!(!text.contains("10.32.1.4"), "{text}");
        assert!(text.starts_with(
            " counter deny-ingress/x/deny-all {\n }\n counter deny-ingress/x/web {\n }\n"
        ));
    }

    #[test]
    fn egress_is_judged_before_ingress_and_by_destination() {
        let out = policy(
            "y",
            "out",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress", "Ingress"],
                "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}]},
                           {"ports": [{"port": 53, "protocol": "UDP"}]}],
            }),
        );
        let m = model(&pods(), &[out]);
        let e = Enforcement::render(&m, &[]);
        let base = chain(e.as_str(), CHAIN);
        // No node addresses: no accept for them.
        assert_eq!(base.len(), 4, "{base:#?}");
        assert_eq!(base[2], "ip saddr vmap { 10.32.1.4 : jump out-10.32.1.4 }");
        assert_eq!(base[3], "ip daddr vmap { 10.32.1.4 : jump in-10.32.1.4 }");
        let out = chain(e.as_str(), "out-10.32.1.4");
        assert_eq!(
            out,
            [
                "ip daddr 10.32.1.4 return",
                "udp dport 53 return comment \"y/out\"",
                "ip daddr 10.32.1.2 return comment \"y/out\"",
                "counter name deny-egress/y/out drop comment \"egress of y/c\"",
            ]
        );
        // Ingress with policyTypes and no rules: everything but itself is denied.
        assert_eq!(chain(e.as_str(), "in-10.32.1.4").len(), 2);
    }

    #[test]
    fn ipv6_is_left_out_and_every_ipv4_address_leads_to_the_pods_chain() {
        let pods = vec![pod("x", "a", &["10.32.1.2", "fd00::2", "10.32.9.2"])];
        let v6_only = policy(
            "x",
            "v6",
            json!({"podSelector": {},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}),
        );
        let e = Enforcement::render(&model(&pods, &[v6_only]), &node());
        let text = e.as_str();
        assert!(!text.contains("fd00"), "{text}");
        assert!(
            text.contains(
                "ip daddr vmap { 10.32.1.2 : jump in-10.32.1.2, 10.32.9.2 : jump in-10.32.1.2 }"
            ),
            "{text}"
        );
        // The IPv6-only allowance allows no IPv4 packet: the chain denies all but itself.
        assert_eq!(
            chain(text, "in-10.32.1.2"),
            [
                "ip saddr { 10.32.1.2, 10.32.9.2 } return",
                "counter name deny-ingress/x/v6 drop comment \"ingress of x/a\""
            ]
        );
    }

    #[test]
    fn two_pods_with_one_address_give_one_map_key() {
        let pods = vec![pod("x", "a", &["10.32.1.2"]), pod("x", "b", &["10.32.1.2"])];
        let deny = policy("x", "deny", json!({"podSelector": {}}));
        let e = Enforcement::render(&model(&pods, &[deny]), &node());
        assert_eq!(
            e.as_str().matches("10.32.1.2 : jump").count(),
            1,
            "{}",
            e.as_str()
        );
    }

    #[test]
    fn peers_are_written_as_merged_intervals() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        // Everything but 10.32.1.2: 32 prefixes from the engine, two ranges here.
        let all: ipnet::Ipv4Net = "0.0.0.0/0".parse().unwrap();
        let hole: ipnet::Ipv4Net = "10.32.1.2/32".parse().unwrap();
        let mut less: Vec<IpNet> = Vec::new();
        let mut net = all;
        while net.prefix_len() < 32 {
            let halves: Vec<ipnet::Ipv4Net> = net.subnets(net.prefix_len() + 1).unwrap().collect();
            let (inside, outside) = if halves[0].contains(&hole.addr()) {
                (halves[0], halves[1])
            } else {
                (halves[1], halves[0])
            };
            less.push(IpNet::V4(outside));
            net = inside;
        }
        assert_eq!(less.len(), 32);
        assert_eq!(
            v4_intervals(&less),
            ["0.0.0.0-10.32.1.1", "10.32.1.3-255.255.255.255"]
        );
        assert_eq!(
            v4_intervals(&nets(&[
                "10.32.2.0/24",
                "10.32.3.0/24",
                "10.32.5.7/32",
                "::/0"
            ])),
            ["10.32.2.0/23", "10.32.5.7"]
        );
        assert_eq!(
            v4_intervals(&nets(&["10.32.1.0/24", "10.32.2.0/24"])),
            ["10.32.1.0-10.32.2.255"]
        );
        assert_eq!(v4_intervals(&nets(&["0.0.0.0/0"])), ["0.0.0.0/0"]);
        assert!(v4_intervals(&nets(&["fd00::/8"])).is_empty());
    }

    #[test]
    fn counter_names_are_plain_when_nftables_can_hold_them_and_hashed_otherwise() {
        let plain = ObjectRef::new("x", "allow-web.v2");
        assert_eq!(
            counter_name(Way::Ingress, &plain),
            "deny-ingress/x/allow-web.v2"
        );
        assert_eq!(
            counter_name(Way::Egress, &plain),
            "deny-egress/x/allow-web.v2"
        );
        let long = ObjectRef::new("x".repeat(63), "p".repeat(253));
        let hashed = counter_name(Way::Ingress, &long);
        assert!(
            hashed.starts_with("deny-ingress/h") && hashed.len() == 30,
            "{hashed}"
        );
        // Stable, and different for another policy.
        assert_eq!(hashed, counter_name(Way::Ingress, &long));
        let other = ObjectRef::new("x".repeat(63), "q".repeat(253));
        assert_ne!(hashed, counter_name(Way::Ingress, &other));
        // Anything that could break out of a name or the script is never written as given.
        let hostile = ObjectRef::new("x", "a\" }\nflush ruleset #");
        let name = counter_name(Way::Egress, &hostile);
        assert!(name.starts_with("deny-egress/h"), "{name}");
        assert_eq!(comment("a\" }\nflush"), "a? ??flush");
    }
}
