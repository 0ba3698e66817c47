//! The upstream e2e netpol suite's cases, on the engine alone: each step changes the world
//! (a policy applied or deleted, a label changed) and the full 9×9 grid is checked for the
//! probes named. Rows are sources, columns destinations; `.` connects, `X` is blocked. The
//! diagonal is always `.`: a pod cannot block access to itself.

mod support;

use serde_json::json;
use support::{
    OPEN, PROBES, TCP80, TCP81, UDP80, UDP81, World, XA_FROM_Y, XA_FROM_Z, XA_ISOLATED, ip_of,
};
use weft_policy::{Local, Malformed, ObjectRef, Protocol, Side, allows};

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

#[test]
fn deny_all_ingress_then_delete() {
    let mut w = World::new();
    w.expect(&PROBES, OPEN);
    w.apply(policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  X  X  .  .  .  .  .  .
    xb  X  .  X  .  .  .  .  .  .
    xc  X  X  .  .  .  .  .  .  .
    ya  X  X  X  .  .  .  .  .  .
    yb  X  X  X  .  .  .  .  .  .
    yc  X  X  X  .  .  .  .  .  .
    za  X  X  X  .  .  .  .  .  .
    zb  X  X  X  .  .  .  .  .  .
    zc  X  X  X  .  .  .  .  .  .",
    );
    // The same without policyTypes: Ingress is the default.
    w.apply(policy("x", "deny-all", json!({"podSelector": {}})));
    w.expect(&[TCP80], &grid_of(&w));
    w.delete("x", "deny-all");
    w.expect(&PROBES, OPEN);
}

/// The current grid as text (for steps that must equal an earlier one).
fn grid_of(w: &World) -> String {
    support::render(&w.grid(Protocol::Tcp, 80))
}

#[test]
fn allow_from_same_namespace() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "allow-same-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  X  X  X  .  .  .  .  .  .
    yb  X  X  X  .  .  .  .  .  .
    yc  X  X  X  .  .  .  .  .  .
    za  X  X  X  .  .  .  .  .  .
    zb  X  X  X  .  .  .  .  .  .
    zc  X  X  X  .  .  .  .  .  .",
    );
}

