//! Pods weft-cni announced (`pod_added` on the control socket) before the API server shows
//! them Running with an address.
//!
//! The kubelet creates a pod's network before it reports the pod Running with its podIP, so
//! a model computed from the API alone leaves a new pod out of the verdict maps, and an
//! address outside them is unjudged (open) until the status catches up. weft-cni keeps the
//! pod's host end down until the router confirms rules that hold the pod; to have such rules
//! at once, the router takes the announcement as the pod's status: a Pod found in the store
//! by namespace and name, bound to this node and not finished, is computed as Running at the
//! announced address until the API shows it Running there. An address the API still shows
//! is the last sandbox's (the kubelet keeps it until the new one is up): the newest ADD wins
//! over it. The API wins when the pod is finished (Succeeded, Failed), on another node, or
//! deleted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus};
use tokio::sync::oneshot;
use weft_policy::Model;

use crate::control::Response;

/// One `pod_added` request.
#[derive(Debug)]
pub struct Announcement {
    pub namespace: String,
    pub name: String,
    pub address: Ipv4Addr,
    /// Where `pod_ready` (or an error) goes.
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug)]
struct Entry {
    address: Ipv4Addr,
    /// `None` once answered.
    reply: Option<oneshot::Sender<Response>>,
}

/// The announced pods, by (namespace, name).
#[derive(Debug, Default)]
pub struct Announced {
    pods: BTreeMap<(String, String), Entry>,
}

/// What the API server's record says of an announced pod.
enum Record {
    /// Not in the store (not created yet, or deleted).
    Missing,
    /// Ours and not yet Running at an address: the announcement stands in for its status.
    Override,
    /// Running at the announced address: the API has caught up.
    Agrees,
    /// Something else: the API wins; the reason, for a waiting caller.
    Disagrees(String),
}

fn record(pod: Option<&Pod>, node: &str, address: Ipv4Addr) -> Record {
    let Some(pod) = pod else {
        return Record::Missing;
    };
    let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if on != Some(node) {
        return Record::Disagrees(match on {
            Some(other) => format!("the API server has it on node {other}, not {node}"),
            None => "the API server has not bound it to a node".into(),
        });
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Record::Disagrees("it is on the host network".into());
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let mut ips: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|p| p.ip.as_str()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.as_deref()));
    }
    let ours = address.to_string();
    match phase {
        Some("Running") if !ips.is_empty() && ips.iter().all(|ip| *ip == ours) => Record::Agrees,
        // Another address while Pending or Running is the last sandbox's, which the kubelet
        // keeps reporting until the new one is up: this ADD is the newer word.
        None | Some("Pending") | Some("Running") | Some("Unknown") => Record::Override,
        Some(other) => Record::Disagrees(format!("the API server says it is {other}")),
    }
}

impl Announced {
    /// Adds (or replaces) an announcement. A caller still waiting on the one replaced is
    /// told so: a second ADD of one pod means the first one's sandbox is gone.
    pub fn add(&mut self, a: Announcement) {
        let entry = Entry {
            address: a.address,
            reply: Some(a.reply),
        };
        if let Some(old) = self.pods.insert((a.namespace, a.name), entry)
            && let Some(reply) = old.reply
        {
            let _ = reply.send(Response::Error {
                message: "another pod_added for this pod replaced this one".into(),
            });
        }
    }

    /// Whether a caller waits.
    pub fn waiting(&self) -> bool {
        self.pods.values().any(|e| e.reply.is_some())
    }

