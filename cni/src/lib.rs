//! weft-cni: the CNI plugin that attaches pods to the node bridge, and the CNI types it shares
//! with the router.
//!
//! What this crate owns:
//! - the `weft-cni` binary (`src/main.rs`): one synchronous run per CNI call (ADD, DEL, CHECK,
//!   STATUS, GC, VERSION; CNI 0.3.0 to 1.1.0);
//! - the checked parse of everything the caller hands us ([`config`], [`env`]): bytes from the
//!   runtime become validated types once, and nothing else reads them raw;
//! - the CNI result and error formats for every supported version ([`result`], [`version`]);
//! - the contract with the router: [`node_block::NodeBlock`] (`<stateDir>/node-block.json`);
//! - the address leases inside the node's block ([`ipam`]), under a lock, durable on disk;
//! - what the bridge, veths, addresses and routes of a pod should be ([`plugin`]); the netlink
//!   calls, namespaces and durable writes that make it so are `weft-sys`'s;
//! - the conflist installer behind `weft install-cni` ([`install`]);
//! - with NetworkPolicy enforced, ADD's bounded wait for the router to judge the pod
//!   ([`router_wait`]) before the pod's link goes up.
//!
//! What it must never do: depend on `weft-mesh`, `weft-crypto` or `weft-router`, only on
//! `weft-sys` for system calls (docs/design.md §8); start an async runtime; shell out to `ip`
//! or any other tool (a production node need not have them); change anything when its input is
//! invalid; leave a lease, link or rule behind after DEL, GC or a failed ADD.

pub mod config;
pub mod env;
pub mod install;
pub mod ipam;
pub mod node_block;
pub mod plugin;
pub mod result;
pub mod router_wait;
pub mod version;

pub use result::CniError;
