//! `weft lab`: a small weft cluster inside network namespaces on one machine (DESIGN.md §7).
//!
//! One namespace holds the underlay switch (a bridge), one per node is joined to it by a veth
//! (or sits behind a NAT box), and one per pod is attached by running the real `weft-cni`
//! binary inside the node's namespace, exactly as a container runtime would. Nothing is
//! created in the root namespace: every link is made with `ip -n NS`, inside the namespace it
//! belongs to. `down` removes everything a lab made; `up` first removes what a crashed run of
//! the same prefix left behind, and undoes its own work if it fails half-way.
//!
//! Routers are not started yet: until `weft router` exists the lab hands each node a static
//! block (`10.32.N.0/24`), so pods on one node talk over its bridge but not across nodes.

pub mod plan;
mod sys;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_cni::node_block::NodeBlock;

use plan::{LabSpec, Names, Netem, UNDERLAY_MTU};

/// Where labs keep their state: tmpfs, gone after a reboot like the namespaces themselves.
pub const LAB_ROOT: &str = "/run/weft-lab";

/// Bytes the tunnel adds to a pod packet on the direct path: outer IPv4 (20) and UDP (8)
/// headers, and weft's sealed-datagram header and tag.
pub const TUNNEL_OVERHEAD: u32 = 20 + 8 + weft_crypto::DATA_OVERHEAD as u32;

/// A node as built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// Short name, `n1`.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its address as the other nodes reach it (a NAT node: its NAT box's).
    pub underlay: Ipv4Net,
    /// Whether it sits behind a NAT box.
    pub behind_nat: bool,
    /// Its pod block.
    pub block: Ipv4Net,
    /// Its state directory (key, block file, leases).
    pub state_dir: PathBuf,
}

/// A pod as attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    /// Short name, `n1-p2`.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub namespace: String,
    /// Its address, from weft-cni's result.
    pub address: Ipv4Addr,
}

/// A lab as built, saved as `LAB_ROOT/PREFIX/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    /// What was asked for.
    pub spec: LabSpec,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// The pods.
    pub pods: Vec<PodState>,
    /// The pod MTU given to weft-cni.
    pub pod_mtu: u32,
}

fn lab_dir(prefix: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(prefix)
}

fn state_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("lab.json")
}

/// Builds the lab `spec` describes. Whatever fails, nothing of this prefix is left behind.
pub fn up(spec: &LabSpec, cni_bin: &Path) -> anyhow::Result<LabState> {
    sys::check_prerequisites()?;
    spec.validate()?;
    if !cni_bin.is_file() {
        bail!(
            "weft-cni not found at {} (build it with `cargo build --workspace --bins`, or \
             pass --cni-bin)",
            cni_bin.display()
        );
    }
    let swept = down(&spec.prefix)?;
    if swept > 0 {
        eprintln!(
            "weft lab: removed {swept} namespaces left by an earlier run of lab {:?}",
            spec.prefix
        );
    }
    match build(spec, cni_bin) {
        Ok(state) => Ok(state),
        Err(e) => {
            if let Err(cleanup) = down(&spec.prefix) {
                eprintln!("weft lab: cleaning up after the failure also failed: {cleanup:#}");
            }
            Err(e.context(format!("bringing up lab {:?} (removed again)", spec.prefix)))
        }
    }
}

