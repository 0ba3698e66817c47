//! End-to-end: `weft lab up --api` runs the lab's own API server, the routers find each
//! other through its Nodes (blocks from their podCIDRs, keys annotated by the routers), and
//! the real `kubectl`, given `weft lab kubeconfig`, drives it as it would a cluster: get with
//! `-o wide` and `-o yaml`, apply and delete of a Namespace and a NetworkPolicy, label, and a
//! request the server does not support refused with a Status. Pods of a `--model` file are
//! spread over the nodes, stored running with their addresses, labelled through kubectl and
//! reached with `weft lab exec NAMESPACE/NAME`. `weft lab down` ends the server.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_router::kubernetes::KEY_ANNOTATION;
use weft_tests::e2e::*;

const PREFIX: &str = "lxk";

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: lxk-x
  labels: {team: blue}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-in
  namespace: lxk-x
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
";

const MODEL: &str = "apiVersion: v1
kind: Namespace
metadata: {name: lxk-m, labels: {team: m}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: lxk-m, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: lxk-m}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: lxk-m}
spec: {nodeName: n1}
";

/// Runs kubectl against the lab, returning (success, stdout, stderr).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(kubeconfig, args);
    assert!(ok, "kubectl {}: {err}\n{out}", args.join(" "));
    out
}

