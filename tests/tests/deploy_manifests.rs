//! Every document in `deploy/` parses into its Kubernetes type, and the DaemonSet has what
//! docs/design.md §6 asks of it. No API server is needed: this is what `kubectl apply` would reject
//! (unknown kinds, wrong types) plus what it would silently accept (a misspelled field is
//! dropped by the API server, so each document must survive a round trip through its type
//! unchanged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, ServiceAccount, Volume};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The YAML documents of one file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

/// Parses `doc` as `T` and checks that serializing it again gives the same document: a field
/// the type does not know (a typo such as `tolerationz`) would be dropped, and a value of a
/// different shape (a number where a string belongs) would change.
fn strict<T: DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let again = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    diff("", doc, &again, &mut lost);
    assert!(
        lost.is_empty(),
        "{what}: fields the type does not keep: {lost:#?}"
    );
    typed
}

fn diff(at: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => diff(&format!("{at}.{k}"), wv, gv, out),
                    None => out.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{at}[{i}]"), wv, gv, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{at}: {want} became {got}")),
    }
}

/// The subset of kind's `Cluster` (kind.x-k8s.io/v1alpha4) that deploy/kind.yaml uses;
/// anything else in the file is refused, so a misspelled key cannot pass unnoticed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindCluster {
    kind: String,
    api_version: String,
    name: Option<String>,
    networking: KindNetworking,
    nodes: Vec<KindNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNetworking {
    #[serde(rename = "disableDefaultCNI")]
    disable_default_cni: bool,
    pod_subnet: String,
    service_subnet: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindNode {
    role: String,
}

/// Everything in deploy/, by type.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    kind_clusters: Vec<KindCluster>,
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let ext = path.extension().and_then(|e| e.to_str());
        assert!(
            matches!(ext, Some("yaml")),
            "{}: deploy/ holds only .yaml manifests",
            path.display()
        );
        for (i, doc) in documents(&path).iter().enumerate() {
            let what = format!("{} document {}", path.display(), i + 1);
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            match (api_version, kind) {
                ("v1", "ServiceAccount") => m.service_accounts.push(strict(doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    m.cluster_roles.push(strict(doc, &what))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.bindings.push(strict(doc, &what))
                }
                ("apps/v1", "DaemonSet") => m.daemon_sets.push(strict(doc, &what)),
                ("kind.x-k8s.io/v1alpha4", "Cluster") => m.kind_clusters.push(
                    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}")),
                ),
                other => panic!("{what}: no type known for {other:?}"),
            }
        }
    }
    m
}

fn only<'a, T>(v: &'a [T], what: &str) -> &'a T {
    assert_eq!(v.len(), 1, "expected exactly one {what}");
    &v[0]
}

fn pod_spec(m: &Manifests) -> &PodSpec {
    let ds = only(&m.daemon_sets, "DaemonSet");
    ds.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod spec")
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("container {} has no {name}", c.name))
}

fn env_value<'a>(c: &'a Container, name: &str) -> &'a str {
    env(c, name)
        .value
        .as_deref()
        .unwrap_or_else(|| panic!("{name} has no literal value"))
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The host path mounted at `mount_path` in container `c`, with its hostPath type.
fn host_path_at<'a>(spec: &'a PodSpec, c: &Container, mount_path: &str) -> (&'a str, &'a str) {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == mount_path)
        .unwrap_or_else(|| panic!("{} mounts nothing at {mount_path}", c.name));
    let hp = volume(spec, &mount.name)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{mount_path} is not a hostPath"));
    (hp.path.as_str(), hp.type_.as_deref().unwrap_or(""))
}

#[test]
fn every_document_parses_into_its_type() {
    let m = load();
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemon_sets.len(), 1);
    assert_eq!(m.kind_clusters.len(), 1);
}

#[test]
fn a_misspelled_field_is_caught() {
    // The round trip is what catches it: k8s-openapi itself ignores unknown fields.
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "weft", "namespace": "kube-system"},
        "automountServiceAccountTokn": false,
    });
    let caught = std::panic::catch_unwind(|| strict::<ServiceAccount>(&doc, "typo"));
    assert!(caught.is_err());
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "weft", "namespace": "kube-system"},
        "automountServiceAccountToken": false,
    });
    strict::<ServiceAccount>(&doc, "correct");
}