fn build(spec: &LabSpec, cni_bin: &Path) -> anyhow::Result<LabState> {
    let names = Names::new(&spec.prefix);
    let dir = lab_dir(&spec.prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let u = names.underlay_ns();
    add_ns(&u)?;
    sys::ip_in(&u, &["link", "add", "sw", "type", "bridge"])?;
    sys::ip_in(&u, &["link", "set", "sw", "up"])?;

    let mut nodes = Vec::new();
    for i in 1..=spec.nodes {
        nodes.push(build_node(spec, &names, i, &dir)?);
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

    let pod_mtu = UNDERLAY_MTU - TUNNEL_OVERHEAD;
    let mut pods = Vec::new();
    for node in &nodes {
        let i: usize = node.name[1..].parse().expect("n<number>");
        for j in 1..=spec.pods {
            pods.push(attach_pod(&names, node, i, j, pod_mtu, cni_bin)?);
        }
    }
    let state = LabState {
        spec: spec.clone(),
        nodes,
        pods,
        pod_mtu,
    };
    let json = serde_json::to_vec_pretty(&state)?;
    fs::write(state_file(&spec.prefix), json).context("saving the lab's state")?;
    Ok(state)
}

fn add_ns(ns: &str) -> anyhow::Result<()> {
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

fn build_node(spec: &LabSpec, names: &Names, i: usize, dir: &Path) -> anyhow::Result<NodeState> {
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
        sys::ip_in(
            &u,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "wan", "netns", &x,
            ],
        )?;
        sys::ip_in(&u, &["link", "set", &port, "master", "sw", "up"])?;
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
        // Masquerade what leaves through the WAN side: an endpoint-independent NAT as home
        // routers do (Linux keeps the source port when it is free).
        let rules = "table ip weftlab_nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  oifname \"wan\" masquerade\n }\n}\n";
        sys::run_with(
            "ip",
            &["netns", "exec", &x, "nft", "-f", "-"],
            &[],
            Some(rules.as_bytes()),
        )?;
    } else {
        sys::ip_in(
            &u,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        sys::ip_in(&u, &["link", "set", &port, "master", "sw", "up"])?;
        sys::ip_in(&ns, &["addr", "add", &underlay.to_string(), "dev", "eth0"])?;
        sys::ip_in(&ns, &["link", "set", "eth0", "up"])?;
    }
    if let Some(netem) = spec.netem.get(&i).filter(|n| n.delay_ms > 0) {
        apply_delay(&u, &port, netem)?;
        apply_delay(&ns, "eth0", netem)?;
    }
    let state_dir = dir.join(format!("n{i}"));
    fs::create_dir_all(&state_dir)?;
    let block = plan::static_block(i);
    NodeBlock::new(block)
        .and_then(|b| b.write(&state_dir))
        .with_context(|| format!("writing node n{i}'s block"))?;
    Ok(NodeState {
        name: format!("n{i}"),
        namespace: ns,
        underlay,
        behind_nat,
        block,
        state_dir,
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
/// bridge family, so it works on kernels without netem).
fn switch_rules(spec: &LabSpec) -> String {
    let mut rules = String::from(
        "table bridge weftlab {\n chain forward {\n  type filter hook forward priority 0;\n",
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

fn attach_pod(
    names: &Names,
    node: &NodeState,
    i: usize,
    j: usize,
    mtu: u32,
    cni_bin: &Path,
) -> anyhow::Result<PodState> {
    let ns = names.pod_ns(i, j);
    add_ns(&ns)?;
    let name = plan::pod_name(i, j);
    let config = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "type": "weft-cni",
        "bridge": "weft",
        "mtu": mtu,
        "stateDir": node.state_dir,
    });
    let netns_path = format!("/run/netns/{ns}");
    let container_id = format!("lab-{ns}");
    let cni = cni_bin.to_str().context("weft-cni path is not UTF-8")?;
    let out = sys::run_with(
        "ip",
        &["netns", "exec", &node.namespace, cni],
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &container_id),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
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

/// Removes every namespace of lab `prefix` (killing what runs in them) and its state.
/// Returns how many namespaces it removed.
pub fn down(prefix: &str) -> anyhow::Result<usize> {
    plan::validate_prefix(prefix)?;
    let names = Names::new(prefix);
    let mine: Vec<String> = sys::namespaces()?
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect();
    for ns in &mine {
        for pid in sys::pids_in(ns) {
            // A namespace lives on while a process holds it: end the processes first.
            let _ = sys::run("kill", &["-KILL", &pid.to_string()]);
        }
    }
    for ns in &mine {
        sys::run("ip", &["netns", "del", ns])?;
    }
    let dir = lab_dir(prefix);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(mine.len())
}

/// The saved state of lab `prefix`.
pub fn status(prefix: &str) -> anyhow::Result<LabState> {
    plan::validate_prefix(prefix)?;
    let path = state_file(prefix);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no lab {prefix:?} is up (start one with `weft lab up`)")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))
}

/// Runs `cmd` inside pod `pod` of lab `prefix`, returning its exit code.
pub fn exec(prefix: &str, pod: &str, cmd: &[String]) -> anyhow::Result<i32> {
    let state = status(prefix)?;
    let Some(p) = state.pods.iter().find(|p| p.name == pod) else {
        let known: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "lab {prefix:?} has no pod {pod:?} (pods: {})",
            known.join(", ")
        );
    };
    if cmd.is_empty() {
        bail!("say what to run: weft lab exec {pod} -- COMMAND [ARGS…]");
    }
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &p.namespace])
        .args(cmd)
        .status()
        .context("running ip netns exec")?;
    Ok(status.code().unwrap_or(128))
}

/// A table for people.
pub fn render(state: &LabState) -> String {
    let mut out = format!(
        "lab {:?}: {} nodes, {} pods, pod MTU {} (blocks handed out by the lab: routers are \
         not started yet)\n\n",
        state.spec.prefix,
        state.nodes.len(),
        state.pods.len(),
        state.pod_mtu
    );
    out += &format!(
        "{:<6} {:<14} {:<18} {:<5} {:<16}\n",
        "NODE", "NAMESPACE", "UNDERLAY", "NAT", "BLOCK"
    );
    for n in &state.nodes {
        out += &format!(
            "{:<6} {:<14} {:<18} {:<5} {:<16}\n",
            n.name,
            n.namespace,
            n.underlay.to_string(),
            if n.behind_nat { "yes" } else { "" },
            n.block.to_string()
        );
    }
    out += &format!("\n{:<8} {:<6} {:<16}\n", "POD", "NODE", "ADDRESS");
    for p in &state.pods {
        out += &format!(
            "{:<8} {:<6} {:<16}\n",
            p.name,
            p.node,
            p.address.to_string()
        );
    }
    out
}

#[cfg(test)]
mod tests;
