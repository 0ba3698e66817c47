//! The upstream e2e netpol world, without a cluster: namespaces x, y, z (label `ns`), pods
//! a, b, c in each (label `pod`), every pod serving TCP and UDP on 80 and 81 through ports
//! named `serve-80-tcp` etc., spread over three nodes.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use weft_policy::{Local, Model, Protocol, allows, compute};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The four probes of every grid, as upstream's suite runs them.
pub const PROBES: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];

/// Every pod reaches every pod.
pub const OPEN: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";

pub const TCP80: (Protocol, u16) = (Protocol::Tcp, 80);
pub const TCP81: (Protocol, u16) = (Protocol::Tcp, 81);
pub const UDP80: (Protocol, u16) = (Protocol::Udp, 80);
pub const UDP81: (Protocol, u16) = (Protocol::Udp, 81);

/// Nobody but x/a itself reaches x/a.
pub const XA_ISOLATED: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  X  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  X  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .";

/// Only namespace y (and x/a itself) reaches x/a.
pub const XA_FROM_Y: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  X  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .";

/// Only namespace z (and x/a itself) reaches x/a.
pub const XA_FROM_Z: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  X  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";

/// Pod `p` of namespace `n` (indices) has 10.32.(n+1).(p+1).
pub fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 32, ns as u8 + 1, pod as u8 + 1))
}

pub fn ip_of(name: &str) -> IpAddr {
    let (ns, pod) = name.split_once('/').expect("ns/pod");
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("namespace");
    let p = PODS.iter().position(|x| *x == pod).expect("pod");
    pod_ip(n, p)
}

#[derive(Clone)]
pub struct World {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| from_json(json!({"metadata": {"name": ns, "labels": {"ns": ns}}})))
            .collect();
        let mut pods = Vec::new();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            for (p, pod) in PODS.iter().enumerate() {
                let containers: Vec<Value> = [80, 81]
                    .iter()
                    .flat_map(|port| ["TCP", "UDP"].map(|proto| (port, proto)))
                    .map(|(port, proto)| {
                        let lower = proto.to_lowercase();
                        json!({
                            "name": format!("cont-{port}-{lower}"),
                            "ports": [{"containerPort": port, "name": format!("serve-{port}-{lower}"), "protocol": proto}]
                        })
                    })
                    .collect();
                let ip = pod_ip(n, p).to_string();
                pods.push(from_json(json!({
                    "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                    "spec": {"nodeName": NODES[(n + p) % 3], "containers": containers},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
                })));
            }
        }
        Self {
            namespaces,
            pods,
            policies: Vec::new(),
        }
    }

    /// `kubectl apply`: create or replace by namespace and name.
    pub fn apply(&mut self, policy: Value) {
        let policy: NetworkPolicy = from_json(policy);
        self.policies.retain(|p| {
            p.metadata.name != policy.metadata.name
                || p.metadata.namespace != policy.metadata.namespace
        });
        self.policies.push(policy);
    }

    pub fn delete(&mut self, ns: &str, name: &str) {
        let before = self.policies.len();
        self.policies.retain(|p| {
            p.metadata.name.as_deref() != Some(name) || p.metadata.namespace.as_deref() != Some(ns)
        });
        assert_eq!(self.policies.len() + 1, before, "no policy {ns}/{name}");
    }

    pub fn pod_mut(&mut self, name: &str) -> &mut Pod {
        let (ns, pod) = name.split_once('/').expect("ns/pod");
        self.pods
            .iter_mut()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(pod)
            })
            .expect("pod")
    }

    /// `kubectl label --overwrite pod`; `None` removes the label.
    pub fn label_pod(&mut self, name: &str, key: &str, value: Option<&str>) {
        set_label(&mut self.pod_mut(name).metadata.labels, key, value);
    }

    /// `kubectl label --overwrite ns`; `None` removes the label.
    pub fn label_ns(&mut self, ns: &str, key: &str, value: Option<&str>) {
        let ns = self
            .namespaces
            .iter_mut()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .expect("namespace");
        set_label(&mut ns.metadata.labels, key, value);
    }

    pub fn model(&self, local: Local<'_>) -> Model {
        compute(&self.policies, &self.pods, &self.namespaces, local)
    }

    /// The reachability grid, `grid[from][to]`, judged on a model of every pod.
    pub fn grid(&self, protocol: Protocol, port: u16) -> [[bool; 9]; 9] {
        let model = self.model(Local::All);
        grid(|src, dst| allows(&model, src, dst, protocol, port).is_allowed())
    }

    /// The same grid, each end judged by its own node's model, as the routers will.
    pub fn grid_by_nodes(&self, protocol: Protocol, port: u16) -> [[bool; 9]; 9] {
        let models: Vec<Model> = NODES.iter().map(|n| self.model(Local::Node(n))).collect();
        grid(|src, dst| {
            let on = |ip| {
                models
                    .iter()
                    .find(|m| m.pod_by_ip(ip).is_some())
                    .expect("every pod is on a node")
            };
            allows(on(src), src, dst, protocol, port)
                .egress
                .is_allowed()
                && allows(on(dst), src, dst, protocol, port)
                    .ingress
                    .is_allowed()
        })
    }

    /// Checks the grid for each probe in `probes`, on the whole-cluster model and per node,
    /// and that no object was malformed.
    #[track_caller]
    pub fn expect(&self, probes: &[(Protocol, u16)], expected: &str) {
        let want = parse_grid(expected);
        let model = self.model(Local::All);
        assert!(
            model.problems().is_empty(),
            "unexpected problems: {:?}",
            model.problems()
        );
        for &(protocol, port) in probes {
            let got = self.grid(protocol, port);
            assert!(
                got == want,
                "{protocol} {port}: expected\n{}\ngot\n{}",
                render(&want),
                render(&got)
            );
            assert_eq!(
                self.grid_by_nodes(protocol, port),
                got,
                "{protocol} {port}: per-node models disagree"
            );
        }
    }
}

