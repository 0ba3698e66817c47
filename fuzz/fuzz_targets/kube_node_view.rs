//! Fuzzes what discovery reads from the API server: any bytes that decode as a Node become a
//! `NodeView` without panicking, whose values are checked (a pod CIDR with host bits clear,
//! an endpoint with a port, a key that prints back as its annotation). The second pass
//! splices the input into a Node's annotations and pod CIDRs, where the parsers behind the
//! JSON decoder are.
#![no_main]

use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // the fuzz target uses part of it
#[path = "../../router/src/kubernetes/node_view.rs"]
mod node_view;
use node_view::{KEY_ANNOTATION, NodeView};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = serde_json::from_slice::<Node>(data) {
        check(&node);
    }
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (key, endpoint, cidr) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let node = serde_json::json!({
        "metadata": {"name": "n", "annotations": {KEY_ANNOTATION: key, "weft.dev/endpoint": endpoint}},
        "spec": {"podCIDRs": [cidr, "10.32.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": endpoint}]}
    });
    if let Ok(node) = serde_json::from_value::<Node>(node) {
        let v = check(&node);
        if let Some(k) = v.key {
            assert_eq!(k.to_string(), key, "a key is accepted only as printed");
        }
        assert!(v.pod_cidr.is_some(), "the valid second CIDR is found");
    }
});

fn check(node: &Node) -> NodeView {
    let v = NodeView::from_node(node);
    if let Some(c) = v.pod_cidr {
        assert_eq!(c.trunc(), c);
    }
    if let Some(ep) = v.endpoint {
        assert_ne!(ep.port(), 0);
    }
    v
}
