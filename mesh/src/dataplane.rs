//! The per-packet decisions, for data-plane workers that run beside the Node (docs/design.md §2:
//! "the mesh decides, the data plane executes").
//!
//! [`crate::Node::data_plane`] publishes a read-mostly [`DataPlane`] snapshot: the route
//! table, each peer's confirmed sending session and next hop, and the confirmed sessions that
//! open datagrams by local index. A worker seals ([`DataPlane::route`], [`PeerPath::seal`])
//! and opens ([`DataPlane::open`]) with it in parallel with the Node and with other workers,
//! and hands the Node what the snapshot does not cover, unopened. Only the common case is
//! here; anything that changes the Node's state (a new session's first packet, a roaming or
//! relayed datagram, control messages) stays the Node's. Workers report what they did in
//! [`DataActivity`] ([`crate::Node::handle_data_activity`]).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use weft_crypto::wire::Sealed;
use weft_crypto::{PayloadKind, Session};

use crate::drop::DropReason;
use crate::id::{Endpoint, PeerId};
use crate::packet;
use crate::routes::{NextHop, RouteTable};

/// What a data-plane worker needs to send to one peer, without asking the Node.
#[derive(Debug, Clone)]
pub struct PeerPath {
    /// The session to seal with.
    pub session: Arc<Session>,
    /// Where the sealed datagram goes.
    pub next_hop: NextHop,
    /// When the Node's choice of session may change by time alone (the previous session's
    /// grace ends): from then on the worker hands packets to the Node until a new snapshot
    /// comes, rather than seal with a session the peer may have dropped.
    pub until: Option<Instant>,
}

impl PeerPath {
    /// Seals the packet in `slot` (`[DATA_HEADER_LEN bytes of room | IP packet | TAG_LEN bytes
    /// of room]`) when the peer is reached directly, returning where to send it. `None`: the
    /// Node must see the packet (a relay, or a session past its limits, which the Node
    /// rekeys); `slot` is then unchanged.
    pub fn seal(&self, slot: &mut [u8], now: Instant) -> Option<Endpoint> {
        let NextHop::Direct(endpoint) = self.next_hop else {
            return None;
        };
        if self.until.is_some_and(|t| now >= t) {
            return None;
        }
        self.session
            .seal_in_place(PayloadKind::Data, slot, now)
            .ok()
            .map(|()| endpoint)
    }
}

/// What a data-plane worker needs to open datagrams under one session.
#[derive(Debug, Clone)]
pub struct Receiving {
    /// Who sealed it.
    pub peer: PeerId,
    /// The session that opens it.
    pub session: Arc<Session>,
    /// The peer's direct endpoint: datagrams from anywhere else (roaming, relays) go to the
    /// Node, which owns path changes.
    pub direct: Option<Endpoint>,
}

/// The read-mostly state the per-packet path uses: a router swaps its `Arc` when
/// [`crate::Node::data_plane`] returns a new one.
#[derive(Debug, Clone, Default)]
pub struct DataPlane {
    /// This node.
    pub local: Option<PeerId>,
    /// Address → peer.
    pub routes: RouteTable,
    /// Peer → session and next hop, for peers with a session the peer has confirmed.
    pub peers: BTreeMap<PeerId, PeerPath>,
    /// Local session index → the session that opens datagrams sent to it, for confirmed
    /// sessions only: the first packet under a new session goes to the Node, which learns
    /// from it that the peer holds the keys.
    pub receiving: HashMap<u32, Receiving>,
}

/// What to do with a datagram a worker received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Authentic data from `peer`: write `datagram[range]` (an IPv4 packet from the peer's
    /// block) to the TUN device.
    Deliver {
        /// The sender.
        peer: PeerId,
        /// Where the packet is in the opened datagram.
        range: Range<usize>,
    },
    /// Authentic data from `peer` whose packet is refused (like WireGuard's allowed IPs: a
    /// peer may only send from its own block); count it.
    Refused {
        /// The sender.
        peer: PeerId,
        /// Why.
        reason: DropReason,
    },
    /// Data for a session of ours that did not open: forged, replayed or expired; count it.
    /// The Node's own open would fail the same way, so it is not shown the datagram.
    Failed,
    /// Not confirmed-session data from the peer's direct endpoint: hand it to the Node as it
    /// is (unopened; the replay window has not moved).
    ToNode,
}

impl DataPlane {
    /// The peer that owns `dst` and how to reach it, when a worker can send there itself.
    pub fn route(&self, dst: Ipv4Addr) -> Option<(PeerId, &PeerPath)> {
        let owner = self.routes.owner(dst)?;
        if Some(owner) == self.local {
            return None;
        }
        self.peers.get(&owner).map(|p| (owner, p))
    }

    /// Classifies a received datagram and, when it is data under a confirmed session from
    /// the peer's direct endpoint, opens it in place.
    pub fn open(&self, datagram: &mut [u8], from: Endpoint, now: Instant) -> Received {
        // The one read of the header: the session opens this checked view as it is.
        let Ok(mut sealed) = Sealed::parse(&mut *datagram) else {
            return Received::ToNode;
        };
        if sealed.kind() != PayloadKind::Data {
            return Received::ToNode;
        }
        let Some(r) = self.receiving.get(&sealed.receiver_index()) else {
            return Received::ToNode;
        };
        if r.direct != Some(from) {
            return Received::ToNode;
        }
        let Ok(opened) = r.session.open_in_place(&mut sealed, now) else {
            return Received::Failed;
        };
        let range = opened.range();
        let peer = r.peer;
        match packet::admit(&self.routes, peer, &datagram[range.clone()]) {
            Ok(_) => Received::Deliver { peer, range },
            Err(reason) => Received::Refused { peer, reason },
        }
    }
}

/// What a data-plane worker did for one peer since its last report: the Node keeps liveness,
/// keepalive and path-silence timers from it ([`crate::Node::handle_data_activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataActivity {
    /// The peer.
    pub peer: PeerId,
    /// Datagram bytes sealed and sent to it.
    pub sent_bytes: u64,
    /// When the first and the last of them went out.
    pub sent: Option<(Instant, Instant)>,
    /// Datagram bytes opened from it.
    pub received_bytes: u64,
    /// When the last of them arrived, and from where.
    pub received: Option<(Instant, Endpoint)>,
}
