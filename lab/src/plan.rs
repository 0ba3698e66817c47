//! The lab's names and addresses, decided in one place and checked without touching the
//! system. Everything lives in namespaces named `{prefix}-…`, so labs with different prefixes
//! (one per test) never meet.
//!
//! Address plan (docs/design.md §7): the underlay switch is `198.18.0.0/16`; a node behind NAT sits
//! on its own `198.19.N.0/24` behind a NAT box; pods use the cluster range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::LabError;
use crate::error::{refuse, refuse_unless};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The most nodes a lab holds: node `i` gets `198.18.0.i` and `198.19.i.0/24`.
pub const MAX_NODES: usize = 200;
/// The most pods per node.
pub const MAX_PODS: usize = 50;
/// The switch's own address under `--kubernetes`: a (fake) API server bound in the underlay
/// namespace is reached there, outside every node's address.
pub const API_SERVER: &str = "198.18.255.254/16";
/// Underlay MTU of the lab's veths (the kernel default for veth and bridge).
pub const UNDERLAY_MTU: u32 = 1500;

/// Loss and delay on a node's underlay link (`tc netem`), in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Netem {
    /// Packet loss, percent.
    pub loss_percent: f32,
    /// One-way delay, milliseconds.
    pub delay_ms: u32,
}

impl std::str::FromStr for Netem {
    type Err = LabError;
    /// `loss=5%,delay=20ms` (either part may be left out).
    fn from_str(s: &str) -> Result<Self, LabError> {
        let mut n = Netem::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                refuse!("netem option {part:?} is not key=value");
            };
            match k {
                "loss" => {
                    let v = v.trim_end_matches('%');
                    n.loss_percent = v.parse().map_err(|e| refused(format!("loss {v:?}: {e}")))?;
                    refuse_unless!(
                        (0.0..=100.0).contains(&n.loss_percent),
                        "loss must be 0–100%"
                    );
                }
                "delay" => {
                    let v = v.trim_end_matches("ms");
                    n.delay_ms = v
                        .parse()
                        .map_err(|e| refused(format!("delay {v:?}: {e}")))?;
                }
                other => refuse!("unknown netem option {other:?} (known: loss, delay)"),
            }
        }
        Ok(n)
    }
}

/// One-way delay, in milliseconds, between a NAT box and the switch unless `--netem` says
/// otherwise. Two NAT boxes on one switch with no distance between them make hole punching
/// a race on microseconds: a punch that reaches a bare masquerade before that box's own punch
/// has left spoils the port for it (docs/design.md §4). In the world NATs are milliseconds
/// apart, and with 2 ms here pairs of bare masquerades went direct in 8 of 8 lab runs
/// against 0 of 8 side by side; 5 ms leaves a margin for a loaded machine.
pub const NAT_DISTANCE_MS: u32 = 5;

/// The lab's link impairments: those given, plus [`NAT_DISTANCE_MS`] of delay on the link of
/// every node behind NAT for which none were given.
pub fn with_nat_distance(
    nat: impl IntoIterator<Item = usize>,
    mut netem: BTreeMap<usize, Netem>,
) -> BTreeMap<usize, Netem> {
    for n in nat {
        netem.entry(n).or_insert(Netem {
            loss_percent: 0.0,
            delay_ms: NAT_DISTANCE_MS,
        });
    }
    netem
}

/// How a lab's NAT box treats UDP (docs/design.md §7). Each is Linux conntrack with an
/// nftables masquerade, as Linux-based home and cloud routers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// A bare masquerade: the source port is kept while free (endpoint-independent mapping),
    /// only replies get in (address-and-port-dependent filtering), and an unsolicited packet
    /// from outside leaves a conntrack entry that makes the inside's own packets to that
    /// sender leave from another port.
    #[default]
    Masquerade,
    /// A port-restricted home router: the same masquerade behind a stateful input firewall
    /// (what OpenWrt's WAN zone does), which drops unsolicited packets before conntrack keeps
    /// any state for them.
    Restricted,
    /// A random source port for every new flow (`masquerade fully-random`): a port a third
    /// peer saw is useless to anyone else.
    Symmetric,
}

