//! Node discovery under Kubernetes (docs/design.md §6): the API server's Node objects are the
//! list of members.
//!
//! At start the router lists Nodes, publishes its public key and endpoint as annotations on
//! its own Node ([`KEY_ANNOTATION`], [`ENDPOINT_ANNOTATION`], a JSON merge patch on
//! `nodes/status`), and takes
//! its Node's first IPv4 `spec.podCIDRs` entry as its pod block, waiting for the controller
//! manager to assign one if need be: the mesh starts only once the block is known, so no
//! claim through gossip ever races the podCIDR. Then a kube-runtime watcher follows the
//! Nodes (list, then watch with bookmarks; a 410 Gone makes it list again) and turns them
//! into mesh commands: [`Command::Pin`] with every annotated key at its Node's address, and
//! [`Command::Forget`] for the key of a Node that was deleted. When the router is ready (it
//! has its block and the bridge), it sets its Node's `NetworkUnavailable` condition to
//! `False`, reason [`CONDITION_REASON`], with a strategic merge patch on `nodes/status`
//! (a merge patch would replace the kubelet's conditions). A Node deleted and registered
//! again by its kubelet gets our key and the condition back; its key, pinned again, is
//! let back into the mesh on the other nodes.
//!
//! # Trust model
//!
//! The join secret decides who is a member; the API server decides which key speaks for
//! which Node. Under Kubernetes the router pins membership to the keys annotated on Nodes:
//! a handshake that authenticates any other key is refused (counted as `not_pinned`), and a
//! dial of a Node's address must reach that Node's key. So a machine that holds the join
//! secret but is not a Node cannot join, and no node can pose as another, unless it can
//! also rewrite that Node's annotation in the API server.
//!
//! A Node without a key annotation is neither pinned nor dialled: until its router
//! publishes its key (the first thing a router does, before its mesh starts), accepting
//! whatever key answers at its address would let any holder of the join secret pose as it.
//!
//! Limits: the ClusterRole lets every router patch every Node's status (RBAC cannot restrict
//! a DaemonSet's pods to their own Node by name), so a stolen weft ServiceAccount token can
//! rewrite annotations (though no Node's spec); the API server is the root of trust.
//!
//! # Outages
//!
//! Once the mesh runs, an unreachable or refusing API server only delays changes: the
//! watcher retries with backoff (kube-runtime's default, up to 30 s) and the router keeps
//! routing on the pins it has. Errors name what failed and what to check.

pub mod announced;
pub mod explain;
pub mod node_view;
pub mod policy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tracing::{info, warn};
use weft_crypto::PublicKey;
use weft_mesh::{Command, Endpoint, PeerId};

pub use node_view::{ENDPOINT_ANNOTATION, KEY_ANNOTATION, NodeView};

/// The reason set on the `NetworkUnavailable` condition when the router is up.
pub const CONDITION_REASON: &str = "WeftIsUp";
/// How often readiness is checked for the condition, and the first retry of a failed patch.
const READY_POLL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts at a patch the API server did not take.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a patch that succeeded may take to show in the watch before it is made again.
const WATCH_LAG: Duration = Duration::from_secs(10);
/// How often a router waiting for its podCIDR says so.
const WAITING_LOG: Duration = Duration::from_secs(10);

/// How the router reaches the API server and which Node it is.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// This node's Node name (the downward API's `spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig file; without one, `KUBECONFIG`, then `~/.kube/config`, then the
    /// in-cluster ServiceAccount (kube's `Config::infer`).
    pub kubeconfig: Option<PathBuf>,
    /// Enforce NetworkPolicy on this node's pods (`--network-policy`, [`policy`]).
    pub network_policy: bool,
}

