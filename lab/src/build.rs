//! Building a lab: the switch, the nodes (plain, behind NAT, behind a delay line), the
//! switch's filter and the pods, in that order. Every link is made with `ip -n NS`, inside
//! the namespace it belongs to.

use std::fs;
use std::path::Path;

use anyhow::Context;
use ipnet::Ipv4Net;
use weft_cni::node_block::NodeBlock;

use crate::plan::{self, LabSpec, Names, Netem, UNDERLAY_MTU};
use crate::state::{self, LabState, NodeState, PodState};
use crate::{Binaries, routers, sys};

pub(crate) fn build(
    spec: &LabSpec,
    model: Option<&crate::model::Model>,
    bins: &Binaries,
) -> anyhow::Result<LabState> {
    let names = Names::new(&spec.prefix);
    let dir = state::lab_dir(&spec.prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let u = names.underlay_ns();
    add_ns(&u)?;
    sys::ip_in(&u, &["link", "add", "sw", "type", "bridge"])?;
    sys::ip_in(&u, &["link", "set", "sw", "up"])?;
    if spec.kubernetes.is_some() || spec.api {
        sys::ip_in(&u, &["addr", "add", plan::API_SERVER, "dev", "sw"])?;
    }

    let mut nodes = Vec::new();
    for i in 1..=spec.nodes {
        nodes.push(build_node(spec, &names, i, bins)?);
    }
    if !spec.blocked.is_empty() || spec.netem.values().any(|n| n.loss_percent > 0.0) {
        let rules = switch_rules(spec);
        sys::run_with(
            "ip",
            &["netns", "exec", &u, "nft", "-f", "-"],
            &[],
            Some(rules.as_bytes()),
        )
        .context("installing the switch's filter")?;
    }

    let pod_mtu = weft_router::config::pod_mtu(UNDERLAY_MTU).expect("1500 carries pods");
    let api_pid = if spec.api {
        Some(crate::api::start(&spec.prefix, &nodes, &bins.weft)?)
    } else {
        None
    };
    if spec.routers {
        routers::start_all(spec, &mut nodes, &bins.weft)?;
    } else {
        for node in nodes.iter_mut() {
            let i: usize = node.name[1..].parse().expect("n<number>");
            node.block = plan::static_block(i);
            NodeBlock::new(node.block)
                .and_then(|b| b.write(&node.state_dir))
                .with_context(|| format!("writing node {}'s block", node.name))?;
        }
    }
    // As the kubelet does it: the Pod is in the API (bound, Pending) before weft-cni runs
    // with CNI_ARGS naming it, and Running with its address after. With the routers
    // enforcing NetworkPolicy, ADD waits for them to judge the pod.
    let mut pods = Vec::new();
    // `lab_name`: what `lab exec` calls the pod; by default the Pod's `NAMESPACE/NAME`.
    let as_kubelet = |node: &NodeState,
                      object: &serde_json::Value,
                      netns: String,
                      lab_name: Option<String>|
     -> anyhow::Result<PodState> {
        let (k8s_ns, k8s_name) = crate::api::store_pending_pod(&spec.prefix, object, node)?;
        let k8s = (k8s_ns.as_str(), k8s_name.as_str());
        let attach = Attach {
            mtu: pod_mtu,
            cni_bin: &bins.cni,
            k8s: Some(k8s),
            policy: (spec.api && spec.routers).then(|| node.control_socket()),
        };
        let name = lab_name.unwrap_or_else(|| format!("{k8s_ns}/{k8s_name}"));
        let pod = attach_pod(node, netns, name, &attach)?;
        crate::api::mark_running(&spec.prefix, k8s, &pod)?;
        Ok(pod)
    };
    for node in &nodes {
        let i: usize = node.name[1..].parse().expect("n<number>");
        for j in 1..=spec.pods {
            let (ns, name) = (names.pod_ns(i, j), plan::pod_name(i, j));
            let pod = if spec.api {
                // Every lab pod is a Pod to the API (in `default`), as a policy sees pods.
                let object = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default"}, "spec": {}});
                as_kubelet(node, &object, ns, Some(name))?
            } else {
                let attach = Attach {
                    mtu: pod_mtu,
                    cni_bin: &bins.cni,
                    k8s: None,
                    policy: None,
                };
                attach_pod(node, ns, name, &attach)?
            };
            pods.push(pod);
        }
    }
    if let Some(model) = model {
        crate::api::store_namespaces(&spec.prefix, &model.namespaces)?;
        for (k, (pod, i)) in model.pods.iter().enumerate() {
            let netns = names.model_pod_ns(k + 1);
            pods.push(as_kubelet(&nodes[i - 1], pod, netns, None)?);
        }
    }
    let state = LabState {
        spec: spec.clone(),
        nodes,
        pods,
        pod_mtu,
        api_pid,
    };
    state::save(&state)?;
    Ok(state)
}

pub(crate) fn add_ns(ns: &str) -> anyhow::Result<()> {
    sys::run("ip", &["netns", "add", ns])?;
    sys::ip_in(ns, &["link", "set", "lo", "up"])
}

/// The switch port a node's traffic enters the underlay through.
fn switch_port(spec: &LabSpec, i: usize) -> String {
    if spec.nat.contains(&i) {
        format!("x{i}")
    } else {
        format!("n{i}")
    }
}

/// Whether delays go through the userspace delay line: asked for, or the kernel has no netem
/// (probed on the switch namespace's own loopback, so nothing outside the lab is touched).
fn uses_delay_line(spec: &LabSpec, names: &Names) -> anyhow::Result<bool> {
    if spec.delay_line {
        return Ok(true);
    }
    let u = names.underlay_ns();
    let probe = ["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"];
    if sys::exec_in(&u, "tc", &probe).is_ok() {
        sys::exec_in(&u, "tc", &["qdisc", "del", "dev", "lo", "root"])?;
        return Ok(false);
    }
    Ok(true)
}

/// Joins `far_dev` in namespace `far_ns` to the switch as port `port`: one veth, or, when node
/// `i`'s link is delayed and netem is missing, two veths with a delay line between them in a
/// namespace of its own.
fn plug(
    spec: &LabSpec,
    names: &Names,
    i: usize,
    port: &str,
    far_ns: &str,
    far_dev: &str,
    bins: &Binaries,
) -> anyhow::Result<()> {
    let u = names.underlay_ns();
    let delay = spec.netem.get(&i).map_or(0, |n| n.delay_ms);
    if delay == 0 || !uses_delay_line(spec, names)? {
        sys::ip_in(
            &u,
            &[
                "link", "add", port, "type", "veth", "peer", "name", far_dev, "netns", far_ns,
            ],
        )?;
        sys::ip_in(&u, &["link", "set", port, "master", "sw", "up"])?;
        return Ok(());
    }
    let d = names.delay_ns(i);
    add_ns(&d)?;
    sys::ip_in(
        &u,
        &[
            "link", "add", "name", port, "type", "veth", "peer", "name", "toswitch", "netns", &d,
        ],
    )?;
    sys::ip_in(&u, &["link", "set", port, "master", "sw", "up"])?;
    sys::ip_in(
        &d,
        &[
            "link", "add", "name", "tonode", "type", "veth", "peer", "name", far_dev, "netns",
            far_ns,
        ],
    )?;
    // A packet socket takes a GSO frame (a router's 64 KiB UDP GSO send, a TCP TSO segment)
    // whole, and cannot write it back out: make the kernel cut frames to the MTU before
    // they reach the delay line, as a real NIC does before the wire.
    sys::ip_in(&u, &["link", "set", port, "gso_max_segs", "1"])?;
    sys::ip_in(far_ns, &["link", "set", far_dev, "gso_max_segs", "1"])?;
    for dev in ["tonode", "toswitch"] {
        // The delay line is a wire: it must not answer or originate anything itself.
        sys::sysctl_in(&d, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")?;
        sys::ip_in(&d, &["link", "set", dev, "up"])?;
    }
    let log = fs::File::create(state::delay_line_log(&spec.prefix, i))?;
    use std::os::unix::process::CommandExt;
    std::process::Command::new("ip")
        .args(["netns", "exec", &d])
        .arg(&bins.weft)
        .args(["lab", "delay-line", "tonode", "toswitch"])
        .arg(format!("--delay-ms={delay}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the delay line of node {i}"))?;
    Ok(())
}

fn build_node(
    spec: &LabSpec,
    names: &Names,
    i: usize,
    bins: &Binaries,
) -> anyhow::Result<NodeState> {
    let ns = names.node_ns(i);
    let u = names.underlay_ns();
    let behind_nat = spec.nat.contains(&i);
    add_ns(&ns)?;
    sys::sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
    let port = switch_port(spec, i);
    let underlay = plan::underlay_addr(i, behind_nat);
    if behind_nat {
        let x = names.nat_ns(i);
        add_ns(&x)?;
        sys::sysctl_in(&x, "net.ipv4.ip_forward", "1")?;
        plug(spec, names, i, &port, &x, "wan", bins)?;
        sys::ip_in(&x, &["addr", "add", &underlay.to_string(), "dev", "wan"])?;
        sys::ip_in(&x, &["link", "set", "wan", "up"])?;
        let (gw, host) = plan::nat_private(i);
        sys::ip_in(
            &x,
            &[
                "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        sys::ip_in(&x, &["addr", "add", &gw.to_string(), "dev", "lan"])?;
        sys::ip_in(&x, &["link", "set", "lan", "up"])?;
        sys::ip_in(&ns, &["addr", "add", &host.to_string(), "dev", "eth0"])?;
        sys::ip_in(&ns, &["link", "set", "eth0", "up"])?;
        sys::ip_in(
            &ns,
            &["route", "add", "default", "via", &gw.addr().to_string()],
        )?;
        let rules = spec.nat_kind(i).rules();
        sys::run_with(
            "ip",
            &["netns", "exec", &x, "nft", "-f", "-"],
            &[],
            Some(rules.as_bytes()),
        )?;
    } else {
        plug(spec, names, i, &port, &ns, "eth0", bins)?;
        sys::ip_in(&ns, &["addr", "add", &underlay.to_string(), "dev", "eth0"])?;
        sys::ip_in(&ns, &["link", "set", "eth0", "up"])?;
    }
    if let Some(netem) = spec.netem.get(&i).filter(|n| n.delay_ms > 0)
        && !uses_delay_line(spec, names)?
    {
        apply_delay(&u, &port, netem)?;
        let (far_ns, far_dev) = if behind_nat {
            (names.nat_ns(i), "wan")
        } else {
            (ns.clone(), "eth0")
        };
        apply_delay(&far_ns, far_dev, netem)?;
    }
    let state_dir = state::node_state_dir(&spec.prefix, i);
    fs::create_dir_all(&state_dir)?;
    // 0700 as the router wants it: it holds the node key and the control socket (and, in
    // the lab, the router's log beside them).
    fs::set_permissions(
        &state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    Ok(NodeState {
        name: format!("n{i}"),
        namespace: ns,
        underlay,
        behind_nat,
        block: plan::static_block(i),
        state_dir,
        router_pid: None,
    })
}

/// Delays a link with `tc netem` (on each side, so both directions).
fn apply_delay(ns: &str, dev: &str, netem: &Netem) -> anyhow::Result<()> {
    let delay = format!("{}ms", netem.delay_ms);
    sys::exec_in(
        ns,
        "tc",
        &["qdisc", "add", "dev", dev, "root", "netem", "delay", &delay],
    )
    .map(drop)
    .context(
        "delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM, module sch_netem), \
             which this kernel lacks; loss alone works without it",
    )
}

/// The switch's filter: blocked node pairs, and random loss on impaired ports (nftables
/// bridge family, so it works on kernels without netem). The text first deletes an earlier
/// table, so applying it again replaces the rules in one transaction.
pub(crate) fn switch_rules(spec: &LabSpec) -> String {
    let mut rules = String::from(
        "table bridge weftlab\ndelete table bridge weftlab\n\
         table bridge weftlab {\n chain forward {\n  type filter hook forward priority 0;\n",
    );
    for (a, b) in &spec.blocked {
        let (pa, pb) = (switch_port(spec, *a), switch_port(spec, *b));
        rules += &format!("  iifname \"{pa}\" oifname \"{pb}\" drop\n");
        rules += &format!("  iifname \"{pb}\" oifname \"{pa}\" drop\n");
    }
    for (node, netem) in spec.netem.iter().filter(|(_, n)| n.loss_percent > 0.0) {
        let port = switch_port(spec, *node);
        // Per ten thousand, so 0.01% steps work; applied on the way in and on the way out.
        let cut = (netem.loss_percent * 100.0).round() as u32;
        rules += &format!("  iifname \"{port}\" numgen random mod 10000 < {cut} drop\n");
        rules += &format!("  oifname \"{port}\" numgen random mod 10000 < {cut} drop\n");
    }
    rules += " }\n}\n";
    rules
}

/// How weft-cni is run for a pod.
pub(crate) struct Attach<'a> {
    pub mtu: u32,
    pub cni_bin: &'a Path,
    /// The Pod's namespace and name in the API, sent in CNI_ARGS as the kubelet does.
    pub k8s: Option<(&'a str, &'a str)>,
    /// The router's control socket, when ADD is to wait for its NetworkPolicy rules.
    pub policy: Option<std::path::PathBuf>,
}

/// weft-cni's network configuration for a pod of `node`.
fn cni_config(node: &NodeState, how: &Attach<'_>) -> serde_json::Value {
    let mut config = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "type": "weft-cni",
        "bridge": "weft",
        "mtu": how.mtu,
        "stateDir": node.state_dir,
    });
    if let Some(socket) = &how.policy {
        config["policy"] = serde_json::json!({"control_socket": socket});
    }
    config
}

pub(crate) fn attach_pod(
    node: &NodeState,
    ns: String,
    name: String,
    how: &Attach<'_>,
) -> anyhow::Result<PodState> {
    add_ns(&ns)?;
    let config = cni_config(node, how);
    let netns_path = format!("/run/netns/{ns}");
    let container_id = format!("lab-{ns}");
    let cni = how.cni_bin.to_str().context("weft-cni path is not UTF-8")?;
    let args = how
        .k8s
        .map(|(k8s_ns, k8s_name)| {
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={k8s_ns};K8S_POD_NAME={k8s_name}")
        })
        .unwrap_or_default();
    let out = sys::run_with(
        "ip",
        &["netns", "exec", &node.namespace, cni],
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &container_id),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", &args),
        ],
        Some(config.to_string().as_bytes()),
    )
    .with_context(|| format!("attaching pod {name} with weft-cni"))?;
    let result: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("weft-cni's result for {name}: {out}"))?;
    let address = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.parse::<Ipv4Net>().ok())
        .with_context(|| format!("weft-cni's result for {name} has no IPv4 address: {out}"))?
        .addr();
    Ok(PodState {
        name,
        node: node.name.clone(),
        namespace: ns,
        address,
    })
}

/// Detaches `pod` as a container runtime does when a pod goes: weft-cni DEL (which frees its
/// address), then its namespace is deleted.
pub(crate) fn detach_pod(node: &NodeState, pod: &PodState, how: &Attach<'_>) -> anyhow::Result<()> {
    let config = cni_config(node, how);
    let netns_path = format!("/run/netns/{}", pod.namespace);
    let container_id = format!("lab-{}", pod.namespace);
    let cni = how.cni_bin.to_str().context("weft-cni path is not UTF-8")?;
    sys::run_with(
        "ip",
        &["netns", "exec", &node.namespace, cni],
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &container_id),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", ""),
        ],
        Some(config.to_string().as_bytes()),
    )
    .with_context(|| format!("detaching pod {} with weft-cni", pod.name))?;
    for pid in sys::pids_in(&pod.namespace) {
        let _ = sys::run("kill", &["-KILL", &pid.to_string()]);
    }
    sys::run("ip", &["netns", "del", &pod.namespace])?;
    Ok(())
}
