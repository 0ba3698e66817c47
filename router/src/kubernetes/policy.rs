//! NetworkPolicy under Kubernetes (docs/networkpolicy.md): the router follows the
//! NetworkPolicies, Pods and Namespaces with kube-runtime reflectors and, on every change
//! (after [`DEBOUNCE`]), computes its own pods' model from the whole stores, never from
//! events, renders it and replaces weft's table (masquerade and policy in one transaction)
//! when the script changed.
//!
//! The deny counters restart at zero with every replacement: they are read just before each
//! one and added to running totals, so [`PolicyReport`] counts every denial since the router
//! started (those between the last read and the replacement excepted). Same-node traffic
//! crosses the bridge, which hands it to the forward hook only with its `nf_call_iptables`
//! flag (or the sysctl) and br_netfilter: the flag is set on weft's bridge whenever it
//! (re)appears.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};
use weft_policy::{Local, Model, Problem};

use super::announced::{Announced, Announcement};
use crate::control::{DeniedReport, PolicyReport, Response};
use crate::nftables::policy::{Enforcement, Way, counter_name};
use crate::nftables::{self, Rules};

/// How long a burst of changes is left to settle before the model is recomputed.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// `pod_added` requests queued for the loop; more are refused (weft-cni fails the ADD with
/// "try again later").
const ANNOUNCE_QUEUE: usize = 256;
/// How often the counters are read for status and metrics, the host's addresses looked at
/// again and the bridge's flag checked.
const REFRESH: Duration = Duration::from_secs(2);

/// What the enforcer needs to know about its node.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's Node name: the pods it enforces for are those with this `spec.nodeName`.
    pub name: String,
    /// The table's masquerade part, replaced together with the policy.
    pub rules: Rules,
    /// The bridge the pods attach to.
    pub bridge: String,
    /// The node's mesh address (on the TUN device).
    pub mesh_address: Ipv4Addr,
}

/// NetworkPolicy enforcement, running until dropped.
pub struct Enforcer {
    report: Arc<Mutex<PolicyReport>>,
    announce: mpsc::Sender<Announcement>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Enforcer {
    /// Starts enforcement when `config` asks for it (`--kubernetes` with `--network-policy`
    /// on), for the node `discovery` found.
    pub fn start_for(
        config: &crate::RouterConfig,
        discovery: Option<&super::Discovery>,
    ) -> Option<Enforcer> {
        let kube = config.kubernetes.as_ref().filter(|k| k.network_policy)?;
        let discovery = discovery?;
        let node = Node {
            name: kube.node_name.clone(),
            rules: Rules {
                cluster_range: config.cluster_range,
                tun: crate::config::TUN_NAME.into(),
                masquerade: config.masquerade,
                exempt: config.masquerade_exempt.clone(),
            },
            bridge: config.bridge.clone(),
            mesh_address: crate::netconf::tun_address(discovery.pod_cidr).addr(),
        };
        Some(Self::start(discovery.client.clone(), node))
    }

    /// Starts the watches and the enforcement loop.
    pub fn start(client: kube::Client, node: Node) -> Enforcer {
        let report = Arc::new(Mutex::new(PolicyReport::default()));
        let (announce, announced) = mpsc::channel(ANNOUNCE_QUEUE);
        let task = tokio::spawn(run(Watches::start(client), node, report.clone(), announced));
        Enforcer {
            report,
            announce,
            task,
        }
    }

    /// weft-cni attached `namespace/name` at `address`: `reply` gets `pod_ready` once the
    /// rules in the kernel hold it (docs/networkpolicy.md), or an error. Never blocks.
    pub fn pod_added(
        &self,
        namespace: String,
        name: String,
        address: Ipv4Addr,
        reply: oneshot::Sender<Response>,
    ) {
        let a = Announcement {
            namespace,
            name,
            address,
            reply,
        };
        if let Err(e) = self.announce.try_send(a) {
            let (why, a) = match e {
                mpsc::error::TrySendError::Full(a) => ("too many pods are being added", a),
                mpsc::error::TrySendError::Closed(a) => ("NetworkPolicy enforcement stopped", a),
            };
            let _ = a.reply.send(Response::Error {
                message: format!("{why}; try again"),
            });
        }
    }

    /// Denials and problems so far.
    pub fn report(&self) -> PolicyReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A reflector for `K`, driven by its own task, that wakes `changed` on every event.
fn watch<K>(api: Api<K>, changed: &Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let changed = changed.clone();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // The engine never reads them, and they are most of a Pod's size.
        .modify(|o: &mut K| o.managed_fields_mut().clear());
    let task = tokio::spawn(async move {
        let kind = K::plural(&());
        let mut stream = std::pin::pin!(reflector::reflector(writer, stream));
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    if failing {
                        info!(resource = %kind, "watching again");
                        failing = false;
                    }
                    changed.notify_one();
                }
                // The watcher retries with backoff; the rules in place stay meanwhile.
                Err(e) => {
                    let forbidden = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.is_forbidden()
                    );
                    if forbidden {
                        warn!(
                            resource = %kind, error = %e,
                            "forbidden: NetworkPolicy needs list and watch on {kind} (the \
                             ClusterRole in deploy/weft.yaml grants them); the rules in place stay"
                        );
                    } else {
                        warn!(resource = %kind, error = %e, "watching for NetworkPolicy; the rules in place stay");
                    }
                    failing = true;
                }
            }
        }
    });
    (store, task)
}

