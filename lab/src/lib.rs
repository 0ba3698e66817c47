//! weft-lab: a small weft cluster inside network namespaces on one machine (docs/design.md
//! §7), shared by the `weft lab` commands, the end-to-end tests and the benchmark.
//!
//! One namespace holds the underlay switch (a bridge), one per node is joined to it by a veth
//! (or sits behind a NAT box), and one per pod is attached by running the real `weft-cni`
//! binary inside the node's namespace, exactly as a container runtime would. Nothing is
//! created in the root namespace: every link is made with `ip -n NS`, inside the namespace it
//! belongs to. `down` removes everything a lab made; `up` first removes what a crashed run of
//! the same prefix left behind, and undoes its own work if it fails half-way.
//!
//! Each node runs a real `weft router` (started detached inside its namespace, logging to its
//! state directory); the first node not behind NAT founds the address space and is every
//! other node's seed, and pods are attached once their node's router has claimed a block.
//! With `--no-routers` the lab hands out static blocks (`10.32.N.0/24`) instead.

pub mod delay;
pub mod plan;
mod sys;
#[cfg(test)]
mod tests;

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

/// How long a router may take to claim its block before `up` gives up.
const BLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The programs a lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `weft` (its `router` subcommand runs on every node).
    pub weft: PathBuf,
    /// `weft-cni`.
    pub cni: PathBuf,
}

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
    /// Its state directory (key, block file, leases, router log, control socket).
    pub state_dir: PathBuf,
    /// Its router's process id, when the lab runs routers.
    pub router_pid: Option<u32>,
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
pub fn up(spec: &LabSpec, bins: &Binaries) -> anyhow::Result<LabState> {
    sys::check_prerequisites()?;
    spec.validate()?;
    for (what, path) in [("weft-cni", &bins.cni), ("weft", &bins.weft)] {
        if !path.is_file() {
            bail!(
                "{what} not found at {} (build it with `cargo build --workspace --bins`)",
                path.display()
            );
        }
    }
    let swept = down(&spec.prefix)?;
    if swept > 0 {
        eprintln!(
            "weft lab: removed {swept} namespaces left by an earlier run of lab {:?}",
            spec.prefix
        );
    }
    match build(spec, bins) {
        Ok(state) => Ok(state),
        Err(e) => {
            if let Err(cleanup) = down(&spec.prefix) {
                eprintln!("weft lab: cleaning up after the failure also failed: {cleanup:#}");
            }
            Err(e.context(format!("bringing up lab {:?} (removed again)", spec.prefix)))
        }
    }
}

fn build(spec: &LabSpec, bins: &Binaries) -> anyhow::Result<LabState> {
    let names = Names::new(&spec.prefix);
    let dir = lab_dir(&spec.prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let u = names.underlay_ns();
    add_ns(&u)?;
    sys::ip_in(&u, &["link", "add", "sw", "type", "bridge"])?;
    sys::ip_in(&u, &["link", "set", "sw", "up"])?;
    if spec.kubernetes.is_some() {
        sys::ip_in(&u, &["addr", "add", plan::API_SERVER, "dev", "sw"])?;
    }

    let mut nodes = Vec::new();
    for i in 1..=spec.nodes {
        nodes.push(build_node(spec, &names, i, &dir, bins)?);
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
    if spec.routers {
        start_routers(spec, &mut nodes, &bins.weft)?;
    } else {
        for node in nodes.iter_mut() {
            let i: usize = node.name[1..].parse().expect("n<number>");
            node.block = plan::static_block(i);
            NodeBlock::new(node.block)
                .and_then(|b| b.write(&node.state_dir))
                .with_context(|| format!("writing node {}'s block", node.name))?;
        }
    }
    let mut pods = Vec::new();
    for node in &nodes {
        let i: usize = node.name[1..].parse().expect("n<number>");
        for j in 1..=spec.pods {
            pods.push(attach_pod(&names, node, i, j, pod_mtu, &bins.cni)?);
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
    let log = fs::File::create(lab_dir(&spec.prefix).join(format!("d{i}.log")))?;
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
    dir: &Path,
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
    let state_dir = dir.join(format!("n{i}"));
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

/// The lab's join secret file (mode 0600), made once per lab.
pub fn join_secret_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("join-secret")
}

/// The secret handed to nodes started with a wrong one (made per lab, never the cluster's).
fn wrong_secret_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("wrong-join-secret")
}

/// The arguments of node `node`'s router in a lab.
pub fn router_args(spec: &LabSpec, node: &NodeState, secret: &Path) -> Vec<String> {
    let founder = spec.founder();
    let i: usize = node.name[1..].parse().expect("n<number>");
    let wrong = spec.wrong_secret.contains(&i);
    let secret = if wrong {
        wrong_secret_file(&spec.prefix)
    } else {
        secret.to_owned()
    };
    let mut args = vec![
        "router".to_string(),
        format!("--name={}", node.name),
        format!("--state-dir={}", node.state_dir.display()),
        format!("--join-secret-file={}", secret.display()),
        format!("--underlay-mtu={UNDERLAY_MTU}"),
    ];
    if let Some(offload) = spec.offload {
        args.push(format!("--offload={offload}"));
    }
    if let Some(kubeconfig) = &spec.kubernetes {
        // Peers, block and pins come from the API server's Node objects, named n1, n2...
        args.push("--kubernetes".into());
        args.push(format!("--node-name={}", node.name));
        args.push(format!("--kubeconfig={}", kubeconfig.display()));
        return args;
    }
    if wrong {
        // No member will grant it space: give it its static block, so its pods exist.
        args.push(format!("--pod-cidr={}", plan::static_block(i)));
    }
    if i == founder {
        args.push("--found-address-space".into());
    } else {
        args.push(format!(
            "--seed={}:{}",
            plan::underlay_addr(founder, false).addr(),
            weft_router::config::DEFAULT_PORT
        ));
    }
    args
}

/// Starts `weft router` in the namespace of `node`, detached, logging to its state directory.
pub fn start_router(node: &NodeState, weft: &Path, args: &[String]) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    // Appended to, so the log of a run before a restart stays readable.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.state_dir.join("router.log"))?;
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &node.namespace])
        .arg(weft)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: the router outlives `weft lab up` and its terminal.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the router of {}", node.name))?;
    Ok(child.id())
}

