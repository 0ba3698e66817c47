//! weft-lab: a small weft cluster inside network namespaces on one machine
//! (docs/design.md §7). The `weft lab` commands, the end-to-end tests and the benchmark share
//! it.
//!
//! It owns the lab's namespaces, links, routers and pods, and the lab's state ([`LabState`],
//! saved under [`LAB_ROOT`]`/PREFIX/`, printed by `weft lab status --json`) with every path
//! in it. One namespace holds the underlay switch (a bridge), one per node is joined to it by
//! a veth (or sits behind a NAT box, or behind a delay line), and one per pod is attached by
//! running the real `weft-cni` binary inside the node's namespace, exactly as a container
//! runtime would. [`down`] removes everything a lab made; [`up`] first removes what a crashed
//! run of the same prefix left behind, and undoes its own work if it fails half-way.
//!
//! Each node runs a real `weft router` (started detached inside its namespace, logging to its
//! state directory); the first node not behind NAT founds the address space and is every
//! other node's seed, and pods are attached once their node's router has claimed a block.
//! Without routers the lab hands out static blocks (`10.32.N.0/24`) instead.
//!
//! What it must never do: create, address or route anything in the root network namespace.
//! Every link, address and route lives in a namespace the lab made (`ip -n NS`, `ip netns
//! exec NS`), underlay addresses come from `198.18.0.0/15`, and traffic only flows between
//! the lab's namespaces.

pub mod api;
mod build;
pub mod delay;
pub mod error;
pub mod flood;
pub mod model;
pub mod plan;
mod routers;
mod state;
mod sys;
#[cfg(test)]
mod tests;
pub mod ui;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use error::LabError;
use error::refuse;

pub use plan::{LabSpec, Names, NatKind, Netem};
pub use routers::{RouterAction, router};
pub use state::{
    LAB_ROOT, LabState, NodeState, PodState, delay_line_log, join_secret_file, lab_dir,
    node_state_dir, state_file, status,
};
/// The capability check the lab's tests and the end-to-end tests use (weft-sys's, shared with
/// the CNI plugin's tests).
pub use weft_sys::capability;

/// The tools a lab runs (iproute2, nftables, tc, procps): [`up`] refuses to start without
/// them, and tests that build labs ask [`capability::can_run`] for them.
pub const LAB_TOOLS: &[&str] = &["ip", "nft", "tc", "sysctl"];

/// The programs a lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `weft` (its `router` subcommand runs on every node).
    pub weft: PathBuf,
    /// `weft-cni`.
    pub cni: PathBuf,
}

impl Binaries {
    /// `weft` at `weft`, and `weft-cni` beside it (as cargo builds them, and as installed).
    pub fn beside(weft: PathBuf) -> Self {
        Self {
            cni: weft.with_file_name("weft-cni"),
            weft,
        }
    }

    /// The `weft` and `weft-cni` cargo built for the running test binary: a test binary sits
    /// in `target/PROFILE/deps/`, the programs one directory up. An error names the missing
    /// program and how to build it.
    pub fn beside_test_binary() -> Result<Self, LabError> {
        let exe = std::env::current_exe().context("finding the test binary")?;
        let Some(dir) = exe.parent().and_then(Path::parent) else {
            return Err(LabError::Unsupported(
                "the test binary is not in target/PROFILE/deps".into(),
            ));
        };
        let bins = Self::beside(dir.join("weft"));
        for b in [&bins.weft, &bins.cni] {
            if !b.is_file() {
                return Err(LabError::Unsupported(format!(
                    "{} is missing: run `cargo build --workspace --bins` (with the same \
                     CARGO_TARGET_DIR) before these tests",
                    b.display()
                )));
            }
        }
        Ok(bins)
    }
}

/// Builds the lab `spec` describes. Whatever fails, nothing of this prefix is left behind.
pub fn up(spec: &LabSpec, bins: &Binaries) -> Result<LabState, LabError> {
    sys::check_prerequisites()?;
    spec.validate()?;
    let model = match &spec.model {
        Some(path) => Some(model::load(path, spec.nodes)?),
        None => None,
    };
    for (what, path) in [("weft-cni", &bins.cni), ("weft", &bins.weft)] {
        if !path.is_file() {
            return Err(LabError::Unsupported(format!(
                "{what} not found at {} (build it with `cargo build --workspace --bins`)",
                path.display()
            )));
        }
    }
    let swept = down(&spec.prefix)?;
    if swept > 0 {
        eprintln!(
            "weft lab: removed {swept} namespaces left by an earlier run of lab {:?}",
            spec.prefix
        );
    }
    match build::build(spec, model.as_ref(), bins) {
        Ok(state) => Ok(state),
        Err(e) => {
            if let Err(cleanup) = down(&spec.prefix) {
                eprintln!("weft lab: cleaning up after the failure also failed: {cleanup:#}");
            }
            Err(e
                .context(format!("bringing up lab {:?} (removed again)", spec.prefix))
                .into())
        }
    }
}

/// Removes every namespace of lab `prefix` (killing what runs in them) and its state.
/// Returns how many namespaces it removed.
pub fn down(prefix: &str) -> Result<usize, LabError> {
    plan::validate_prefix(prefix)?;
    let names = Names::new(prefix);
    let mine: Vec<String> = sys::namespaces()?
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect();
    // Not in a lab namespace: it listens on the host's loopback too.
    api::stop(prefix);
    for ns in &mine {
        for pid in sys::pids_in(ns) {
            // A namespace lives on while a process holds it: end the processes first.
            let _ = sys::run("kill", &["-KILL", &pid.to_string()]);
        }
    }
    for ns in &mine {
        sys::run("ip", &["netns", "del", ns])?;
    }
    let dir = state::lab_dir(prefix);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(mine.len())
}

