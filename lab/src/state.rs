//! A lab's state as built, the files it keeps, and where they are: what `weft lab status
//! --json` prints, what the end-to-end tests and the benchmark read. Every path of a lab is
//! computed here, so no caller has to know the layout under [`LAB_ROOT`].

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::plan::{self, LabSpec};

/// Where labs keep their state: tmpfs, gone after a reboot like the namespaces themselves.
pub const LAB_ROOT: &str = "/run/weft-lab";

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

impl NodeState {
    /// The log of its router (appended to across restarts).
    pub fn router_log(&self) -> PathBuf {
        self.state_dir.join("router.log")
    }

    /// Its router's control socket (`weft status --state-dir` talks to it).
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join(weft_router::state::CONTROL_SOCKET)
    }

    /// The last `lines` lines of its router's log, for error messages.
    pub fn router_log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.router_log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A pod as attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    /// Short name, `n1-p2`, or `NAMESPACE/NAME` for a pod of a `--model` file.
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
    /// The lab API server's process id, under `--api`.
    #[serde(default)]
    pub api_pid: Option<u32>,
}

/// The directory of lab `prefix`: its state file, secrets, node state directories and logs.
/// `weft lab down` removes it.
pub fn lab_dir(prefix: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(prefix)
}

/// The saved [`LabState`] of lab `prefix`.
pub fn state_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("lab.json")
}

/// The state directory of node `i` of lab `prefix`.
pub fn node_state_dir(prefix: &str, i: usize) -> PathBuf {
    lab_dir(prefix).join(format!("n{i}"))
}

/// The log of the delay line in front of node `i`.
pub fn delay_line_log(prefix: &str, i: usize) -> PathBuf {
    lab_dir(prefix).join(format!("d{i}.log"))
}

/// The lab's join secret file (mode 0600), made once per lab.
pub fn join_secret_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("join-secret")
}

/// The secret handed to nodes started with a wrong one (made per lab, never the cluster's).
pub(crate) fn wrong_secret_file(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("wrong-join-secret")
}

/// The saved state of lab `prefix`.
pub fn status(prefix: &str) -> Result<LabState, LabError> {
    plan::validate_prefix(prefix)?;
    let path = state_file(prefix);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotUp {
                prefix: prefix.to_owned(),
            });
        }
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!("reading {}", path.display()));
            return Err(e.into());
        }
    };
    Ok(serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))?)
}

/// Saves `state` as its lab's state file, replacing the earlier one whole.
pub(crate) fn save(state: &LabState) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(state)?;
    weft_sys::durable::write_atomic(&state_file(&state.spec.prefix), &json, 0o644)
        .context("saving the lab's state")
}
