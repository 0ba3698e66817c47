//! weft-mesh: the brain of a router, sans-IO.
//!
//! It owns the peer table and its gossip ([`record`]), the tunnel state machine per peer
//! ([`tunnel`]), routes through relays ([`routes`]), NAT traversal, the address blocks
//! ([`ipam`]) and the mesh's wire formats ([`wire`]); [`Node`] ties them together in the
//! `handle_*` in, `poll_*` out shape of quinn-proto (see [`node`] for the call order), and
//! publishes what data-plane workers need to seal and open without it ([`dataplane`]).
//!
//! It must never do I/O: no tokio, no sockets, no netlink, no clock reads, no OS randomness.
//! Time (`Instant` for timers, `Timestamp` for the wall clock) and randomness
//! ([`weft_crypto::Random`]) come in through its inputs, so a simulator can run hundreds of
//! nodes on a virtual clock and replay a run from its seed (docs/design.md §8). Every byte from the
//! network is parsed once by checked code and a malformed datagram is a counted drop
//! ([`DropReason`]), never a panic.

pub mod dataplane;
pub mod drop;
pub mod id;
pub mod ipam;
pub mod node;
pub mod packet;
pub mod record;
pub mod routes;
pub mod topology;
pub mod tunnel;
pub mod wire;

pub use dataplane::{
    ActivityReport, DataActivity, DataPlane, PeerPath, Received, Receiving, Tally,
};
pub use drop::{DropCounters, DropReason};
pub use id::{DEFAULT_PORT, Endpoint, PeerId, ShortId};
pub use ipam::{AddressSpace, WaitReason};
pub use node::{
    Command, Config, DirectAttempt, DownReason, Event, JoinSecretUse, Node, NodeStats, NodeStatus,
    PeerStatus, PersistentState, Transmit,
};
pub use packet::{Ipv4Error, Ipv4View};
pub use record::{Liveness, PeerRecord, PeerTable};
pub use routes::{NextHop, RouteTable};
pub use topology::{LinkState, LinkView};
pub use tunnel::TunnelState;
pub use wire::ControlMessage;