/// The three reflectors, each driven by its own task until this is dropped.
pub struct Watches {
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watches {
    /// Starts the reflectors.
    pub fn start(client: kube::Client) -> Watches {
        let changed = Arc::new(Notify::new());
        let (policies, w1) = watch::<NetworkPolicy>(Api::all(client.clone()), &changed);
        let (pods, w2) = watch::<Pod>(Api::all(client.clone()), &changed);
        let (namespaces, w3) = watch::<Namespace>(Api::all(client), &changed);
        Watches {
            policies,
            pods,
            namespaces,
            changed,
            tasks: vec![w1, w2, w3],
        }
    }

    /// Waits for something to change (a permit is kept for a change nobody waited for).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Waits until every store holds a complete list.
    pub async fn ready(&self) {
        // An error means the watch task is gone, which only happens when we are dropped.
        let _ = self.policies.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
    }

    /// `node`'s model from the stores as they are, and the policies that exist.
    pub fn model(&self, node: &str) -> (Model, BTreeSet<String>) {
        self.model_with(node, &mut Announced::default())
    }

    /// [`Watches::model`], with the pods weft-cni announced that the API has not shown
    /// Running yet ([`Announced`]).
    pub fn model_with(&self, node: &str, announced: &mut Announced) -> (Model, BTreeSet<String>) {
        let policies = self.policies.state();
        let pods = announced.apply(self.pods.state(), node);
        let model = weft_policy::compute(
            &policies,
            &pods,
            &self.namespaces.state(),
            Local::Node(node),
        );
        let names = policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        (model, names)
    }
}

async fn run(
    stores: Watches,
    node: Node,
    report: Arc<Mutex<PolicyReport>>,
    mut announcements: mpsc::Receiver<Announcement>,
) {
    // The first model only from complete lists: a partial one (policies without their pods)
    // would open what the table left by the last run still closes. Announcements wait in
    // their queue meanwhile.
    stores.ready().await;
    info!(node = %node.name, "NetworkPolicy: Pods, Namespaces and NetworkPolicies listed");
    let mut state = State::new(node, report);
    let mut announced = Announced::default();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stores.changed() => {
                // A pod's start waits on an announcement: one cuts the debounce short (the
                // kubelet's own writes to the Pod come just before its ADD).
                tokio::select! {
                    _ = tokio::time::sleep(DEBOUNCE) => {}
                    Some(a) = announcements.recv() => announced.add(a),
                }
                while let Ok(a) = announcements.try_recv() {
                    announced.add(a);
                }
                state.model = Some(stores.model_with(&state.node.name, &mut announced));
            }
            Some(a) = announcements.recv() => {
                // At once, no debounce: a pod's start waits on this. Take every request
                // queued, for one model.
                announced.add(a);
                while let Ok(a) = announcements.try_recv() {
                    announced.add(a);
                }
                state.model = Some(stores.model_with(&state.node.name, &mut announced));
            }
            _ = refresh.tick() => {
                // Callers that gave up (and pods that never came) are let go.
                if announced.waiting() {
                    state.model = Some(stores.model_with(&state.node.name, &mut announced));
                }
            }
        }
        state.turn().await;
        // `loaded` is the rendering of `loaded_model` in the kernel (turn just replaced it,
        // or found it already the same): the pods it holds are judged from their first packet.
        if state.loaded.is_some()
            && let Some(model) = &state.loaded_model
        {
            announced.answer(model);
        }
    }
}

