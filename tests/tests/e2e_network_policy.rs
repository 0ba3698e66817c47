//! End-to-end: NetworkPolicy enforced by real routers in Kubernetes mode. A 2-node lab whose
//! routers find each other through the fake API server; the lab's pods are stored there as
//! Pods (namespace, labels, `status.podIP`, `spec.nodeName`, Running). A NetworkPolicy
//! created through the server that denies ingress to one pod refuses real traffic to it from
//! the other node and from its own node (across the bridge); its node still reaches it, and
//! it still gets the replies to what it sends; the denials are counted per policy in `weft
//! status` and the metrics, and stay counted when another policy replaces the rules.
//! The rules outlive a stopped router, and a router that starts while the API server is down
//! keeps them. Deleting the policy lets the traffic through again. A malformed policy is
//! reported and counted, and fails closed.
//!
//! The fake API server runs on a thread of this test in the lab's underlay namespace, as in
//! e2e_kubernetes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_tests::e2e::*;

const PREFIX: &str = "npwp";

fn pod_cidr(i: usize) -> String {
    format!("10.32.{}.0/24", 110 + i)
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Packets `policy` denied in `direction`, as node's `weft status` reports them.
fn denied(status: &Value, policy: &str, direction: &str) -> Option<u64> {
    status["policy"]["denied"]
        .as_array()?
        .iter()
        .find(|d| d["policy"] == policy && d["direction"] == direction)
        .and_then(|d| d["packets"].as_u64())
}

#[test]
fn a_policy_through_the_api_refuses_and_then_allows_real_traffic() {
    let test = "a_policy_through_the_api_refuses_and_then_allows_real_traffic";
    if !can_run(test, &["ping", "nft"]) {
        return;
    }
    let (lab, api, _kubeconfig) = kube_lab(PREFIX, 2, pod_cidr, &["--pods", "2"]);

    // The lab's pods as the API server would show them: x/a and x/b on n1, x/c on n2.
    api.put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}}),
    );
    let pods = [
        ("a", "n1-p1", "n1"),
        ("b", "n1-p2", "n1"),
        ("c", "n2-p1", "n2"),
    ];
    for (name, lab_pod, node) in pods {
        api.put(
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": "x", "name": name, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": lab.pod(lab_pod).address.to_string()}}),
        );
    }
    lab.wait_full_mesh(Duration::from_secs(30));
    let (a, c) = (lab.pod("n1-p1").address, lab.pod("n2-p1").address);
    for (from, to) in [("n2-p1", a), ("n1-p2", a), ("n1-p1", c)] {
        assert!(
            lab.reaches(from, to, Duration::from_secs(10)).is_some(),
            "{from} -> {to} before any policy\n{}",
            lab.log_tail("n1")
        );
    }
    let updates = |s: &Value| s["policy"]["updates"].as_u64().unwrap_or(0);
    let before = updates(&lab.status("n1"));

    // Deny all ingress to x/a.
    let created = Instant::now();
    api.put(
        "networkpolicies",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "deny-a"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]}}),
    );
    wait("n1 to load x/deny-a", Duration::from_secs(10), || {
        let s = lab.status("n1");
        updates(&s) > before && s["policy"]["isolated_pods"] == 1
    });
    let loaded = created.elapsed();
    report(&format!(
        "{PREFIX}: x/deny-a loaded on n1 {:.0} ms after it was created (status polled every 100 ms)",
        loaded.as_secs_f64() * 1000.0
    ));
    // Cross-node (through weft-tun) and same-node (across the bridge) are both refused.
    assert!(!lab.ping("n2-p1", a), "n2's pod still reaches x/a");
    assert!(
        !lab.ping("n1-p2", a),
        "n1's other pod still reaches x/a across the bridge"
    );
    // The node itself still reaches its pod (kubelet probes); x/a still gets its replies.
    let (ok, _, err) = lab.on_node("n1", &["ping", "-c", "1", "-W", "2", &a.to_string()]);
    assert!(ok, "n1 no longer reaches its own pod: {err}");
    assert!(lab.ping("n1-p1", c), "x/a's replies from x/c are refused");
    // n2 isolates none of its pods: its rules did not change for this policy.
    assert_eq!(lab.status("n2")["policy"]["isolated_pods"], 0);

    let status = lab.status("n1");
    let counted = denied(&status, "x/deny-a", "ingress").unwrap_or(0);
    assert!(counted >= 2, "denials of x/deny-a: {}", status["policy"]);
    report(&format!(
        "{PREFIX}: x/deny-a denied {counted} packets (two pings)"
    ));
    // The metrics are a snapshot the router refreshes every second, behind the status.
    let line = "weft_policy_denied_packets_total{policy=\"x/deny-a\",direction=\"ingress\"} ";
    let exported = || -> Option<u64> {
        lab.metrics("n1")
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
    };
    wait(
        "the metrics to export x/deny-a's denials",
        Duration::from_secs(5),
        || exported().is_some_and(|e| e >= counted),
    );

    // Another policy replaces the table: the denials counted so far are kept.
    api.put(
        "networkpolicies",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "deny-b"},
            "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}}),
    );
    wait("n1 to load x/deny-b", Duration::from_secs(10), || {
        lab.status("n1")["policy"]["isolated_pods"] == 2
    });
    let status = lab.status("n1");
    assert!(
        denied(&status, "x/deny-a", "ingress").unwrap_or(0) >= counted,
        "denials lost when the table was replaced: {}",
        status["policy"]
    );
    assert_eq!(denied(&status, "x/deny-b", "ingress"), Some(0));

    // The rules outlive the router, and a router starting while the API server is down
    // keeps them until it has listed everything again.
    api.set_down(true);
    lab.lab(&["router", "stop", "n1"]);
    assert!(
        !lab.ping("n1-p2", a),
        "x/a reached while n1's router is stopped"
    );
    lab.lab(&["router", "start", "n1"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !lab.ping("n1-p2", a),
        "a router starting without the API server opened x/a\n{}",
        lab.log_tail("n1")
    );
    api.set_down(false);
    wait(
        "n1 back with both policies",
        Duration::from_secs(30),
        || {
            lab.try_status("n1")
                .is_ok_and(|s| s["policy"]["isolated_pods"] == 2)
        },
    );
    // Both of n1's pods are isolated now: tunnels, not pings, say the mesh is back.
    lab.wait_tunnels(Duration::from_secs(30));
    assert!(
        lab.reaches("n1-p1", c, Duration::from_secs(10)).is_some(),
        "x/a's replies from x/c after the restart\n{}",
        lab.log_tail("n1")
    );

    // Deleted: allowed again.
    let deleted = Instant::now();
    api.remove("networkpolicies", "x/deny-a");
    let unloaded = wait("n1 to drop x/deny-a", Duration::from_secs(10), || {
        lab.status("n1")["policy"]["isolated_pods"] == 1
    });
    report(&format!(
        "{PREFIX}: x/deny-a gone from n1 {:.0} ms after it was deleted",
        unloaded.as_secs_f64() * 1000.0
    ));
    assert!(
        lab.reaches("n2-p1", a, Duration::from_secs(10)).is_some(),
        "x/a still refused after x/deny-a was deleted\n{}",
        lab.log_tail("n1")
    );
    report(&format!(
        "{PREFIX}: x/a reached again {:.1}s after x/deny-a was deleted",
        deleted.elapsed().as_secs_f64()
    ));
    assert!(lab.ping("n1-p2", a), "same-node traffic still refused");

    // A malformed policy (the API server would refuse it) is reported, counted, and fails
    // closed for the pod it selects, on that pod's node.
    api.put(
        "networkpolicies",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "broken"},
            "spec": {"podSelector": {"matchLabels": {"app": "c"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}}),
    );
    wait("n2 to report x/broken", Duration::from_secs(10), || {
        let p = &lab.status("n2")["policy"];
        p["isolated_pods"] == 1 && p["problems"].as_array().is_some_and(|a| !a.is_empty())
    });
    let policy = lab.status("n2")["policy"].clone();
    assert_eq!(policy["problems_seen"], 1, "{policy}");
    assert!(
        policy["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("x/broken") && p.contains("cidr")),
        "{policy}"
    );
    assert!(!lab.ping("n1-p1", c), "a malformed policy let traffic in");
    wait(
        "weft_policy_problems_total 1 in n2's metrics",
        Duration::from_secs(5),
        || {
            lab.metrics("n2")
                .lines()
                .any(|l| l == "weft_policy_problems_total 1")
        },
    );
    drop(lab);
    drop(api);
}
