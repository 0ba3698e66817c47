//! One NetworkPolicy checked and its peers resolved against the snapshot's pods. A policy
//! with any error keeps what it selects (so it can fail closed) and loses its rules.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cluster::Cluster;
use crate::error::{Malformed, ObjectKind, ObjectRef, Problem};
use crate::peers::{Peers, parse_ip_block};
use crate::ports::PortSpec;
use crate::selector::Selector;

pub struct Compiled {
    pub id: ObjectRef,
    /// `None` when the podSelector itself is malformed: then every pod of the namespace.
    pub selector: Option<Selector>,
    pub ingress: bool,
    pub egress: bool,
    /// `None` when anything in the policy is malformed: it then allows nothing.
    pub rules: Option<Rules>,
}

#[derive(Default)]
pub struct Rules {
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

pub struct Rule {
    /// The rule's `from` or `to`, resolved to addresses.
    pub peers: Peers,
    /// The rule's `ports`; `None` when absent or empty (every port of every protocol).
    pub ports: Option<Vec<PortSpec>>,
}

type FieldError = (String, Malformed);

fn at(prefix: impl std::fmt::Display) -> impl Fn(FieldError) -> FieldError {
    move |(field, e)| match field.is_empty() {
        true => (prefix.to_string(), e),
        false => (format!("{prefix}.{field}"), e),
    }
}

/// The policy as it applies (`None` only without a namespace), and what is wrong with it.
pub fn compile(policy: &NetworkPolicy, cluster: &Cluster) -> (Option<Compiled>, Option<Problem>) {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let Some(namespace) = policy.metadata.namespace.clone() else {
        // Without a namespace it selects nothing we could name: nothing to fail closed on.
        let field = ("metadata.namespace".into(), Malformed::NoNamespace);
        return (None, Some(problem(ObjectRef::new("", name), field)));
    };
    let id = ObjectRef::new(namespace, name);
    // A missing spec is the zero spec, as in Go: every pod of the namespace, ingress denied.
    let spec = policy.spec.clone().unwrap_or_default();
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let types = policy_types(spec.policy_types.as_deref(), has_egress_rules);
    let selector = Selector::parse(&spec.pod_selector.clone().unwrap_or_default())
        .map_err(at("spec.podSelector"));
    let rules = match (&types, &selector) {
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        _ => compile_rules(&spec, &id.namespace, cluster),
    };
    // Fail closed: a malformed policyTypes isolates both directions.
    let (ingress, egress) = types.unwrap_or((true, true));
    let (rules, problem) = match rules {
        Ok(rules) => (Some(rules), None),
        Err(e) => (None, Some(problem(id.clone(), e))),
    };
    let compiled = Compiled {
        id,
        selector: selector.ok(),
        ingress,
        egress,
        rules,
    };
    (Some(compiled), problem)
}

fn compile_rules(
    spec: &NetworkPolicySpec,
    namespace: &str,
    cluster: &Cluster,
) -> Result<Rules, FieldError> {
    let mut rules = Rules::default();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let rule = compile_rule(
            "from",
            r.from.as_deref(),
            r.ports.as_deref(),
            namespace,
            cluster,
        );
        rules
            .ingress
            .push(rule.map_err(at(format_args!("spec.ingress[{i}]")))?);
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let rule = compile_rule(
            "to",
            r.to.as_deref(),
            r.ports.as_deref(),
            namespace,
            cluster,
        );
        rules
            .egress
            .push(rule.map_err(at(format_args!("spec.egress[{i}]")))?);
    }
    Ok(rules)
}

fn problem(object: ObjectRef, (field, error): FieldError) -> Problem {
    Problem {
        kind: ObjectKind::NetworkPolicy,
        object,
        field,
        error,
    }
}

/// Which directions a policy isolates: as given, or (absent or empty) upstream's default:
/// Ingress always, Egress when the policy has egress rules.
fn policy_types(
    given: Option<&[String]>,
    has_egress_rules: bool,
) -> Result<(bool, bool), FieldError> {
    let Some(given) = given.filter(|t| !t.is_empty()) else {
        return Ok((true, has_egress_rules));
    };
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in given.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return Err((
                    format!("spec.policyTypes[{i}]"),
                    Malformed::UnknownPolicyType(other.to_owned()),
                ));
            }
        }
    }
    Ok((ingress, egress))
}

fn compile_rule(
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    namespace: &str,
    cluster: &Cluster,
) -> Result<Rule, FieldError> {
    let peers = match peers {
        None | Some([]) => Peers::Any,
        Some(list) => {
            let mut nets = Vec::new();
            for (i, peer) in list.iter().enumerate() {
                nets.extend(
                    peer_nets(peer, namespace, cluster)
                        .map_err(at(format_args!("{peers_field}[{i}]")))?,
                );
            }
            Peers::nets(nets)
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| PortSpec::parse(p).map_err(|(f, e)| (format!("ports[{i}].{f}"), e)))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

/// The addresses one peer names. Selector peers are the Running pods they select now.
fn peer_nets(
    peer: &NetworkPolicyPeer,
    namespace: &str,
    cluster: &Cluster,
) -> Result<Vec<IpNet>, FieldError> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err(("ipBlock".into(), Malformed::IpBlockWithSelector));
        }
        return parse_ip_block(block).map_err(at("ipBlock"));
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err((String::new(), Malformed::EmptyPeer));
    }
    let parse = |s: &Option<LabelSelector>, field: &'static str| {
        s.as_ref()
            .map(|s| Selector::parse(s).map_err(at(field)))
            .transpose()
    };
    let namespaces = parse(&peer.namespace_selector, "namespaceSelector")?;
    let pods = parse(&peer.pod_selector, "podSelector")?.unwrap_or_default();
    Ok(cluster
        .endpoints
        .iter()
        .filter(|ep| match &namespaces {
            // Without a namespaceSelector, the policy's own namespace.
            None => ep.pod.namespace == namespace,
            Some(sel) => sel.matches(cluster.namespace_labels(&ep.pod.namespace)),
        })
        .filter(|ep| pods.matches(&ep.labels))
        .flat_map(|ep| ep.ips.iter().map(|ip| IpNet::from(*ip)))
        .collect())
}
