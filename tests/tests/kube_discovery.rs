//! Kubernetes Node discovery (`weft_router::kubernetes`) against the fake API server: it
//! follows a list, ADDED/MODIFIED/DELETED events, bookmarks and a 410 Gone that forces a
//! relist, survives an outage, publishes well-formed patches, says clearly what failed, and
//! uses exactly the verbs the ClusterRole in `deploy/weft.yaml` grants.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::json;
use weft_crypto::{KeyPair, OsRandom, PublicKey};
use weft_mesh::{Command, PeerId};
use weft_router::kubernetes::{
    self, CONDITION_REASON, Discovery, ENDPOINT_ANNOTATION, KEY_ANNOTATION, KubeError, Own,
};
use weft_tests::fake_kube::{FakeApi, node};

/// Long enough for kube-runtime's backoff after an error (0.8 s, then doubling).
const WAIT: Duration = Duration::from_secs(15);

fn key() -> PublicKey {
    KeyPair::generate(&mut OsRandom).public()
}

fn fake() -> FakeApi {
    FakeApi::start("127.0.0.1:0".parse().unwrap(), None)
}

fn client(api: &FakeApi) -> kube::Client {
    let url = format!("http://{}", api.addr).parse().unwrap();
    kube::Client::try_from(kube::Config::new(url)).unwrap()
}

fn own(name: &str, key: PublicKey) -> Own {
    Own {
        node_name: name.into(),
        key,
        port: 6786,
        announce: None,
    }
}

fn with_key(mut n: serde_json::Value, key: &PublicKey) -> serde_json::Value {
    n["metadata"]["annotations"][KEY_ANNOTATION] = json!(key.to_string());
    n
}

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn next(d: &mut Discovery) -> Command {
    tokio::time::timeout(WAIT, d.commands.recv())
        .await
        .expect("no command from discovery in time")
        .expect("discovery stopped")
}