/// Runs `cmd` inside pod `pod` of lab `prefix`, returning its exit code.
pub fn exec(prefix: &str, pod: &str, cmd: &[String]) -> Result<i32, LabError> {
    let state = status(prefix)?;
    let Some(p) = state.pods.iter().find(|p| p.name == pod) else {
        let known: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
        refuse!(
            "lab {prefix:?} has no pod {pod:?} (pods: {})",
            known.join(", ")
        );
    };
    if cmd.is_empty() {
        refuse!("say what to run: weft lab exec {pod} -- COMMAND [ARGS…]");
    }
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &p.namespace])
        .args(cmd)
        .status()
        .context("running ip netns exec")?;
    Ok(status.code().unwrap_or(128))
}

/// Attaches a new pod to node `node` of lab `prefix` through weft-cni, as a container
/// runtime does for a new pod: it is named `nN-pJ`, `J` one more than the highest of the
/// node's pods now (a deleted pod's name may come back; its address does not at once, as
/// weft-cni hands addresses out round the block).
pub fn pod_add(prefix: &str, node: &str, bins: &Binaries) -> Result<PodState, LabError> {
    let mut state = status(prefix)?;
    if state.spec.api || state.spec.model.is_some() {
        refuse!("lab {prefix:?} runs an API server: add pods through it (kubectl)");
    }
    let n = routers::find_node(&mut state, node)?.clone();
    let i: usize = n.name[1..].parse().expect("n<number>");
    let head = format!("{}-p", n.name);
    let j = state
        .pods
        .iter()
        .filter_map(|p| p.name.strip_prefix(&head)?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let names = Names::new(prefix);
    let attach = build::Attach {
        mtu: state.pod_mtu,
        cni_bin: &bins.cni,
        k8s: None,
        policy: None,
    };
    let (ns, name) = (names.pod_ns(i, j), plan::pod_name(i, j));
    let pod = match build::attach_pod(&n, ns.clone(), name, &attach) {
        Ok(pod) => pod,
        Err(e) => {
            // Nothing half-made stays: the namespace goes (weft-cni undoes its own part).
            let _ = sys::run("ip", &["netns", "del", &ns]);
            return Err(e.into());
        }
    };
    state.pods.push(pod.clone());
    state::save(&state)?;
    Ok(pod)
}

/// Deletes pod `pod` of lab `prefix` as a container runtime does: weft-cni DEL, then its
/// namespace.
pub fn pod_del(prefix: &str, pod: &str, bins: &Binaries) -> Result<PodState, LabError> {
    let mut state = status(prefix)?;
    if state.spec.api || state.spec.model.is_some() {
        refuse!("lab {prefix:?} runs an API server: delete pods through it (kubectl)");
    }
    let Some(at) = state.pods.iter().position(|p| p.name == pod) else {
        let known: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
        refuse!(
            "lab {prefix:?} has no pod {pod:?} (pods: {})",
            known.join(", ")
        );
    };
    let p = state.pods[at].clone();
    let n = routers::find_node(&mut state, &p.node)?.clone();
    let attach = build::Attach {
        mtu: state.pod_mtu,
        cni_bin: &bins.cni,
        k8s: None,
        policy: None,
    };
    build::detach_pod(&n, &p, &attach)?;
    state.pods.remove(at);
    state::save(&state)?;
    Ok(p)
}

/// Blocks (or, with `blocked` false, unblocks) the underlay between nodes `a` and `b` at the
/// switch, while the lab runs.
pub fn set_blocked(prefix: &str, link: (usize, usize), blocked: bool) -> Result<(), LabError> {
    let mut state = status(prefix)?;
    if blocked {
        state.spec.blocked.insert(link);
    } else if !state.spec.blocked.remove(&link) {
        refuse!("link {}-{} is not blocked", link.0, link.1);
    }
    state.spec.validate()?;
    let u = Names::new(prefix).underlay_ns();
    let rules = build::switch_rules(&state.spec);
    sys::run_with(
        "ip",
        &["netns", "exec", &u, "nft", "-f", "-"],
        &[],
        Some(rules.as_bytes()),
    )
    .context("replacing the switch's filter")?;
    Ok(state::save(&state)?)
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
        "{:<6} {:<14} {:<18} {:<10} {:<16} {:<8}\n",
        "NODE", "NAMESPACE", "UNDERLAY", "NAT", "BLOCK", "ROUTER"
    );
    for n in &state.nodes {
        let router = match n.router_pid {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => format!("pid {pid}"),
            Some(_) => "exited".into(),
            None => "-".into(),
        };
        let i: usize = n.name[1..].parse().unwrap_or(0);
        out += &format!(
            "{:<6} {:<14} {:<18} {:<10} {:<16} {:<8}\n",
            n.name,
            n.namespace,
            n.underlay.to_string(),
            if n.behind_nat {
                state.spec.nat_kind(i).name()
            } else {
                ""
            },
            n.block.to_string(),
            router
        );
    }
    if let Some(pid) = state.api_pid {
        out += &format!(
            "\nAPI server: pid {pid}; kubectl --kubeconfig {}\n",
            api::kubeconfig_file(&state.spec.prefix).display()
        );
    }
    let w = state
        .pods
        .iter()
        .map(|p| p.name.len() + 1)
        .fold(8, usize::max);
    out += &format!("\n{:<w$} {:<6} {:<16}\n", "POD", "NODE", "ADDRESS");
    for p in &state.pods {
        out += &format!(
            "{:<w$} {:<6} {:<16}\n",
            p.name,
            p.node,
            p.address.to_string()
        );
    }
    out
}