#[test]
fn cluster_role_grants_exactly_what_discovery_and_policy_use() {
    let m = load();
    let role = only(&m.cluster_roles, "ClusterRole");
    assert_eq!(role.metadata.name.as_deref(), Some("weft"));
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .iter()
        .flatten()
        .map(|r| {
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            (
                r.api_groups.clone().unwrap_or_default(),
                r.resources.clone().unwrap_or_default(),
                r.verbs.clone(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            (s(&[""]), s(&["nodes"]), s(&["list", "watch"])),
            (s(&[""]), s(&["nodes/status"]), s(&["patch"])),
            (s(&[""]), s(&["pods", "namespaces"]), s(&["list", "watch"])),
            (
                s(&["networking.k8s.io"]),
                s(&["networkpolicies"]),
                s(&["list", "watch"])
            ),
        ]
    );
}

#[test]
fn the_binding_gives_the_role_to_the_daemon_sets_account() {
    let m = load();
    let sa = only(&m.service_accounts, "ServiceAccount");
    let binding = only(&m.bindings, "ClusterRoleBinding");
    let role = only(&m.cluster_roles, "ClusterRole");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    let ds = only(&m.daemon_sets, "DaemonSet");
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(
        pod_spec(&m).service_account_name.as_ref(),
        sa.metadata.name.as_ref()
    );
}

#[test]
fn daemon_set_runs_on_every_node_in_the_host_network() {
    let m = load();
    let ds = only(&m.daemon_sets, "DaemonSet");
    let spec = ds.spec.as_ref().unwrap();
    // The selector must select the template, or the API server refuses the DaemonSet.
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(labels.and_then(|l| l.get(k)), Some(v), "selector {k}={v}");
    }
    let pod = pod_spec(&m);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // One toleration with no key and no effect, operator Exists: it matches every taint.
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
    let t = &tolerations[0];
    assert_eq!(t.operator.as_deref(), Some("Exists"));
    assert!(t.key.is_none() && t.effect.is_none() && t.value.is_none());
    assert!(t.toleration_seconds.is_none());
    // Only Linux nodes, and all of them: no other selector, no affinity.
    let selector = pod.node_selector.clone().unwrap_or_default();
    assert_eq!(
        selector,
        BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
    );
    assert!(pod.affinity.is_none());
}

#[test]
fn containers_have_only_the_capabilities_they_need() {
    let m = load();
    let pod = pod_spec(&m);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.init_containers.as_ref().map(Vec::len), Some(1));
    let expected: [(&str, &[&str]); 2] = [("router", &["NET_ADMIN"]), ("install-cni", &[])];
    for (name, add) in expected {
        let c = container(pod, name);
        let sc = c.security_context.as_ref().expect("a securityContext");
        assert_ne!(sc.privileged, Some(true), "{name} must not be privileged");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{name}"
        );
        let got: Vec<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        assert_eq!(got, add, "{name} adds");
    }
    assert_eq!(
        container(pod, "router").command.as_deref(),
        Some(&["weft".to_string(), "router".to_string()][..])
    );
    assert_eq!(
        container(pod, "install-cni").command.as_deref(),
        Some(
            &[
                "weft".to_string(),
                "install-cni".to_string(),
                "--only=plugin".to_string()
            ][..]
        )
    );
}

#[test]
fn router_is_configured_for_kubernetes() {
    let m = load();
    let pod = pod_spec(&m);
    let router = container(pod, "router");
    assert_eq!(env_value(router, "WEFT_KUBERNETES"), "true");
    let node = env(router, "WEFT_NODE_NAME")
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .expect("WEFT_NODE_NAME from a fieldRef");
    assert_eq!(node.field_path, "spec.nodeName");
    // The join secret: a file from the Secret, readable by its owner only.
    let secret_file = Path::new(env_value(router, "WEFT_JOIN_SECRET_FILE"));
    let mount = router
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| Path::new(&v.mount_path) == secret_file.parent().unwrap())
        .expect("the secret's directory is mounted");
    assert_eq!(mount.read_only, Some(true));
    let secret = volume(pod, &mount.name).secret.as_ref().expect("a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("weft-join-secret"));
    assert_eq!(secret.default_mode, Some(0o400));
    let items = secret.items.as_deref().unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert_eq!(
        Path::new(&items[0].path),
        Path::new(secret_file.file_name().unwrap())
    );
    // The cluster range is the kind cluster's pod subnet.
    let kind = only(&m.kind_clusters, "kind Cluster");
    assert_eq!(
        env_value(router, "WEFT_CLUSTER_RANGE"),
        kind.networking.pod_subnet
    );
}