impl NatKind {
    /// The name `--nat N:KIND` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Masquerade => "masquerade",
            Self::Restricted => "restricted",
            Self::Symmetric => "symmetric",
        }
    }

    /// The NAT box's nftables rules (its WAN side is `wan`, its LAN side `lan`).
    pub fn rules(self) -> String {
        let masquerade = match self {
            Self::Symmetric => "masquerade fully-random",
            _ => "masquerade",
        };
        let mut rules = format!(
            "table ip weftlab_nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  \
             oifname \"wan\" {masquerade}\n }}\n}}\n"
        );
        if self == Self::Restricted {
            rules += "table ip weftlab_fw {\n chain input {\n  type filter hook input priority filter; \
                      policy drop;\n  ct state established,related accept\n  iifname { \"lan\", \"lo\" } \
                      accept\n }\n}\n";
        }
        rules
    }
}

impl std::str::FromStr for NatKind {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        [Self::Masquerade, Self::Restricted, Self::Symmetric]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                refused(format!(
                    "unknown NAT kind {s:?} (known: masquerade, restricted, symmetric)"
                ))
            })
    }
}

/// `NODE` or `NODE:KIND`, e.g. `2:symmetric` (the kind defaults to a bare masquerade).
pub fn parse_nat(s: &str) -> Result<(usize, NatKind), LabError> {
    match s.split_once(':') {
        Some((node, kind)) => Ok((node_number(node)?, kind.parse()?)),
        None => Ok((node_number(s)?, NatKind::default())),
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Namespace name prefix: 1–8 lowercase letters or digits.
    pub prefix: String,
    /// Node count, 1–[`MAX_NODES`].
    pub nodes: usize,
    /// Pods per node, 0–[`MAX_PODS`].
    pub pods: usize,
    /// Nodes (1-based) placed behind a NAT box.
    pub nat: BTreeSet<usize>,
    /// The kind of a NAT box, where it is not a bare masquerade.
    #[serde(default)]
    pub nat_kind: BTreeMap<usize, NatKind>,
    /// Link impairments per node.
    pub netem: BTreeMap<usize, Netem>,
    /// Node pairs whose underlay traffic is dropped at the switch.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Whether to run a `weft router` on every node (else blocks are handed out statically).
    #[serde(default = "yes")]
    pub routers: bool,
    /// Nodes (1-based) whose router gets a join secret of its own, not the cluster's: they
    /// must never form a tunnel. They use their static block as `--pod-cidr`, since no member
    /// will grant them one.
    #[serde(default)]
    pub wrong_secret: BTreeSet<usize>,
    /// Delay links with the userspace delay line even where `tc netem` works.
    #[serde(default)]
    pub delay_line: bool,
    /// The routers' `--offload` (None: theirs, or `WEFT_OFFLOAD` from the environment).
    #[serde(default)]
    pub offload: Option<weft_router::dataplane::Offload>,
    /// Run the routers in Kubernetes mode with this kubeconfig (`--kubernetes`): they find
    /// each other, their blocks and their pins through the API server it names, with no
    /// seeds. The switch answers at [`API_SERVER`] for a server run in the underlay namespace.
    #[serde(default)]
    pub kubernetes: Option<std::path::PathBuf>,
    /// Run the lab's own API server (`--api`, see [`crate::api`]) and the routers in
    /// Kubernetes mode against it, with a Node per lab node.
    #[serde(default)]
    pub api: bool,
    /// Namespaces and Pods to make (`--model FILE`, needs `api`): see [`crate::model`].
    #[serde(default)]
    pub model: Option<std::path::PathBuf>,
}

fn yes() -> bool {
    true
}

impl LabSpec {
    /// Checks the spec before anything is created.
    pub fn validate(&self) -> Result<(), LabError> {
        validate_prefix(&self.prefix)?;
        refuse_unless!(
            (1..=MAX_NODES).contains(&self.nodes),
            "--nodes must be 1–{MAX_NODES}"
        );
        refuse_unless!(self.pods <= MAX_PODS, "--pods must be 0–{MAX_PODS}");
        let node_ok = |n: usize| (1..=self.nodes).contains(&n);
        for n in self
            .nat
            .iter()
            .chain(self.nat_kind.keys())
            .chain(self.netem.keys())
            .chain(&self.wrong_secret)
        {
            refuse_unless!(
                node_ok(*n),
                "node {n} is not in this lab (1–{})",
                self.nodes
            );
        }
        for (a, b) in &self.blocked {
            refuse_unless!(node_ok(*a) && node_ok(*b), "block {a}-{b}: no such node");
            refuse_unless!(
                a != b,
                "block {a}-{b}: a node cannot be blocked from itself"
            );
        }
        refuse_unless!(
            !(self.api && self.kubernetes.is_some()),
            "--api runs the lab's own API server: it does not go with --kubernetes"
        );
        refuse_unless!(
            self.model.is_none() || self.api,
            "--model makes Pods in the lab's API server: it needs --api"
        );
        refuse_unless!(
            !self.api || self.routers,
            "--api runs the routers against the lab's API server: it needs routers"
        );
        if self.routers {
            refuse_unless!(
                (1..=self.nodes).any(|n| !self.nat.contains(&n) && !self.wrong_secret.contains(&n)),
                "a lab needs a node that is neither behind NAT nor given a wrong secret, to found \
                 the address space"
            );
        }
        Ok(())
    }

    /// The kind of node `i`'s NAT box.
    pub fn nat_kind(&self, i: usize) -> NatKind {
        self.nat_kind.get(&i).copied().unwrap_or_default()
    }

    /// The node that founds the address space and seeds the others: the first one reachable
    /// without NAT that holds the cluster's secret.
    pub fn founder(&self) -> usize {
        (1..=self.nodes)
            .find(|n| !self.nat.contains(n) && !self.wrong_secret.contains(n))
            .unwrap_or(1)
    }
}

/// Checks a lab prefix: short and plain, since it names namespaces.
pub fn validate_prefix(prefix: &str) -> Result<(), LabError> {
    refuse_unless!(
        (1..=8).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "lab prefix {prefix:?} must be 1–8 lowercase letters or digits"
    );
    Ok(())
}

/// Parses `A-B` as a pair of node numbers, smaller first.
pub fn parse_link(s: &str) -> Result<(usize, usize), LabError> {
    let Some((a, b)) = s.split_once('-') else {
        refuse!("link {s:?} is not A-B (node numbers)");
    };
    let (a, b) = (node_number(a)?, node_number(b)?);
    Ok((a.min(b), a.max(b)))
}

fn node_number(s: &str) -> Result<usize, LabError> {
    s.parse().map_err(|e| refused(format!("node {s:?}: {e}")))
}

fn refused(message: String) -> LabError {
    LabError::Refused(message)
}

/// `NODE:OPTIONS`, e.g. `2:loss=5%,delay=20ms`.
pub fn parse_netem(s: &str) -> Result<(usize, Netem), LabError> {
    let Some((node, opts)) = s.split_once(':') else {
        refuse!("netem {s:?} is not NODE:loss=5%,delay=20ms");
    };
    Ok((node_number(node)?, opts.parse()?))
}

/// Names and addresses of one lab.
#[derive(Debug, Clone)]
pub struct Names<'a> {
    prefix: &'a str,
}

