//! Which object a request's path names, and its query's parameters: the server's parsers of
//! request text (fuzzed as `lab_api`). Discovery paths are answered before these are asked.

use std::collections::BTreeMap;

use super::store::{Kind, Refusal, refusal};

/// A resource path, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub kind: Kind,
    /// The namespace in the path (None: cluster-scoped, or every namespace).
    pub namespace: Option<String>,
    /// The object's name (None: the collection).
    pub name: Option<String>,
    /// The `status` subresource.
    pub status: bool,
}

fn unknown(path: &str) -> Refusal {
    refusal(
        404,
        "NotFound",
        format!(
            "the server could not find the requested resource (the lab API server serves nodes, namespaces, pods and networkpolicies): {path}"
        ),
    )
}

/// Parses `/api/v1/...` or `/apis/networking.k8s.io/v1/...`.
pub fn parse(path: &str) -> Result<Route, Refusal> {
    let (gv, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("v1", r)
    } else if let Some(r) = path.strip_prefix("/apis/networking.k8s.io/v1/") {
        ("networking.k8s.io/v1", r)
    } else {
        return Err(unknown(path));
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(unknown(path));
    }
    let kind_of = |plural: &str| Kind::from_plural(gv, plural).ok_or_else(|| unknown(path));
    let sub = |s: Option<&&str>| -> Result<bool, Refusal> {
        match s {
            None => Ok(false),
            Some(&"status") => Ok(true),
            Some(other) => Err(refusal(
                404,
                "NotFound",
                format!("the lab API server has no subresource {other:?} (it runs no containers)"),
            )),
        }
    };
    let namespaced_path = segs[0] == "namespaces" && segs.len() >= 3 && segs[2] != "status";
    if namespaced_path {
        let kind = kind_of(segs[2])?;
        if !kind.namespaced() || segs.len() > 5 {
            return Err(unknown(path));
        }
        return Ok(Route {
            kind,
            namespace: Some(segs[1].to_string()),
            name: segs.get(3).map(|s| s.to_string()),
            status: sub(segs.get(4))?,
        });
    }
    let kind = kind_of(segs[0])?;
    if segs.len() > 3 || (kind.namespaced() && segs.len() > 1) {
        return Err(unknown(path));
    }
    Ok(Route {
        kind,
        namespace: None,
        name: segs.get(1).map(|s| s.to_string()),
        status: sub(segs.get(2))?,
    })
}

/// A query string's parameters, percent-decoded (`+` is a space; a `%` not followed by two
/// hex digits stays as it is).
pub fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_kind_namespace_name_and_subresource() {
        let r = parse("/api/v1/namespaces/x/pods/a/status").unwrap();
        assert_eq!(
            r,
            Route {
                kind: Kind::Pod,
                namespace: Some("x".into()),
                name: Some("a".into()),
                status: true
            }
        );
        let r = parse("/api/v1/namespaces/x/status").unwrap();
        assert_eq!(
            (r.kind, r.name.as_deref(), r.status),
            (Kind::Namespace, Some("x"), true)
        );
        let r = parse("/apis/networking.k8s.io/v1/networkpolicies").unwrap();
        assert_eq!(
            (r.kind, r.namespace, r.name),
            (Kind::NetworkPolicy, None, None)
        );
        let r = parse("/api/v1/nodes/n1").unwrap();
        assert_eq!((r.kind, r.name.as_deref()), (Kind::Node, Some("n1")));
        let q = query("labelSelector=a%3Db%2Cc&watch=true&x=%zz&y=%4&z=a+b");
        assert_eq!(q["labelSelector"], "a=b,c");
        assert_eq!(q["watch"], "true");
        assert_eq!(
            (q["x"].as_str(), q["y"].as_str(), q["z"].as_str()),
            ("%zz", "%4", "a b")
        );
        for bad in [
            "/api/v1/services",
            "/api/v1/networkpolicies",
            "/apis/networking.k8s.io/v1/pods",
            "/api/v1/namespaces/x/pods/a/log",
            "/api/v1/pods/a",
            "/api/v1//nodes",
            "/api/v2/nodes",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