#[test]
fn allow_from_namespace_selector_and_its_update() {
    let mut w = World::new();
    let from_ns = |op: &str, ns: &str| {
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": op, "values": [ns]}]}}]}]})
    };
    w.apply(policy("x", "allow-ns", from_ns("In", "y")));
    w.expect(&PROBES, XA_FROM_Y);
    // Updated in place: every namespace but x.
    w.apply(policy("x", "allow-ns", from_ns("NotIn", "x")));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .",
    );
    // The label the API server puts on every namespace selects by name.
    w.apply(policy(
        "x",
        "allow-ns",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}),
    ));
    w.expect(&[TCP80], XA_FROM_Z);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_versus_two_peers() {
    let mut w = World::new();
    // One peer: pods b in namespace y (both must hold).
    w.apply(policy(
        "x",
        "allow",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  X  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .",
    );
    // Two peers: every pod of y, or pods b of the policy's own namespace.
    w.apply(policy(
        "x",
        "allow",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  X  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .",
    );
}

#[test]
fn named_ports_resolve_per_pod_and_protocol() {
    let mut w = World::new();
    let to_a_on = |ports: serde_json::Value| {
        policy(
            "x",
            "named",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": ports}]}),
        )
    };
    const XA_OPEN: &str = OPEN;
    w.apply(to_a_on(json!([{"port": "serve-80-tcp"}])));
    w.expect(&[TCP80], XA_OPEN);
    w.expect(&[TCP81, UDP80, UDP81], XA_ISOLATED);
    w.apply(to_a_on(
        json!([{"port": "serve-81-udp", "protocol": "UDP"}]),
    ));
    w.expect(&[UDP81], XA_OPEN);
    w.expect(&[TCP80, TCP81, UDP80], XA_ISOLATED);
    // A UDP port's name asked for over TCP (the default protocol) names nothing.
    w.apply(to_a_on(json!([{"port": "serve-80-udp"}])));
    w.expect(&PROBES, XA_ISOLATED);
    // A name no container declares names nothing either.
    w.apply(to_a_on(json!([{"port": "no-such-port"}])));
    w.expect(&PROBES, XA_ISOLATED);
    // Resolved on the destination pod: x/a now serves "serve-80-tcp" on 81.
    w.apply(to_a_on(json!([{"port": "serve-80-tcp"}])));
    let pod = w.pod_mut("x/a");
    for c in &mut pod.spec.as_mut().unwrap().containers {
        for p in c.ports.iter_mut().flatten() {
            if p.name.as_deref() == Some("serve-80-tcp") {
                p.container_port = 81;
            }
        }
    }
    w.expect(&[TCP81], XA_OPEN);
    w.expect(&[TCP80, UDP80, UDP81], XA_ISOLATED);
}

#[test]
fn end_port_ranges() {
    let mut w = World::new();
    let to_a_on = |ports: serde_json::Value| {
        policy(
            "x",
            "range",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": ports}]}),
        )
    };
    w.apply(to_a_on(
        json!([{"port": 80, "endPort": 81, "protocol": "TCP"}]),
    ));
    w.expect(&[TCP80, TCP81], OPEN);
    w.expect(&[UDP80, UDP81], XA_ISOLATED);
    w.apply(to_a_on(json!([{"port": 81, "endPort": 90, "protocol": "TCP"}, {"port": 79, "endPort": 80, "protocol": "UDP"}])));
    w.expect(&[TCP81, UDP80], OPEN);
    w.expect(&[TCP80, UDP81], XA_ISOLATED);
}

#[test]
fn sctp_is_never_tcp_or_udp() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "sctp",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
    ));
    w.expect(&[(Protocol::Sctp, 80)], OPEN);
    w.expect(&[(Protocol::Sctp, 81), TCP80, UDP80], XA_ISOLATED);
    // A protocol with no port: every port of that protocol, and only of that one.
    w.apply(policy(
        "x",
        "sctp",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    ));
    w.expect(&[UDP80, UDP81, (Protocol::Udp, 53)], OPEN);
    w.expect(&[TCP80, (Protocol::Sctp, 80)], XA_ISOLATED);
}

#[test]
fn egress_deny_with_dns_allowed() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}
        ]}),
    ));
    w.expect(
        &[TCP80],
        "
        xa xb xc ya yb yc za zb zc
    xa  .  X  X  .  .  .  X  X  X
    xb  X  .  X  .  .  .  X  X  X
    xc  X  X  .  .  .  .  X  X  X
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .",
    );
    w.expect(
        &[TCP81, UDP80, UDP81],
        "
        xa xb xc ya yb yc za zb zc
    xa  .  X  X  X  X  X  X  X  X
    xb  X  .  X  X  X  X  X  X  X
    xc  X  X  .  X  X  X  X  X  X
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .",
    );
    // DNS to a resolver outside the grid (a Service address), on both protocols, and nothing else.
    let model = w.model(Local::All);
    let dns = "10.96.0.10".parse().unwrap();
    let xa = ip_of("x/a");
    assert!(allows(&model, xa, dns, Protocol::Udp, 53).is_allowed());
    assert!(allows(&model, xa, dns, Protocol::Tcp, 53).is_allowed());
    assert!(!allows(&model, xa, dns, Protocol::Udp, 54).is_allowed());
    assert!(!allows(&model, xa, dns, Protocol::Sctp, 53).is_allowed());
    let verdict = allows(&model, xa, dns, Protocol::Tcp, 80);
    assert_eq!(
        verdict.egress,
        Side::Denied(vec![ObjectRef::new("x", "egress")])
    );
    assert_eq!(verdict.ingress, Side::NotLocal);
}

