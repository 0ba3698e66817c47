//! The lab API server's objects: Nodes, Namespaces, Pods and NetworkPolicies as JSON, one
//! resourceVersion counter for all of them (as etcd's revision), and a bounded history of
//! changes that watches replay from. A watch from a version older than the history gets
//! 410 Gone, as a real server does once etcd has compacted.
//!
//! Everything here is pure (no I/O): the HTTP layer (http.rs) turns requests into calls.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

/// How many changes a watch can replay: older versions get 410 Gone.
pub const HISTORY: usize = 4096;

/// The kinds the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Node, Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

    /// The resource name in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::NetworkPolicy => "networkpolicy",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Node => &["no"],
            Kind::Namespace => &["ns"],
            Kind::Pod => &["po"],
            Kind::NetworkPolicy => &["netpol"],
        }
    }

    /// `v1` or `networking.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::NetworkPolicy)
    }

    /// Whether it has a `status` subresource (whose writes change only the status, and
    /// whose main resource's writes leave the status alone).
    pub fn has_status(self) -> bool {
        !matches!(self, Kind::NetworkPolicy)
    }

    pub fn from_plural(group_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == group_version)
    }
}

/// Where an object lives: kind, namespace ("" for cluster-scoped kinds), name.
pub type Key = (Kind, String, String);

/// One change, as watches send it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind_of_change: &'static str,
    pub object: Value,
}

impl Event {
    /// The watch line (without its newline).
    pub fn line(&self) -> String {
        json!({"type": self.kind_of_change, "object": self.object}).to_string()
    }
}

/// Why a request was refused: an HTTP code, a Kubernetes reason and a message, which the
/// HTTP layer turns into a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

pub fn refusal(code: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason,
        message: message.into(),
    }
}

/// How a write changes an object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    /// RFC 7386.
    Merge,
    /// Kubernetes' strategic merge patch, approximated (see [`strategic`]).
    Strategic,
}

/// The objects and their history.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    uids: u64,
}

