//! Properties of the engine over random policies in the e2e world (x, y, z × a, b, c).
//! Policies are generated from a small description whose selection rules the test states
//! on its own, so isolation is checked against more than the engine itself.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::{Value, json};
use support::{NAMESPACES, NODES, PODS, World, pod_ip};
use weft_policy::{Local, Model, ObjectRef, Protocol, Side, allows};

const PROBES: [(Protocol, u16); 5] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
    (Protocol::Sctp, 81),
];

#[derive(Clone, Debug)]
enum PodSel {
    All,
    Pod(&'static str),
    In(&'static str, &'static str),
    NotIn(&'static str),
    ExtraExists,
    ExtraAbsent,
}

impl PodSel {
    fn json(&self) -> Value {
        let expr = |op: &str, key: &str, values: &[&str]| {
            let mut e = json!({"key": key, "operator": op});
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            json!({"matchExpressions": [e]})
        };
        match self {
            PodSel::All => json!({}),
            PodSel::Pod(p) => json!({"matchLabels": {"pod": p}}),
            PodSel::In(a, b) => expr("In", "pod", &[a, b]),
            PodSel::NotIn(p) => expr("NotIn", "pod", &[p]),
            PodSel::ExtraExists => expr("Exists", "extra", &[]),
            PodSel::ExtraAbsent => expr("DoesNotExist", "extra", &[]),
        }
    }

    /// The test's own statement of what the selector selects.
    fn selects(&self, pod: &str, extra: bool) -> bool {
        match self {
            PodSel::All => true,
            PodSel::Pod(p) => pod == *p,
            PodSel::In(a, b) => pod == *a || pod == *b,
            PodSel::NotIn(p) => pod != *p,
            PodSel::ExtraExists => extra,
            PodSel::ExtraAbsent => !extra,
        }
    }
}

#[derive(Clone, Debug)]
enum Peer {
    Pods(PodSel),
    Namespace(&'static str),
    NamespaceNot(&'static str, PodSel),
    Block(&'static str, Option<&'static str>),
}

impl Peer {
    fn json(&self) -> Value {
        match self {
            Peer::Pods(s) => json!({"podSelector": s.json()}),
            Peer::Namespace(ns) => json!({"namespaceSelector": {"matchLabels": {"ns": ns}}}),
            Peer::NamespaceNot(ns, s) => json!({
                "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": [ns]}]},
                "podSelector": s.json()
            }),
            Peer::Block(cidr, except) => match except {
                Some(e) => json!({"ipBlock": {"cidr": cidr, "except": [e]}}),
                None => json!({"ipBlock": {"cidr": cidr}}),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    peers: Option<Vec<Peer>>,
    ports: Option<Value>,
}

#[derive(Clone, Debug)]
struct Policy {
    ns: &'static str,
    selector: PodSel,
    types: Option<Vec<&'static str>>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

impl Policy {
    fn json(&self, name: &str) -> Value {
        let rules = |rules: &Vec<Rule>, key: &str| -> Value {
            rules
                .iter()
                .map(|r| {
                    let mut v = json!({});
                    if let Some(peers) = &r.peers {
                        v[key] = peers.iter().map(Peer::json).collect();
                    }
                    if let Some(ports) = &r.ports {
                        v["ports"] = ports.clone();
                    }
                    v
                })
                .collect()
        };
        let mut spec = json!({"podSelector": self.selector.json()});
        if let Some(t) = &self.types {
            spec["policyTypes"] = json!(t);
        }
        if let Some(r) = &self.ingress {
            spec["ingress"] = rules(r, "from");
        }
        if let Some(r) = &self.egress {
            spec["egress"] = rules(r, "to");
        }
        json!({"metadata": {"namespace": self.ns, "name": name}, "spec": spec})
    }

    /// The test's own statement of upstream's policyTypes defaulting.
    fn types(&self) -> (bool, bool) {
        match &self.types {
            Some(t) if !t.is_empty() => (t.contains(&"Ingress"), t.contains(&"Egress")),
            _ => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }
}

fn pod_sel() -> impl Strategy<Value = PodSel> {
    let pod = prop::sample::select(PODS.to_vec());
    prop_oneof![
        Just(PodSel::All),
        pod.clone().prop_map(PodSel::Pod),
        (pod.clone(), pod.clone()).prop_map(|(a, b)| PodSel::In(a, b)),
        pod.prop_map(PodSel::NotIn),
        Just(PodSel::ExtraExists),
        Just(PodSel::ExtraAbsent),
    ]
}

fn peer() -> impl Strategy<Value = Peer> {
    let ns = prop::sample::select(NAMESPACES.to_vec());
    prop_oneof![
        pod_sel().prop_map(Peer::Pods),
        ns.clone().prop_map(Peer::Namespace),
        (ns, pod_sel()).prop_map(|(n, s)| Peer::NamespaceNot(n, s)),
        prop::sample::select(vec![
            Peer::Block("10.32.0.0/16", None),
            Peer::Block("10.32.2.0/24", Some("10.32.2.2/32")),
            Peer::Block("10.32.0.0/14", Some("10.32.1.0/24")),
            Peer::Block("0.0.0.0/0", Some("10.32.3.0/30")),
        ]),
    ]
}

fn ports() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!([]),
        json!([{"port": 80}]),
        json!([{"port": 80, "endPort": 81}]),
        json!([{"port": 81, "protocol": "UDP"}, {"port": "serve-80-tcp"}]),
        json!([{"port": "serve-81-udp", "protocol": "UDP"}]),
        json!([{"protocol": "UDP"}]),
        json!([{"port": 81, "protocol": "SCTP"}]),
    ])
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    let rule = (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(ports()),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports });
    prop::option::of(prop::collection::vec(rule, 0..3))
}

fn policy() -> impl Strategy<Value = Policy> {
    let types = prop::option::of(prop::sample::select(vec![
        vec![],
        vec!["Ingress"],
        vec!["Egress"],
        vec!["Ingress", "Egress"],
    ]));
    (
        prop::sample::select(NAMESPACES.to_vec()),
        pod_sel(),
        types,
        rules(),
        rules(),
    )
        .prop_map(|(ns, selector, types, ingress, egress)| Policy {
            ns,
            selector,
            types,
            ingress,
            egress,
        })
}

/// A world with the `extra` label on the pods flagged, and the policies named `{prefix}{i}`.
fn world(extra: &[bool], policies: &[(&str, &[Policy])]) -> World {
    let mut w = World::new();
    for (i, e) in extra.iter().enumerate() {
        if *e {
            w.label_pod(
                &format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3]),
                "extra",
                Some("1"),
            );
        }
    }
    for (prefix, list) in policies {
        for (i, p) in list.iter().enumerate() {
            w.apply(p.json(&format!("{prefix}{i}")));
        }
    }
    w
}

