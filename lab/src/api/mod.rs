//! The lab's API server (docs/design.md §7): a small Kubernetes API server for Nodes,
//! Namespaces, Pods and NetworkPolicies that the lab's routers run against and `kubectl`
//! drives. It keeps everything in memory and speaks plain HTTP without authentication: it
//! listens only inside the lab's underlay namespace (on the switch, at [`API_SERVER`]) and on
//! the host's loopback.
//!
//! `weft lab up --api` starts it as `weft lab api-serve`, a detached process (its pid in
//! `api.pid` in the lab's directory) that first binds a loopback port in the host namespace,
//! then the switch's port inside the underlay namespace, writes a kubeconfig for the loopback
//! one, and exits when the underlay namespace is gone (`weft lab down` also kills it).
//!
//! [`API_SERVER`]: crate::plan::API_SERVER

mod http;
pub mod route;
pub mod store;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub use http::{BOOKMARK_EVERY, Signal};
pub use store::{Kind, Store};

use crate::state::{self, NodeState};
use crate::{LabError, plan};

/// The port the server listens on at the switch's address.
pub const API_PORT: u16 = 6443;

/// The server's state, shared by its connections.
pub struct Shared {
    store: Mutex<Store>,
    signals: broadcast::Sender<Signal>,
}

/// An API server's objects and the watches on them, before or while it serves.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// An empty server.
    pub fn new() -> ApiServer {
        let (signals, _) = broadcast::channel(4096);
        ApiServer {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::default()),
                signals,
            }),
        }
    }

    /// Works on the objects directly (changes made here reach no watch: use the verbs over
    /// HTTP, or [`ApiServer::create`]).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.shared.store.lock().expect("the store's lock"))
    }

    /// Creates an object, telling the watches.
    pub fn create(&self, kind: Kind, namespace: &str, object: Value) -> Result<Value, String> {
        let (o, e) = self
            .with_store(|s| s.create(kind, namespace, object))
            .map_err(|r| r.message)?;
        let _ = self.shared.signals.send(Signal::Event(e));
        Ok(o)
    }

    /// Compacts the history: open watches get 410 Gone and end, and so does any watch from
    /// an earlier version.
    pub fn expire(&self) {
        self.with_store(Store::compact);
        let _ = self.shared.signals.send(Signal::Expired);
    }

    /// The HTTP service.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(http::handle)
            .with_state(self.shared.clone())
    }

    /// Serves on every listener until `stop` resolves.
    pub async fn serve(
        &self,
        listeners: Vec<TcpListener>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            let app = self.router();
            tasks.spawn(async move { axum::serve(l, app).await });
        }
        tokio::select! {
            _ = stop => Ok(()),
            Some(r) = tasks.join_next() => Ok(r??),
        }
    }
}

/// A Node as the kubelet and the controller manager would have made it: Ready, with its
/// address and (when given) its podCIDR.
pub fn node(name: &str, internal_ip: &str, pod_cidr: Option<&str>) -> Value {
    let mut n = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "weft lab",
                "containerRuntimeVersion": "none"}
        }
    });
    if let Some(c) = pod_cidr {
        n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    n
}

/// A kubeconfig for a server at `url` (plain http, no credentials).
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-lab\n  cluster:\n    server: \
         {url}\ncontexts:\n- name: weft-lab\n  context:\n    cluster: weft-lab\n    user: \
         weft-lab\ncurrent-context: weft-lab\nusers:\n- name: weft-lab\n  user: {{}}\n"
    )
}

/// The kubeconfig for `kubectl` on this machine (the loopback listener).
pub fn kubeconfig_file(prefix: &str) -> PathBuf {
    state::lab_dir(prefix).join("kubeconfig")
}

/// The kubeconfig the routers get (the switch's address, inside the lab).
pub(crate) fn switch_kubeconfig_file(prefix: &str) -> PathBuf {
    state::lab_dir(prefix).join("kubeconfig-switch")
}

fn nodes_file(prefix: &str) -> PathBuf {
    state::lab_dir(prefix).join("api-nodes.json")
}

fn pid_file(prefix: &str) -> PathBuf {
    state::lab_dir(prefix).join("api.pid")
}

/// The server's log.
pub fn log_file(prefix: &str) -> PathBuf {
    state::lab_dir(prefix).join("api.log")
}