/// What a watch from a resourceVersion starts with.
#[derive(Debug)]
pub enum WatchStart {
    /// Replay these, then follow live changes.
    Replay(Vec<Arc<Event>>),
    /// The version is older than the history: 410 Gone.
    Expired,
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long ago an RFC 3339 UTC time (as [`now`] writes) was, as kubectl prints ages: `42s`,
/// `5m`, `3h`, `2d`. `<unknown>` for anything else.
pub fn age(timestamp: &str) -> String {
    let parse = || -> Option<u64> {
        let (date, time) = timestamp.strip_suffix('Z')?.split_once('T')?;
        let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
        let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
        // Days from the civil date (the inverse of `now`'s calendar).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
    };
    let Some(then) = parse() else {
        return "<unknown>".into();
    };
    let s = epoch_secs().saturating_sub(then);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn now() -> String {
    // RFC 3339 in UTC, without a date crate: the days since 1970 by the civil calendar.
    let secs = epoch_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Lists whose items a strategic merge patch merges by a key instead of replacing: the ones
/// of these kinds that matter to the lab (every other list is replaced, which is what the
/// upstream strategy does for the atomic lists of NetworkPolicy and most of a Pod's).
const MERGE_KEYS: &[(&str, &str)] = &[
    ("conditions", "type"),
    ("containers", "name"),
    ("ports", "containerPort"),
    ("addresses", "type"),
];

/// A strategic merge patch, approximated: maps merge as in a merge patch, the lists named in
/// [`MERGE_KEYS`] merge by their key, others are replaced; `$setElementOrder` and
/// `$retainKeys` (which only order or prune what the patch already says) are ignored; other
/// directives (`$patch`, `$deleteFromPrimitiveList`) are refused rather than misapplied.
pub fn strategic(target: &mut Value, patch: &Value) -> Result<(), Refusal> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if k.starts_with('$') {
            return Err(refusal(
                501,
                "NotImplemented",
                format!("the lab API server does not implement the strategic merge directive {k}"),
            ));
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let key = MERGE_KEYS.iter().find(|(l, _)| l == k).map(|(_, key)| *key);
        match (key, v, t.get_mut(k)) {
            (Some(key), Value::Array(new), Some(Value::Array(old))) => {
                let mut all = old.clone();
                for item in new {
                    match all.iter_mut().find(|o| o.get(key) == item.get(key)) {
                        Some(o) => strategic(o, item)?,
                        None => all.push(item.clone()),
                    }
                }
                *old = all;
            }
            _ => strategic(t.entry(k.clone()).or_insert(Value::Null), v)?,
        }
    }
    Ok(())
}

fn not_found(kind: Kind, name: &str) -> Refusal {
    refusal(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural()),
    )
}

/// A selector's term: `(key, None)` for existence (`!key` for absence), `(key, Some((equal,
/// value)))` otherwise.
pub type Term = (String, Option<(bool, String)>);

/// Checks that `labelSelector`'s terms (`k=v`, `k==v`, `k!=v`, `k`, `!k`) hold for `labels`.
/// Set-based terms (`in`, `notin`) are refused by [`parse_selector`].
pub fn selects(selector: &[Term], labels: &Value) -> bool {
    selector.iter().all(|(k, want)| {
        let have = labels
            .get(k.trim_start_matches('!'))
            .and_then(Value::as_str);
        match want {
            None if k.starts_with('!') => have.is_none(),
            None => have.is_some(),
            Some((true, v)) => have == Some(v.as_str()),
            Some((false, v)) => have != Some(v.as_str()),
        }
    })
}

/// Parses an equality-based selector: `(key, None)` for existence (`!key` for absence),
/// `(key, Some((equal, value)))` otherwise.
pub fn parse_selector(s: &str) -> Result<Vec<Term>, Refusal> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains('(') || term.contains(' ') {
            return Err(refusal(
                400,
                "BadRequest",
                format!("the lab API server supports equality selectors only, not {term:?}"),
            ));
        }
        let parsed = if let Some((k, v)) = term.split_once("!=") {
            (k.to_string(), Some((false, v.to_string())))
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k.to_string(), Some((true, v.to_string())))
        } else {
            (term.to_string(), None)
        };
        out.push(parsed);
    }
    Ok(out)
}