/// Why discovery could not start, or why one request to the API server failed. The
/// variants keep apart what the operator gave (the client configuration, the Node name,
/// the cluster range), what the cluster refused (RBAC, other answers) and an API server that
/// does not answer or answers nonsense.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file given could not be read or parsed.
    #[error("Kubernetes client configuration: reading {}: {source}", .path.display())]
    KubeconfigUnreadable {
        /// The file (`--kubeconfig`).
        path: PathBuf,
        /// What kube found wrong.
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig file parsed but names no usable cluster (context, user, certificates).
    #[error("Kubernetes client configuration: {}: {source}", .path.display())]
    KubeconfigInvalid {
        /// The file (`--kubeconfig`).
        path: PathBuf,
        /// What kube found wrong.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given, and neither `KUBECONFIG`, `~/.kube/config` nor a pod's
    /// ServiceAccount gave a configuration.
    #[error(
        "Kubernetes client configuration: {0} (outside a cluster, pass --kubeconfig or set          KUBECONFIG)"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    /// A client could not be built from the configuration (TLS setup, proxy).
    #[error("Kubernetes client configuration: {0}")]
    Client(#[source] kube::Error),
    /// The API server did not answer (down, wrong address, TLS, network).
    #[error("cannot reach the Kubernetes API server ({verb} {resource}): {source}")]
    Unreachable {
        /// The verb tried.
        verb: &'static str,
        /// The resource (with subresource) tried.
        resource: &'static str,
        /// What failed.
        source: kube::Error,
    },
    /// The API server answered a list without the resource version a watch starts from.
    #[error("the API server refused {verb} {resource}: no metadata.resourceVersion in the answer")]
    NoResourceVersion {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
    },
    /// RBAC refused a request.
    #[error(
        "forbidden: the router's ServiceAccount may not {verb} {resource} ({message}); the \
         ClusterRole in deploy/weft.yaml grants what the router needs"
    )]
    Forbidden {
        /// The verb refused.
        verb: &'static str,
        /// The resource (with subresource) refused.
        resource: &'static str,
        /// The API server's message.
        message: String,
    },
    /// Our own Node is not there.
    #[error(
        "Node {name:?} does not exist in the API server: is --node-name (WEFT_NODE_NAME, \
         from the downward API's spec.nodeName) right?"
    )]
    NodeNotFound {
        /// The name we were given.
        name: String,
    },
    /// Our Node's podCIDR is not inside the cluster range the router routes.
    #[error(
        "Node {name:?} has podCIDR {pod_cidr}, outside --cluster-range {range}: set \
         --cluster-range (WEFT_CLUSTER_RANGE) to the cluster's pod network (kind: \
         networking.podSubnet)"
    )]
    OutsideClusterRange {
        /// Our Node.
        name: String,
        /// Its podCIDR.
        pod_cidr: Ipv4Net,
        /// The configured range.
        range: Ipv4Net,
    },
    /// Any other answer.
    #[error("the API server refused {verb} {resource}: {code} {message}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// HTTP status.
        code: u16,
        /// The API server's message.
        message: String,
    },
}

impl KubeError {
    /// Classifies a client error from `verb` on `resource`.
    pub(super) fn from_client(e: kube::Error, verb: &'static str, resource: &'static str) -> Self {
        match e {
            kube::Error::Api(status) if status.is_forbidden() => KubeError::Forbidden {
                verb,
                resource,
                message: status.message.clone(),
            },
            kube::Error::Api(status) => KubeError::Api {
                verb,
                resource,
                code: status.code,
                message: status.message.clone(),
            },
            source => KubeError::Unreachable {
                verb,
                resource,
                source,
            },
        }
    }

    fn from_watch(e: watcher::Error) -> Self {
        match e {
            watcher::Error::InitialListFailed(e) => Self::from_client(e, "list", "nodes"),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                Self::from_client(e, "watch", "nodes")
            }
            watcher::Error::WatchError(status) => {
                Self::from_client(kube::Error::Api(status), "watch", "nodes")
            }
            watcher::Error::NoResourceVersion => KubeError::NoResourceVersion {
                verb: "list",
                resource: "nodes",
            },
        }
    }

    /// Whether waiting cannot help (retrying is pointless until someone changes something).
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            KubeError::Forbidden { .. } | KubeError::NodeNotFound { .. }
        )
    }
}

