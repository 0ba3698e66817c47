//! What goes into a [`Node`](super::Node) and what comes out of it: its configuration and
//! persisted state, commands, datagrams to send, and events.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::id::{Endpoint, PeerId};
use crate::ipam::{AddressSpace, WaitReason};
use crate::routes::NextHop;

/// What a node is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's label (the Kubernetes node name).
    pub name: String,
    /// Endpoints this node listens on, announced to peers.
    pub announce: Vec<Endpoint>,
    /// Endpoints to dial at start (their keys are not known).
    pub seeds: Vec<Endpoint>,
    /// The cluster's address range.
    pub cluster_range: Ipv4Net,
    /// Prefix length of a node's block.
    pub block_prefix: u8,
    /// A block given from outside (podCIDR): used as is, no claim.
    pub pod_cidr: Option<Ipv4Net>,
    /// Whether this node starts the cluster's address space (owns the whole range at first).
    /// Exactly one node of a new cluster is started with it.
    pub found_address_space: bool,
}

impl Config {
    /// A config with the defaults of docs/design.md §5.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            announce: Vec::new(),
            seeds: Vec::new(),
            cluster_range: crate::ipam::DEFAULT_CLUSTER_RANGE
                .parse()
                .expect("valid default"),
            block_prefix: crate::ipam::DEFAULT_BLOCK_PREFIX,
            pod_cidr: None,
            found_address_space: false,
        }
    }
}

/// What a node keeps on disk between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistentState {
    /// The incarnation of the last run.
    pub incarnation: u64,
    /// Owned address space and grants in flight.
    pub space: AddressSpace,
}

/// An operator's (or the router's) instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Dial this endpoint (a seed, or `weft connect`).
    Connect(Endpoint),
    /// Remove a member: close its tunnel and spread a tombstone. This node refuses its
    /// handshakes from then on; if it is in fact alive, it refutes the tombstone with a new
    /// incarnation through the other members (SWIM's rule), which revives it here too.
    Forget(PeerId),
    /// Take over the address space of a member gone for good (Weave's `rmpeer`): the operator
    /// asserts it will not come back with its old state.
    TakeOverBlocks(PeerId),
    /// Pin membership to these keys, each expected at its endpoint (the keys annotated on
    /// Kubernetes Nodes, docs/design.md §3): a handshake that authenticates any other key is
    /// refused, tunnels of peers no longer listed close, a dial of a listed endpoint expects
    /// that endpoint's key, and each listed peer is dialled at its endpoint. Replaces the
    /// previous pins; there is no way back to unpinned (a router is pinned for its lifetime).
    Pin(BTreeMap<PeerId, Endpoint>),
    /// Accept these join secrets from now on and initiate with their primary (the router's
    /// join secret file changed: a rotation step, docs/design.md §3). Sessions stay; those
    /// made with a secret other than the new primary are re-made at once, the old session
    /// carrying traffic until the new one is confirmed.
    SetJoinSecrets(weft_crypto::JoinSecrets),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: Endpoint,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Why a peer went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// No packet from it for [`DEAD_AFTER`](crate::tunnel::DEAD_AFTER).
    Dead,
    /// Its sessions expired and no rekey succeeded.
    Expired,
    /// It restarted (new incarnation): its sessions are gone.
    Restarted,
    /// It departed or was forgotten.
    Departed,
    /// Its key is no longer pinned (see [`Command::Pin`]).
    Unpinned,
}

/// Something the router may want to know, log or export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A tunnel came up.
    PeerUp {
        /// The peer.
        peer: PeerId,
        /// How it is reached.
        path: NextHop,
    },
    /// A tunnel went down.
    PeerDown {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DownReason,
    },
    /// A new member was learned.
    MemberJoined {
        /// Its id.
        peer: PeerId,
        /// Its name.
        name: String,
    },
    /// A member became a tombstone.
    MemberDeparted {
        /// Its id.
        peer: PeerId,
    },
    /// The route table changed (read it with [`Node::routes`](super::Node::routes)).
    RoutesChanged,
    /// This node now has a block for its pods.
    BlockClaimed {
        /// The block.
        block: Ipv4Net,
    },
    /// This node has no block and is waiting, for this reason.
    BlockWaiting {
        /// Why.
        reason: WaitReason,
    },
    /// A take-over command succeeded.
    BlocksTakenOver {
        /// The departed owner.
        from: PeerId,
        /// The space now ours.
        space: Vec<Ipv4Net>,
    },
    /// A command was refused.
    CommandRefused {
        /// The command.
        command: Command,
        /// Why.
        reason: &'static str,
    },
    /// [`Node::persistent_state`](super::Node::persistent_state) changed: write it before
    /// sending the pending transmits.
    StateChanged,
}
