//! A fake Kubernetes API server for Nodes, in-process, over plain HTTP/1.1: enough of the
//! real protocol for a kube-rs client to list, watch and patch Nodes, with the faults a real
//! one shows (a 410 Gone that forces a relist, bookmarks, outages, RBAC refusals) and that
//! tests script (forced annotations, events dropped unseen). Pods, Namespaces and
//! NetworkPolicies can be listed and watched too ([`OBJECTS`]); tests create, change and
//! delete them with [`FakeApi::put`] and [`FakeApi::remove`]. The lab's own API server
//! (`weft_lab::api`, behind `weft lab up --api`) serves more kinds and verbs without faults;
//! this one shares its Node and its merge patch.
//!
//! It serves real Kubernetes JSON: a `NodeList` with `metadata.resourceVersion`, a watch as
//! a stream of `WatchEvent` lines (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`), and
//! `Status` objects for errors. It records every request as (verb, resource), with the
//! content type and body of patches, so tests can check what the code did and what RBAC it
//! needs. It runs on its own thread and runtime, optionally inside a network namespace (the
//! lab's switch), since a socket stays in the namespace it was made in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The Kubernetes verb: `list`, `watch`, `get`, `patch`, `update`, `create`, `delete`.
    pub verb: String,
    /// `nodes`, `nodes/status`, or the path of anything else.
    pub resource: String,
    /// The object's name, for requests on one object.
    pub name: Option<String>,
    /// The query string's parameters.
    pub query: BTreeMap<String, String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The other resources served, cluster-wide, for list and watch: (resource, path).
pub const OBJECTS: [(&str, &str); 3] = [
    ("pods", "/api/v1/pods"),
    ("namespaces", "/api/v1/namespaces"),
    (
        "networkpolicies",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ),
];

#[derive(Debug, Clone)]
enum Line {
    Event(String),
    /// An event of one of [`OBJECTS`]: (resource, line).
    Object(String, String),
    /// An `ERROR` event with code 410, then the end of the stream.
    Gone,
    /// The end of the stream (the server closed the watch).
    End,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone (the history is compacted).
    compacted: u64,
    history: Vec<(u64, String)>,
    /// [`OBJECTS`] by resource, then `namespace/name` (or `name`).
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Their events: (resourceVersion, resource, line).
    object_history: Vec<(u64, String, String)>,
    requests: Vec<Request>,
    forbidden: Vec<(String, String)>,
    down: bool,
    /// Annotations held at a value whatever patches say: (node, key) → value.
    forced: BTreeMap<(String, String), String>,
    /// What patches last asked for a forced annotation, to restore on `unforce`.
    patched: BTreeMap<(String, String), String>,
}

struct Shared {
    state: Mutex<State>,
    lines: broadcast::Sender<Line>,
}