/// A client from `config`: its kubeconfig file, or what `Config::infer` finds.
pub async fn client(config: &KubeConfig) -> Result<kube::Client, KubeError> {
    let cfg = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::KubeconfigUnreadable {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|source| KubeError::KubeconfigInvalid {
                    path: path.clone(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(KubeError::NoConfig)?,
    };
    info!(server = %cfg.cluster_url, name = %config.node_name, "using the Kubernetes API");
    kube::Client::try_from(cfg).map_err(KubeError::Client)
}

/// Discovery once started: this node's block, and the commands for the mesh.
pub struct Discovery {
    /// This node's pod block, from its Node's `spec.podCIDRs`.
    pub pod_cidr: Ipv4Net,
    /// Commands for the mesh, in order. The first ones (the pins of the initial list) are
    /// queued before [`start`] returns: apply them before the mesh handles any datagram.
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// The client discovery uses, for the other watches.
    pub client: kube::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// The next command, or never when the watch task is gone (for a `select!` arm).
    pub async fn next_command(discovery: &mut Option<Discovery>) -> Command {
        match discovery {
            Some(d) => match d.commands.recv().await {
                Some(c) => c,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

/// Starts discovery as `config` asks: `None` when it is not on (`--kubernetes`).
pub async fn start_for(
    config: &crate::RouterConfig,
    key: PublicKey,
    port: u16,
    ready: &Arc<AtomicBool>,
) -> Result<Option<Discovery>, KubeError> {
    let Some(kube) = &config.kubernetes else {
        return Ok(None);
    };
    let own = Own {
        node_name: kube.node_name.clone(),
        key,
        port,
        announce: config.announce.first().copied(),
    };
    let discovery = start(client(kube).await?, own, ready.clone()).await?;
    if !config.cluster_range.contains(&discovery.pod_cidr) {
        return Err(KubeError::OutsideClusterRange {
            name: kube.node_name.clone(),
            pod_cidr: discovery.pod_cidr,
            range: config.cluster_range,
        });
    }
    Ok(Some(discovery))
}

/// What this router publishes about itself.
#[derive(Debug, Clone)]
pub struct Own {
    /// Our Node's name.
    pub node_name: String,
    /// Our public key.
    pub key: PublicKey,
    /// The port we listen on.
    pub port: u16,
    /// An endpoint to publish instead of our Node's address and `port` (`--announce`).
    pub announce: Option<SocketAddr>,
}

impl Own {
    /// The endpoint to publish: `--announce`, else our Node's address and our port.
    fn endpoint(&self, view: &NodeView) -> Option<Endpoint> {
        self.announce
            .or_else(|| view.endpoint.map(|ep| SocketAddr::new(ep.ip(), self.port)))
    }
}

/// Starts discovery: lists the Nodes, publishes our annotations, waits for our podCIDR and
/// the initial pins, then follows the Nodes in a task until the returned value is dropped.
/// `ready` is the router's readiness; when it turns true our Node's condition is set.
pub async fn start(
    client: kube::Client,
    own: Own,
    ready: Arc<AtomicBool>,
) -> Result<Discovery, KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let (tx, commands) = mpsc::unbounded_channel();
    let mut nodes = Nodes::new(own.clone(), tx);
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();

    // 1. The initial list, with our Node in it.
    while !nodes.listed {
        nodes.next(&mut stream).await?;
    }
    if !nodes.views.contains_key(&own.node_name) {
        return Err(KubeError::NodeNotFound {
            name: own.node_name,
        });
    }
    // 2. Our annotations, so the others can pin us.
    let endpoint = own.endpoint(&nodes.views[&own.node_name]);
    let mut delay = READY_POLL;
    loop {
        match annotate(&api, &own, endpoint).await {
            Ok(()) => break,
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "publishing our key on our Node");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
    info!(
        name = %own.node_name,
        peer = %own.key,
        endpoint = endpoint.map(tracing::field::display),
        "published our key on our Node"
    );
    // 3. Our block.
    let mut said = tokio::time::Instant::now();
    let pod_cidr = loop {
        if let Some(cidr) = nodes.views[&own.node_name].pod_cidr {
            break cidr;
        }
        if said.elapsed() >= WAITING_LOG {
            warn!(
                name = %own.node_name,
                "waiting for spec.podCIDRs on our Node (does kube-controller-manager run with \
                 --allocate-node-cidrs?)"
            );
            said = tokio::time::Instant::now();
        }
        tokio::select! {
            r = nodes.next(&mut stream) => r?,
            _ = tokio::time::sleep(WAITING_LOG) => {}
        }
        if !nodes.views.contains_key(&own.node_name) {
            return Err(KubeError::NodeNotFound {
                name: own.node_name,
            });
        }
    };
    info!(block = %pod_cidr, "pod block from our Node's podCIDR");
    let task = tokio::spawn(follow(api, nodes, stream, ready));
    Ok(Discovery {
        pod_cidr,
        commands,
        client,
        task,
    })
}

type NodeStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Send>>;

/// Follows the Nodes for the router's lifetime, and keeps our Node's annotations and
/// condition in place: a Node deleted and registered again by the kubelet has lost both.
/// Errors are logged and retried: the data plane goes on with what it knows.
async fn follow(api: Api<Node>, mut nodes: Nodes, mut stream: NodeStream, ready: Arc<AtomicBool>) {
    let name = nodes.own.node_name.clone();
    let mut annotation = Retry::default();
    let mut condition = Retry::default();
    let mut poll = tokio::time::interval(READY_POLL);
    loop {
        tokio::select! {
            // Errors are logged in `next`, once; the watcher's backoff paces the retries.
            _ = nodes.next(&mut stream) => {}
            _ = poll.tick() => {
                let Some(view) = nodes.views.get(&name).cloned() else {
                    continue;
                };
                if view.key.is_none() && annotation.due() {
                    let r = annotate(&api, &nodes.own, nodes.own.endpoint(&view)).await;
                    annotation.after(r, "publishing our key on our Node");
                }
                if ready.load(Ordering::Relaxed) && !view.network_available && condition.due() {
                    let r = set_condition(&api, &name).await;
                    if r.is_ok() {
                        info!(name = %name, "NetworkUnavailable=False ({CONDITION_REASON})");
                    }
                    condition.after(r, "setting our Node's NetworkUnavailable condition");
                }
            }
        }
    }
}

/// When to try a patch again: after a failure with backoff, and after a success only once
/// the watch had time to show it (so a lagging watch does not cause a second patch).
struct Retry {
    at: tokio::time::Instant,
    delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            at: tokio::time::Instant::now(),
            delay: READY_POLL,
        }
    }
}

impl Retry {
    fn due(&self) -> bool {
        tokio::time::Instant::now() >= self.at
    }

    fn after(&mut self, result: Result<(), KubeError>, what: &str) {
        let now = tokio::time::Instant::now();
        match result {
            Ok(()) => {
                self.delay = READY_POLL;
                self.at = now + WATCH_LAG;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?self.delay, "{what}");
                self.at = now + self.delay;
                self.delay = (self.delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Publishes our key and endpoint (a JSON merge patch: only these two annotations change),
/// through `nodes/status` as flannel does: the API server keeps only the spec from a status
/// write, so metadata changes there, and the ClusterRole needs no `patch` on `nodes`, which
/// would also let a router rewrite any Node's spec (taints, podCIDRs, unschedulable).
async fn annotate(api: &Api<Node>, own: &Own, endpoint: Option<Endpoint>) -> Result<(), KubeError> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(KEY_ANNOTATION.into(), own.key.to_string().into());
    if let Some(ep) = endpoint {
        annotations.insert(ENDPOINT_ANNOTATION.into(), ep.to_string().into());
    }
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    api.patch_status(
        &own.node_name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        kube::Error::Api(s) if s.is_not_found() => KubeError::NodeNotFound {
            name: own.node_name.clone(),
        },
        e => KubeError::from_client(e, "patch", "nodes/status"),
    })
}

/// The `NetworkUnavailable=False` condition, whole (a strategic merge patch merges
/// conditions by `type`, leaving the kubelet's alone).
pub fn condition_patch(now: &Time) -> serde_json::Value {
    serde_json::json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "reason": CONDITION_REASON,
        "message": "weft is running on this node",
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }]}})
}

async fn set_condition(api: &Api<Node>, name: &str) -> Result<(), KubeError> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(condition_patch(&now)),
    )
    .await
    .map(|_| ())
    .map_err(|e| KubeError::from_client(e, "patch", "nodes/status"))
}

