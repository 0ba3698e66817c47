//! The lab's routers: their arguments, starting one detached inside its node's namespace,
//! waiting until the mesh carries every block, and stopping, killing and restarting one while
//! the lab runs.

use std::fs;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use ipnet::Ipv4Net;
use weft_cni::node_block::NodeBlock;

use crate::LabError;
use crate::error::refuse;
use crate::plan::{self, LabSpec, UNDERLAY_MTU};
use crate::state::{self, LabState, NodeState};
use crate::sys;

/// How long a router may take to claim its block before `up` gives up.
const BLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The arguments of node `node`'s router in a lab.
pub(crate) fn router_args(spec: &LabSpec, node: &NodeState, secret: &Path) -> Vec<String> {
    let founder = spec.founder();
    let i: usize = node.name[1..].parse().expect("n<number>");
    let wrong = spec.wrong_secret.contains(&i);
    let secret = if wrong {
        state::wrong_secret_file(&spec.prefix)
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
    let lab_api = spec
        .api
        .then(|| crate::api::switch_kubeconfig_file(&spec.prefix));
    if let Some(kubeconfig) = spec.kubernetes.as_ref().or(lab_api.as_ref()) {
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
pub(crate) fn start_router(node: &NodeState, weft: &Path, args: &[String]) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    // Appended to, so the log of a run before a restart stays readable.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.router_log())?;
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

/// Waits until `node`'s router has written its block, returning it.
pub(crate) fn wait_for_block(
    node: &NodeState,
    timeout: std::time::Duration,
) -> anyhow::Result<Ipv4Net> {
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
                node.router_log_tail(8)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub(crate) fn start_all(
    spec: &LabSpec,
    nodes: &mut [NodeState],
    weft: &Path,
) -> anyhow::Result<()> {
    let secret = state::join_secret_file(&spec.prefix);
    let text = weft_crypto::JoinSecret::generate_text(&mut weft_crypto::OsRandom);
    fs::write(&secret, text.expose()).context("writing the lab's join secret")?;
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    if !spec.wrong_secret.is_empty() {
        let wrong = state::wrong_secret_file(&spec.prefix);
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
                    node.router_log_tail(8)
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

pub(crate) fn find_node<'s>(
    state: &'s mut LabState,
    node: &str,
) -> Result<&'s mut NodeState, LabError> {
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
        .ok_or_else(|| LabError::Refused(format!("no node {node:?} (nodes: {})", known.join(", "))))
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
) -> Result<Option<u32>, LabError> {
    let mut state = state::status(prefix)?;
    ensure_routers(&state)?;
    let spec = state.spec.clone();
    let n = find_node(&mut state, node)?;
    let running = n
        .router_pid
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    let started = match action {
        RouterAction::Stop | RouterAction::Kill => {
            let Some(pid) = running else {
                refuse!("the router of {} is not running", n.name);
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
                    return Err(anyhow!("the router of {} (pid {pid}) did not exit", n.name).into());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            n.router_pid = None;
            None
        }
        RouterAction::Start => {
            if let Some(pid) = running {
                refuse!("the router of {} is running (pid {pid})", n.name);
            }
            let mut args = router_args(&spec, n, &state::join_secret_file(prefix));
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
    state::save(&state)?;
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

fn ensure_routers(state: &LabState) -> Result<(), LabError> {
    if !state.spec.routers {
        refuse!("lab {:?} runs no routers", state.spec.prefix);
    }
    Ok(())
}