impl Store {
    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, Refusal> {
        self.objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(kind, name))
    }

    /// Objects of `kind` (in `namespace`, or all when None).
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn record(
        &mut self,
        kind: Kind,
        namespace: &str,
        change: &'static str,
        object: Value,
    ) -> Arc<Event> {
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            namespace: namespace.to_string(),
            kind_of_change: change,
            object,
        });
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.oldest = e.rv;
            }
        }
        event
    }

    /// Forgets the whole history: every watch from an earlier version gets 410 Gone.
    pub fn compact(&mut self) {
        self.oldest = self.rv;
        self.history.clear();
    }

    /// What a watch of `kind` in `namespace` from `from` replays: for `None` (no version, or
    /// "0") an `ADDED` for every object, as upstream does.
    pub fn watch_from(&self, kind: Kind, namespace: Option<&str>, from: Option<u64>) -> WatchStart {
        let Some(from) = from else {
            let events = self
                .objects
                .iter()
                .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
                .map(|((k, ns, _), v)| {
                    Arc::new(Event {
                        rv: self.rv,
                        kind: *k,
                        namespace: ns.clone(),
                        kind_of_change: "ADDED",
                        object: v.clone(),
                    })
                })
                .collect();
            return WatchStart::Replay(events);
        };
        if from < self.oldest {
            return WatchStart::Expired;
        }
        WatchStart::Replay(
            self.history
                .iter()
                .filter(|e| e.rv > from && e.kind == kind)
                .filter(|e| namespace.is_none_or(|n| n == e.namespace))
                .cloned()
                .collect(),
        )
    }

    fn stamp(&mut self, object: &mut Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }

    /// Creates `object` of `kind` in `namespace`.
    pub fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut object: Value,
    ) -> Result<(Value, Arc<Event>), Refusal> {
        if !object.is_object() || !object["metadata"].is_object() {
            return Err(refusal(
                400,
                "BadRequest",
                "the body is not an object with metadata",
            ));
        }
        check_type(kind, &object)?;
        let mut name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if name.is_empty()
            && let Some(g) = object["metadata"]["generateName"].as_str()
        {
            name = format!("{g}{:05x}", self.uids + 1);
        }
        validate_name(kind, &name)?;
        if kind.namespaced() {
            match object["metadata"]["namespace"].as_str() {
                Some(n) if n != namespace => {
                    return Err(refusal(
                        400,
                        "BadRequest",
                        format!(
                            "the namespace of the object ({n}) does not match the namespace on the request ({namespace})"
                        ),
                    ));
                }
                _ => {}
            }
            let Some(ns) =
                self.objects
                    .get(&(Kind::Namespace, String::new(), namespace.to_string()))
            else {
                return Err(not_found(Kind::Namespace, namespace));
            };
            if !ns["metadata"]["deletionTimestamp"].is_null() {
                return Err(refusal(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        kind.plural()
                    ),
                ));
            }
            object["metadata"]["namespace"] = json!(namespace);
        }
        let key = (kind, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(refusal(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.plural()),
            ));
        }
        self.uids += 1;
        let m = &mut object["metadata"];
        m["name"] = json!(name);
        m["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        m["creationTimestamp"] = json!(now());
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        match kind {
            Kind::Namespace => {
                // What makes `namespaceSelector` able to pick a namespace by name.
                object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                object["status"]["phase"] = json!("Active");
                object["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            Kind::Pod if object["status"]["phase"].is_null() => {
                object["status"]["phase"] = json!("Pending");
            }
            _ => {}
        }
        self.stamp(&mut object);
        self.objects.insert(key, object.clone());
        let event = self.record(kind, namespace, "ADDED", object.clone());
        Ok((object, event))
    }

    /// Replaces an object whole (PUT), on the main resource or its status.
    pub fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: bool,
        new: Value,
    ) -> Result<(Value, Arc<Event>), Refusal> {
        let old = self.get(kind, namespace, name)?;
        check_type(kind, &new)?;
        if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(refusal(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        match new["metadata"]["resourceVersion"].as_str() {
            Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
                return Err(refusal(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        kind.plural()
                    ),
                ));
            }
            _ => {}
        }
        self.replace(kind, namespace, name, status, old, new)
    }

    /// Patches an object, on the main resource or its status.
    pub fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: bool,
        how: PatchType,
        patch: &Value,
    ) -> Result<(Value, Arc<Event>), Refusal> {
        let old = self.get(kind, namespace, name)?;
        if !patch.is_object() {
            return Err(refusal(400, "BadRequest", "a patch must be a JSON object"));
        }
        let mut new = old.clone();
        match how {
            PatchType::Merge => merge(&mut new, patch),
            PatchType::Strategic => strategic(&mut new, patch)?,
        }
        self.replace(kind, namespace, name, status, old, new)
    }

    /// Writes `new` over `old`, keeping what a client may not change (identity, creation
    /// time, and the status or the rest, as the subresource says).
    fn replace(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: bool,
        old: Value,
        mut new: Value,
    ) -> Result<(Value, Arc<Event>), Refusal> {
        if !new.is_object() {
            return Err(refusal(400, "BadRequest", "the body is not an object"));
        }
        if kind.has_status() {
            if status {
                let mut kept = old.clone();
                kept["status"] = new["status"].clone();
                // Upstream's status strategies keep the old spec but take metadata changes.
                kept["metadata"] = new["metadata"].clone();
                new = kept;
            } else {
                new["status"] = old["status"].clone();
            }
        }
        for k in ["name", "uid", "creationTimestamp", "namespace"] {
            if old["metadata"][k].is_null() {
                continue;
            }
            new["metadata"][k] = old["metadata"][k].clone();
        }
        if kind == Kind::Namespace {
            new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        new["apiVersion"] = json!(kind.api_version());
        new["kind"] = json!(kind.name());
        if new == old {
            // No change: no new version and no event, as upstream.
            let event = Arc::new(Event {
                rv: self.rv,
                kind,
                namespace: namespace.to_string(),
                kind_of_change: "MODIFIED",
                object: old.clone(),
            });
            return Ok((old, event));
        }
        self.stamp(&mut new);
        self.objects
            .insert((kind, namespace.to_string(), name.to_string()), new.clone());
        let event = self.record(kind, namespace, "MODIFIED", new.clone());
        Ok((new, event))
    }

    /// Deletes an object. Pods and NetworkPolicies go at once (no grace period); a Namespace
    /// turns `Terminating` first, as upstream, so that the objects in it can still be deleted
    /// one by one (`kubectl delete -f` of a namespace and its contents); [`Store::finalize`]
    /// then removes it with everything in it. Returns the events.
    pub fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<(Value, Vec<Arc<Event>>), Refusal> {
        let object = self.get(kind, namespace, name)?;
        if kind == Kind::Namespace {
            if !object["metadata"]["deletionTimestamp"].is_null() {
                return Ok((object, vec![]));
            }
            let mut o = object;
            o["metadata"]["deletionTimestamp"] = json!(now());
            o["status"]["phase"] = json!("Terminating");
            self.stamp(&mut o);
            self.objects
                .insert((kind, String::new(), name.to_string()), o.clone());
            let event = self.record(kind, "", "MODIFIED", o.clone());
            return Ok((o, vec![event]));
        }
        let mut gone = self
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))
            .expect("read above");
        self.stamp(&mut gone);
        let event = self.record(kind, namespace, "DELETED", gone);
        Ok((object, vec![event]))
    }

    /// Removes a terminating Namespace and everything in it (upstream's namespace
    /// controller). Returns the events.
    pub fn finalize(&mut self, name: &str) -> Vec<Arc<Event>> {
        let key = (Kind::Namespace, String::new(), name.to_string());
        if self
            .objects
            .get(&key)
            .is_none_or(|o| o["metadata"]["deletionTimestamp"].is_null())
        {
            return vec![];
        }
        let mut events = Vec::new();
        let inside: Vec<Key> = self
            .objects
            .keys()
            .filter(|(k, ns, _)| k.namespaced() && ns == name)
            .cloned()
            .collect();
        for (k, ns, n) in inside {
            let mut o = self
                .objects
                .remove(&(k, ns.clone(), n))
                .expect("listed above");
            self.stamp(&mut o);
            events.push(self.record(k, &ns, "DELETED", o));
        }
        let mut gone = self.objects.remove(&key).expect("read above");
        self.stamp(&mut gone);
        events.push(self.record(Kind::Namespace, "", "DELETED", gone));
        events
    }
}