/// Starts `weft lab api-serve` for lab `prefix` with a Node for each of `nodes` (podCIDR:
/// the node's static block), and waits until it serves. Returns its pid.
pub(crate) fn start(prefix: &str, nodes: &[NodeState], weft: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let objects: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let i: usize = n.name[1..].parse().expect("n<number>");
            node(
                &n.name,
                &n.underlay.addr().to_string(),
                Some(&plan::static_block(i).to_string()),
            )
        })
        .collect();
    std::fs::write(nodes_file(prefix), serde_json::to_vec(&objects)?)?;
    let switch = plan::API_SERVER.split('/').next().expect("an address");
    std::fs::write(
        switch_kubeconfig_file(prefix),
        kubeconfig(&format!("http://{switch}:{API_PORT}")),
    )?;
    let log = std::fs::File::create(log_file(prefix))?;
    let child = std::process::Command::new(weft)
        .args(["lab", "api-serve", "--prefix", prefix])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: it outlives `weft lab up` and its terminal.
        .process_group(0)
        .spawn()
        .context("starting the lab's API server")?;
    let pid = child.id();
    std::fs::write(pid_file(prefix), pid.to_string())?;
    let start = std::time::Instant::now();
    while !kubeconfig_file(prefix).exists() {
        if start.elapsed() > Duration::from_secs(20) {
            anyhow::bail!(
                "the lab's API server did not start; its log: {}",
                std::fs::read_to_string(log_file(prefix)).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// Sends one request to lab `prefix`'s API server through its loopback port, returning the
/// status code and body. (HTTP/1.1 by hand, with `Connection: close`: the lab's only client
/// call, not worth a client crate.)
fn call(prefix: &str, method: &str, path: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    call_as(prefix, method, path, "application/json", body)
}

/// [`call`] with a body of `content_type` (a PATCH names its kind of patch so).
fn call_as(
    prefix: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let config = std::fs::read_to_string(kubeconfig_file(prefix)).context("the kubeconfig")?;
    let addr = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: http://"))
        .context("no server in the lab's kubeconfig")?;
    let body = body.to_string();
    let mut c = std::net::TcpStream::connect(addr)
        .with_context(|| format!("connecting to the lab's API server at {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    c.read_to_string(&mut reply)?;
    let code = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("a reply that is not HTTP: {reply:?}"))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

/// Creates the Namespaces of a `--model` file (those that exist already are left as they are).
pub(crate) fn store_namespaces(prefix: &str, namespaces: &[Value]) -> anyhow::Result<()> {
    for ns in namespaces {
        let (code, body) = call(prefix, "POST", "/api/v1/namespaces", ns)?;
        if code != 201 && code != 409 {
            anyhow::bail!(
                "creating namespace {}: {code} {body}",
                ns["metadata"]["name"]
            );
        }
    }
    Ok(())
}

/// Stores a Pod as the scheduler leaves it for the kubelet: bound to `node`, Pending, with
/// no address yet. Returns its namespace and name, for weft-cni's CNI_ARGS.
pub(crate) fn store_pending_pod(
    prefix: &str,
    pod: &Value,
    node: &NodeState,
) -> anyhow::Result<(String, String)> {
    let mut pod = pod.clone();
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = pod["metadata"]["name"]
        .as_str()
        .context("a Pod without metadata.name")?
        .to_string();
    pod["metadata"]["namespace"] = json!(ns);
    pod["spec"]["nodeName"] = json!(node.name);
    pod["status"] = json!({"phase": "Pending", "hostIP": node.underlay.addr().to_string()});
    let (code, body) = call(
        prefix,
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods"),
        &pod,
    )?;
    if code != 201 {
        anyhow::bail!("storing pod {ns}/{name}: {code} {body}");
    }
    Ok((ns, name))
}

/// Marks a Pod Running at the address weft-cni gave it, as the kubelet does once the pod's
/// sandbox is up.
pub(crate) fn mark_running(
    prefix: &str,
    (ns, name): (&str, &str),
    attached: &crate::PodState,
) -> anyhow::Result<()> {
    let ip = attached.address.to_string();
    let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    let (code, body) = call_as(
        prefix,
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
        "application/merge-patch+json",
        &patch,
    )?;
    if code != 200 {
        anyhow::bail!("marking pod {ns}/{name} Running: {code} {body}");
    }
    Ok(())
}

/// Kills lab `prefix`'s API server, if it runs (checked by its command line, so a reused pid
/// is left alone).
pub(crate) fn stop(prefix: &str) {
    let Some(pid) = std::fs::read_to_string(pid_file(prefix))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline.split(|b| *b == 0).any(|a| a == b"api-serve")
        && cmdline.split(|b| *b == 0).any(|a| a == prefix.as_bytes());
    if ours {
        let _ = crate::sys::run("kill", &["-KILL", &pid.to_string()]);
    }
}

/// `weft lab api-serve`: serves lab `prefix`'s API on its switch and on a loopback port, and
/// returns when the lab's underlay namespace is gone.
pub fn serve_lab(prefix: &str) -> Result<(), LabError> {
    plan::validate_prefix(prefix)?;
    let nodes: Vec<Value> = serde_json::from_slice(
        &std::fs::read(nodes_file(prefix)).context("reading the lab's Nodes")?,
    )
    .context("parsing the lab's Nodes")?;
    let server = ApiServer::new();
    for n in nodes {
        server
            .create(Kind::Node, "", n)
            .map_err(|e| anyhow::anyhow!("a lab Node: {e}"))?;
    }
    for ns in ["default", "kube-system"] {
        server
            .create(Kind::Namespace, "", json!({"metadata": {"name": ns}}))
            .map_err(|e| anyhow::anyhow!("namespace {ns}: {e}"))?;
    }
    let netns = PathBuf::from("/run/netns").join(plan::Names::new(prefix).underlay_ns());
    let loopback = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1")?;
    let switch = weft_sys::netns::Netns::open(&netns)
        .and_then(|ns| ns.bind_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, API_PORT))))
        .context("listening on the switch")?;
    let url = format!("http://{}", loopback.local_addr().context("loopback")?);
    weft_sys::durable::write_atomic(&kubeconfig_file(prefix), kubeconfig(&url).as_bytes(), 0o600)
        .context("writing the kubeconfig")?;
    eprintln!("weft lab api-serve: serving {url} and the switch's port {API_PORT}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let lab_gone = async {
        while netns.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    rt.block_on(server.serve(vec![loopback, switch], lab_gone))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// Serves `server` on a loopback port of this test's own, on a thread.
    fn serve(server: &ApiServer) -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let s = server.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(s.serve(vec![l], std::future::pending()))
        });
        addr
    }

    /// Sends a request; returns the status line and a reader past the headers.
    fn request(addr: SocketAddr, req: &str) -> (String, BufReader<std::net::TcpStream>) {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        (status, r)
    }

    /// The next JSON line of a chunked watch (chunk sizes are lines of hex, skipped).
    fn next_event(r: &mut BufReader<std::net::TcpStream>) -> Option<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.starts_with('{') {
                return serde_json::from_str(&line).ok();
            }
            if line.trim() == "0" {
                return None;
            }
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
    }

    #[test]
    fn watches_over_http_follow_changes_bookmark_and_end_with_410_on_compaction() {
        let server = ApiServer::new();
        server
            .create(Kind::Namespace, "", json!({"metadata": {"name": "x"}}))
            .unwrap();
        let addr = serve(&server);
        let rv = server.with_store(|s| s.resource_version());
        let (status, mut w) = request(
            addr,
            &get(&format!(
                "/api/v1/namespaces?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"
            )),
        );
        assert!(status.contains("200"), "{status}");
        let patch = r#"{"metadata":{"labels":{"a":"b"}}}"#;
        let (status, _) = request(
            addr,
            &format!(
                "PATCH /api/v1/namespaces/x HTTP/1.1\r\nhost: x\r\ncontent-type: \
                 application/merge-patch+json\r\ncontent-length: {}\r\n\r\n{patch}",
                patch.len()
            ),
        );
        assert!(status.contains("200"), "{status}");
        let e = next_event(&mut w).expect("an event");
        assert_eq!(
            (
                e["type"].as_str(),
                e["object"]["metadata"]["labels"]["a"].as_str()
            ),
            (Some("MODIFIED"), Some("b"))
        );
        let e = next_event(&mut w).expect("a bookmark");
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(
            e["object"]["metadata"]["resourceVersion"],
            (rv + 1).to_string()
        );
        server.expire();
        let e = next_event(&mut w).expect("410");
        assert_eq!(
            (e["type"].as_str(), e["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        assert!(next_event(&mut w).is_none(), "the watch goes on after 410");
        // A streaming list sends every object, then the bookmark that ends the initial events,
        // whatever version it names.
        let (_, mut w) = request(
            addr,
            &get(&format!(
                "/api/v1/namespaces?watch=1&sendInitialEvents=true&allowWatchBookmarks=true\
                 &resourceVersionMatch=NotOlderThan&resourceVersion={rv}"
            )),
        );
        let e = next_event(&mut w).unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("x"))
        );
        let e = next_event(&mut w).unwrap();
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(
            e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        // A watch from before the compaction is gone at once; a list gives the version to
        // watch from again.
        let (_, mut w) = request(
            addr,
            &get(&format!("/api/v1/namespaces?watch=1&resourceVersion={rv}")),
        );
        assert_eq!(next_event(&mut w).unwrap()["object"]["reason"], "Expired");
        let (status, _) = request(addr, &get("/api/v1/services"));
        assert!(status.contains("404"), "{status}");
    }
}
