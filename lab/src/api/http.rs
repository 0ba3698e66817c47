//! The lab API server's HTTP side: discovery, the verbs on objects, watches as streams of
//! `WatchEvent` lines, and a Kubernetes `Status` for every refusal. HTTP itself is axum's
//! (hyper's); paths go through route.rs, bodies through serde_json.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::Shared;
use super::route::{self, Route};
use super::store::{
    self, Event, Kind, PatchType, Refusal, Term, WatchStart, parse_selector, refusal, selects,
    unknown_field,
};

/// How often a watch that asked for bookmarks gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// How long a deleted Namespace stays `Terminating` before it and its contents go.
pub const NAMESPACE_FINALIZE: Duration = Duration::from_secs(1);

/// What watches hear.
#[derive(Debug, Clone)]
pub enum Signal {
    Event(Arc<Event>),
    /// The history was compacted: open watches get 410 Gone and end.
    Expired,
}

pub fn status_body(r: &Refusal) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": r.message, "reason": r.reason, "code": r.code})
}

fn reply(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

fn refuse(r: &Refusal) -> Response {
    reply(r.code, &status_body(r))
}

fn discovery(path: &str) -> Option<Value> {
    let resources = |gv: &str| -> Value {
        let mut list = Vec::new();
        for k in Kind::ALL.into_iter().filter(|k| k.api_version() == gv) {
            list.push(json!({"name": k.plural(), "singularName": k.singular(),
                "namespaced": k.namespaced(), "kind": k.name(), "shortNames": k.short_names(),
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}));
            if k.has_status() {
                list.push(
                    json!({"name": format!("{}/status", k.plural()), "singularName": "",
                    "namespaced": k.namespaced(), "kind": k.name(),
                    "verbs": ["get", "patch", "update"]}),
                );
            }
        }
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": list})
    };
    let networking = json!({"name": "networking.k8s.io",
        "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}});
    Some(match path {
        "/version" => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-weft-lab",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": []}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [networking]}),
        "/apis/networking.k8s.io" => {
            let mut g = networking;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        }
        "/api/v1" => resources("v1"),
        "/apis/networking.k8s.io/v1" => resources("networking.k8s.io/v1"),
        _ => return None,
    })
}