#[test]
fn router_and_installer_use_the_host_paths() {
    let m = load();
    let pod = pod_spec(&m);
    let router = container(pod, "router");
    assert_eq!(
        host_path_at(pod, router, "/dev/net/tun"),
        ("/dev/net/tun", "CharDevice")
    );
    let state = env_value(router, "WEFT_STATE_DIR");
    assert_eq!(
        host_path_at(pod, router, state),
        ("/var/lib/weft", "DirectoryOrCreate")
    );
    // weft-cni runs on the host: the state directory in the conflist (the router's) is the
    // host's path.
    assert_eq!(state, "/var/lib/weft");
    // The init container installs the plugin; the router reads that directory and writes
    // the conflist.
    let install = container(pod, "install-cni");
    let bin = env_value(install, "WEFT_CNI_BIN_DIR");
    assert_eq!(
        host_path_at(pod, install, bin),
        ("/opt/cni/bin", "DirectoryOrCreate")
    );
    assert_eq!(env_value(router, "WEFT_CNI_BIN_DIR"), bin);
    assert_eq!(
        host_path_at(pod, router, bin),
        ("/opt/cni/bin", "DirectoryOrCreate")
    );
    let conf = env_value(router, "WEFT_CNI_CONF_DIR");
    assert_eq!(
        host_path_at(pod, router, conf),
        ("/etc/cni/net.d", "DirectoryOrCreate")
    );
    // The init container does not write the conflist: it would tell the kubelet the network
    // is ready before the router runs.
    assert!(
        install
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "WEFT_CNI_CONF_DIR"),
        "install-cni is given a conf directory"
    );
    assert!(
        install
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.mount_path != conf),
        "install-cni mounts the conf directory"
    );
    // Every host path is one of these: nothing else of the node is exposed.
    let mut host_paths: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    host_paths.sort();
    assert_eq!(
        host_paths,
        [
            "/dev/net/tun",
            "/etc/cni/net.d",
            "/opt/cni/bin",
            "/var/lib/weft"
        ]
    );
}

#[test]
fn probes_reach_the_status_endpoint_and_resources_are_set() {
    let m = load();
    let pod = pod_spec(&m);
    let router = container(pod, "router");
    let metrics: std::net::SocketAddr = env_value(router, "WEFT_METRICS_ADDR").parse().unwrap();
    for (probe, path) in [
        (&router.readiness_probe, "/readyz"),
        (&router.liveness_probe, "/healthz"),
        (&router.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(i32::from(metrics.port())));
        // The kubelet probes from the node's namespace (hostNetwork): it reaches a loopback
        // listener only if told to, and the pod IP (the default) only if bound there.
        match get.host.as_deref() {
            Some(host) => assert_eq!(host.parse::<std::net::IpAddr>().unwrap(), metrics.ip()),
            None => assert!(metrics.ip().is_unspecified(), "probe the node IP"),
        }
    }
    // The startup probe, not a delay, holds liveness back: it gives the router a minute to
    // serve /healthz (which it does while it waits for discovery), and checks often.
    let startup = router.startup_probe.as_ref().unwrap();
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(budget >= 60, "a startup budget of {budget} s");
    assert!(startup.period_seconds.unwrap_or(10) <= 2);
    let liveness = router.liveness_probe.as_ref().unwrap();
    assert_eq!(liveness.initial_delay_seconds, None);
    let resources = router.resources.as_ref().expect("resources");
    let requests: &BTreeMap<_, _> = resources.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = resources.limits.as_ref().expect("limits");
    assert!(limits.contains_key("memory"));
    // No CPU limit: throttling the data path would show up as packet loss.
    assert!(!limits.contains_key("cpu"));
}

#[test]
fn every_weft_variable_is_one_the_binary_reads() {
    // A misspelled variable is silently ignored by the binary, so check the names against
    // the `env = "WEFT_…"` attributes in src/.
    let mut sources = String::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                sources += &std::fs::read_to_string(p).unwrap();
            }
        }
    }
    let m = load();
    let pod = pod_spec(&m);
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            assert!(e.name.starts_with("WEFT_"), "{}: {}", c.name, e.name);
            let known = sources.contains(&format!("env = \"{}\"", e.name));
            assert!(
                known,
                "{}: {} is not an environment variable of the weft binary",
                c.name, e.name
            );
        }
    }
}

#[test]
fn kind_cluster_has_no_default_cni_and_weft_s_pod_subnet() {
    let m = load();
    let kind = only(&m.kind_clusters, "kind Cluster");
    assert_eq!(kind.kind, "Cluster");
    assert_eq!(kind.api_version, "kind.x-k8s.io/v1alpha4");
    assert!(kind.name.is_some());
    assert!(kind.networking.disable_default_cni);
    // weft's default cluster range (`weft router --cluster-range`), so that a router started
    // without WEFT_CLUSTER_RANGE agrees too.
    let main =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../src/main.rs"))
            .unwrap();
    assert!(
        main.contains(&format!(
            "env = \"WEFT_CLUSTER_RANGE\", default_value = \"{}\"",
            kind.networking.pod_subnet
        )),
        "podSubnet {} is not the router's default --cluster-range",
        kind.networking.pod_subnet
    );
    let pods: ipnet::Ipv4Net = kind.networking.pod_subnet.parse().unwrap();
    let services: ipnet::Ipv4Net = kind
        .networking
        .service_subnet
        .as_deref()
        .expect("an explicit serviceSubnet")
        .parse()
        .unwrap();
    assert!(
        !pods.contains(&services.network()) && !services.contains(&pods.network()),
        "the service range {services} overlaps the pod range {pods}"
    );
    let roles: Vec<&str> = kind.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
}