impl<'a> Names<'a> {
    /// Names under `prefix` (validated by the caller).
    pub fn new(prefix: &'a str) -> Self {
        Self { prefix }
    }
    /// The switch's namespace.
    pub fn underlay_ns(&self) -> String {
        format!("{}-u", self.prefix)
    }
    /// Node `i`'s namespace.
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }
    /// The delay line between node `i` (or its NAT box) and the switch.
    pub fn delay_ns(&self, i: usize) -> String {
        format!("{}-d{i}", self.prefix)
    }
    /// The NAT box in front of node `i`.
    pub fn nat_ns(&self, i: usize) -> String {
        format!("{}-x{i}", self.prefix)
    }
    /// Pod `j` of node `i`'s namespace.
    pub fn pod_ns(&self, i: usize, j: usize) -> String {
        format!("{}-n{i}-p{j}", self.prefix)
    }
    /// The namespace of the `k`th pod of a `--model` file.
    pub fn model_pod_ns(&self, k: usize) -> String {
        format!("{}-m{k}", self.prefix)
    }
    /// Whether `ns` belongs to this lab (for sweeping what a crashed run left).
    pub fn owns(&self, ns: &str) -> bool {
        ns.strip_prefix(self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// A pod's short name, as `weft lab exec` takes it.
pub fn pod_name(node: usize, pod: usize) -> String {
    format!("n{node}-p{pod}")
}

/// Node `i`'s address on the switch (for a NAT node: its NAT box's).
pub fn underlay_addr(i: usize, behind_nat: bool) -> Ipv4Net {
    let host = if behind_nat {
        Ipv4Addr::new(198, 18, 1, i as u8)
    } else {
        Ipv4Addr::new(198, 18, 0, i as u8)
    };
    Ipv4Net::new(host, 16).expect("valid prefix")
}

/// The private network behind node `i`'s NAT box: (box address, node address).
pub fn nat_private(i: usize) -> (Ipv4Net, Ipv4Net) {
    let net = |h| Ipv4Net::new(Ipv4Addr::new(198, 19, i as u8, h), 24).expect("valid");
    (net(1), net(2))
}

/// The pod block a node uses when the lab hands out blocks itself: `10.32.i.0/24`.
pub fn static_block(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 32, i as u8, 0), 24).expect("valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabSpec {
        LabSpec {
            prefix: "t1".into(),
            nodes: 3,
            pods: 2,
            nat: BTreeSet::new(),
            nat_kind: BTreeMap::new(),
            netem: BTreeMap::new(),
            blocked: BTreeSet::new(),
            routers: true,
            wrong_secret: BTreeSet::new(),
            delay_line: false,
            offload: None,
            kubernetes: None,
            api: false,
            model: None,
        }
    }

    #[test]
    fn names_stay_under_the_prefix_and_addresses_in_the_benchmark_range() {
        let n = Names::new("t1");
        assert_eq!(n.node_ns(2), "t1-n2");
        assert_eq!(n.pod_ns(2, 1), "t1-n2-p1");
        assert!(n.owns("t1-n2-p1") && n.owns("t1-u"));
        assert!(!n.owns("t10-n1") && !n.owns("t1") && !n.owns("x-t1-n1"));
        let underlay: Ipv4Net = "198.18.0.0/15".parse().unwrap();
        for i in [1, 7, MAX_NODES] {
            for nat in [false, true] {
                assert!(underlay.contains(&underlay_addr(i, nat).addr()));
            }
            let (a, b) = nat_private(i);
            assert!(underlay.contains(&a.addr()) && underlay.contains(&b.addr()));
            assert!(
                "10.32.0.0/12"
                    .parse::<Ipv4Net>()
                    .unwrap()
                    .contains(&static_block(i))
            );
        }
    }

    #[test]
    fn specs_are_checked_before_anything_is_made() {
        assert!(spec().validate().is_ok());
        let bad = |f: &dyn Fn(&mut LabSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(&|s| s.prefix = "Bad!".into()).contains("prefix"));
        assert!(bad(&|s| s.prefix = "waytoolongprefix".into()).contains("prefix"));
        assert!(bad(&|s| s.nodes = 0).contains("--nodes"));
        assert!(bad(&|s| s.pods = MAX_PODS + 1).contains("--pods"));
        assert!(
            bad(&|s| {
                s.nat.insert(4);
            })
            .contains("node 4")
        );
        assert!(
            bad(&|s| {
                s.blocked.insert((2, 2));
            })
            .contains("itself")
        );
        assert!(
            bad(&|s| {
                s.wrong_secret.insert(5);
            })
            .contains("node 5")
        );
        assert!(
            bad(&|s| {
                s.nodes = 2;
                s.nat.insert(1);
                s.wrong_secret.insert(2);
            })
            .contains("found")
        );
        let mut s = spec();
        s.wrong_secret.insert(1);
        assert_eq!(s.founder(), 2, "a node with a wrong secret founds nothing");
    }

    #[test]
    fn nodes_behind_nat_sit_at_a_distance_unless_told_otherwise() {
        let given = BTreeMap::from([(3, parse_netem("3:delay=0ms").unwrap().1)]);
        let netem = with_nat_distance([2, 3], given);
        assert_eq!(netem[&2].delay_ms, NAT_DISTANCE_MS);
        assert_eq!(netem[&3].delay_ms, 0, "an explicit --netem wins");
        assert!(
            !netem.contains_key(&1),
            "nodes not behind NAT are not delayed"
        );
    }

    #[test]
    fn options_parse_with_clear_errors() {
        assert_eq!(parse_link("3-1").unwrap(), (1, 3));
        assert!(parse_link("13").is_err());
        let (node, n) = parse_netem("2:loss=5%,delay=20ms").unwrap();
        assert_eq!((node, n.loss_percent, n.delay_ms), (2, 5.0, 20));
        assert!(
            parse_netem("2:jitter=3")
                .unwrap_err()
                .to_string()
                .contains("jitter")
        );
        assert!(parse_netem("2:loss=500%").is_err());
        assert_eq!(parse_nat("3").unwrap(), (3, NatKind::Masquerade));
        assert_eq!(parse_nat("2:symmetric").unwrap(), (2, NatKind::Symmetric));
        assert_eq!(parse_nat("2:restricted").unwrap(), (2, NatKind::Restricted));
        assert!(
            parse_nat("2:cone")
                .unwrap_err()
                .to_string()
                .contains("cone")
        );
        assert!(parse_nat("x:symmetric").is_err());
    }
}
