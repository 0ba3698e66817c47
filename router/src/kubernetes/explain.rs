//! `weft policy explain`: why a connection between two pods is allowed or dropped, judged by
//! the engine on the API server's objects as they are now (docs/networkpolicy.md, "Why was
//! it dropped"). The routers judge from the same objects, so once their rules are up to date
//! the kernel agrees; the deny counters then say whether packets really met the drop.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
pub use weft_policy::Protocol;
use weft_policy::{Local, ObjectRef, Problem, Side, Verdict, allows};

use super::{KubeConfig, KubeError};
use crate::nftables::policy::{Way, counter_name};

/// One end of the connection, as the user named it: `NAMESPACE/NAME` or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndSpec {
    Pod(ObjectRef),
    Address(IpAddr),
}

impl std::str::FromStr for EndSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(EndSpec::Address(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(EndSpec::Pod(ObjectRef::new(ns, name)))
            }
            _ => Err(format!("{s:?} is neither NAMESPACE/POD nor an IP address")),
        }
    }
}

/// A protocol as typed on the command line (any case).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(format!("{s:?}: the protocols are tcp, udp and sctp")),
    }
}

/// An end resolved against the snapshot.
#[derive(Clone, Debug)]
struct End {
    /// `NAMESPACE/NAME` of the pod at this end, if it is one.
    pod: Option<ObjectRef>,
    /// Its node (the pod's `spec.nodeName`), where its rules are enforced.
    node: Option<String>,
    ip: IpAddr,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pod {
            Some(pod) => write!(f, "{pod} ({})", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// The engine's judgement of one new connection, printable.
#[derive(Clone, Debug)]
pub struct Explanation {
    from: End,
    to: End,
    protocol: Protocol,
    port: u16,
    verdict: Verdict,
    problems: Vec<Problem>,
}

impl Explanation {
    pub fn is_allowed(&self) -> bool {
        self.verdict.is_allowed()
    }
}

/// Why explaining failed: the user named something the snapshot does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("pod {0} does not exist")]
    NoSuchPod(ObjectRef),
    #[error(
        "pod {0} takes no part in NetworkPolicy yet: it is not Running with an address (or it \
         is on the host network)"
    )]
    NotTakingPart(ObjectRef),
    #[error(
        "forbidden: your kubeconfig's user may not list {resource} in every namespace ({message})"
    )]
    Forbidden {
        resource: &'static str,
        message: String,
    },
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Judges a new connection `from` -> `to` (`port` is the destination port) on one snapshot.
pub fn explain(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
    from: &EndSpec,
    to: &EndSpec,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let model = weft_policy::compute(policies, pods, namespaces, Local::All);
    let resolve = |spec: &EndSpec| -> Result<End, ExplainError> {
        let node_of = |pod: &ObjectRef| {
            pods.iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                        && p.metadata.name.as_deref() == Some(pod.name.as_str())
                })
                .and_then(|p| p.spec.as_ref()?.node_name.clone())
        };
        match spec {
            EndSpec::Address(ip) => {
                let pod = model.pod_by_ip(*ip).map(|p| p.pod.clone());
                let node = pod.as_ref().and_then(node_of);
                Ok(End { pod, node, ip: *ip })
            }
            EndSpec::Pod(want) => {
                let exists = pods.iter().any(|p| {
                    p.metadata.namespace.as_deref() == Some(want.namespace.as_str())
                        && p.metadata.name.as_deref() == Some(want.name.as_str())
                });
                if !exists {
                    return Err(ExplainError::NoSuchPod(want.clone()));
                }
                let rules = model
                    .pods()
                    .iter()
                    .find(|p| p.pod == *want)
                    .ok_or_else(|| ExplainError::NotTakingPart(want.clone()))?;
                // Pod networks here are IPv4: judge the first IPv4 address when there is one.
                let ip = rules
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4())
                    .or(rules.ips.first())
                    .copied()
                    .ok_or_else(|| ExplainError::NotTakingPart(want.clone()))?;
                Ok(End {
                    pod: Some(want.clone()),
                    node: node_of(want),
                    ip,
                })
            }
        }
    };
    let (from, to) = (resolve(from)?, resolve(to)?);
    let verdict = allows(&model, from.ip, to.ip, protocol, port);
    // Only the problems that bear on this connection: malformed policies of either end's
    // namespace (a malformed policy only ever narrows its own namespace) and malformed pods.
    let namespaces_here: Vec<&str> = [&from, &to]
        .iter()
        .filter_map(|e| e.pod.as_ref().map(|p| p.namespace.as_str()))
        .collect();
    let problems = model
        .problems()
        .iter()
        .filter(|p| namespaces_here.contains(&p.object.namespace.as_str()))
        .cloned()
        .collect();
    Ok(Explanation {
        from,
        to,
        protocol,
        port,
        verdict,
        problems,
    })
}