/// The Nodes as last seen, and what the mesh was last told.
struct Nodes {
    own: Own,
    views: BTreeMap<String, NodeView>,
    /// Objects of a relist in progress (kube-runtime's `Init` .. `InitDone`).
    relisting: Option<BTreeMap<String, NodeView>>,
    /// Whether a complete list has been seen.
    listed: bool,
    pins: Option<BTreeMap<PeerId, Endpoint>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Problems already logged, per Node, so a flapping watch does not repeat them.
    logged: BTreeMap<String, Vec<String>>,
}

impl Nodes {
    fn new(own: Own, commands: mpsc::UnboundedSender<Command>) -> Self {
        Self {
            own,
            views: BTreeMap::new(),
            relisting: None,
            listed: false,
            pins: None,
            commands,
            logged: BTreeMap::new(),
        }
    }

    /// Takes one item from the watch. A permanent error (RBAC) is returned for the caller
    /// to decide; every error is logged with what to check.
    async fn next(&mut self, stream: &mut NodeStream) -> Result<(), KubeError> {
        match stream.next().await {
            Some(Ok(event)) => {
                self.apply(event);
                Ok(())
            }
            Some(Err(e)) => {
                let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                let e = KubeError::from_watch(e);
                if gone {
                    info!("Node watch expired (410 Gone): listing the Nodes again");
                } else if self.listed {
                    warn!(error = %e, "watching Nodes; routing goes on with what is known");
                } else {
                    warn!(error = %e, "listing Nodes; the mesh starts once our Node is seen");
                }
                if e.is_permanent() && !self.listed {
                    return Err(e);
                }
                Ok(())
            }
            None => std::future::pending().await,
        }
    }

