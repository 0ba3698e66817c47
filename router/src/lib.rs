//! weft-router: the tokio driver around `weft_mesh::Node`.
//!
//! Owns the UDP socket, the TUN device, netlink, the control API and metrics. Protocol
//! decisions stay in `weft-mesh`; this crate only moves bytes and timers (DESIGN.md §8).