/// What was loaded, and the counts so far.
struct State {
    node: Node,
    report: Arc<Mutex<PolicyReport>>,
    /// A model computed and not yet loaded, with the policies that exist.
    model: Option<(Model, BTreeSet<String>)>,
    /// The last model loaded, kept to render again when the host's addresses change.
    loaded_model: Option<Model>,
    /// The script of the table in the kernel.
    loaded: Option<String>,
    /// The counters of the loaded table: counter name → (policy, direction).
    counters: BTreeMap<String, (String, &'static str)>,
    /// Denials counted in tables already replaced, per (policy, direction).
    totals: BTreeMap<(String, &'static str), u64>,
    problems: Vec<Problem>,
    problems_seen: u64,
    updates: u64,
    isolated: usize,
    host: Vec<Ipv4Addr>,
    bridge_index: Option<u32>,
    said_no_br_netfilter: bool,
    last_error: Option<String>,
}

impl State {
    fn new(node: Node, report: Arc<Mutex<PolicyReport>>) -> Self {
        Self {
            node,
            report,
            model: None,
            loaded_model: None,
            loaded: None,
            counters: BTreeMap::new(),
            totals: BTreeMap::new(),
            problems: Vec::new(),
            problems_seen: 0,
            updates: 0,
            isolated: 0,
            host: Vec::new(),
            bridge_index: None,
            said_no_br_netfilter: false,
            last_error: None,
        }
    }

    /// One turn: the bridge's flag, the host's addresses, the model if new, the counters.
    async fn turn(&mut self) {
        self.bridge().await;
        let range = self.node.rules.cluster_range;
        // Rendering a big model takes milliseconds: only when something it uses changed, or
        // the last load failed.
        let mut dirty = self.loaded.is_none();
        match blocking(move || crate::netconf::host_addresses(range)).await {
            Ok(host) => {
                dirty |= host != self.host;
                self.host = host;
            }
            Err(e) => self.fail(format!("listing the node's addresses: {e}")),
        }
        if let Some((model, policies)) = self.model.take() {
            self.note_problems(&model);
            self.totals.retain(|(p, _), _| policies.contains(p));
            self.loaded_model = Some(model);
            dirty = true;
        }
        if let Some(model) = self.loaded_model.as_ref().filter(|_| dirty) {
            let mut node = vec![self.node.mesh_address];
            node.extend(&self.host);
            let enforcement = Enforcement::render(model, &node);
            let script = self.node.rules.script_with(&enforcement);
            if self.loaded.as_ref() != Some(&script) {
                let counters = names(model);
                let isolated = model
                    .pods()
                    .iter()
                    .filter(|p| p.ingress.is_isolated() || p.egress.is_isolated())
                    .count();
                self.replace(script, enforcement, counters, isolated).await;
            }
        }
        let live = self.read().await.unwrap_or_default();
        self.publish(&live);
    }

    /// Reads the counters into the totals, then loads the new table.
    async fn replace(
        &mut self,
        script: String,
        enforcement: Enforcement,
        counters: BTreeMap<String, (String, &'static str)>,
        isolated: usize,
    ) {
        if let Some(live) = self.read().await {
            for (name, n) in live {
                if let Some(key) = self.counters.get(&name) {
                    *self.totals.entry(key.clone()).or_default() += n;
                }
            }
        }
        let rules = self.node.rules.clone();
        let started = std::time::Instant::now();
        match blocking(move || nftables::apply_with(&rules, &enforcement)).await {
            Ok(()) => {
                info!(
                    isolated_pods = isolated,
                    counters = counters.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "NetworkPolicy rules replaced"
                );
                self.loaded = Some(script);
                self.counters = counters;
                self.isolated = isolated;
                self.updates += 1;
                self.last_error = None;
            }
            Err(e) => {
                // The old table stays in the kernel whole; the next turn tries again.
                self.counters.clear();
                self.loaded = None;
                self.fail(format!("loading the NetworkPolicy rules: {e}"));
            }
        }
    }

    /// The counters of the loaded table; `None` (after a warning) when they cannot be read.
    async fn read(&mut self) -> Option<BTreeMap<String, u64>> {
        match blocking(nftables::read_counters).await {
            Ok(c) => Some(c),
            Err(e) => {
                self.fail(format!("reading the NetworkPolicy counters: {e}"));
                None
            }
        }
    }

    /// Sets the bridge's flag when the bridge is new (made by the router or weft-cni).
    async fn bridge(&mut self) {
        let (bridge, done) = (self.node.bridge.clone(), self.bridge_index);
        match blocking(move || crate::netconf::bridge_call_iptables(&bridge, done)).await {
            Ok(i) if i != done => {
                info!(
                    bridge = %self.node.bridge,
                    "the bridge hands same-node traffic to the policy chain (nf_call_iptables)"
                );
                self.bridge_index = i;
            }
            Ok(_) => {}
            Err(e) => self.fail(e.to_string()),
        }
        if !crate::netconf::br_netfilter_loaded() && !self.said_no_br_netfilter {
            warn!(
                "br_netfilter is not loaded: traffic between two pods of this node is not judged \
                 by NetworkPolicy (modprobe br_netfilter, as Kubernetes asks of every node)"
            );
            self.said_no_br_netfilter = true;
        }
    }

    fn note_problems(&mut self, model: &Model) {
        let now = model.problems();
        let new: Vec<&Problem> = now.iter().filter(|p| !self.problems.contains(p)).collect();
        for p in &new {
            warn!(problem = %p, "NetworkPolicy: malformed object (its policy allows nothing)");
        }
        self.problems_seen += new.len() as u64;
        self.problems = now.to_vec();
    }

    /// Logs `message` unless it is the one logged last.
    fn fail(&mut self, message: String) {
        if self.last_error.as_ref() != Some(&message) {
            warn!("{message}");
            self.last_error = Some(message);
        } else {
            debug!("{message}");
        }
    }

    fn publish(&self, live: &BTreeMap<String, u64>) {
        let mut denied = self.totals.clone();
        for (name, n) in live {
            if let Some(key) = self.counters.get(name) {
                *denied.entry(key.clone()).or_default() += n;
            }
        }
        // Every counter of the loaded table, at zero too: a policy that isolates is listed.
        for key in self.counters.values() {
            denied.entry(key.clone()).or_default();
        }
        let report = PolicyReport {
            denied: denied
                .into_iter()
                .map(|((policy, direction), packets)| DeniedReport {
                    policy,
                    direction: direction.into(),
                    packets,
                })
                .collect(),
            problems: self.problems.iter().map(ToString::to_string).collect(),
            problems_seen: self.problems_seen,
            updates: self.updates,
            isolated_pods: self.isolated,
        };
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}

/// The counters `model`'s rules hold, by name: the policy and direction each counts for.
fn names(model: &Model) -> BTreeMap<String, (String, &'static str)> {
    let mut out = BTreeMap::new();
    for pod in model.pods() {
        for (way, dir, word) in [
            (Way::Ingress, &pod.ingress, "ingress"),
            (Way::Egress, &pod.egress, "egress"),
        ] {
            for p in &dir.isolated_by {
                out.insert(counter_name(way, p), (p.to_string(), word));
            }
        }
    }
    out
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::netconf::NetconfError> + Send + 'static,
) -> Result<T, crate::netconf::NetconfError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