pub fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn set_label(
    labels: &mut Option<std::collections::BTreeMap<String, String>>,
    key: &str,
    value: Option<&str>,
) {
    let labels = labels.get_or_insert_default();
    match value {
        Some(v) => labels.insert(key.to_owned(), v.to_owned()),
        None => labels.remove(key),
    };
}

fn grid(mut connected: impl FnMut(IpAddr, IpAddr) -> bool) -> [[bool; 9]; 9] {
    let mut out = [[false; 9]; 9];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = connected(pod_ip(i / 3, i % 3), pod_ip(j / 3, j % 3));
        }
    }
    out
}

/// Upstream's printout: a row per source, `.` connected, `X` blocked. The header line and
/// each row's label are checked, so a grid cannot be misaligned silently.
pub fn parse_grid(text: &str) -> [[bool; 9]; 9] {
    let names: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|n| PODS.map(|p| format!("{n}{p}")))
        .collect();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, names, "grid header");
    let mut out = [[false; 9]; 9];
    for (i, row) in out.iter_mut().enumerate() {
        let cells: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(cells.len(), 10, "row {}", names[i]);
        assert_eq!(cells[0], names[i], "row label");
        for (cell, c) in row.iter_mut().zip(&cells[1..]) {
            *cell = match *c {
                "." => true,
                "X" => false,
                other => panic!("grid cell {other:?}"),
            };
        }
    }
    assert!(lines.next().is_none(), "grid has more than 9 rows");
    out
}

pub fn render(grid: &[[bool; 9]; 9]) -> String {
    let names: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|n| PODS.map(|p| format!("{n}{p}")))
        .collect();
    let mut s = format!("    {}\n", names.join(" "));
    for (name, row) in names.iter().zip(grid) {
        let cells: Vec<&str> = row.iter().map(|c| if *c { "." } else { "X" }).collect();
        let _ = writeln!(s, "{name}  {}", cells.join("  "));
    }
    s
}