    fn apply(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(node) => {
                let view = self.view(&node);
                self.relisting
                    .get_or_insert_default()
                    .insert(view.name.clone(), view);
            }
            watcher::Event::InitDone => {
                let new = self.relisting.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.views, new);
                self.listed = true;
                let gone: Vec<NodeView> = old
                    .into_values()
                    .filter(|v| !self.views.contains_key(&v.name))
                    .collect();
                self.publish(gone);
            }
            watcher::Event::Apply(node) => {
                let view = self.view(&node);
                self.views.insert(view.name.clone(), view);
                if self.listed {
                    self.publish(vec![]);
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let gone: Vec<NodeView> = self.views.remove(&name).into_iter().collect();
                if self.listed {
                    self.publish(gone);
                }
            }
        }
    }

    fn view(&mut self, node: &Node) -> NodeView {
        let view = NodeView::from_node(node);
        if !view.problems.is_empty() && self.logged.get(&view.name) != Some(&view.problems) {
            warn!(name = %view.name, problems = ?view.problems, "ignoring what does not parse on a Node");
            self.logged.insert(view.name.clone(), view.problems.clone());
        }
        if view.name == self.own.node_name
            && let Some(key) = view.key
            && key != PeerId::from(self.own.key)
        {
            warn!(
                name = %view.name, annotated = %key, ours = %self.own.key,
                "our Node carries another key than ours: the other routers will refuse us"
            );
        }
        view
    }

    /// Tells the mesh the pins (every other Node with a key and an address; when they changed), then forgets the keys of `gone` Nodes:
    /// pins first, so the forgotten peer's tunnel is closed before its tombstone is spread
    /// and it cannot learn of it and refute it.
    fn publish(&mut self, gone: Vec<NodeView>) {
        let pins: BTreeMap<PeerId, Endpoint> = self
            .views
            .values()
            .filter(|v| v.name != self.own.node_name)
            .filter_map(|v| Some((v.key?, v.endpoint?)))
            .collect();
        if self.pins.as_ref() != Some(&pins) {
            info!(
                pinned = pins.len(),
                nodes = self.views.len(),
                "Node keys pinned"
            );
            let _ = self.commands.send(Command::Pin(pins.clone()));
            self.pins = Some(pins);
        }
        for v in gone {
            info!(
                name = %v.name,
                peer = v.key.map(tracing::field::display),
                "Node deleted: forgetting its peer"
            );
            if let Some(key) = v.key
                && key != PeerId::from(self.own.key)
            {
                let _ = self.commands.send(Command::Forget(key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_patch_is_a_whole_node_condition() {
        let now = Time("2026-01-02T03:04:05Z".parse().unwrap());
        let patch = condition_patch(&now);
        assert_eq!(
            patch["status"]["conditions"][0]["lastHeartbeatTime"],
            "2026-01-02T03:04:05Z"
        );
        let status: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(patch["status"].clone()).unwrap();
        let c = &status.conditions.unwrap()[0];
        assert_eq!(c.type_, "NetworkUnavailable");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some(CONDITION_REASON));
        assert!(c.last_transition_time.is_some() && c.last_heartbeat_time.is_some());
    }
}
