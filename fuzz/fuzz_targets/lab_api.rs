//! Fuzzes the lab API server's own parsing of requests: a path (which object), a query
//! (percent-decoding, selectors) and a JSON body given to create, patch (merge and strategic)
//! and update. Nothing panics, refused writes change nothing, and every accepted change gets
//! a higher resourceVersion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[allow(dead_code)] // the fuzz target uses part of it
#[path = "../../lab/src/api/store.rs"]
mod store;
#[allow(dead_code)]
#[path = "../../lab/src/api/route.rs"]
mod route;

use store::{Kind, PatchType, Store};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (path, query, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = route::parse(path);
    let q = route::query(query);
    for v in q.values() {
        if let Ok(sel) = store::parse_selector(v) {
            let _ = store::selects(&sel, &json!({"a": "b"}));
        }
    }
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let mut s = Store::default();
    s.create(Kind::Namespace, "", json!({"metadata": {"name": "x"}}))
        .expect("a valid namespace");
    s.create(Kind::Pod, "x", json!({"metadata": {"name": "a"}}))
        .expect("a valid pod");
    for kind in Kind::ALL {
        let ns = if kind.namespaced() { "x" } else { "" };
        let _ = store::unknown_field(kind, &body);
        let _ = s.create(kind, ns, body.clone());
    }
    for (status, how) in [
        (false, PatchType::Merge),
        (true, PatchType::Strategic),
        (false, PatchType::Strategic),
    ] {
        let before = (s.resource_version(), s.get(Kind::Pod, "x", "a").ok());
        match s.patch(Kind::Pod, "x", "a", status, how, &body) {
            Ok((o, _)) => {
                assert_eq!(o["metadata"]["name"], "a");
                assert!(s.resource_version() >= before.0);
            }
            Err(_) => assert_eq!((s.resource_version(), s.get(Kind::Pod, "x", "a").ok()), before),
        }
    }
    let _ = s.update(Kind::Namespace, "", "x", false, body);
    assert_eq!(
        s.get(Kind::Namespace, "", "x").unwrap()["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "x"
    );
});