/// Just enough OpenAPI v3 for `kubectl apply`: it validates client-side from a schema unless
/// the document says the server takes `fieldValidation` on PATCH, and builds its patches from
/// its compiled-in types when the document has no schema. So each group's document lists one
/// PATCH per kind with that parameter, and no schemas. (The server checks field names only
/// where [`unknown_field`] does.)
fn openapi(path: &str) -> Option<Value> {
    let gvs = [
        ("api/v1", "v1"),
        ("apis/networking.k8s.io/v1", "networking.k8s.io/v1"),
    ];
    if path == "/openapi/v3" {
        let paths: serde_json::Map<String, Value> = gvs
            .iter()
            .map(|(p, _)| {
                (
                    p.to_string(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=lab")}),
                )
            })
            .collect();
        return Some(json!({"paths": paths}));
    }
    let (prefix, gv) = gvs
        .iter()
        .find(|(p, _)| path.strip_prefix("/openapi/v3/") == Some(p))?;
    let mut paths = serde_json::Map::new();
    for k in Kind::ALL.into_iter().filter(|k| k.api_version() == *gv) {
        let (group, version) = gv.split_once('/').unwrap_or(("", gv));
        let ns = if k.namespaced() {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        paths.insert(
            format!("/{prefix}/{ns}{}/{{name}}", k.plural()),
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": k.name()},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {}}}),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "weft lab", "version": "v1.33.0"},
        "paths": paths}),
    )
}

/// The selectors a list or watch asked for, checked against one object.
struct Filter {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

impl Filter {
    fn new(q: &BTreeMap<String, String>) -> Result<Filter, Refusal> {
        let labels = parse_selector(q.get("labelSelector").map_or("", String::as_str))?;
        let fields = parse_selector(q.get("fieldSelector").map_or("", String::as_str))?;
        for (k, _) in &fields {
            if ![
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "status.phase",
            ]
            .contains(&k.as_str())
            {
                return Err(refusal(
                    400,
                    "BadRequest",
                    format!("field label not supported by the lab API server: {k}"),
                ));
            }
        }
        Ok(Filter { labels, fields })
    }

    fn matches(&self, o: &Value) -> bool {
        let field = |k: &str| -> Value {
            let mut v = o;
            for part in k.split('.') {
                v = &v[part];
            }
            v.clone()
        };
        let fields: serde_json::Map<String, Value> = self
            .fields
            .iter()
            .map(|(k, _)| (k.clone(), field(k)))
            .collect();
        selects(&self.labels, &o["metadata"]["labels"])
            && selects(&self.fields, &Value::Object(fields))
    }
}

/// A row's cells from its object.
type Cells = Box<dyn Fn(&Value) -> Vec<String>>;

/// A `meta.k8s.io/v1` Table, what kubectl prints: the columns `kubectl get` shows on a real
/// cluster for these kinds (those after the first `wide` one only with `-o wide`).
fn table(kind: Kind, items: &[Value], rv: u64) -> Value {
    let col = |name: &str, priority: u8| {
        json!({"name": name, "type": "string", "format": if name == "Name" {"name"} else {""},
            "description": "", "priority": priority})
    };
    let s = |v: &Value| v.as_str().unwrap_or("<none>").to_string();
    let age = |o: &Value| store::age(o["metadata"]["creationTimestamp"].as_str().unwrap_or(""));
    let (columns, cells): (Vec<Value>, Cells) = match kind {
        Kind::Node => (
            vec![
                col("Name", 0),
                col("Status", 0),
                col("Roles", 0),
                col("Age", 0),
                col("Version", 0),
                col("Internal-IP", 1),
                col("Pod-CIDR", 1),
            ],
            Box::new(move |o| {
                let ready = o["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let ip = o["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == "InternalIP")
                    .map_or(json!(null), |a| a["address"].clone());
                vec![
                    s(&o["metadata"]["name"]),
                    (if ready { "Ready" } else { "NotReady" }).into(),
                    "<none>".into(),
                    age(o),
                    s(&o["status"]["nodeInfo"]["kubeletVersion"]),
                    s(&ip),
                    s(&o["spec"]["podCIDR"]),
                ]
            }),
        ),
        Kind::Namespace => (
            vec![col("Name", 0), col("Status", 0), col("Age", 0)],
            Box::new(move |o| vec![s(&o["metadata"]["name"]), s(&o["status"]["phase"]), age(o)]),
        ),
        Kind::Pod => (
            vec![
                col("Name", 0),
                col("Ready", 0),
                col("Status", 0),
                col("Restarts", 0),
                col("Age", 0),
                col("IP", 1),
                col("Node", 1),
            ],
            Box::new(move |o| {
                let n = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let running = o["status"]["phase"] == "Running";
                vec![
                    s(&o["metadata"]["name"]),
                    format!("{}/{n}", if running { n } else { 0 }),
                    s(&o["status"]["phase"]),
                    "0".into(),
                    age(o),
                    s(&o["status"]["podIP"]),
                    s(&o["spec"]["nodeName"]),
                ]
            }),
        ),
        Kind::NetworkPolicy => (
            vec![col("Name", 0), col("Pod-Selector", 0), col("Age", 0)],
            Box::new(move |o| {
                let sel = o["spec"]["podSelector"]["matchLabels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                vec![
                    s(&o["metadata"]["name"]),
                    sel.filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "<none>".into()),
                    age(o),
                ]
            }),
        ),
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let meta = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"]});
            json!({"cells": cells(o), "object": meta})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": columns, "rows": rows})
}

fn list_kind(kind: Kind) -> String {
    format!("{}List", kind.name())
}

/// Handles one request.
pub async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    if let Some(doc) = discovery(path) {
        return if method == Method::GET {
            reply(200, &doc)
        } else {
            refuse(&refusal(
                405,
                "MethodNotAllowed",
                format!("{method} is not allowed on {path}"),
            ))
        };
    }
    if let Some(doc) = openapi(path) {
        return reply(200, &doc);
    }
    let route = match route::parse(path) {
        Ok(r) => r,
        Err(r) => return refuse(&r),
    };
    let query = route::query(uri.query().unwrap_or(""));
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return refuse(&refusal(
            400,
            "BadRequest",
            "the lab API server does not support dryRun",
        ));
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let as_table = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let how = How { watch, as_table };
    match respond(&shared, &method, &route, &query, &content_type, &body, how) {
        Ok(r) => r,
        Err(r) => refuse(&r),
    }
}

/// How a GET wants its answer.
#[derive(Clone, Copy)]
struct How {
    watch: bool,
    as_table: bool,
}

fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    route: &Route,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: &Bytes,
    How { watch, as_table }: How,
) -> Result<Response, Refusal> {
    let kind = route.kind;
    let ns = route.namespace.clone().unwrap_or_default();
    let one = |what: &str| -> Result<String, Refusal> {
        route.name.clone().ok_or_else(|| {
            refusal(405, "MethodNotAllowed", format!("{what} needs an object's name (the lab API server does not support {what} on a collection)"))
        })
    };
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let json_body = || -> Result<Value, Refusal> {
        if !matches!(content_type, "" | "application/json") && *method != Method::PATCH {
            // Typed clients (`kubectl create namespace`, `kubectl run`) send protobuf.
            return Err(refusal(
                415,
                "UnsupportedMediaType",
                format!(
                    "the lab API server reads JSON only, not {content_type:?} (kubectl apply -f sends JSON)"
                ),
            ));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| refusal(400, "BadRequest", format!("the body is not JSON: {e}")))?;
        match unknown_field(kind, &v) {
            Some(field) if strict => Err(refusal(
                400,
                "BadRequest",
                format!(
                    "{} in version {:?} cannot be handled: strict decoding error: unknown field {field:?}",
                    kind.name(),
                    kind.api_version()
                ),
            )),
            _ => Ok(v),
        }
    };
    let mut store = shared.store.lock().expect("the store's lock");
    let published = |events: &[Arc<Event>]| {
        for e in events {
            let _ = shared.signals.send(Signal::Event(e.clone()));
        }
    };
    match *method {
        Method::GET if route.name.is_none() => {
            let filter = Filter::new(query)?;
            if watch {
                // A streaming list (sendInitialEvents) starts with every object whatever
                // the version: the state it builds must be whole.
                let initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
                let from = match query.get("resourceVersion").map(String::as_str) {
                    _ if initial => None,
                    None | Some("" | "0") => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        refusal(400, "BadRequest", format!("invalid resourceVersion {v:?}"))
                    })?),
                };
                let start = store.watch_from(kind, route.namespace.as_deref(), from);
                let rx = shared.signals.subscribe();
                drop(store);
                return Ok(watch_stream(
                    shared.clone(),
                    route.clone(),
                    query,
                    filter,
                    start,
                    rx,
                    as_table,
                ));
            }
            let items: Vec<Value> = store
                .list(kind, route.namespace.as_deref())
                .into_iter()
                .filter(|o| filter.matches(o))
                .collect();
            if as_table {
                return Ok(reply(200, &table(kind, &items, store.resource_version())));
            }
            Ok(reply(
                200,
                &json!({"kind": list_kind(kind), "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": store.resource_version().to_string()},
                    "items": items}),
            ))
        }
        Method::GET => {
            let o = store.get(kind, &ns, &one("get")?)?;
            if as_table {
                return Ok(reply(200, &table(kind, &[o], store.resource_version())));
            }
            Ok(reply(200, &o))
        }
        Method::POST => {
            if route.name.is_some() || route.status {
                return Err(refusal(
                    405,
                    "MethodNotAllowed",
                    "POST creates in a collection only",
                ));
            }
            let (o, e) = store.create(kind, &ns, json_body()?)?;
            published(&[e]);
            Ok(reply(201, &o))
        }
        Method::PUT => {
            let (o, e) = store.update(kind, &ns, &one("update")?, route.status, json_body()?)?;
            published(&[e]);
            Ok(reply(200, &o))
        }
        Method::PATCH => {
            let how = match content_type {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                other => {
                    return Err(refusal(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the lab API server supports merge and strategic merge patches, not {other:?} (no JSON patch, no server-side apply)"
                        ),
                    ));
                }
            };
            let name = one("patch")?;
            let (o, e) = store.patch(kind, &ns, &name, route.status, how, &json_body()?)?;
            published(&[e]);
            Ok(reply(200, &o))
        }
        Method::DELETE => {
            if route.status {
                return Err(refusal(
                    405,
                    "MethodNotAllowed",
                    "a status cannot be deleted",
                ));
            }
            let name = one("deletecollection")?;
            let (o, events) = store.delete(kind, &ns, &name)?;
            published(&events);
            if kind == Kind::Namespace {
                // Upstream's namespace controller takes a moment too.
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(NAMESPACE_FINALIZE).await;
                    let events = shared
                        .store
                        .lock()
                        .expect("the store's lock")
                        .finalize(&name);
                    for e in events {
                        let _ = shared.signals.send(Signal::Event(e));
                    }
                });
            }
            Ok(reply(200, &o))
        }
        _ => Err(refusal(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported by the lab API server"),
        )),
    }
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> String {
    let mut o = json!({"kind": kind.name(), "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string()}});
    if initial_end {
        o["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": o}).to_string()
}

fn gone_line() -> String {
    let s = status_body(&refusal(410, "Expired", "too old resource version"));
    json!({"type": "ERROR", "object": s}).to_string()
}

fn watch_stream(
    shared: Arc<Shared>,
    route: Route,
    query: &BTreeMap<String, String>,
    filter: Filter,
    start: WatchStart,
    rx: broadcast::Receiver<Signal>,
    as_table: bool,
) -> Response {
    // `kubectl get -w` asks for each event's object as a one-row Table.
    let line = move |e: &Event| -> String {
        if as_table {
            let t = table(e.kind, std::slice::from_ref(&e.object), e.rv);
            json!({"type": e.kind_of_change, "object": t}).to_string()
        } else {
            e.line()
        }
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_end = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut first: Vec<String> = match start {
        WatchStart::Expired => vec![gone_line()],
        WatchStart::Replay(events) => {
            let mut lines: Vec<String> = events
                .iter()
                .filter(|e| filter.matches(&e.object))
                .map(|e| line(e))
                .collect();
            if initial_end && bookmarks {
                let rv = shared
                    .store
                    .lock()
                    .expect("the store's lock")
                    .resource_version();
                lines.push(bookmark(route.kind, rv, true));
            }
            lines
        }
    };
    let expired = first.first().is_some_and(|l| l.contains("\"ERROR\""));
    first.reverse();
    struct W {
        first: Vec<String>,
        done: bool,
        rx: broadcast::Receiver<Signal>,
        deadline: Option<tokio::time::Instant>,
        tick: tokio::time::Interval,
    }
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.reset();
    let w = W {
        first,
        done: expired,
        rx,
        deadline: timeout.map(|t| tokio::time::Instant::now() + t),
        tick,
    };
    let stream = futures_util::stream::unfold(w, move |mut w| {
        let shared = shared.clone();
        let route = route.clone();
        let filter_ok = {
            let labels = filter.labels.clone();
            let fields = filter.fields.clone();
            Filter { labels, fields }
        };
        async move {
            if let Some(l) = w.first.pop() {
                return Some((Ok::<_, std::io::Error>(format!("{l}\n")), w));
            }
            if w.done {
                return None;
            }
            loop {
                let deadline = async {
                    match w.deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = deadline => return None,
                    _ = w.tick.tick(), if bookmarks => {
                        let rv = shared.store.lock().expect("the store's lock").resource_version();
                        return Some((Ok(format!("{}\n", bookmark(route.kind, rv, false))), w));
                    }
                    s = w.rx.recv() => match s {
                        Ok(Signal::Event(e)) => {
                            let mine = e.kind == route.kind
                                && route.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                                && filter_ok.matches(&e.object);
                            if mine {
                                return Some((Ok(format!("{}\n", line(&e))), w));
                            }
                        }
                        Ok(Signal::Expired) => {
                            w.done = true;
                            return Some((Ok(format!("{}\n", gone_line())), w));
                        }
                        // A watcher that fell behind ends; it watches again from its last
                        // version, which the history still holds.
                        Err(_) => return None,
                    }
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