/// Lists the three kinds from the API server and explains.
pub async fn fetch_and_explain(
    config: &KubeConfig,
    from: &EndSpec,
    to: &EndSpec,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let client = super::client(config).await?;
    let lp = ListParams::default();
    // The caller is a person with a kubeconfig, not the router's ServiceAccount.
    let unreachable = |resource: &'static str| {
        move |source| match KubeError::from_client(source, "list", resource) {
            KubeError::Forbidden { message, .. } => ExplainError::Forbidden { resource, message },
            other => ExplainError::Kube(other),
        }
    };
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .map_err(unreachable("networkpolicies"))?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .map_err(unreachable("pods"))?
        .items;
    let namespaces = Api::<Namespace>::all(client)
        .list(&lp)
        .await
        .map_err(unreachable("namespaces"))?
        .items;
    explain(&policies, &pods, &namespaces, from, to, protocol, port)
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {}, {} port {}: {}",
            self.from,
            self.to,
            self.protocol,
            self.port,
            if self.is_allowed() {
                "allowed"
            } else {
                "DROPPED"
            }
        )?;
        let side = |f: &mut fmt::Formatter<'_>, way: Way, end: &End, side: &Side| {
            let what = match way {
                Way::Egress => "egress",
                Way::Ingress => "ingress",
            };
            let whose = match &end.pod {
                Some(pod) => format!("{what} of {pod}"),
                None => format!("{what} of {}", end.ip),
            };
            match side {
                Side::Loopback => writeln!(f, "  {whose}: allowed: a pod may always reach itself"),
                Side::NotLocal => writeln!(
                    f,
                    "  {whose}: allowed: no pod has this address, so no policy applies at this end"
                ),
                Side::NotIsolated => writeln!(
                    f,
                    "  {whose}: allowed: no policy selects the pod for {what}"
                ),
                Side::Allowed(by) => writeln!(f, "  {whose}: allowed by {}", list(by)),
                Side::Denied(by) => {
                    writeln!(
                        f,
                        "  {whose}: DROPPED: isolated by {}, and none of them allows this",
                        list(by)
                    )?;
                    let counters: Vec<String> = by.iter().map(|p| counter_name(way, p)).collect();
                    writeln!(
                        f,
                        "    counted in {} (nft list counters table ip weft{})",
                        counters.join(", "),
                        match &end.node {
                            Some(node) => format!(", on node {node}"),
                            None => String::new(),
                        }
                    )
                }
            }
        };
        side(f, Way::Egress, &self.from, &self.verdict.egress)?;
        side(f, Way::Ingress, &self.to, &self.verdict.ingress)?;
        for p in &self.problems {
            writeln!(f, "  malformed, and failing closed: {p}")?;
        }
        if !self.is_allowed() {
            writeln!(
                f,
                "  (replies within a connection that was allowed are never dropped; this judges new connections)"
            )?;
        }
        Ok(())
    }
}

fn list(policies: &[ObjectRef]) -> String {
    policies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], node: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name,
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    }

    fn world() -> (Vec<NetworkPolicy>, Vec<Pod>, Vec<Namespace>) {
        let policies = vec![
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "web"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"port": 80}]}]},
            }))
            .unwrap(),
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "bad"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]},
            }))
            .unwrap(),
        ];
        let pods = vec![
            pod("x", "a", &[("pod", "a")], "n1", "10.32.1.2"),
            pod("x", "b", &[("pod", "b")], "n2", "10.32.2.2"),
            pod("x", "c", &[("pod", "c")], "n2", "10.32.2.3"),
        ];
        let mut pending = pod("x", "d", &[], "n1", "10.32.1.9");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = [pods, vec![pending]].concat();
        (policies, pods, vec![])
    }

    fn run(from: &str, to: &str, port: u16) -> Result<Explanation, ExplainError> {
        let (policies, pods, namespaces) = world();
        explain(
            &policies,
            &pods,
            &namespaces,
            &from.parse().unwrap(),
            &to.parse().unwrap(),
            Protocol::Tcp,
            port,
        )
    }

    #[test]
    fn a_drop_names_the_isolating_policies_their_counters_and_the_node() {
        let e = run("x/c", "x/a", 80).unwrap();
        assert!(!e.is_allowed());
        let text = e.to_string();
        assert!(
            text.starts_with("x/c (10.32.2.3) -> x/a (10.32.1.2), TCP port 80: DROPPED"),
            "{text}"
        );
        assert!(
            text.contains("egress of x/c: allowed: no policy selects the pod for egress"),
            "{text}"
        );
        assert!(
            text.contains("ingress of x/a: DROPPED: isolated by x/bad, x/web"),
            "{text}"
        );
        assert!(
            text.contains("counted in deny-ingress/x/bad, deny-ingress/x/web (nft list counters table ip weft, on node n1)"),
            "{text}"
        );
        assert!(
            text.contains("malformed, and failing closed: networkpolicy x/bad"),
            "{text}"
        );
    }

    #[test]
    fn an_allowed_connection_names_the_policy_that_allows_it() {
        let e = run("10.32.2.2", "x/a", 80).unwrap();
        assert!(e.is_allowed(), "{e}");
        assert!(
            e.to_string().contains("ingress of x/a: allowed by x/web"),
            "{e}"
        );
        // Another port is not allowed by the same policy.
        assert!(!run("x/b", "x/a", 81).unwrap().is_allowed());
        // An address that is no pod: nothing applies at its end.
        let e = run("x/a", "192.0.2.1", 443).unwrap();
        assert!(e.is_allowed());
        assert!(
            e.to_string().contains("egress of 192.0.2.1")
                || e.to_string()
                    .contains("ingress of 192.0.2.1: allowed: no pod"),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_absent_pods_are_errors() {
        assert!(matches!(
            run("x/nope", "x/a", 80),
            Err(ExplainError::NoSuchPod(_))
        ));
        assert!(matches!(
            run("x/d", "x/a", 80),
            Err(ExplainError::NotTakingPart(_))
        ));
        assert!("x".parse::<EndSpec>().is_err());
        assert!("x/a/b".parse::<EndSpec>().is_err());
        assert!("/a".parse::<EndSpec>().is_err());
        assert!(parse_protocol("icmp").is_err());
        assert_eq!(parse_protocol("UDP"), Ok(Protocol::Udp));
    }
}