/// The first field of `object` (or of a patch to one) that its kind does not have, for
/// `fieldValidation=Strict` (what kubectl sends): checked at the top, in `metadata`, and all
/// through a NetworkPolicy's spec, where a misspelt field would silently change a policy.
/// Pod and Node specs and every status are not checked. Directives (`$…`) are skipped.
pub fn unknown_field(kind: Kind, object: &Value) -> Option<String> {
    const TOP: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
    const META: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "finalizers",
        "ownerReferences",
        "managedFields",
        "selfLink",
    ];
    const SELECTOR: &[&str] = &["matchLabels", "matchExpressions"];
    const EXPRESSION: &[&str] = &["key", "operator", "values"];
    const PORT: &[&str] = &["protocol", "port", "endPort"];
    const PEER: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
    fn check(v: &Value, known: &[&str], at: &str) -> Option<String> {
        let m = v.as_object()?;
        m.keys()
            .find(|k| !k.starts_with('$') && !known.contains(&k.as_str()))
            .map(|k| format!("{at}{k}"))
    }
    fn each(v: &Value) -> impl Iterator<Item = &Value> {
        v.as_array().into_iter().flatten()
    }
    fn selector(v: &Value, at: &str) -> Option<String> {
        check(v, SELECTOR, at).or_else(|| {
            each(&v["matchExpressions"])
                .find_map(|e| check(e, EXPRESSION, &format!("{at}matchExpressions[].")))
        })
    }
    let mut found =
        check(object, TOP, "").or_else(|| check(&object["metadata"], META, "metadata."));
    if kind == Kind::Namespace {
        found = found.or_else(|| check(&object["spec"], &["finalizers"], "spec."));
    }
    if kind != Kind::NetworkPolicy || found.is_some() {
        return found;
    }
    let spec = &object["spec"];
    check(
        spec,
        &["podSelector", "ingress", "egress", "policyTypes"],
        "spec.",
    )
    .or_else(|| selector(&spec["podSelector"], "spec.podSelector."))
    .or_else(|| {
        [("ingress", "from"), ("egress", "to")]
            .iter()
            .find_map(|(dir, peers)| {
                each(&spec[*dir]).find_map(|rule| {
                    let at = format!("spec.{dir}[].");
                    check(rule, &[peers, "ports"], &at)
                        .or_else(|| {
                            each(&rule["ports"])
                                .find_map(|p| check(p, PORT, &format!("{at}ports[].")))
                        })
                        .or_else(|| {
                            each(&rule[*peers]).find_map(|peer| {
                                let at = format!("{at}{peers}[].");
                                check(peer, PEER, &at)
                                    .or_else(|| {
                                        selector(&peer["podSelector"], &format!("{at}podSelector."))
                                    })
                                    .or_else(|| {
                                        selector(
                                            &peer["namespaceSelector"],
                                            &format!("{at}namespaceSelector."),
                                        )
                                    })
                                    .or_else(|| {
                                        check(
                                            &peer["ipBlock"],
                                            &["cidr", "except"],
                                            &format!("{at}ipBlock."),
                                        )
                                    })
                            })
                        })
                })
            })
    })
}

