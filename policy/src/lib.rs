//! The NetworkPolicy engine: API objects in, verdict model out. No I/O.
//!
//! [`compute`] takes whole snapshots of NetworkPolicies, Pods and Namespaces (never events:
//! a snapshot cannot be misread through event order or a reused address) and returns a
//! [`Model`]: for each local pod and direction, whether some policy isolates it and the
//! (peers, protocol, ports) tuples it may use, each with the policy that allowed it. A packet
//! filter renders the model; [`allows`] judges one connection against it. The semantics are
//! `networking.k8s.io/v1`'s; docs/networkpolicy.md lists them and the choices made where
//! upstream leaves room.

mod cluster;
mod compile;
mod error;
mod model;
mod peers;
mod ports;
mod selector;
mod verdict;

use std::borrow::Borrow;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use error::{Malformed, ObjectKind, ObjectRef, Problem};
pub use model::{Allow, Direction, Local, Model, PodRules};
pub use peers::Peers;
pub use ports::{PortRange, Ports, Protocol};
pub use verdict::{Side, Verdict, allows};

/// Computes the model for the `local` pods from one snapshot of the cluster. Malformed
/// objects are listed in [`Model::problems`]; a malformed policy allows nothing and still
/// isolates the pods it selects (every pod of its namespace if its podSelector is the
/// malformed part, both directions if its policyTypes is), so it fails closed.
pub fn compute(
    policies: &[impl Borrow<NetworkPolicy>],
    pods: &[impl Borrow<Pod>],
    namespaces: &[impl Borrow<Namespace>],
    local: Local<'_>,
) -> Model {
    let mut problems = Vec::new();
    let pods: Vec<&Pod> = pods.iter().map(Borrow::borrow).collect();
    let namespaces: Vec<&Namespace> = namespaces.iter().map(Borrow::borrow).collect();
    let cluster = cluster::Cluster::new(&pods, &namespaces, &mut problems);
    let mut compiled = Vec::new();
    for policy in policies {
        let (policy, problem) = compile::compile(policy.borrow(), &cluster);
        compiled.extend(policy);
        problems.extend(problem);
    }
    model::build(&cluster, &compiled, local, problems)
}