#[test]
fn deny_all_egress_and_explicit_policy_types() {
    let mut w = World::new();
    // policyTypes [Egress] with ingress rules: the ingress rules are ignored.
    w.apply(policy(
        "y",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]}]}),
    ));
    let y_cannot_send = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  X  X  X  .  X  X  X  X  X
    yb  X  X  X  X  .  X  X  X  X
    yc  X  X  X  X  X  .  X  X  X
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";
    w.expect(&PROBES, y_cannot_send);
    // Without policyTypes, an empty egress list does not make a policy an egress policy
    // (upstream defaults on the list's length): this one isolates ingress only.
    w.apply(policy(
        "y",
        "deny-egress",
        json!({"podSelector": {}, "egress": []}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  X  X  X  .  .  .
    xb  .  .  .  X  X  X  .  .  .
    xc  .  .  .  X  X  X  .  .  .
    ya  .  .  .  .  X  X  .  .  .
    yb  .  .  .  X  .  X  .  .  .
    yc  .  .  .  X  X  .  .  .  .
    za  .  .  .  X  X  X  .  .  .
    zb  .  .  .  X  X  X  .  .  .
    zc  .  .  .  X  X  X  .  .  .",
    );
    w.apply(policy(
        "y",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": []}),
    ));
    w.expect(&PROBES, y_cannot_send);
}

#[test]
fn ip_block_with_except_applies_to_pod_addresses() {
    let mut w = World::new();
    // Egress from x/a to the cluster range less y/b.
    w.apply(policy(
        "x",
        "egress-block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": [format!("{}/32", ip_of("y/b"))]}}]}]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  X  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .",
    );
    let model = w.model(Local::All);
    assert!(
        !allows(
            &model,
            ip_of("x/a"),
            "10.33.0.1".parse().unwrap(),
            Protocol::Tcp,
            80
        )
        .is_allowed()
    );
    assert!(
        allows(
            &model,
            ip_of("x/a"),
            "10.32.200.1".parse().unwrap(),
            Protocol::Tcp,
            80
        )
        .is_allowed()
    );
    // Ingress into y/c from namespace x's addresses less x/b.
    w.delete("x", "egress-block");
    w.apply(policy(
        "y",
        "ingress-block",
        json!({"podSelector": {"matchLabels": {"pod": "c"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.1.0/24", "except": ["10.32.1.2/32"]}}]}]}),
    ));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  X  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  X  .  .  .
    yb  .  .  .  .  .  X  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  X  .  .  .
    zb  .  .  .  .  .  X  .  .  .
    zc  .  .  .  .  .  X  .  .  .",
    );
}

#[test]
fn policies_add_up_and_deletion_takes_away() {
    let mut w = World::new();
    let p1 = policy(
        "x",
        "from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let p2 = policy(
        "x",
        "from-z",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 80}]}]}),
    );
    w.apply(p1);
    let only_xb = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  X  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  X  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .";
    w.expect(&PROBES, only_xb);
    w.apply(p2);
    w.expect(
        &[TCP80],
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  X  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .",
    );
    w.expect(&[TCP81, UDP80, UDP81], only_xb);
    let model = w.model(Local::All);
    let by = |src| allows(&model, ip_of(src), ip_of("x/a"), Protocol::Tcp, 80).ingress;
    assert_eq!(
        by("z/a"),
        Side::Allowed(vec![ObjectRef::new("x", "from-z")])
    );
    assert_eq!(
        by("x/b"),
        Side::Allowed(vec![ObjectRef::new("x", "from-b")])
    );
    assert_eq!(
        by("y/a"),
        Side::Denied(vec![
            ObjectRef::new("x", "from-b"),
            ObjectRef::new("x", "from-z")
        ])
    );
    w.delete("x", "from-b");
    w.expect(&[TCP80], XA_FROM_Z);
    w.expect(&[TCP81], XA_ISOLATED);
    w.delete("x", "from-z");
    w.expect(&PROBES, OPEN);
}

