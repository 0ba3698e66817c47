//! The cluster docs/networkpolicy.md quotes costs for: 300 pods in 10 namespaces on 10
//! nodes, 100 policies (selectors, namespace selectors, ipBlocks with except, numbered and
//! named ports, ingress and egress). The engine's benchmark and the renderer's namespace test
//! (tests/tests/netns_policy_rules.rs) both use it.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

pub const NAMESPACES: usize = 10;
pub const PODS_PER_NAMESPACE: usize = 30;
pub const POLICIES: usize = 100;
pub const NODES: usize = 10;

pub struct Snapshot {
    pub policies: Vec<NetworkPolicy>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

pub fn snapshot() -> Snapshot {
    let namespaces = (0..NAMESPACES)
        .map(|n| from(json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 3)}}})))
        .collect();
    let mut pods = Vec::new();
    for n in 0..NAMESPACES {
        for p in 0..PODS_PER_NAMESPACE {
            let i = n * PODS_PER_NAMESPACE + p;
            let ip = format!("10.32.{}.{}", i / 200, i % 200 + 2);
            let tier = ["web", "db", "cache"][p % 3];
            pods.push(from(json!({
                "metadata": {"name": format!("p{p}"), "namespace": format!("ns{n}"),
                             "labels": {"app": format!("app{}", p % 5), "tier": tier}},
                "spec": {"nodeName": format!("n{}", i % NODES), "containers": [{"name": "c", "ports": [
                    {"containerPort": 8080, "name": "http"}, {"containerPort": 5353, "name": "dns", "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            })));
        }
    }
    let policies = (0..POLICIES)
        .map(|i| {
            let ns = format!("ns{}", i % NAMESPACES);
            let spec = match i % 4 {
                0 => json!({"podSelector": {"matchLabels": {"app": format!("app{}", i % 5)}},
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "http"}]}]}),
                1 => json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "cache"]}]},
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t1"}}, "podSelector": {"matchLabels": {"tier": "web"}}}],
                                         "ports": [{"port": 5432, "endPort": 5440}]}]}),
                2 => json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": ["10.32.1.0/24"]}}]}],
                            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]},
                                       {"to": [{"namespaceSelector": {}}], "ports": [{"port": "dns", "protocol": "UDP"}, {"port": 8080}]}]}),
                _ => json!({"podSelector": {"matchLabels": {"tier": "cache"}}, "policyTypes": ["Egress"],
                            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}]}),
            };
            from(json!({"metadata": {"namespace": ns, "name": format!("pol{i}")}, "spec": spec}))
        })
        .collect();
    Snapshot {
        policies,
        pods,
        namespaces,
    }
}