/// A running fake API server. Stops when dropped.
pub struct FakeApi {
    shared: Arc<Shared>,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A Node as the kubelet and the controller manager would have made it (the lab API server's).
pub use weft_lab::api::node;
use weft_lab::api::store::merge;

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, body: Value) -> axum::response::Response {
    axum::response::Response::builder()
        .status(StatusCode::from_u16(code).expect("valid status"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

impl State {
    /// Records a change of `name` as event `kind`, with a new resourceVersion.
    fn change(&mut self, kind: &str, name: &str, mut object: Value) -> String {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == "DELETED" {
            self.nodes.remove(name);
        } else {
            self.nodes.insert(name.into(), object.clone());
        }
        let line = json!({"type": kind, "object": object}).to_string();
        self.history.push((self.rv, line.clone()));
        line
    }

    /// Records `request`; the answer when the server is down or RBAC refuses it.
    fn admit(&mut self, request: Request) -> Option<axum::response::Response> {
        let (verb, resource) = (request.verb.clone(), request.resource.clone());
        self.requests.push(request);
        if self.down {
            return Some(reply(
                503,
                status(503, "ServiceUnavailable", "the fake API server is down"),
            ));
        }
        if self
            .forbidden
            .iter()
            .any(|(v, r)| *v == verb && *r == resource)
        {
            let msg = format!(
                "{resource} is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot \
                 {verb} resource \"{resource}\" at the cluster scope"
            );
            return Some(reply(403, status(403, "Forbidden", &msg)));
        }
        None
    }

    /// Records a change of an object of `resource`.
    fn change_object(&mut self, resource: &str, kind: &str, mut object: Value) -> Line {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = match object["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{ns}/{}", object["metadata"]["name"].as_str().unwrap_or("")),
            None => object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        };
        let store = self.objects.entry(resource.into()).or_default();
        if kind == "DELETED" {
            store.remove(&key);
        } else {
            store.insert(key, object.clone());
        }
        let line = json!({"type": kind, "object": object}).to_string();
        self.object_history
            .push((self.rv, resource.into(), line.clone()));
        Line::Object(resource.into(), line)
    }

    fn apply_forced(&self, name: &str, node: &mut Value) {
        for ((n, k), v) in &self.forced {
            if n == name {
                node["metadata"]["annotations"][k] = json!(v);
            }
        }
    }
}

impl FakeApi {
    /// Starts a server on `bind` (port 0: any), in the namespace at `netns` when given
    /// (`/run/netns/NAME`; entering it is retried for up to 60 s while it is being made).
    pub fn start(bind: SocketAddr, netns: Option<PathBuf>) -> FakeApi {
        Self::start_with_nodes(bind, netns, vec![])
    }

    /// Like [`FakeApi::start`], with these Nodes there from the first request on.
    pub fn start_with_nodes(
        bind: SocketAddr,
        netns: Option<PathBuf>,
        nodes: Vec<Value>,
    ) -> FakeApi {
        let (lines, _) = broadcast::channel(1024);
        let mut state = State::default();
        for n in nodes {
            let name = n["metadata"]["name"].as_str().expect("name").to_string();
            state.change("ADDED", &name, n);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            lines,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            if let Some(path) = netns {
                enter_netns(&path);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(s);
                // Not a graceful shutdown: that waits for every connection to close, and a
                // client in the test's own runtime cannot close one while the test thread
                // is blocked joining this one. Dropping the runtime closes them all.
                tokio::select! {
                    r = axum::serve(listener, app) => r.expect("serve"),
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(90))
            .expect("the fake API server did not start");
        FakeApi {
            shared,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.shared.state.lock().unwrap())
    }

    fn send(&self, line: Line) {
        let _ = self.shared.lines.send(line);
    }

    /// Adds (or replaces) a Node: an `ADDED` event.
    pub fn add_node(&self, node: Value) {
        let name = node["metadata"]["name"].as_str().expect("name").to_string();
        let line = self.with(|s| s.change("ADDED", &name, node));
        self.send(Line::Event(line));
    }

    /// Changes a Node: a `MODIFIED` event.
    pub fn modify_node(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let line = self.with(|s| {
            let mut n = s.nodes.get(name).cloned().expect("no such node");
            f(&mut n);
            s.change("MODIFIED", name, n)
        });
        self.send(Line::Event(line));
    }

    /// Deletes a Node: a `DELETED` event.
    pub fn delete_node(&self, name: &str) {
        let line = self.with(|s| {
            let n = s.nodes.get(name).cloned().expect("no such node");
            s.change("DELETED", name, n)
        });
        self.send(Line::Event(line));
    }

    /// Deletes a Node without telling any watch (as if the event were compacted away):
    /// only a list shows it.
    pub fn delete_node_unseen(&self, name: &str) {
        self.with(|s| {
            s.rv += 1;
            s.nodes.remove(name);
        });
    }

    /// Creates or replaces an object of `resource` (one of [`OBJECTS`]): `ADDED` or
    /// `MODIFIED`.
    pub fn put(&self, resource: &str, object: Value) {
        assert!(OBJECTS.iter().any(|(r, _)| *r == resource), "{resource}");
        let line = self.with(|s| {
            let ns = object["metadata"]["namespace"].as_str();
            let name = object["metadata"]["name"].as_str().expect("name");
            let key = ns.map_or(name.to_string(), |ns| format!("{ns}/{name}"));
            let exists = s
                .objects
                .get(resource)
                .is_some_and(|m| m.contains_key(&key));
            s.change_object(resource, if exists { "MODIFIED" } else { "ADDED" }, object)
        });
        self.send(line);
    }

    /// Deletes an object of `resource` (`namespace/name`, or `name` for Namespaces).
    pub fn remove(&self, resource: &str, key: &str) {
        let line = self.with(|s| {
            let o = s.objects.get(resource).and_then(|m| m.get(key)).cloned();
            s.change_object(resource, "DELETED", o.expect("no such object"))
        });
        self.send(line);
    }

    /// A Node as stored.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.with(|s| s.nodes.get(name).cloned())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.with(|s| s.rv)
    }

    /// Sends a `BOOKMARK` at a new resourceVersion (other objects changed meanwhile).
    pub fn bookmark(&self) -> u64 {
        let (rv, line) = self.with(|s| {
            s.rv += 1;
            let line = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                "metadata": {"resourceVersion": s.rv.to_string()}}})
            .to_string();
            (s.rv, line)
        });
        self.send(Line::Event(line));
        rv
    }

    /// Compacts the history: every open watch gets an `ERROR` 410 and ends, and a watch from
    /// any earlier resourceVersion gets the same; a client must list again.
    pub fn expire(&self) {
        self.with(|s| {
            s.compacted = s.rv;
            s.history.clear();
            s.object_history.clear();
        });
        self.send(Line::Gone);
    }

    /// Ends every open watch normally (the server's watch timeout).
    pub fn close_watches(&self) {
        self.send(Line::End);
    }

    /// While down, every request gets 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
        if down {
            self.send(Line::End);
        }
    }