    /// The Pods to compute the model from: `pods` as the store has them, each announced pod
    /// the API has not caught up with shown Running at its address. Drops the announcements
    /// that are done with (the caller gave up, the pod is gone, or the API has taken over)
    /// and answers callers whose pod the API contradicts.
    pub fn apply(&mut self, pods: Vec<Arc<Pod>>, node: &str) -> Vec<Arc<Pod>> {
        let mut by_name: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            if let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) {
                by_name.insert((ns.as_str(), name.as_str()), i);
            }
        }
        let mut replace = Vec::new();
        self.pods.retain(|(ns, name), entry| {
            // A caller that gave up has undone its ADD: its address may go to another pod.
            if entry.reply.as_ref().is_some_and(|r| r.is_closed()) {
                return false;
            }
            let at = by_name.get(&(ns.as_str(), name.as_str())).copied();
            match record(at.map(|i| &*pods[i]), node, entry.address) {
                // Not created yet: wait for it; answered and gone: deleted.
                Record::Missing => entry.reply.is_some(),
                Record::Override => {
                    replace.extend(at.map(|i| (i, entry.address)));
                    true
                }
                // Kept until answered: the model holds the pod from the API's own record.
                Record::Agrees => entry.reply.is_some(),
                Record::Disagrees(why) => {
                    if let Some(reply) = entry.reply.take() {
                        let _ = reply.send(Response::Error {
                            message: format!("pod {ns}/{name}: {why}"),
                        });
                    }
                    false
                }
            }
        });
        drop(by_name);
        let mut pods = pods;
        for (i, address) in replace {
            let mut pod = (*pods[i]).clone();
            let status = pod.status.get_or_insert_with(PodStatus::default);
            status.phase = Some("Running".into());
            status.pod_ip = Some(address.to_string());
            status.pod_ips = Some(vec![PodIP {
                ip: address.to_string(),
            }]);
            pods[i] = Arc::new(pod);
        }
        pods
    }

    /// Answers every caller whose pod `model` (the rules in the kernel) holds at its address.
    pub fn answer(&mut self, model: &Model) {
        for ((ns, name), entry) in &mut self.pods {
            let holds = model.pods().iter().any(|p| {
                p.pod.namespace == *ns
                    && p.pod.name == *name
                    && p.ips.contains(&IpAddr::V4(entry.address))
            });
            if holds && let Some(reply) = entry.reply.take() {
                let _ = reply.send(Response::PodReady { enforced: true });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, status: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": name},
                "spec": {"nodeName": node, "containers": []},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn announce(a: &mut Announced, name: &str, address: &str) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        a.add(Announcement {
            namespace: "default".into(),
            name: name.into(),
            address: address.parse().unwrap(),
            reply: tx,
        });
        rx
    }

    fn status_of(pods: &[Arc<Pod>], name: &str) -> (Option<String>, Option<String>) {
        let p = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap();
        let s = p.status.as_ref();
        (
            s.and_then(|s| s.phase.clone()),
            s.and_then(|s| s.pod_ip.clone()),
        )
    }

    #[test]
    fn a_pending_pod_of_this_node_is_running_at_the_announced_address() {
        let mut a = Announced::default();
        let _rx = announce(&mut a, "web", "10.32.1.5");
        let pods = a.apply(vec![pod("web", "n1", json!({"phase": "Pending"}))], "n1");
        assert_eq!(
            status_of(&pods, "web"),
            (Some("Running".into()), Some("10.32.1.5".into()))
        );
        let model = weft_policy::compute(
            &Vec::<k8s_openapi::api::networking::v1::NetworkPolicy>::new(),
            &pods,
            &Vec::<k8s_openapi::api::core::v1::Namespace>::new(),
            weft_policy::Local::Node("n1"),
        );
        assert_eq!(model.pods().len(), 1);
    }

    #[test]
    fn the_api_wins_when_the_pod_is_finished_or_elsewhere() {
        let mut a = Announced::default();
        let mut other_node = announce(&mut a, "x", "10.32.1.5");
        let _restarted = announce(&mut a, "y", "10.32.1.6");
        let mut failed = announce(&mut a, "z", "10.32.1.7");
        let pods = a.apply(
            vec![
                pod("x", "n2", json!({"phase": "Pending"})),
                pod("y", "n1", json!({"phase": "Running", "podIP": "10.32.1.9"})),
                pod("z", "n1", json!({"phase": "Failed"})),
            ],
            "n1",
        );
        assert_eq!(status_of(&pods, "x").0.as_deref(), Some("Pending"));
        // The address of the sandbox this ADD replaces: the announcement wins.
        assert_eq!(status_of(&pods, "y").1.as_deref(), Some("10.32.1.6"));
        assert_eq!(status_of(&pods, "z").0.as_deref(), Some("Failed"));
        for (rx, want) in [(&mut other_node, "node n2"), (&mut failed, "Failed")] {
            match rx.try_recv().unwrap() {
                Response::Error { message } => assert!(message.contains(want), "{message}"),
                r => panic!("{r:?}"),
            }
        }
        assert_eq!(a.pods.len(), 1);
        // Once the API shows the new address, the announcement has done its work.
        let pods = vec![pod(
            "y",
            "n1",
            json!({"phase": "Running", "podIP": "10.32.1.6"}),
        )];
        let model = weft_policy::compute(
            &Vec::<k8s_openapi::api::networking::v1::NetworkPolicy>::new(),
            &a.apply(pods.clone(), "n1"),
            &Vec::<k8s_openapi::api::core::v1::Namespace>::new(),
            weft_policy::Local::Node("n1"),
        );
        a.answer(&model);
        a.apply(pods, "n1");
        assert!(a.pods.is_empty());
    }

    #[test]
    fn announcements_end_when_answered_and_gone_or_given_up() {
        let mut a = Announced::default();
        let rx = announce(&mut a, "late", "10.32.1.5");
        // Not in the store yet: kept while the caller waits.
        a.apply(vec![], "n1");
        assert!(a.waiting());
        // The caller gives up (weft-cni's timeout): dropped, so the address is free.
        drop(rx);
        let pods = a.apply(vec![pod("late", "n1", json!({}))], "n1");
        assert_eq!(status_of(&pods, "late").0, None);
        assert!(a.pods.is_empty());

        let mut rx = announce(&mut a, "web", "10.32.1.5");
        let pods = a.apply(vec![pod("web", "n1", json!({"phase": "Pending"}))], "n1");
        let model = weft_policy::compute(
            &Vec::<k8s_openapi::api::networking::v1::NetworkPolicy>::new(),
            &pods,
            &Vec::<k8s_openapi::api::core::v1::Namespace>::new(),
            weft_policy::Local::Node("n1"),
        );
        a.answer(&model);
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::PodReady { enforced: true }
        );
        // Answered, still Pending: still shown Running. Deleted: forgotten.
        let pods = a.apply(vec![pod("web", "n1", json!({"phase": "Pending"}))], "n1");
        assert_eq!(status_of(&pods, "web").0.as_deref(), Some("Running"));
        a.apply(vec![], "n1");
        assert!(a.pods.is_empty());
    }
}
