//! weft-sys: the small synchronous system layer. Everything weft asks of the kernel goes
//! through here, with one implementation each:
//!
//! - [`netlink`]: the few rtnetlink requests (bridge, veth, addresses, routes,
//!   `gso_max_segs`) over a blocking socket, shared by the CNI plugin and the router;
//! - [`netns`]: entering a network namespace (on a thread of its own: `setns` is per thread);
//! - [`durable`]: atomic, durable file writes and removals, and the rule for the temporary
//!   files a crash leaves behind;
//! - [`mtu`]: the tunnel overhead, the pod MTU for an underlay MTU, and the underlay MTU as the
//!   kernel reports it;
//! - [`user`]: who we run as ([`is_root`], [`effective_uid`]);
//! - [`capability`]: whether a test that makes namespaces can run here (root, programs,
//!   files), with a loud skip, or a failure under `CI=true`.
//!
//! What it must never do: decide policy (which bridge, which block, which file names, what to
//! do when the kernel says no: the callers decide, this crate executes and reports); start or
//! need an async runtime (the router calls it from blocking threads); depend on weft's mesh,
//! crypto, router or CNI crates, which all sit above it (docs/design.md §8).

pub mod capability;
pub mod durable;
pub mod mtu;
pub mod netlink;
pub mod netns;
pub mod user;

pub use user::{effective_uid, is_root};