    /// Refuses (verb, resource) with 403, as RBAC would.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.with(|s| s.forbidden.push((verb.into(), resource.into())));
    }

    /// Holds annotation `key` of Node `name` at `value`, whatever patches say.
    pub fn force_annotation(&self, name: &str, key: &str, value: &str) {
        self.with(|s| {
            s.forced.insert((name.into(), key.into()), value.into());
        });
        self.modify_node(name, |n| n["metadata"]["annotations"][key] = json!(value));
    }

    /// Lets go of a forced annotation, back to what the last patch asked for.
    pub fn unforce_annotation(&self, name: &str, key: &str) {
        let last = self.with(|s| {
            s.forced.remove(&(name.to_string(), key.to_string()));
            s.patched.get(&(name.to_string(), key.to_string())).cloned()
        });
        self.modify_node(name, |n| match last {
            Some(v) => n["metadata"]["annotations"][key] = json!(v),
            None => {
                if let Some(a) = n["metadata"]["annotations"].as_object_mut() {
                    a.remove(key);
                }
            }
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.with(|s| s.requests.clone())
    }

    /// The distinct (verb, resource) pairs used so far.
    pub fn used(&self) -> std::collections::BTreeSet<(String, String)> {
        self.requests()
            .into_iter()
            .map(|r| (r.verb, r.resource))
            .collect()
    }

    /// A kubeconfig for this server (plain http, no credentials).
    pub fn kubeconfig(&self, host: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://{host}:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr.port()
        )
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.send(Line::End);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter_netns(path: &std::path::Path) {
    use nix::sched::{CloneFlags, setns};
    let start = std::time::Instant::now();
    loop {
        // `ip netns add` makes the file, then mounts the namespace on it: until then setns
        // fails, so retry.
        if let Ok(f) = std::fs::File::open(path)
            && setns(&f, CloneFlags::CLONE_NEWNET).is_ok()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "namespace {} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let path = uri.path().trim_end_matches('/');
    if let Some((resource, _)) = OBJECTS.iter().find(|(_, p)| *p == path) {
        return objects(&shared, resource, &method, query, &headers, body);
    }
    let rest = path.strip_prefix("/api/v1/nodes");
    let (name, sub) = match rest {
        Some("") => (None, None),
        Some(r) => {
            let mut parts = r.trim_start_matches('/').splitn(2, '/');
            (
                parts.next().map(str::to_string),
                parts.next().map(str::to_string),
            )
        }
        None => (None, None),
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &name, watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::PATCH, ..) => "patch",
        (&Method::PUT, ..) => "update",
        (&Method::POST, ..) => "create",
        (&Method::DELETE, ..) => "delete",
        _ => "other",
    };
    let resource = match (rest, &sub) {
        (Some(_), None) => "nodes".to_string(),
        (Some(_), Some(s)) => format!("nodes/{s}"),
        (None, _) => path.to_string(),
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut state = shared.state.lock().unwrap();
    if let Some(refused) = state.admit(Request {
        verb: verb.into(),
        resource: resource.clone(),
        name: name.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.to_vec(),
    }) {
        return refused;
    }
    match (verb, resource.as_str()) {
        ("list", "nodes") => {
            let items: Vec<Value> = state.nodes.values().cloned().collect();
            reply(
                200,
                json!({"kind": "NodeList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
            )
        }
        ("watch", "nodes") => {
            let (from, gone_line) = match watch_from(&state, &query) {
                Ok(w) => w,
                Err(gone) => return reply_lines(gone),
            };
            let backlog: Vec<String> = state
                .history
                .iter()
                .filter(|(rv, _)| *rv > from)
                .map(|(_, l)| l.clone())
                .collect();
            let rx = shared.lines.subscribe();
            drop(state);
            watch_reply(backlog, rx, gone_line, None)
        }
        ("patch", "nodes" | "nodes/status") => {
            let name = name.unwrap_or_default();
            let Some(mut node) = state.nodes.get(&name).cloned() else {
                let msg = format!("nodes \"{name}\" not found");
                return reply(404, status(404, "NotFound", &msg));
            };
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return reply(400, status(400, "BadRequest", "body is not JSON"));
            };
            let strategic =
                content_type.as_deref() == Some("application/strategic-merge-patch+json");
            let merge_patch = content_type.as_deref() == Some("application/merge-patch+json");
            if !strategic && !merge_patch {
                return reply(
                    415,
                    status(415, "UnsupportedMediaType", "unsupported patch type"),
                );
            }
            // Annotations change through either: the API server's status strategy for Nodes
            // keeps only the spec from the old object (flannel annotates through it too).
            for (k, v) in patch["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if let Some(v) = v.as_str() {
                    state.patched.insert((name.clone(), k.clone()), v.into());
                }
            }
            let mut p = patch.clone();
            if resource == "nodes/status" {
                // The status subresource does not change the spec.
                if let Some(m) = p.as_object_mut() {
                    m.remove("spec");
                }
                if strategic && let Some(conds) = p["status"].get_mut("conditions") {
                    // Strategic merge: conditions merge by type.
                    let new: Vec<Value> = conds.as_array().cloned().unwrap_or_default();
                    let mut all: Vec<Value> = node["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for c in new {
                        match all.iter_mut().find(|o| o["type"] == c["type"]) {
                            Some(o) => merge(o, &c),
                            None => all.push(c),
                        }
                    }
                    *conds = Value::Array(all);
                }
            } else if let Some(m) = p.as_object_mut() {
                m.remove("status");
            }
            merge(&mut node, &p);
            state.apply_forced(&name, &mut node);
            let line = state.change("MODIFIED", &name, node);
            let out = state.nodes[&name].clone();
            drop(state);
            let _ = shared.lines.send(Line::Event(line));
            reply(200, out)
        }
        ("get", "nodes") => match state.nodes.get(name.as_deref().unwrap_or("")) {
            Some(n) => reply(200, n.clone()),
            None => reply(404, status(404, "NotFound", "not found")),
        },
        _ => reply(
            404,
            status(404, "NotFound", "the fake API server serves Nodes only"),
        ),
    }
}

/// A watch's answer: `backlog`, then the lines of `resource` (Nodes when `None`) as they come.
fn watch_reply(
    backlog: Vec<String>,
    rx: broadcast::Receiver<Line>,
    gone_line: String,
    resource: Option<String>,
) -> axum::response::Response {
    let stream = futures_util::stream::unfold(
        (backlog.into_iter(), rx, false),
        move |(mut backlog, mut rx, done)| {
            let gone_line = gone_line.clone();
            let resource = resource.clone();
            async move {
                if done {
                    return None;
                }
                if let Some(l) = backlog.next() {
                    return Some((
                        Ok::<_, std::io::Error>(format!("{l}\n")),
                        (backlog, rx, false),
                    ));
                }
                loop {
                    match rx.recv().await {
                        Ok(Line::Event(l)) if resource.is_none() => {
                            return Some((Ok(format!("{l}\n")), (backlog, rx, false)));
                        }
                        Ok(Line::Object(r, l)) if resource.as_ref() == Some(&r) => {
                            return Some((Ok(format!("{l}\n")), (backlog, rx, false)));
                        }
                        Ok(Line::Event(_) | Line::Object(..)) => continue,
                        Ok(Line::Gone) => {
                            return Some((Ok(format!("{gone_line}\n")), (backlog, rx, true)));
                        }
                        Ok(Line::End) | Err(broadcast::error::RecvError::Closed) => {
                            return None;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    }
                }
            }
        },
    );
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// List and watch of one of [`OBJECTS`], cluster-wide.
fn objects(
    shared: &Arc<Shared>,
    resource: &str,
    method: &Method,
    query: BTreeMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method, watch) {
        (&Method::GET, true) => "watch",
        (&Method::GET, false) => "list",
        _ => "other",
    };
    let mut state = shared.state.lock().unwrap();
    if let Some(refused) = state.admit(Request {
        verb: verb.into(),
        resource: resource.into(),
        name: None,
        query: query.clone(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.to_vec(),
    }) {
        return refused;
    }
    let (kind, api_version) = match resource {
        "pods" => ("PodList", "v1"),
        "namespaces" => ("NamespaceList", "v1"),
        _ => ("NetworkPolicyList", "networking.k8s.io/v1"),
    };
    match verb {
        "list" => {
            let items: Vec<Value> = state
                .objects
                .get(resource)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            reply(
                200,
                json!({"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
            )
        }
        "watch" => {
            let (from, gone_line) = match watch_from(&state, &query) {
                Ok(w) => w,
                Err(gone) => return reply_lines(gone),
            };
            let backlog: Vec<String> = state
                .object_history
                .iter()
                .filter(|(rv, r, _)| *rv > from && r == resource)
                .map(|(_, _, l)| l.clone())
                .collect();
            let rx = shared.lines.subscribe();
            drop(state);
            watch_reply(backlog, rx, gone_line, Some(resource.to_string()))
        }
        _ => reply(
            405,
            status(
                405,
                "MethodNotAllowed",
                "the fake API server lists and watches these only",
            ),
        ),
    }
}

/// Where a watch starts, and the 410 line that ends it when its history is compacted; the
/// whole answer when it starts from before that.
fn watch_from(state: &State, query: &BTreeMap<String, String>) -> Result<(u64, String), String> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let gone_line = json!({"type": "ERROR", "object": status(410, "Expired",
        "too old resource version")})
    .to_string();
    if from < state.compacted {
        return Err(format!("{gone_line}\n"));
    }
    Ok((from, gone_line))
}

fn reply_lines(body: String) -> axum::response::Response {
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}