fn all_ips() -> Vec<IpAddr> {
    (0..9).map(|i| pod_ip(i / 3, i % 3)).collect()
}

/// The policies a side names as allowing (none when it is not isolated or denied).
fn allowing(side: &Side) -> BTreeSet<ObjectRef> {
    match side {
        Side::Allowed(by) => by.iter().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

fn isolated_by(model: &Model, ip: IpAddr) -> (BTreeSet<ObjectRef>, BTreeSet<ObjectRef>) {
    let pod = model.pod_by_ip(ip).expect("every pod is in the model");
    (
        pod.ingress.isolated_by.iter().cloned().collect(),
        pod.egress.isolated_by.iter().cloned().collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A pod is isolated in a direction exactly by the policies of its namespace that select
    /// it and have that type; a pod no policy selects sends and receives everything.
    #[test]
    fn isolation_is_exactly_selection(extra in prop::collection::vec(any::<bool>(), 9),
                                      policies in prop::collection::vec(policy(), 0..5)) {
        let model = world(&extra, &[("p", &policies)]).model(Local::All);
        prop_assert!(model.problems().is_empty(), "{:?}", model.problems());
        for i in 0..9 {
            let (ns, pod) = (NAMESPACES[i / 3], PODS[i % 3]);
            let mut want_in = BTreeSet::new();
            let mut want_out = BTreeSet::new();
            for (n, p) in policies.iter().enumerate() {
                if p.ns == ns && p.selector.selects(pod, extra[i]) {
                    let name = ObjectRef::new(ns, format!("p{n}"));
                    let (ingress, egress) = p.types();
                    if ingress { want_in.insert(name.clone()); }
                    if egress { want_out.insert(name); }
                }
            }
            let ip = pod_ip(i / 3, i % 3);
            prop_assert_eq!(isolated_by(&model, ip), (want_in.clone(), want_out.clone()), "{}/{}", ns, pod);
            for other in all_ips() {
                for (proto, port) in PROBES {
                    if want_in.is_empty() {
                        prop_assert_eq!(allows(&model, other, ip, proto, port).ingress.is_allowed(), true);
                    }
                    if want_out.is_empty() {
                        prop_assert_eq!(allows(&model, ip, other, proto, port).egress.is_allowed(), true);
                    }
                }
            }
        }
    }

    /// Policies add up: with P and Q together, a pod is isolated by the policies isolating it
    /// under either, and a connection is allowed by exactly the policies allowing it under
    /// either. So adding a policy never narrows what an already isolated pod accepts.
    #[test]
    fn policies_are_additive(extra in prop::collection::vec(any::<bool>(), 9),
                             p in prop::collection::vec(policy(), 0..4),
                             q in prop::collection::vec(policy(), 0..4)) {
        let mp = world(&extra, &[("p", &p)]).model(Local::All);
        let mq = world(&extra, &[("q", &q)]).model(Local::All);
        let both = world(&extra, &[("p", &p), ("q", &q)]).model(Local::All);
        for ip in all_ips() {
            let (pi, pe) = isolated_by(&mp, ip);
            let (qi, qe) = isolated_by(&mq, ip);
            let union = |a: BTreeSet<_>, b: BTreeSet<_>| a.union(&b).cloned().collect::<BTreeSet<_>>();
            prop_assert_eq!(isolated_by(&both, ip), (union(pi, qi), union(pe, qe)));
        }
        for src in all_ips() {
            for dst in all_ips() {
                for (proto, port) in PROBES {
                    let [vp, vq, vb] = [&mp, &mq, &both].map(|m| allows(m, src, dst, proto, port));
                    prop_assert_eq!(allowing(&vb.ingress), allowing(&vp.ingress).union(&allowing(&vq.ingress)).cloned().collect());
                    prop_assert_eq!(allowing(&vb.egress), allowing(&vp.egress).union(&allowing(&vq.egress)).cloned().collect());
                    if matches!(vp.ingress, Side::Allowed(_)) {
                        prop_assert!(vb.ingress.is_allowed());
                    }
                }
            }
        }
    }

    /// The model depends on the snapshot, not on the order its objects arrive in.
    #[test]
    fn order_does_not_matter(extra in prop::collection::vec(any::<bool>(), 9),
                             policies in prop::collection::vec(policy(), 0..5),
                             seed in any::<u64>()) {
        let w = world(&extra, &[("p", &policies)]);
        let mut shuffled = w.clone();
        let mut rng = seed;
        let mut shuffle = |n: usize| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (rng >> 33) as usize % (i + 1));
            }
            idx
        };
        shuffled.pods = shuffle(w.pods.len()).into_iter().map(|i| w.pods[i].clone()).collect();
        shuffled.policies = shuffle(w.policies.len()).into_iter().map(|i| w.policies[i].clone()).collect();
        shuffled.namespaces = shuffle(w.namespaces.len()).into_iter().map(|i| w.namespaces[i].clone()).collect();
        let (a, b) = (w.model(Local::All), shuffled.model(Local::All));
        prop_assert_eq!(a.pods(), b.pods());
    }

    /// Each node's model holds exactly its own pods, with the rules the whole-cluster model
    /// gives them; selecting local pods by address gives the same.
    #[test]
    fn node_models_are_slices_of_the_cluster_model(extra in prop::collection::vec(any::<bool>(), 9),
                                                   policies in prop::collection::vec(policy(), 0..5)) {
        let w = world(&extra, &[("p", &policies)]);
        let all = w.model(Local::All);
        let mut seen = 0;
        for node in NODES {
            let by_node = w.model(Local::Node(node));
            let ips: BTreeSet<IpAddr> = by_node.pods().iter().flat_map(|p| p.ips.clone()).collect();
            let by_ips = w.model(Local::Ips(&ips));
            prop_assert_eq!(by_node.pods(), by_ips.pods());
            for pod in by_node.pods() {
                prop_assert_eq!(Some(pod), all.pod_by_ip(pod.ips[0]));
            }
            seen += by_node.pods().len();
        }
        prop_assert_eq!(seen, 9);
    }

    /// A malformed policy only ever narrows, and only in its own namespace.
    #[test]
    fn a_malformed_policy_only_narrows_its_namespace(extra in prop::collection::vec(any::<bool>(), 9),
                                                     policies in prop::collection::vec(policy(), 0..4),
                                                     bad in policy()) {
        let w = world(&extra, &[("p", &policies)]);
        let mut with_bad = w.clone();
        let mut bad_json = bad.json("bad");
        bad_json["spec"]["ingress"] = json!([{"ports": [{"port": 81, "endPort": 80}]}]);
        with_bad.apply(bad_json);
        let (good, worse) = (w.model(Local::All), with_bad.model(Local::All));
        prop_assert_eq!(worse.problems().len(), 1);
        let by_pod: BTreeMap<_, _> = good.pods().iter().map(|p| (p.pod.clone(), p)).collect();
        for pod in worse.pods() {
            if pod.pod.namespace != bad.ns {
                prop_assert_eq!(Some(&pod), by_pod.get(&pod.pod));
            }
        }
        for src in all_ips() {
            for dst in all_ips() {
                for (proto, port) in PROBES {
                    if allows(&worse, src, dst, proto, port).is_allowed() {
                        prop_assert!(allows(&good, src, dst, proto, port).is_allowed());
                    }
                }
            }
        }
    }

    /// Whatever the fields hold, the engine does not panic, a policy has at most one problem,
    /// and a policy with a problem still isolates what it selects (here every pod of x).
    #[test]
    fn arbitrary_fields_give_a_problem_not_a_panic(
        port in prop_oneof![any::<i32>().prop_map(|p| json!(p)), "[a-z0-9-]{0,17}".prop_map(|p| json!(p))],
        end_port in prop::option::of(any::<i32>()),
        protocol in prop::sample::select(vec!["TCP", "UDP", "SCTP", "tcp", "ICMP", ""]),
        cidr in prop_oneof![
            prop::sample::select(vec!["0.0.0.0/0", "::/0", "10.32.0.1/8", "10.0.0.0/33", "", "::ffff:10.32.1.1/128", "10.32.1.1/32"]).prop_map(String::from),
            "[0-9a-f.:/]{0,20}",
        ],
        except in prop::collection::vec(prop_oneof![
            prop::sample::select(vec!["10.32.1.0/24", "10.32.1.1/32", "::/1", "10.0.0.0/7"]).prop_map(String::from),
            "[0-9a-f.:/]{0,20}",
        ], 0..3),
        operator in prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "in", "Equals"]),
        values in prop::collection::vec("[a-z]{0,3}", 0..2),
    ) {
        let mut w = World::new();
        let mut port_entry = json!({"port": port, "protocol": protocol});
        if let Some(end) = end_port {
            port_entry["endPort"] = json!(end);
        }
        w.apply(json!({"metadata": {"namespace": "x", "name": "arbitrary"}, "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": operator, "values": values}]}}],
                         "ports": [port_entry]}],
            "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": except}}]}]
        }}));
        let model = w.model(Local::All);
        prop_assert!(model.problems().len() <= 1, "{:?}", model.problems());
        for pod in model.pods().iter().filter(|p| p.pod.namespace == "x") {
            let policy = vec![ObjectRef::new("x", "arbitrary")];
            prop_assert_eq!(&pod.ingress.isolated_by, &policy);
            prop_assert_eq!(&pod.egress.isolated_by, &policy);
            if !model.problems().is_empty() {
                prop_assert!(pod.ingress.allow.is_empty() && pod.egress.allow.is_empty());
            }
        }
    }
}
