//! The verdict model: per local pod and direction, whether it is isolated and what is allowed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{Cluster, Endpoint};
use crate::compile::{Compiled, Rule};
use crate::error::{ObjectRef, Problem};
use crate::peers::Peers;
use crate::ports::{PortRange, PortSpec, Ports};

/// Which pods the model is for: the ones this node enforces policy on.
#[derive(Clone, Copy, Debug)]
pub enum Local<'a> {
    /// Every Running pod (tests, and `weft` explaining a path between two remote pods).
    All,
    /// The pods whose `spec.nodeName` is this node.
    Node(&'a str),
    /// The pods with one of these addresses (the node's own leases, which it knows before
    /// the API server reports them).
    Ips(&'a BTreeSet<IpAddr>),
}

impl Local<'_> {
    fn holds(&self, ep: &Endpoint) -> bool {
        match self {
            Local::All => true,
            Local::Node(node) => ep.node.as_deref() == Some(*node),
            Local::Ips(ips) => ep.ips.iter().any(|ip| ips.contains(ip)),
        }
    }
}

/// One allowed (peers, protocol, ports) tuple, and the policy that allowed it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    pub policy: ObjectRef,
    /// Sources for ingress, destinations for egress.
    pub peers: Peers,
    pub ports: Ports,
}

impl Allow {
    pub fn matches(&self, peer: IpAddr, protocol: crate::Protocol, port: u16) -> bool {
        self.peers.contains(peer) && self.ports.matches(protocol, port)
    }
}

/// One direction of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    /// The policies that select the pod for this direction. Empty: not isolated, all allowed.
    pub isolated_by: Vec<ObjectRef>,
    /// What the pod may receive (ingress) or send (egress) when isolated. Sorted, no duplicates.
    pub allow: Vec<Allow>,
}

impl Direction {
    pub fn is_isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }
}

/// The rules of one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    pub pod: ObjectRef,
    pub ips: Vec<IpAddr>,
    pub ingress: Direction,
    pub egress: Direction,
}

/// The engine's output for one snapshot.
#[derive(Clone, Debug)]
pub struct Model {
    pods: Vec<PodRules>,
    by_ip: HashMap<IpAddr, usize>,
    problems: Vec<Problem>,
}

impl Model {
    /// The local pods, sorted by namespace and name.
    pub fn pods(&self) -> &[PodRules] {
        &self.pods
    }

    /// The local pod with this address.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodRules> {
        self.by_ip.get(&ip).map(|i| &self.pods[*i])
    }

    /// Malformed objects in the snapshot, each with what was done about it.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

pub(crate) fn build(
    cluster: &Cluster,
    policies: &[Compiled],
    local: Local<'_>,
    mut problems: Vec<Problem>,
) -> Model {
    let mut pods = Vec::new();
    let mut by_ip = HashMap::new();
    for ep in cluster.endpoints.iter().filter(|ep| local.holds(ep)) {
        let mut rules = PodRules {
            pod: ep.pod.clone(),
            ips: ep.ips.clone(),
            ingress: Direction::default(),
            egress: Direction::default(),
        };
        for policy in policies
            .iter()
            .filter(|p| p.id.namespace == ep.pod.namespace)
        {
            // A policy whose podSelector is malformed fails closed on its whole namespace.
            if !policy
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&ep.labels))
            {
                continue;
            }
            if policy.ingress {
                rules.ingress.isolated_by.push(policy.id.clone());
                for rule in policy.rules.iter().flat_map(|r| &r.ingress) {
                    ingress_allows(&policy.id, rule, ep, &mut rules.ingress.allow);
                }
            }
            if policy.egress {
                rules.egress.isolated_by.push(policy.id.clone());
                for rule in policy.rules.iter().flat_map(|r| &r.egress) {
                    egress_allows(&policy.id, rule, cluster, &mut rules.egress.allow);
                }
            }
        }
        for dir in [&mut rules.ingress, &mut rules.egress] {
            dir.isolated_by.sort();
            dir.isolated_by.dedup();
            dir.allow.sort();
            dir.allow.dedup();
        }
        for ip in &ep.ips {
            // Two Running pods with one address is the API server's problem, not ours to
            // guess at: the first by name answers `pod_by_ip`, both keep their rules.
            by_ip.entry(*ip).or_insert(pods.len());
        }
        pods.push(rules);
    }
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    Model {
        pods,
        by_ip,
        problems,
    }
}

/// Ingress: named ports mean this pod's own container ports.
fn ingress_allows(policy: &ObjectRef, rule: &Rule, pod: &Endpoint, out: &mut Vec<Allow>) {
    if rule.peers.is_empty() {
        return;
    }
    let allow = |ports| Allow {
        policy: policy.clone(),
        peers: rule.peers.clone(),
        ports,
    };
    let Some(specs) = &rule.ports else {
        out.push(allow(Ports::Any));
        return;
    };
    for spec in specs {
        match spec {
            PortSpec::Resolved(ports) => out.push(allow(*ports)),
            PortSpec::Named { protocol, name } => {
                if let Some(port) = pod.resolve(name, *protocol) {
                    out.push(allow(Ports::Only {
                        protocol: *protocol,
                        range: PortRange::single(port),
                    }));
                }
            }
        }
    }
}

/// Egress: named ports mean each destination pod's container ports, so a named port only
/// ever allows traffic to pods that declare it (never to addresses outside the cluster).
fn egress_allows(policy: &ObjectRef, rule: &Rule, cluster: &Cluster, out: &mut Vec<Allow>) {
    if rule.peers.is_empty() {
        return;
    }
    let Some(specs) = &rule.ports else {
        out.push(Allow {
            policy: policy.clone(),
            peers: rule.peers.clone(),
            ports: Ports::Any,
        });
        return;
    };
    for spec in specs {
        match spec {
            PortSpec::Resolved(ports) => {
                out.push(Allow {
                    policy: policy.clone(),
                    peers: rule.peers.clone(),
                    ports: *ports,
                });
            }
            PortSpec::Named { protocol, name } => {
                let mut by_port: BTreeMap<u16, Vec<IpNet>> = BTreeMap::new();
                for dst in &cluster.endpoints {
                    let Some(port) = dst.resolve(name, *protocol) else {
                        continue;
                    };
                    let ips = dst.ips.iter().filter(|ip| rule.peers.contains(**ip));
                    by_port
                        .entry(port)
                        .or_default()
                        .extend(ips.map(|ip| IpNet::from(*ip)));
                }
                for (port, nets) in by_port.into_iter().filter(|(_, n)| !n.is_empty()) {
                    out.push(Allow {
                        policy: policy.clone(),
                        peers: Peers::nets(nets),
                        ports: Ports::Only {
                            protocol: *protocol,
                            range: PortRange::single(port),
                        },
                    });
                }
            }
        }
    }
}