#[test]
fn label_changes_move_pods_in_and_out() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "updated",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns2": "updated"}}},
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod2": "updated"}}}
        ]}]}),
    ));
    w.expect(&PROBES, XA_ISOLATED);
    w.label_ns("y", "ns2", Some("updated"));
    w.expect(&PROBES, XA_FROM_Y);
    w.label_pod("z/b", "pod2", Some("updated"));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .",
    );
    w.label_pod("z/b", "pod2", None);
    w.expect(&PROBES, XA_FROM_Y);
    // x/a loses the label the policy selects it by: no longer isolated.
    w.label_pod("x/a", "pod", Some("aa"));
    w.expect(&PROBES, OPEN);
    // x/c gains it.
    w.label_pod("x/c", "pod", Some("a"));
    w.expect(
        &PROBES,
        "
        xa xb xc ya yb yc za zb zc
    xa  .  .  X  .  .  .  .  .  .
    xb  .  .  X  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  X  .  .  .  .  .  .
    zb  .  .  X  .  .  .  .  .  .
    zc  .  .  X  .  .  .  .  .  .",
    );
}

#[test]
fn only_running_pods_with_addresses_are_peers() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    // x/b finished; its address now belongs to a new pod in y (address reuse).
    let xb = ip_of("x/b");
    w.pod_mut("x/b").status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mut reused = w.pod_mut("y/a").clone();
    reused.metadata.name = Some("d".into());
    reused.status.as_mut().unwrap().pod_ip = Some(xb.to_string());
    reused.status.as_mut().unwrap().pod_ips = None;
    w.pods.push(reused);
    let model = w.model(Local::All);
    let v = allows(&model, xb, ip_of("x/a"), Protocol::Tcp, 80);
    assert!(
        !v.is_allowed(),
        "a finished pod's address must not keep its allowance: {v:?}"
    );
    assert_eq!(model.pod_by_ip(xb).unwrap().pod, ObjectRef::new("y", "d"));
    // A pod without an address is no endpoint at all.
    w.pod_mut("x/c").status.as_mut().unwrap().pod_ips = None;
    w.pod_mut("x/c").status.as_mut().unwrap().pod_ip = None;
    assert!(
        w.model(Local::All)
            .pods()
            .iter()
            .all(|p| p.pod != ObjectRef::new("x", "c"))
    );
}

#[test]
fn a_malformed_policy_fails_closed_and_spares_the_others() {
    let mut w = World::new();
    w.apply(policy(
        "x",
        "allow-same-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    w.apply(policy(
        "x",
        "bad-range",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81, "endPort": 80}]}]}),
    ));
    let model = w.model(Local::All);
    let problems = model.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object, ObjectRef::new("x", "bad-range"));
    assert_eq!(problems[0].field, "spec.ingress[0].ports[0].endPort");
    assert_eq!(
        problems[0].error,
        Malformed::EndPortBelowPort { port: 81, end: 80 }
    );
    assert_eq!(
        problems[0].to_string(),
        "networkpolicy x/bad-range: spec.ingress[0].ports[0].endPort: endPort 80 is below port 81"
    );
    // x/a stays isolated by the bad policy, which allows nothing; the good one still counts.
    let xa = model.pod_by_ip(ip_of("x/a")).unwrap();
    assert_eq!(
        xa.ingress.isolated_by,
        vec![
            ObjectRef::new("x", "allow-same-ns"),
            ObjectRef::new("x", "bad-range")
        ]
    );
    assert!(
        xa.ingress
            .allow
            .iter()
            .all(|a| a.policy.name == "allow-same-ns")
    );
    let same_ns = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  X  X  X  .  .  .  .  .  .
    yb  X  X  X  .  .  .  .  .  .
    yc  X  X  X  .  .  .  .  .  .
    za  X  X  X  .  .  .  .  .  .
    zb  X  X  X  .  .  .  .  .  .
    zc  X  X  X  .  .  .  .  .  .";
    assert_eq!(w.grid(Protocol::Tcp, 80), support::parse_grid(same_ns));

    // A malformed podSelector: every pod of the namespace is isolated (here y, ingress).
    w.apply(policy(
        "y",
        "bad-selector",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Equals", "values": ["a"]}]},
               "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    // Malformed policyTypes: both directions of what it selects (here z/c).
    w.apply(policy(
        "z",
        "bad-types",
        json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress", "Sideways"]}),
    ));
    let model = w.model(Local::All);
    let fields: Vec<&str> = model.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].ports[0].endPort",
            "spec.podSelector.matchExpressions[0].operator",
            "spec.policyTypes[1]"
        ]
    );
    assert_eq!(
        w.grid(Protocol::Tcp, 80),
        support::parse_grid(
            "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  X  X  X  .  .  X
    xb  .  .  .  X  X  X  .  .  X
    xc  .  .  .  X  X  X  .  .  X
    ya  X  X  X  .  X  X  .  .  X
    yb  X  X  X  X  .  X  .  .  X
    yc  X  X  X  X  X  .  .  .  X
    za  X  X  X  X  X  X  .  .  X
    zb  X  X  X  X  X  X  .  .  X
    zc  X  X  X  X  X  X  X  X  ."
        )
    );
}