/// The last lines of a node's router log, for error messages.
pub fn router_log_tail(node: &NodeState) -> String {
    let text = fs::read_to_string(node.state_dir.join("router.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Waits until `node`'s router has written its block, returning it.
pub fn wait_for_block(node: &NodeState, timeout: std::time::Duration) -> anyhow::Result<Ipv4Net> {
    let start = std::time::Instant::now();
    loop {
        if let Some(b) = NodeBlock::read(&node.state_dir).ok().flatten() {
            return Ok(b.cidr());
        }
        if start.elapsed() > timeout {
            bail!(
                "the router of {} claimed no pod block within {}s; its log ends:\n{}",
                node.name,
                timeout.as_secs(),
                router_log_tail(node)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn start_routers(spec: &LabSpec, nodes: &mut [NodeState], weft: &Path) -> anyhow::Result<()> {
    let secret = join_secret_file(&spec.prefix);
    let text = weft_crypto::JoinSecret::generate_text(&mut weft_crypto::OsRandom);
    fs::write(&secret, text.expose()).context("writing the lab's join secret")?;
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    if !spec.wrong_secret.is_empty() {
        let wrong = wrong_secret_file(&spec.prefix);
        let text = weft_crypto::JoinSecret::generate_text(&mut weft_crypto::OsRandom);
        fs::write(&wrong, text.expose()).context("writing the wrong join secret")?;
        fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    for node in nodes.iter_mut() {
        let args = router_args(spec, node, &secret);
        node.router_pid = Some(start_router(node, weft, &args)?);
    }
    for node in nodes.iter_mut() {
        node.block = wait_for_block(node, BLOCK_WAIT)?;
    }
    wait_for_routes(spec, nodes, weft, BLOCK_WAIT)
}

/// Waits until every member's router routes every member's block, so a lab that `up`
/// returns carries pod traffic at once (blocks spread by gossip within a second or two).
fn wait_for_routes(
    spec: &LabSpec,
    nodes: &[NodeState],
    weft: &Path,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let member = |n: &NodeState| {
        let i: usize = n.name[1..].parse().expect("n<number>");
        !spec.wrong_secret.contains(&i)
    };
    let wanted: std::collections::BTreeSet<String> = nodes
        .iter()
        .filter(|n| member(n))
        .map(|n| n.block.to_string())
        .collect();
    let start = std::time::Instant::now();
    for node in nodes.iter().filter(|n| member(n)) {
        loop {
            let known = routed_blocks(node, weft).unwrap_or_default();
            if wanted.is_subset(&known) {
                break;
            }
            if start.elapsed() > timeout {
                bail!(
                    "the router of {} knows routes to {known:?} but not yet all of {wanted:?} \
                     after {}s; its log ends:\n{}",
                    node.name,
                    timeout.as_secs(),
                    router_log_tail(node)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The blocks a node's router has routes for, read through its control socket.
fn routed_blocks(
    node: &NodeState,
    weft: &Path,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let weft = weft.to_str().context("weft path is not UTF-8")?;
    let dir = node.state_dir.to_str().context("state dir is not UTF-8")?;
    let out = sys::exec_in(
        &node.namespace,
        weft,
        &["status", "--json", "--state-dir", dir],
    )?;
    let report: weft_router::control::StatusReport = serde_json::from_str(&out)?;
    Ok(report.routes.into_iter().map(|r| r.block).collect())
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
fn switch_rules(spec: &LabSpec) -> String {
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

fn save(state: &LabState) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(state)?;
    let path = state_file(&state.spec.prefix);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).context("saving the lab's state")?;
    fs::rename(&tmp, &path).context("saving the lab's state")
}

fn find_node<'s>(state: &'s mut LabState, node: &str) -> anyhow::Result<&'s mut NodeState> {
    // `3` and `n3` both name node 3.
    let name = if node.starts_with('n') {
        node.to_owned()
    } else {
        format!("n{node}")
    };
    let known: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    state
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .with_context(|| format!("no node {node:?} (nodes: {})", known.join(", ")))
}

/// What `weft lab router` does to one node's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterAction {
    /// SIGTERM, and wait until it has exited (it removes its TUN device on the way out).
    Stop,
    /// SIGKILL, a crash: nothing is cleaned up. Waits until it is gone.
    Kill,
    /// Start it again with the same arguments and state directory (it must not be running).
    Start,
}

/// Stops, kills or starts the router of `node` in lab `prefix`, keeping its state directory.
/// Returns the new process id for `Start`.
/// With `original_seeds`, `Start` passes exactly the seeds of the first start (the founder:
/// none), to see whether the others find a restarted router by themselves.
pub fn router(
    prefix: &str,
    node: &str,
    action: RouterAction,
    original_seeds: bool,
    weft: &Path,
) -> anyhow::Result<Option<u32>> {
    let mut state = status(prefix)?;
    ensure_routers(&state)?;
    let spec = state.spec.clone();
    let n = find_node(&mut state, node)?;
    let running = n
        .router_pid
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    let started = match action {
        RouterAction::Stop | RouterAction::Kill => {
            let Some(pid) = running else {
                bail!("the router of {} is not running", n.name);
            };
            // The pid is `ip netns exec`, which execs the router: it is the router itself.
            let signal = if action == RouterAction::Kill {
                "-KILL"
            } else {
                "-TERM"
            };
            sys::run("kill", &[signal, &pid.to_string()])?;
            let start = std::time::Instant::now();
            while is_alive(pid) {
                if start.elapsed() > std::time::Duration::from_secs(10) {
                    bail!("the router of {} (pid {pid}) did not exit", n.name);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            n.router_pid = None;
            None
        }
        RouterAction::Start => {
            if let Some(pid) = running {
                bail!("the router of {} is running (pid {pid})", n.name);
            }
            let mut args = router_args(&spec, n, &join_secret_file(prefix));
            // A restarted router is seeded with every node it can reach directly, as under
            // Kubernetes, where every Node's address is a seed: the founder was started with
            // no seed at all, and would otherwise wait to be found.
            let me: usize = n.name[1..].parse().expect("n<number>");
            let others = (1..=spec.nodes).filter(|o| *o != me && !spec.nat.contains(o));
            for other in others.filter(|_| !original_seeds) {
                let seed = format!(
                    "--seed={}:{}",
                    plan::underlay_addr(other, false).addr(),
                    weft_router::config::DEFAULT_PORT
                );
                if !args.contains(&seed) {
                    args.push(seed);
                }
            }
            let pid = start_router(n, weft, &args)?;
            n.router_pid = Some(pid);
            Some(pid)
        }
    };
    save(&state)?;
    Ok(started)
}

/// Whether `pid` runs (a zombie counts as gone: its router has stopped).
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn ensure_routers(state: &LabState) -> anyhow::Result<()> {
    if !state.spec.routers {
        bail!("lab {:?} runs no routers", state.spec.prefix);
    }
    Ok(())
}

/// Blocks (or, with `blocked` false, unblocks) the underlay between nodes `a` and `b` at the
/// switch, while the lab runs.
pub fn set_blocked(prefix: &str, link: (usize, usize), blocked: bool) -> anyhow::Result<()> {
    let mut state = status(prefix)?;
    if blocked {
        state.spec.blocked.insert(link);
    } else if !state.spec.blocked.remove(&link) {
        bail!("link {}-{} is not blocked", link.0, link.1);
    }
    state.spec.validate()?;
    let u = Names::new(prefix).underlay_ns();
    let rules = switch_rules(&state.spec);
    sys::run_with(
        "ip",
        &["netns", "exec", &u, "nft", "-f", "-"],
        &[],
        Some(rules.as_bytes()),
    )
    .context("replacing the switch's filter")?;
    save(&state)
}

/// A table for people.
pub fn render(state: &LabState) -> String {
    let blocks = if state.spec.routers {
        "blocks claimed by the routers"
    } else {
        "static blocks, no routers: pods reach only their own node"
    };
    let mut out = format!(
        "lab {:?}: {} nodes, {} pods, pod MTU {} ({blocks})\n\n",
        state.spec.prefix,
        state.nodes.len(),
        state.pods.len(),
        state.pod_mtu
    );
    out += &format!(
        "{:<6} {:<14} {:<18} {:<5} {:<16} {:<8}\n",
        "NODE", "NAMESPACE", "UNDERLAY", "NAT", "BLOCK", "ROUTER"
    );
    for n in &state.nodes {
        let router = match n.router_pid {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => format!("pid {pid}"),
            Some(_) => "exited".into(),
            None => "-".into(),
        };
        out += &format!(
            "{:<6} {:<14} {:<18} {:<5} {:<16} {:<8}\n",
            n.name,
            n.namespace,
            n.underlay.to_string(),
            if n.behind_nat { "yes" } else { "" },
            n.block.to_string(),
            router
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