#[test]
fn kubectl_drives_the_lab_api_server_and_routers_run_against_it() {
    let test = "kubectl_drives_the_lab_api_server_and_routers_run_against_it";
    if !can_run(test, &["kubectl"]) {
        return;
    }
    let model = std::env::temp_dir().join(format!("weft-{PREFIX}-model.yaml"));
    std::fs::write(&model, MODEL).unwrap();
    let lab = Lab::up(
        PREFIX,
        &[
            "--nodes",
            "2",
            "--pods",
            "1",
            "--api",
            "--model",
            model.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&model);
    let kubeconfig = std::path::PathBuf::from(lab.lab(&["kubeconfig"]).trim());
    assert!(kubeconfig.is_file(), "{}", kubeconfig.display());
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("server: http://127.0.0.1:"), "{text}");

    // The routers run in Kubernetes mode: blocks are the Nodes' podCIDRs, and each router
    // annotated its Node with its key.
    lab.wait_full_mesh(Duration::from_secs(30));
    for i in 1..=2 {
        let status = lab.status(&format!("n{i}"));
        assert_eq!(status["block"], format!("10.32.{i}.0/24"), "{status}");
        let key = status["id"].as_str().unwrap().to_string();
        let yaml = ok(
            &kubeconfig,
            &["get", "node", &format!("n{i}"), "-o", "yaml"],
        );
        assert!(
            yaml.contains(&format!("{KEY_ANNOTATION}: {key}")),
            "n{i}'s key is not on its Node:\n{yaml}"
        );
    }
    assert!(lab.ping("n1-p1", lab.pod("n2-p1").address));

    // Every kind, in every namespace, with the wide columns.
    let wide = ok(
        &kubeconfig,
        &["get", "nodes,ns,pods,networkpolicies", "-A", "-o", "wide"],
    );
    for want in [
        "INTERNAL-IP",
        "198.18.0.1",
        "10.32.2.0/24",
        "namespace/default",
        "Active",
    ] {
        assert!(wide.contains(want), "no {want:?} in:\n{wide}");
    }

    // The model's pods: a and b spread over n1 and n2, c where it asked; each stored running
    // with the address weft-cni gave it, and reachable by name.
    let pods = ok(&kubeconfig, &["get", "pods", "-n", "lxk-m", "-o", "wide"]);
    for (pod, node) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
        let state = lab.pod(&format!("lxk-m/{pod}"));
        assert_eq!(state.node, node);
        let row = pods
            .lines()
            .find(|l| l.starts_with(&format!("{pod} ")))
            .unwrap_or_else(|| panic!("no pod {pod} in:\n{pods}"));
        for want in ["Running", &state.address.to_string(), node] {
            assert!(row.contains(want), "no {want:?} in {row:?}");
        }
    }
    assert!(
        lab.ping("lxk-m/a", lab.pod("lxk-m/b").address),
        "a cannot reach b"
    );
    // The lab's own pods are Pods too.
    let yaml = ok(&kubeconfig, &["get", "pod", "n2-p1", "-o", "yaml"]);
    let ip = lab.pod("n2-p1").address.to_string();
    assert!(
        yaml.contains(&format!("podIP: {ip}")) && yaml.contains("nodeName: n2"),
        "{yaml}"
    );
    let out = lab.lab(&[
        "exec", "lxk-m/b", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(
        out.contains(&lab.pod("lxk-m/b").address.to_string()),
        "{out}"
    );
    ok(
        &kubeconfig,
        &["label", "--overwrite", "-n", "lxk-m", "pod/a", "app=db"],
    );
    let yaml = ok(
        &kubeconfig,
        &["get", "pod", "a", "-n", "lxk-m", "-o", "yaml"],
    );
    for want in [
        "app: db",
        "name: http",
        "containerPort: 80",
        "nodeName: n1",
        "phase: Running",
    ] {
        assert!(yaml.contains(want), "no {want:?} in:\n{yaml}");
    }

    // apply creates, apply again changes, label overwrites, get -o yaml shows it all.
    let file = std::env::temp_dir().join(format!("weft-{PREFIX}-manifest.yaml"));
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();
    let out = ok(&kubeconfig, &["apply", "-f", f]);
    assert!(out.contains("namespace/lxk-x created"), "{out}");
    assert!(out.contains("deny-in created"), "{out}");
    std::fs::write(&file, MANIFEST.replace("team: blue", "team: green")).unwrap();
    let out = ok(&kubeconfig, &["apply", "-f", f]);
    assert!(out.contains("namespace/lxk-x configured"), "{out}");
    assert!(out.contains("deny-in unchanged"), "{out}");
    ok(
        &kubeconfig,
        &["label", "--overwrite", "ns/lxk-x", "team=red", "tier=1"],
    );
    let yaml = ok(&kubeconfig, &["get", "ns", "lxk-x", "-o", "yaml"]);
    for want in [
        "team: red",
        "tier: \"1\"",
        "kubernetes.io/metadata.name: lxk-x",
    ] {
        assert!(yaml.contains(want), "no {want:?} in:\n{yaml}");
    }
    let yaml = ok(
        &kubeconfig,
        &[
            "get",
            "networkpolicy",
            "deny-in",
            "-n",
            "lxk-x",
            "-o",
            "yaml",
        ],
    );
    assert!(
        yaml.contains("app: web") && yaml.contains("- Ingress"),
        "{yaml}"
    );

    // Unsupported requests fail with the server's Status, saying why.
    let (done, out, err) = kubectl(&kubeconfig, &["apply", "--server-side", "-f", f]);
    assert!(!done, "server-side apply succeeded: {out}");
    assert!(err.contains("no server-side apply"), "{err}");
    let (done, _, err) = kubectl(
        &kubeconfig,
        &["get", "--raw", "/api/v1/namespaces/default/pods/p/log"],
    );
    assert!(!done && err.contains("has no subresource \"log\""), "{err}");
    // A misspelt field in a policy is refused, not dropped.
    std::fs::write(&file, MANIFEST.replace("policyTypes", "policyType")).unwrap();
    let (done, _, err) = kubectl(&kubeconfig, &["apply", "-f", f]);
    assert!(
        !done && err.contains("unknown field \"spec.policyType\""),
        "{err}"
    );
    std::fs::write(&file, MANIFEST).unwrap();
    // (kubectl create sends protobuf, which the server does not read.)
    let (done, _, err) = kubectl(&kubeconfig, &["create", "namespace", "lxk-pb"]);
    assert!(!done && err.contains("reads JSON only"), "{err}");
    let (done, _, err) = kubectl(&kubeconfig, &["get", "ns", "lxk-none"]);
    assert!(
        !done && err.contains("namespaces \"lxk-none\" not found"),
        "{err}"
    );

    // delete -f removes both (the Namespace terminates, then goes with what is in it).
    let out = ok(&kubeconfig, &["delete", "-f", f]);
    assert!(
        out.contains("\"lxk-x\" deleted") && out.contains("\"deny-in\" deleted"),
        "{out}"
    );
    let (found, out, _) = kubectl(&kubeconfig, &["get", "ns", "lxk-x"]);
    assert!(!found, "the namespace is still there:\n{out}");
    let _ = std::fs::remove_file(&file);

    // `weft lab down` ends the server: its loopback port stops answering.
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: http://"))
        .unwrap()
        .to_string();
    drop(lab);
    let start = Instant::now();
    while std::net::TcpStream::connect(&server).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the API server outlived the lab"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
