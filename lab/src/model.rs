//! `weft lab up --model FILE`: Namespaces and Pods from ordinary Kubernetes YAML (several
//! documents, or a `v1` `List`), checked whole before anything is built, and placed on the
//! lab's nodes: a Pod's `spec.nodeName` when it names one, round-robin otherwise. The lab runs
//! no images: a Pod's containers (with their ports, named or not) are stored as given, and
//! what runs in the pod is whatever `weft lab exec NAMESPACE/NAME` starts.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::LabError;
use crate::error::refuse;

/// The objects of a model file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    /// Namespaces, as given.
    pub namespaces: Vec<Value>,
    /// Pods, each with the node (1-based) it runs on; `metadata.namespace` filled in.
    pub pods: Vec<(Value, usize)>,
}

/// Namespaces every lab API server has.
const BUILT_IN: [&str; 2] = ["default", "kube-system"];

/// Reads and places the model in `path` for a lab of `nodes` nodes.
pub fn load(path: &Path, nodes: usize) -> Result<Model, LabError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LabError::Refused(format!("--model {}: {e}", path.display())))?;
    parse(&text, nodes).map_err(|e| match e {
        LabError::Refused(m) => LabError::Refused(format!("--model {}: {m}", path.display())),
        other => other,
    })
}

/// Parses and places a model (see [`load`]).
pub fn parse(text: &str, nodes: usize) -> Result<Model, LabError> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text)
        .map_err(|e| LabError::Refused(format!("not YAML: {e}")))?;
    let mut objects = Vec::new();
    for d in docs.into_iter().filter(|d| !d.is_null()) {
        if d["kind"] == "List" {
            objects.extend(d["items"].as_array().cloned().unwrap_or_default());
        } else {
            objects.push(d);
        }
    }
    let mut model = Model::default();
    let mut names = BTreeSet::new();
    let mut next = 0;
    for (n, mut o) in objects.into_iter().enumerate() {
        let what = format!("document {}", n + 1);
        let name = match &o["metadata"]["name"] {
            Value::String(name) if !name.is_empty() => name.clone(),
            Value::Null => refuse!("{what} has no metadata.name"),
            // YAML 1.1 reads `y`, `no`, `on`... as booleans, as kubectl does: quote them.
            other => refuse!("{what}: metadata.name {other} is not a string (quote it)"),
        };
        match (o["apiVersion"].as_str(), o["kind"].as_str()) {
            (Some("v1"), Some("Namespace")) => {
                if !names.insert(("Namespace".to_string(), String::new(), name.clone())) {
                    refuse!("namespace {name:?} is given twice");
                }
                model.namespaces.push(o);
            }
            (Some("v1"), Some("Pod")) => {
                let ns = match &o["metadata"]["namespace"] {
                    Value::Null => "default".to_string(),
                    Value::String(ns) => ns.clone(),
                    // YAML 1.1 reads `y`, `no`, `on`... as booleans, as kubectl does.
                    other => refuse!("pod {name:?}: metadata.namespace {other} is not a string"),
                };
                if !names.insert(("Pod".to_string(), ns.clone(), name.clone())) {
                    refuse!("pod {ns}/{name} is given twice");
                }
                let node = match o["spec"]["nodeName"].as_str() {
                    Some(node) => match node.strip_prefix('n').and_then(|i| i.parse().ok()) {
                        Some(i) if (1..=nodes).contains(&i) => i,
                        _ => refuse!(
                            "pod {ns}/{name}: spec.nodeName {node:?} is not a node of this lab (n1–n{nodes})"
                        ),
                    },
                    None => {
                        next += 1;
                        (next - 1) % nodes + 1
                    }
                };
                o["metadata"]["namespace"] = Value::from(ns);
                model.pods.push((o, node));
            }
            (api, kind) => refuse!(
                "{what} ({name:?}) is {}/{}: a model holds v1 Namespaces and Pods only",
                api.unwrap_or("?"),
                kind.unwrap_or("?")
            ),
        }
    }
    for (p, _) in &model.pods {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        let declared = BUILT_IN.contains(&ns)
            || names.contains(&("Namespace".to_string(), String::new(), ns.to_string()));
        if !declared {
            refuse!(
                "pod {ns}/{}: namespace {ns:?} is not in the model",
                p["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: c}
---
apiVersion: v1
kind: Pod
metadata: {name: d}
";

    #[test]
    fn pods_without_a_node_are_spread_round_robin() {
        let m = parse(MODEL, 2).unwrap();
        assert_eq!(m.namespaces.len(), 1);
        let placed: Vec<(String, usize)> = m
            .pods
            .iter()
            .map(|(p, n)| {
                let ns = p["metadata"]["namespace"].as_str().unwrap();
                (
                    format!("{ns}/{}", p["metadata"]["name"].as_str().unwrap()),
                    *n,
                )
            })
            .collect();
        let want = [("x/a", 1), ("x/b", 1), ("default/c", 2), ("default/d", 1)];
        let want: Vec<(String, usize)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        assert_eq!(placed, want);
        // Containers and their named ports are kept as given.
        assert_eq!(
            m.pods[0].0["spec"]["containers"][0]["ports"][0]["name"],
            "http"
        );
    }

    #[test]
    fn bad_models_are_refused_with_what_is_wrong() {
        for (model, want) in [
            (
                "kind: Service\napiVersion: v1\nmetadata: {name: s}\n",
                "Namespaces and Pods only",
            ),
            (
                "kind: Pod\napiVersion: v1\nmetadata: {name: p, namespace: zz}\n",
                "namespace \"zz\" is not in the model",
            ),
            (
                "kind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {nodeName: n3}\n",
                "not a node of this lab",
            ),
            (
                "kind: Pod\napiVersion: v1\nmetadata: {}\n",
                "no metadata.name",
            ),
            (
                "kind: Pod\napiVersion: v1\nmetadata: {name: p}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: p}\n",
                "given twice",
            ),
            (
                "kind: Pod\napiVersion: v1\nmetadata: {name: p, namespace: y}\n",
                "not a string",
            ),
            (
                "kind: Namespace\napiVersion: v1\nmetadata: {name: y}\n",
                "metadata.name true is not a string (quote it)",
            ),
            ("a: [", "not YAML"),
        ] {
            let err = match parse(model, 2) {
                Ok(m) => panic!("{model:?} was accepted: {m:?}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{model:?}: {err}");
        }
    }
}
