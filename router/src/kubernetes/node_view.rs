//! What weft reads from a Kubernetes Node, parsed once into checked values.
//!
//! Everything here comes from the API server, and the annotations from whoever may patch
//! Nodes: a malformed value is a problem noted on the view (and logged by the caller), never a
//! panic, and a value that does not parse is treated as absent.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use weft_crypto::{ParseKeyError, PublicKey};
use weft_mesh::{DEFAULT_PORT, Endpoint, PeerId};

/// The annotation that carries a node's public key (base64, as `weft pubkey` prints it).
pub const KEY_ANNOTATION: &str = "weft.dev/public-key";
/// The annotation that carries the endpoint a node's router listens on (`host:port`).
pub const ENDPOINT_ANNOTATION: &str = "weft.dev/endpoint";

/// A Node as discovery uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// `metadata.name`.
    pub name: String,
    /// The key in [`KEY_ANNOTATION`], if present and well-formed.
    pub key: Option<PeerId>,
    /// Where to reach its router: its InternalIP (ExternalIP when it has none; IPv4 before
    /// IPv6) and the port of [`ENDPOINT_ANNOTATION`] ([`DEFAULT_PORT`] without one).
    pub endpoint: Option<Endpoint>,
    /// The first IPv4 network of `spec.podCIDRs` (or `spec.podCIDR`), host bits clear.
    pub pod_cidr: Option<Ipv4Net>,
    /// Whether its `NetworkUnavailable` condition is `False` (a network plugin cleared it).
    pub network_available: bool,
    /// What did not parse, for the log.
    pub problems: Vec<String>,
}

impl NodeView {
    /// Reads a Node. Never fails: what does not parse is absent, and said in `problems`.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut problems = Vec::new();
        let key = annotations
            .get(KEY_ANNOTATION)
            .and_then(|v| match parse_key(v) {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push(format!("{KEY_ANNOTATION} {v:?}: {e}"));
                    None
                }
            });
        let port = match annotations.get(ENDPOINT_ANNOTATION) {
            None => DEFAULT_PORT,
            Some(v) => match v.parse::<SocketAddr>() {
                Ok(ep) if ep.port() != 0 => ep.port(),
                _ => {
                    problems.push(format!(
                        "{ENDPOINT_ANNOTATION} {v:?} is not address:port; using port {DEFAULT_PORT}"
                    ));
                    DEFAULT_PORT
                }
            },
        };
        let addresses: Vec<(&str, &str)> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .map(|a| (a.type_.as_str(), a.address.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let endpoint = node_address(&addresses).map(|ip| SocketAddr::new(ip, port));
        let spec = node.spec.as_ref();
        let cidrs: Vec<&str> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .map(|c| c.iter().map(String::as_str).collect())
            .filter(|c: &Vec<&str>| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.as_deref()).map(|c| vec![c]))
            .unwrap_or_default();
        let pod_cidr = first_ipv4_cidr(&cidrs, &mut problems);
        let network_available = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
            });
        Self {
            name,
            key,
            endpoint,
            pod_cidr,
            network_available,
            problems,
        }
    }
}

/// A public key as the annotation carries it: exactly what `PublicKey`'s `FromStr` takes
/// (no trimming: an annotation is written by a router, not typed by hand).
pub fn parse_key(value: &str) -> Result<PeerId, ParseKeyError> {
    value.parse::<PublicKey>().map(PeerId::from)
}

/// The address to dial a node at: the first InternalIP, else the first ExternalIP; IPv4
/// before IPv6 within each (the underlay weft binds by default is IPv4).
pub fn node_address(addresses: &[(&str, &str)]) -> Option<IpAddr> {
    for kind in ["InternalIP", "ExternalIP"] {
        let ips: Vec<IpAddr> = addresses
            .iter()
            .filter(|(t, _)| *t == kind)
            .filter_map(|(_, a)| a.parse().ok())
            .collect();
        if let Some(ip) = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()) {
            return Some(*ip);
        }
    }
    None
}

/// The first IPv4 network among `cidrs` (dual-stack clusters list an IPv6 one too).
fn first_ipv4_cidr(cidrs: &[&str], problems: &mut Vec<String>) -> Option<Ipv4Net> {
    for c in cidrs {
        match c.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(net)) => {
                if net.trunc() != net {
                    problems.push(format!(
                        "pod CIDR {c} has host bits set; using {}",
                        net.trunc()
                    ));
                }
                return Some(net.trunc());
            }
            Ok(ipnet::IpNet::V6(_)) => {}
            Err(e) => problems.push(format!("pod CIDR {c:?}: {e}")),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn reads_key_endpoint_and_the_first_ipv4_pod_cidr() {
        let v = NodeView::from_node(&node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                KEY_ANNOTATION: KEY, ENDPOINT_ANNOTATION: "198.18.0.9:7000"}},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.32.1.0/24"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "InternalIP", "address": "198.18.0.1"}]}
        })));
        assert_eq!(v.name, "n1");
        assert_eq!(v.key.unwrap().to_string(), KEY);
        // The Node's own address with the annotated port: the annotation's host is only a
        // hint for people, the kubelet-reported address is what is dialled.
        assert_eq!(v.endpoint, Some("198.18.0.1:7000".parse().unwrap()));
        assert_eq!(v.pod_cidr, Some("10.32.1.0/24".parse().unwrap()));
        assert!(!v.network_available);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn what_does_not_parse_is_absent_and_said() {
        let v = NodeView::from_node(&node(serde_json::json!({
            "metadata": {"name": "n2", "annotations": {
                KEY_ANNOTATION: "not a key", ENDPOINT_ANNOTATION: "nowhere"}},
            "spec": {"podCIDR": "10.32.2.7/24"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "198.18.0.2"}]}
        })));
        assert_eq!(v.key, None);
        assert_eq!(
            v.endpoint,
            Some(SocketAddr::new("198.18.0.2".parse().unwrap(), DEFAULT_PORT))
        );
        assert_eq!(v.pod_cidr, Some("10.32.2.0/24".parse().unwrap()));
        assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
        let bare = NodeView::from_node(&node(serde_json::json!({"metadata": {"name": "n3"}})));
        assert_eq!((bare.key, bare.endpoint, bare.pod_cidr), (None, None, None));
        assert!(bare.problems.is_empty());
    }
}