fn check_type(kind: Kind, object: &Value) -> Result<(), Refusal> {
    let (api, k) = (object["apiVersion"].as_str(), object["kind"].as_str());
    if api.is_some_and(|a| a != kind.api_version()) || k.is_some_and(|k| k != kind.name()) {
        return Err(refusal(
            400,
            "BadRequest",
            format!(
                "the object is {}/{}, not {}/{}",
                api.unwrap_or("?"),
                k.unwrap_or("?"),
                kind.api_version(),
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (Nodes, Pods, NetworkPolicies) or label (Namespaces).
fn validate_name(kind: Kind, name: &str) -> Result<(), Refusal> {
    let max = if kind == Kind::Namespace { 63 } else { 253 };
    let ok_char = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (c == '.' && kind != Kind::Namespace)
    };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(refusal(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: metadata.name: must be a lowercase RFC 1123 name",
                kind.name()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {}})
    }

    fn replayed(start: WatchStart) -> Vec<(&'static str, String, u64)> {
        match start {
            WatchStart::Replay(e) => e
                .iter()
                .map(|e| {
                    let name = e.object["metadata"]["name"].as_str().unwrap().to_string();
                    (e.kind_of_change, name, e.rv)
                })
                .collect(),
            WatchStart::Expired => panic!("expired"),
        }
    }

    #[test]
    fn every_change_gets_a_new_version_and_watches_replay_from_any_kept_one() {
        let mut s = Store::default();
        s.create(Kind::Namespace, "", ns("x")).unwrap();
        let after_ns = s.resource_version();
        s.create(Kind::Pod, "x", pod("a")).unwrap();
        let (p, _) = s
            .patch(
                Kind::Pod,
                "x",
                "a",
                false,
                PatchType::Merge,
                &json!({"metadata": {"labels": {"app": "db"}}}),
            )
            .unwrap();
        assert_eq!(p["metadata"]["labels"]["app"], "db");
        assert_eq!(
            p["metadata"]["resourceVersion"],
            s.resource_version().to_string()
        );
        // The same patch again changes nothing: no version, no event.
        let before = s.resource_version();
        s.patch(
            Kind::Pod,
            "x",
            "a",
            false,
            PatchType::Merge,
            &json!({"metadata": {"labels": {"app": "db"}}}),
        )
        .unwrap();
        assert_eq!(s.resource_version(), before);
        s.delete(Kind::Pod, "x", "a").unwrap();
        let pods = replayed(s.watch_from(Kind::Pod, Some("x"), Some(after_ns)));
        let kinds: Vec<&str> = pods.iter().map(|e| e.0).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
        assert!(pods.windows(2).all(|w| w[0].2 < w[1].2), "{pods:?}");
        // Other namespaces' and kinds' changes are not replayed; from "now", nothing is.
        assert!(replayed(s.watch_from(Kind::Pod, Some("y"), Some(0))).is_empty());
        assert!(replayed(s.watch_from(Kind::Pod, None, Some(s.resource_version()))).is_empty());
        // Without a version, a watch starts with an ADDED for each object that exists.
        let all = replayed(s.watch_from(Kind::Namespace, None, None));
        assert_eq!(
            all.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(),
            [("ADDED", "x")]
        );
    }

    #[test]
    fn a_version_older_than_the_history_is_gone() {
        let mut s = Store::default();
        s.create(Kind::Namespace, "", ns("x")).unwrap();
        let first = s.resource_version();
        for i in 0..HISTORY + 1 {
            s.patch(
                Kind::Namespace,
                "",
                "x",
                false,
                PatchType::Merge,
                &json!({"metadata": {"labels": {"i": i.to_string()}}}),
            )
            .unwrap();
        }
        assert!(matches!(
            s.watch_from(Kind::Namespace, None, Some(first)),
            WatchStart::Expired
        ));
        let recent = s.resource_version() - 10;
        assert_eq!(
            replayed(s.watch_from(Kind::Namespace, None, Some(recent))).len(),
            10
        );
        s.compact();
        assert!(matches!(
            s.watch_from(Kind::Namespace, None, Some(recent)),
            WatchStart::Expired
        ));
        assert!(
            replayed(s.watch_from(Kind::Namespace, None, Some(s.resource_version()))).is_empty()
        );
    }

    #[test]
    fn writes_keep_identity_status_and_refuse_stale_versions() {
        let mut s = Store::default();
        let (n, _) = s.create(Kind::Namespace, "", ns("x")).unwrap();
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        assert_eq!(
            s.create(Kind::Namespace, "", ns("x")).unwrap_err().code,
            409
        );
        assert_eq!(s.create(Kind::Pod, "nope", pod("a")).unwrap_err().code, 404);
        assert_eq!(
            s.create(Kind::Namespace, "", ns("Bad_Name"))
                .unwrap_err()
                .code,
            422
        );
        let (p, _) = s.create(Kind::Pod, "x", pod("a")).unwrap();
        assert_eq!(p["status"]["phase"], "Pending");
        // A PUT on the pod leaves its status; a PUT on its status changes only that.
        let mut put = p.clone();
        put["status"]["phase"] = json!("Running");
        put["metadata"]["uid"] = json!("forged");
        put["metadata"]["labels"]["tier"] = json!("1");
        let (q, _) = s.update(Kind::Pod, "x", "a", false, put.clone()).unwrap();
        assert_eq!(
            (
                q["status"]["phase"].as_str(),
                q["metadata"]["uid"] == p["metadata"]["uid"]
            ),
            (Some("Pending"), true)
        );
        // put still carries p's version, now stale.
        assert_eq!(
            s.update(Kind::Pod, "x", "a", true, put.clone())
                .unwrap_err()
                .code,
            409
        );
        put["metadata"]["resourceVersion"] = q["metadata"]["resourceVersion"].clone();
        put["spec"]["nodeName"] = json!("n1");
        let (r, _) = s.update(Kind::Pod, "x", "a", true, put).unwrap();
        assert_eq!(
            (
                r["status"]["phase"].as_str(),
                r["spec"]["nodeName"].as_str()
            ),
            (Some("Running"), None)
        );
        // Strategic merge: conditions merge by type; unknown directives are refused.
        let patch = json!({"status": {"conditions": [{"type": "A", "status": "True"}]}});
        s.patch(Kind::Pod, "x", "a", true, PatchType::Strategic, &patch)
            .unwrap();
        let patch = json!({"status": {"conditions": [{"type": "B", "status": "True"}]}});
        let (r, _) = s
            .patch(Kind::Pod, "x", "a", true, PatchType::Strategic, &patch)
            .unwrap();
        assert_eq!(r["status"]["conditions"].as_array().unwrap().len(), 2);
        let bad = json!({"metadata": {"labels": {"$patch": "replace"}}});
        let err = s
            .patch(Kind::Pod, "x", "a", false, PatchType::Strategic, &bad)
            .unwrap_err();
        assert_eq!(err.code, 501, "{err:?}");
        assert_eq!(
            s.get(Kind::Pod, "x", "a").unwrap(),
            r,
            "a refused patch changed the pod"
        );
    }

    #[test]
    fn a_deleted_namespace_terminates_then_goes_with_its_contents() {
        let mut s = Store::default();
        s.create(Kind::Namespace, "", ns("x")).unwrap();
        s.create(Kind::Pod, "x", pod("a")).unwrap();
        let (n, _) = s.delete(Kind::Namespace, "", "x").unwrap();
        assert_eq!(n["status"]["phase"], "Terminating");
        assert_eq!(s.create(Kind::Pod, "x", pod("b")).unwrap_err().code, 403);
        let events = s.finalize("x");
        let gone: Vec<(&str, Kind)> = events.iter().map(|e| (e.kind_of_change, e.kind)).collect();
        assert_eq!(gone, [("DELETED", Kind::Pod), ("DELETED", Kind::Namespace)]);
        assert!(s.list(Kind::Pod, None).is_empty() && s.list(Kind::Namespace, None).is_empty());
    }

    #[test]
    fn strict_validation_names_the_first_unknown_field() {
        let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p"},
            "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions":
                    [{"key": "k", "operator": "In", "values": ["v"]}]},
                    "ipBlock": {"cidr": "10.0.0.0/8", "except": []}}],
                    "ports": [{"port": 80, "protocol": "TCP", "endPort": 81}]}]}});
        assert_eq!(unknown_field(Kind::NetworkPolicy, &policy), None);
        for (path, want) in [
            ("/spec/podSelectr", "spec.podSelectr"),
            ("/spec/ingress/0/frm", "spec.ingress[].frm"),
            (
                "/spec/ingress/0/ports/0/prot",
                "spec.ingress[].ports[].prot",
            ),
            (
                "/spec/ingress/0/from/0/ipBlock/excpt",
                "spec.ingress[].from[].ipBlock.excpt",
            ),
            ("/metadata/label", "metadata.label"),
            ("/spce", "spce"),
        ] {
            let mut p = policy.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            p.pointer_mut(parent).unwrap()[key] = json!(1);
            assert_eq!(
                unknown_field(Kind::NetworkPolicy, &p).as_deref(),
                Some(want),
                "{path}"
            );
        }
        let patch = json!({"metadata": {"labels": {"x": "y"}}, "$setElementOrder/x": []});
        assert_eq!(unknown_field(Kind::Pod, &patch), None);
    }

    #[test]
    fn selectors_and_ages() {
        let sel = parse_selector("app=web,tier!=db,env,!gone").unwrap();
        assert!(selects(&sel, &json!({"app": "web", "env": "x"})));
        assert!(!selects(
            &sel,
            &json!({"app": "web", "env": "x", "tier": "db"})
        ));
        assert!(!selects(&sel, &json!({"app": "web"})));
        assert!(!selects(
            &sel,
            &json!({"app": "web", "env": "x", "gone": "1"})
        ));
        assert!(parse_selector("app in (a,b)").is_err());
        assert_eq!(age(&now()), "0s");
        assert_eq!(
            age("1970-01-01T00:00:00Z"),
            format!("{}d", epoch_secs() / 86400)
        );
        assert_eq!(age("yesterday"), "<unknown>");
    }
}