#[test]
fn malformed_peers_and_ports_are_named() {
    let cases = [
        (
            json!({"ingress": [{"from": [{}]}]}),
            "spec.ingress[0].from[0]",
            Malformed::EmptyPeer,
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "spec.ingress[0].from[0].ipBlock",
            Malformed::IpBlockWithSelector,
        ),
        (
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
            "spec.egress[0].to[0].ipBlock.except[0]",
            Malformed::ExceptOutside {
                except: "11.0.0.0/16".into(),
                cidr: "10.0.0.0/8".into(),
            },
        ),
        (
            json!({"egress": [{"ports": [{"port": 53, "protocol": "ICMP"}]}]}),
            "spec.egress[0].ports[0].protocol",
            Malformed::UnknownProtocol("ICMP".into()),
        ),
        (
            json!({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In"}]}}]}]}),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            Malformed::MissingValues("In".into()),
        ),
    ];
    for (spec, field, error) in cases {
        let mut w = World::new();
        let mut spec = spec;
        spec["podSelector"] = json!({});
        w.apply(policy("x", "bad", spec));
        let model = w.model(Local::All);
        let p = &model.problems()[0];
        assert_eq!((p.field.as_str(), &p.error), (field, &error));
        assert_eq!(model.problems().len(), 1);
    }
}

#[test]
fn dual_stack_pods_match_on_every_address() {
    let mut w = World::new();
    let v6 = |pod: &str| -> std::net::IpAddr {
        let v4 = match ip_of(pod) {
            std::net::IpAddr::V4(a) => a.octets(),
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        format!("fd00::{:x}:{:x}", v4[2], v4[3]).parse().unwrap()
    };
    for pod in ["x/a", "x/b", "y/a"] {
        let status = w.pod_mut(pod).status.as_mut().unwrap();
        let v4 = status.pod_ip.clone().unwrap();
        status.pod_ips = Some(support::from_json(
            json!([{"ip": v4}, {"ip": v6(pod).to_string()}]),
        ));
    }
    w.apply(policy(
        "x",
        "dual",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"pod": "b"}}},
            {"ipBlock": {"cidr": "fd00::/64", "except": [format!("{}/128", v6("x/b"))]}}
        ]}]}),
    ));
    let model = w.model(Local::All);
    assert!(model.problems().is_empty(), "{:?}", model.problems());
    let xa = v6("x/a");
    assert_eq!(model.pod_by_ip(xa).unwrap().pod, ObjectRef::new("x", "a"));
    // x/b by its selector on both families, though the ipBlock excepts its v6 address.
    assert!(allows(&model, v6("x/b"), xa, Protocol::Tcp, 80).is_allowed());
    assert!(allows(&model, ip_of("x/b"), ip_of("x/a"), Protocol::Tcp, 80).is_allowed());
    // x/a to itself across families is loopback, not policy.
    assert_eq!(
        allows(&model, ip_of("x/a"), xa, Protocol::Tcp, 80).ingress,
        Side::Loopback
    );
    // y/a only by the ipBlock, so only on v6.
    assert!(allows(&model, v6("y/a"), xa, Protocol::Tcp, 80).is_allowed());
    assert!(!allows(&model, ip_of("y/a"), ip_of("x/a"), Protocol::Tcp, 80).is_allowed());
}