/// Pins expected next (skipping nothing: every command is checked in order).
async fn expect_pins(d: &mut Discovery, want: &[(PublicKey, &str)]) {
    let want: BTreeMap<PeerId, SocketAddr> = want
        .iter()
        .map(|(k, e)| (PeerId::from(*k), ep(e)))
        .collect();
    match next(d).await {
        Command::Pin(p) => assert_eq!(p, want),
        other => panic!("expected pins {want:?}, got {other:?}"),
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn discovery_follows_list_watch_bookmarks_relist_and_outages() {
    let api = fake();
    let (k1, k2, k3) = (key(), key(), key());
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    api.add_node(with_key(
        node("n2", "198.18.0.2", Some("10.32.2.0/24")),
        &k2,
    ));
    // n3's router has not published its key yet: neither pinned nor dialled.
    api.add_node(node("n3", "198.18.0.3", Some("10.32.3.0/24")));
    let ready = Arc::new(AtomicBool::new(false));
    let mut d = kubernetes::start(client(&api), own("n1", k1), ready.clone())
        .await
        .expect("discovery starts");
    assert_eq!(d.pod_cidr, "10.32.1.0/24".parse().unwrap());

    // The initial list: n2 pinned at its InternalIP and the default port; ourselves not.
    expect_pins(&mut d, &[(k2, "198.18.0.2:6786")]).await;

    // Our annotations: a merge patch on our Node's status that k8s-openapi reads as a Node.
    let patch = api
        .requests()
        .into_iter()
        .find(|r| {
            r.verb == "patch"
                && r.resource == "nodes/status"
                && r.content_type.as_deref() == Some("application/merge-patch+json")
        })
        .expect("annotation patch");
    assert_eq!(patch.name.as_deref(), Some("n1"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let patched: Node = serde_json::from_value(patch.json()).expect("a Node");
    let annotations = patched.metadata.annotations.unwrap();
    assert_eq!(annotations[KEY_ANNOTATION], k1.to_string());
    assert_eq!(annotations[ENDPOINT_ANNOTATION], "198.18.0.1:6786");
    assert!(patched.spec.is_none() && patched.status.is_none());
    let stored = api.get("n1").unwrap();
    assert_eq!(
        stored["metadata"]["annotations"][KEY_ANNOTATION],
        k1.to_string()
    );
    // The kubelet's annotation survived the merge patch.
    assert_eq!(
        stored["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"],
        "0"
    );

    // MODIFIED: n3's router publishes its key and a port of its own.
    api.modify_node("n3", |n| {
        n["metadata"]["annotations"][KEY_ANNOTATION] = json!(k3.to_string());
        n["metadata"]["annotations"][ENDPOINT_ANNOTATION] = json!("198.18.0.3:7000");
    });
    expect_pins(&mut d, &[(k2, "198.18.0.2:6786"), (k3, "198.18.0.3:7000")]).await;

    // ADDED: a new Node.
    let k4 = key();
    api.add_node(with_key(
        node("n4", "198.18.0.4", Some("10.32.4.0/24")),
        &k4,
    ));
    expect_pins(
        &mut d,
        &[
            (k2, "198.18.0.2:6786"),
            (k3, "198.18.0.3:7000"),
            (k4, "198.18.0.4:6786"),
        ],
    )
    .await;

    // DELETED: its pin goes first, then it is forgotten.
    api.delete_node("n4");
    expect_pins(&mut d, &[(k2, "198.18.0.2:6786"), (k3, "198.18.0.3:7000")]).await;
    assert_eq!(next(&mut d).await, Command::Forget(PeerId::from(k4)));

    // BOOKMARK: no command, but the next watch resumes from the bookmark's version.
    let rv = api.bookmark();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.close_watches();
    wait_for("a watch from the bookmark's resourceVersion", || {
        api.requests()
            .iter()
            .any(|r| r.verb == "watch" && r.query.get("resourceVersion") == Some(&rv.to_string()))
    })
    .await;
    let lists = |api: &FakeApi| api.requests().iter().filter(|r| r.verb == "list").count();
    assert_eq!(lists(&api), 1, "a closed watch resumes without a relist");

    // 410 Gone: n2 was deleted while the history was compacted; only a relist shows it.
    api.delete_node_unseen("n2");
    api.expire();
    expect_pins(&mut d, &[(k3, "198.18.0.3:7000")]).await;
    assert_eq!(next(&mut d).await, Command::Forget(PeerId::from(k2)));
    assert_eq!(lists(&api), 2, "the 410 made discovery list again");

    // An outage: discovery keeps running and picks up what changed once the server is back.
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(d.commands.is_empty());
    api.set_down(false);
    let k5 = key();
    api.add_node(with_key(
        node("n5", "198.18.0.5", Some("10.32.5.0/24")),
        &k5,
    ));
    expect_pins(&mut d, &[(k3, "198.18.0.3:7000"), (k5, "198.18.0.5:6786")]).await;

    // Ready: NetworkUnavailable=False through a strategic merge patch on nodes/status.
    ready.store(true, Ordering::Relaxed);
    // The condition: the status patch that is not the annotations' merge patch.
    let condition = |r: &weft_tests::fake_kube::Request| {
        r.verb == "patch"
            && r.resource == "nodes/status"
            && r.content_type.as_deref() != Some("application/merge-patch+json")
    };
    wait_for("the condition patch", || {
        api.requests().iter().any(condition)
    })
    .await;
    let patch = api.requests().into_iter().find(condition).unwrap();
    assert_eq!(patch.name.as_deref(), Some("n1"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let status: k8s_openapi::api::core::v1::NodeStatus =
        serde_json::from_value(patch.json()["status"].clone()).expect("a NodeStatus");
    let c = &status.conditions.unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
        ("NetworkUnavailable", "False", Some(CONDITION_REASON))
    );
    assert!(c.message.as_deref().is_some_and(|m| !m.is_empty()));
    let (t, h) = (
        c.last_transition_time.clone().unwrap(),
        c.last_heartbeat_time.clone().unwrap(),
    );
    assert_eq!(t, h);
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
    assert!(age.as_secs() < 60, "the condition's time is now");
    // The kubelet's Ready condition is still there beside ours.
    let stored = api.get("n1").unwrap();
    let types: BTreeSet<&str> = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, BTreeSet::from(["NetworkUnavailable", "Ready"]));

    // Our Node is deleted and the kubelet registers it again, bare: our key and the
    // condition are put back, and our own key is never forgotten.
    api.delete_node("n1");
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    wait_for("our key on the new Node", || {
        api.get("n1").unwrap()["metadata"]["annotations"][KEY_ANNOTATION] == k1.to_string()
    })
    .await;
    wait_for("the condition on the new Node", || {
        api.get("n1").unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
    })
    .await;
    assert!(d.commands.is_empty(), "no pin or forget for our own Node");
}

#[tokio::test]
async fn a_router_waits_for_its_pod_cidr() {
    let api = fake();
    api.add_node(node("n1", "198.18.0.1", None));
    let start = tokio::spawn(kubernetes::start(
        client(&api),
        own("n1", key()),
        Arc::new(AtomicBool::new(false)),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!start.is_finished(), "started without a block");
    api.modify_node("n1", |n| {
        n["spec"] = json!({"podCIDR": "10.32.9.0/24", "podCIDRs": ["10.32.9.0/24"]})
    });
    let d = tokio::time::timeout(WAIT, start)
        .await
        .expect("started once the podCIDR came")
        .unwrap()
        .unwrap();
    assert_eq!(d.pod_cidr, "10.32.9.0/24".parse().unwrap());
}

#[tokio::test]
async fn errors_say_what_failed() {
    // A wrong node name.
    let api = fake();
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    let ready = Arc::new(AtomicBool::new(false));
    let e = kubernetes::start(client(&api), own("n9", key()), ready.clone())
        .await
        .err()
        .expect("no such node");
    assert!(matches!(&e, KubeError::NodeNotFound { name } if name == "n9"));
    assert!(e.to_string().contains("--node-name"), "{e}");

    // RBAC: the verb and resource refused are named.
    let api = fake();
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    api.forbid("list", "nodes");
    let e = kubernetes::start(client(&api), own("n1", key()), ready.clone())
        .await
        .err()
        .expect("forbidden");
    assert!(e.to_string().contains("may not list nodes"), "{e}");
    let api = fake();
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    api.forbid("patch", "nodes/status");
    let e = kubernetes::start(client(&api), own("n1", key()), ready.clone())
        .await
        .err()
        .expect("forbidden");
    assert!(e.to_string().contains("may not patch nodes/status"), "{e}");

    // An API server that is not there yet: discovery waits for it rather than failing.
    // 127.0.0.2, which no other test binds, so no other fake server takes the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.2:{port}").parse().unwrap();
    let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
    let start = tokio::spawn(kubernetes::start(client, own("n1", key()), ready));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !start.is_finished(),
        "gave up on an API server that is starting"
    );
    let api = FakeApi::start(SocketAddr::from(([127, 0, 0, 2], port)), None);
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    let d = tokio::time::timeout(Duration::from_secs(40), start)
        .await
        .expect("started once the API server answered")
        .unwrap()
        .unwrap();
    assert_eq!(d.pod_cidr, "10.32.1.0/24".parse().unwrap());
}

/// The ClusterRole of `deploy/weft.yaml`, as (verb, resource) pairs (the core group, and
/// networking.k8s.io for networkpolicies).
fn cluster_role_grants() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/weft.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let roles: Vec<ClusterRole> = docs
        .into_iter()
        .filter(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_json::from_value(v).expect("a ClusterRole"))
        .collect();
    assert_eq!(roles.len(), 1, "one ClusterRole in {path}");
    let mut grants = BTreeSet::new();
    for rule in roles[0].rules.clone().unwrap_or_default() {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let want = if rule.resources == Some(vec!["networkpolicies".into()]) {
            "networking.k8s.io"
        } else {
            ""
        };
        assert_eq!(groups, vec![want.to_string()], "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for r in rule.resources.clone().unwrap_or_default() {
            for v in &rule.verbs {
                assert_ne!(v, "*", "no wildcard verbs");
                grants.insert((v.clone(), r.clone()));
            }
        }
    }
    grants
}

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_code_uses() {
    let api = fake();
    api.add_node(node("n1", "198.18.0.1", Some("10.32.1.0/24")));
    api.add_node(with_key(
        node("n2", "198.18.0.2", Some("10.32.2.0/24")),
        &key(),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let mut d = kubernetes::start(client(&api), own("n1", key()), ready)
        .await
        .unwrap();
    // NetworkPolicy's watches (the same as the router's enforcer starts).
    let watches = kubernetes::policy::Watches::start(d.client.clone());
    tokio::time::timeout(WAIT, watches.ready())
        .await
        .expect("the policy watches listed");
    // Every path that talks to the API: list, watch, both patches, a relist, a delete.
    api.expire();
    api.delete_node("n2");
    loop {
        if matches!(next(&mut d).await, Command::Forget(_)) {
            break;
        }
    }
    wait_for("the condition patch", || {
        api.used()
            .contains(&("patch".into(), "nodes/status".into()))
    })
    .await;
    wait_for("the policy watches", || {
        let used = api.used();
        ["pods", "namespaces", "networkpolicies"]
            .iter()
            .all(|r| used.contains(&("watch".into(), r.to_string())))
    })
    .await;
    drop(watches);
    let used = api.used();
    let granted = cluster_role_grants();
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the code uses what the ClusterRole does not grant: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "the ClusterRole grants what the code does not use: {unused:?}"
    );
}

#[tokio::test]
async fn the_policy_model_follows_policies_pods_and_namespaces_in_the_api() {
    use weft_router::kubernetes::policy::Watches;
    let api = fake();
    api.put(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "x", "labels": {"ns": "x"}}}),
    );
    let pod = |name: &str, ip: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}})
    };
    api.put("pods", pod("a", "10.32.1.2", "n1"));
    api.put("pods", pod("b", "10.32.2.2", "n2"));
    let url = format!("http://{}", api.addr).parse().unwrap();
    let watches = Watches::start(kube::Client::try_from(kube::Config::new(url)).unwrap());
    tokio::time::timeout(WAIT, watches.ready()).await.unwrap();
    let isolated = |w: &Watches| -> Vec<String> {
        let (model, _) = w.model("n1");
        model
            .pods()
            .iter()
            .filter(|p| p.ingress.is_isolated())
            .map(|p| p.pod.to_string())
            .collect()
    };
    assert!(isolated(&watches).is_empty());
    // Only n1's pod is n1's to enforce; the policy reaches the model through the watch.
    api.put(
        "networkpolicies",
        json!({"apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}}}),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while isolated(&watches) != ["x/a"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            isolated(&watches)
        );
        tokio::time::timeout(WAIT, watches.changed()).await.unwrap();
    }
    let (_, policies) = watches.model("n1");
    assert_eq!(policies.into_iter().collect::<Vec<_>>(), ["x/deny"]);
    // A relist after 410 Gone, then the policy deleted: open again.
    api.expire();
    api.remove("networkpolicies", "x/deny");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !isolated(&watches).is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        let _ = tokio::time::timeout(Duration::from_millis(200), watches.changed()).await;
    }
}

#[tokio::test]
async fn the_policy_model_waits_for_every_list() {
    let api = fake();
    api.forbid("list", "pods");
    let watches = kubernetes::policy::Watches::start(client(&api));
    // Policies and Namespaces are listed, Pods refused: no model from policies without their
    // pods, which would open what the rules in place close.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), watches.ready())
            .await
            .is_err(),
        "ready without the Pods"
    );
    let used = api.used();
    for r in ["namespaces", "networkpolicies"] {
        assert!(used.contains(&("list".into(), r.into())), "{used:?}");
    }
    assert!(used.contains(&("list".into(), "pods".into())));
}
