//! weft-router: the tokio driver around [`weft_mesh::Node`].
//!
//! It owns what touches the machine: the UDP socket, the TUN device, the kernel's routes and
//! the node's bridge (netlink), the state directory, the control socket, metrics and logs.
//! Protocol decisions stay in `weft-mesh`; this crate only moves bytes and timers between
//! the kernel and the Node, and reports what the Node says (docs/design.md §2, §8). Under
//! Kubernetes it also finds peers, its block and the keys to pin in the API server's Node
//! objects ([`kubernetes`]).
//!
//! One task runs the Node; two data-plane workers ([`dataplane`]) move pod traffic beside it
//! on the state the Node publishes (docs/design.md §2).
//!
//! It must never decide what the mesh decides (who is a member, which path, which block),
//! nor log what the mesh already logged: each event is logged once, by the layer that knows
//! it, with the field names of docs/logging.md. Its errors are typed ([`driver::RunError`],
//! [`kubernetes::KubeError`], ...); only the binary turns them into text.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod driver;
pub mod join_secrets;
pub mod keyfile;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod netconf;
pub mod nftables;
pub mod report;
pub mod state;
pub mod ui;

pub use config::RouterConfig;
pub use driver::run;
