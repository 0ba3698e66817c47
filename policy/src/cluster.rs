//! The pods and namespaces of one snapshot, reduced to what policy needs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::error::{Malformed, ObjectKind, ObjectRef, Problem};
use crate::ports::{NamedPort, Protocol};
use crate::selector::Labels;

/// The label the API server puts on every namespace (since Kubernetes 1.21).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod that takes part in policy: Running, not on the host network, with an address.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub pod: ObjectRef,
    pub labels: Labels,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
}

impl Endpoint {
    /// The container port a named port means on this pod, if it declares it with that protocol.
    pub fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

pub struct Cluster {
    /// Sorted by namespace and name, so the model comes out the same whatever the input order.
    pub endpoints: Vec<Endpoint>,
    namespaces: BTreeMap<String, Labels>,
}

impl Cluster {
    pub fn new(pods: &[&Pod], namespaces: &[&Namespace], problems: &mut Vec<Problem>) -> Self {
        let mut labels: BTreeMap<String, Labels> = namespaces
            .iter()
            .filter_map(|ns| {
                Some((
                    ns.metadata.name.clone()?,
                    ns.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let mut endpoints: Vec<Endpoint> =
            pods.iter().filter_map(|p| endpoint(p, problems)).collect();
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
        endpoints.dedup_by(|a, b| a.pod == b.pod);
        // A namespace missing from the snapshot has only its name label, which is all the
        // API server would guarantee it.
        for ep in &endpoints {
            labels.entry(ep.pod.namespace.clone()).or_default();
        }
        for (name, labels) in &mut labels {
            labels
                .entry(NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| name.clone());
        }
        Self {
            endpoints,
            namespaces: labels,
        }
    }

    /// The labels of a namespace that holds endpoints.
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        static NONE: Labels = Labels::new();
        self.namespaces.get(name).unwrap_or(&NONE)
    }
}

fn endpoint(pod: &Pod, problems: &mut Vec<Problem>) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref()?;
    if status.phase.as_deref() != Some("Running") || spec.host_network == Some(true) {
        return None;
    }
    let pod_ref = ObjectRef::new(
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    // podIPs holds every family; podIP is its first entry, kept for older writers.
    let raw: Vec<&str> = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(|p| p.ip.as_str()).collect(),
        _ => status.pod_ip.iter().map(String::as_str).collect(),
    };
    let mut ips = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => problems.push(Problem {
                kind: ObjectKind::Pod,
                object: pod_ref.clone(),
                field: format!("status.podIPs[{i}]"),
                error: Malformed::BadPodIp((*s).to_owned()),
            }),
        }
    }
    if ips.is_empty() {
        return None;
    }
    // Restartable init containers (sidecars) serve ports like containers do.
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let named_ports = spec
        .containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                // A port the API server would refuse names nothing a policy can match.
                protocol: Protocol::parse_field(p.protocol.as_deref()).ok()?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Some(Endpoint {
        pod: pod_ref,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone(),
        ips,
        named_ports,
    })
}
