//! `weft install-cni` end to end: the real `weft` binary installs the real `weft-cni` and
//! writes the conflist, then this test plays the container runtime with exactly those files:
//! it runs the chain (weft-cni, then Debian's portmap with a port mapping) for a pod in
//! network namespaces, checks the pod got an address from the node's block with the pod MTU
//! install-cni computed, and that DEL through the chain leaves nothing behind.
//!
//! Needs root (namespaces); without it the test says so loudly (a failure under CI=true).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use weft_tests::e2e::{can_run, run, weft_bin};

/// The node's block as the router would write it, and its gateway.
const BLOCK: &str = "10.32.7.0/24";
const GATEWAY: &str = "10.32.7.1";
/// install-cni's pod MTU for a 1500-byte underlay (weft_router::config::pod_mtu).
const POD_MTU: u32 = 1375;

/// Namespaces and directories of one run, removed on drop (also when the test fails).
struct Scene {
    root: PathBuf,
    node_ns: String,
    pod_ns: String,
}

impl Scene {
    fn new() -> Scene {
        let id = std::process::id();
        let s = Scene {
            root: std::env::temp_dir().join(format!("weft-e2e-install-cni-{id}")),
            node_ns: format!("wicn{id}"),
            pod_ns: format!("wicp{id}"),
        };
        s.cleanup();
        for dir in ["bin", "net.d", "state"] {
            std::fs::create_dir_all(s.root.join(dir)).unwrap();
        }
        for ns in [&s.node_ns, &s.pod_ns] {
            let (ok, _, err) = run(Path::new("ip"), &["netns", "add", ns]);
            assert!(ok, "ip netns add {ns}: {err}");
        }
        // The loopback of the node namespace, as on a real node (portmap's rules use it).
        netns_exec(&s.node_ns, &["ip", "link", "set", "lo", "up"]);
        s
    }

    fn cleanup(&self) {
        for ns in [&self.pod_ns, &self.node_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn netns_exec(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    let (ok, out, err) = run(Path::new("ip"), &all);
    assert!(ok, "ip {}: {err}", all.join(" "));
    out
}

/// Runs one plugin of the list as a runtime does: in the node's namespace, with the CNI
/// environment, its config (the list's cniVersion and name added) on stdin.
fn call_plugin(s: &Scene, command: &str, conf: &Value) -> Value {
    let plugin = s.dir("bin").join(conf["type"].as_str().unwrap());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &s.node_ns])
        .arg(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "e2e-install-cni")
        .env("CNI_NETNS", format!("/run/netns/{}", s.pod_ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", s.dir("bin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command} {}: {stdout} {}",
        conf["type"],
        String::from_utf8_lossy(&out.stderr)
    );
    if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap()
    }
}

/// The config a runtime hands plugin `i` of `list`.
fn plugin_conf(list: &Value, i: usize, prev: &Value) -> Value {
    let mut conf = list["plugins"][i].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if !prev.is_null() {
        conf["prevResult"] = prev.clone();
    }
    if conf["capabilities"]["portMappings"] == json!(true) {
        conf["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}
        ]});
    }
    conf
}

#[test]
fn installed_plugin_and_conflist_attach_a_pod() {
    if !can_run("installed_plugin_and_conflist_attach_a_pod", &["iptables"]) {
        return;
    }
    let weft = weft_bin();
    let s = Scene::new();
    // Debian's reference plugins stand in for the node's (kind's nodes ship their own).
    for name in ["portmap", "loopback"] {
        let src = Path::new("/usr/lib/cni").join(name);
        assert!(
            src.is_file(),
            "{} missing: install containernetworking-plugins",
            src.display()
        );
        std::fs::copy(&src, s.dir("bin").join(name)).unwrap();
    }
    let cni_plugin = weft.with_file_name("weft-cni");
    let install = || {
        let bin = s.dir("bin");
        let conf = s.dir("net.d");
        let state = s.dir("state");
        let args = [
            "install-cni",
            "--cni-plugin",
            cni_plugin.to_str().unwrap(),
            "--cni-bin-dir",
            bin.to_str().unwrap(),
            "--cni-conf-dir",
            conf.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--underlay-mtu",
            "1500",
        ];
        let (ok, out, err) = run(&weft, &args);
        assert!(ok, "weft install-cni: {err}");
        out
    };
    let first = install();
    assert_eq!(first.matches("installed ").count(), 2, "{first}");
    assert!(first.contains("chained portmap"), "{first}");
    assert!(!first.contains("note:"), "{first}");
    let second = install();
    assert_eq!(second.matches("unchanged ").count(), 2, "{second}");

    // The router's side of the contract: the node's block.
    std::fs::write(
        s.dir("state").join("node-block.json"),
        format!("{{\"version\":1,\"cidr\":\"{BLOCK}\"}}"),
    )
    .unwrap();
    let list: Value =
        serde_json::from_slice(&std::fs::read(s.dir("net.d").join("10-weft.conflist")).unwrap())
            .unwrap();
    let n = list["plugins"].as_array().unwrap().len();
    assert_eq!(n, 2);

    // ADD through the chain, each plugin getting the previous one's result.
    let mut result = Value::Null;
    for i in 0..n {
        result = call_plugin(&s, "ADD", &plugin_conf(&list, i, &result));
    }
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.32.7."), "{result}");
    assert_eq!(result["ips"][0]["gateway"], GATEWAY);
    let mtu = netns_exec(&s.pod_ns, &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), POD_MTU.to_string());
    netns_exec(&s.pod_ns, &["ping", "-c", "1", "-W", "2", GATEWAY]);
    // portmap's DNAT for the mapping is in the node's namespace.
    let nat = netns_exec(&s.node_ns, &["iptables", "-t", "nat", "-S"]);
    assert!(
        nat.contains("18080"),
        "no port mapping in the node's nat table:\n{nat}"
    );

    // DEL in reverse order, as runtimes do; nothing of the pod stays.
    for i in (0..n).rev() {
        call_plugin(&s, "DEL", &plugin_conf(&list, i, &result));
    }
    let leases = s.dir("state").join("cni/leases");
    let left: Vec<_> = std::fs::read_dir(&leases)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "leases left: {left:?}");
    let links = netns_exec(&s.node_ns, &["ip", "-br", "link"]);
    assert!(!links.contains("vweft"), "host veth left:\n{links}");
    let nat = netns_exec(&s.node_ns, &["iptables", "-t", "nat", "-S"]);
    assert!(!nat.contains("18080"), "port mapping left:\n{nat}");
}
