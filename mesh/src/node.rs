//! [`Node`]: one router's mesh logic, sans-IO, in the shape of quinn-proto's `Connection`.
//!
//! # Inputs and outputs
//!
//! Inputs, each with `now`: [`Node::handle_datagram`] (anything that arrived on the weft
//! port), [`Node::handle_tun_packets`] (a batch of IP packets read from the TUN device),
//! [`Node::handle_timeout`] (the deadline from `poll_timeout` passed) and
//! [`Node::handle_command`] (`connect`, `forget`, take-over...).
//!
//! Outputs: after every input, drain in this order:
//! 1. [`Node::poll_event`] until `None`. On [`Event::StateChanged`], write
//!    [`Node::persistent_state`] durably **before** sending anything: a grant of address space
//!    must be on disk before the datagram that announces it leaves (see `ipam.rs`).
//! 2. [`Node::poll_transmit`] until `None`: datagrams to send.
//! 3. [`Node::poll_tun`] until `None`: decrypted IP packets for the TUN device.
//! 4. [`Node::poll_timeout`]: when to call `handle_timeout` next (one deadline for everything).
//!
//! Read access for a status API: [`Node::status`], [`Node::members`], [`Node::routes`],
//! [`Node::drops`], [`Node::stats`]; for data-plane workers: [`Node::data_plane`].
//!
//! # Who initiates
//!
//! In XX the responder learns who is calling only at the third message, so two peers that
//! dial each other at once would each complete a handshake and could settle on different
//! sessions. To avoid crossing handshakes, for a member learned by gossip the peer with the
//! lower key initiates at once and the higher one only after [`INITIATE_FALLBACK`] (it may be
//! the only one that can get through a NAT). A hole punch follows the same rule: both send
//! punches, the lower key answers a punch with an initiation.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{debug, info, trace, warn};
use weft_crypto::wire::{Finish, Initiation, Response};
use weft_crypto::{
    DATA_HEADER_LEN, DATA_OVERHEAD, Handshaker, KEEPALIVE_TIMEOUT, Keyring, MessageType,
    PayloadKind, REKEY_TIMEOUT, Random, Role, Session, TAG_LEN, Timestamp,
};

use crate::dataplane::{DataActivity, DataPlane, PeerPath, Receiving};
use crate::id::{Endpoint, PeerId, ShortId};
use crate::ipam::{AddressSpace, WaitReason, overlaps};
use crate::record::{Liveness, MAX_ENDPOINTS, MAX_LINKS_DOWN, Merge, PeerRecord, PeerTable};
use crate::routes::{NextHop, RouteTable};
use crate::tunnel::{
    Attempt, DEAD_AFTER, HANDSHAKE_ATTEMPTS, STABLE_AFTER, Tunnel, TunnelState, backoff,
};
use crate::wire::{
    ControlMessage, DecodeError, DenyReason, MAX_CONTROL_PAYLOAD, MAX_DIGEST_ENTRIES,
    RELAY_MAX_HOPS, RelayKind, RelayPacket,
};

/// Changed records are batched and pushed to a few peers this often.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(1);
/// Every this often, a digest of all records goes to one random peer, which answers with what
/// we lack and its own digest (anti-entropy: heals what rumours missed, and partitions).
pub const DIGEST_INTERVAL: Duration = Duration::from_secs(5);
/// The higher key of a pair initiates only after this, if no session formed (see the module
/// docs): one `REKEY_TIMEOUT`, the time the lower key's first attempt had.
pub const INITIATE_FALLBACK: Duration = REKEY_TIMEOUT;
/// After this without a session, ask a mutual peer to introduce us (hole punching).
pub const INTRODUCE_AFTER: Duration = REKEY_TIMEOUT;
/// After this without a direct session, the peer is listed as unreachable in our record and
/// reached through relays (the bound of the issue: two handshake timeouts).
pub const DIRECT_PATH_BOUND: Duration = Duration::from_secs(2 * REKEY_TIMEOUT.as_secs());
/// Packets waiting per peer for its handshake; more are dropped and counted. A TCP initial
/// window is 10 segments (RFC 6928); 64 leaves room for several flows.
pub const QUEUE_LIMIT: usize = 64;
/// Tombstones are kept this long, so a departed peer is not revived by a stale record that
/// is still travelling.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// How often a node without a block retries asking an owner.
pub const IPAM_RETRY: Duration = Duration::from_secs(2);
/// How often an unacknowledged grant is resent.
pub const GRANT_RESEND: Duration = Duration::from_secs(1);
/// How long a responder keeps a handshake waiting for its finish: the initiator resends
/// after `REKEY_TIMEOUT`, so a third message later than that will not come.
pub const RESPONDING_TIMEOUT: Duration = Duration::from_secs(2 * REKEY_TIMEOUT.as_secs());
/// Routes through relays are recomputed at most this often (they matter only for peers past
/// [`DIRECT_PATH_BOUND`], so a second of staleness costs nothing).
pub const ROUTE_INTERVAL: Duration = Duration::from_secs(1);
/// The minimum time between two punches or punch-triggered initiations towards one peer.
pub const PUNCH_INTERVAL: Duration = Duration::from_millis(500);
/// Data sent over a direct path and nothing received on it for this long: the path may be
/// dead, so a handshake goes out as a probe (it must be answered). WireGuard waits
/// `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` because it has no other way round a dead path; we have
/// relays, and the issue's bound for failover is 15 s, so we probe after one `REKEY_TIMEOUT`
/// and give the probe one more `REKEY_TIMEOUT` before relaying.
pub const SILENT_PROBE_AFTER: Duration = REKEY_TIMEOUT;
/// While a session runs through a relay because its direct path went silent, a keepalive is
/// sent straight to the peer this often: when it gets through, the peer roams back to the
/// direct path (and so do we when its answer arrives directly).
pub const DIRECT_PROBE_INTERVAL: Duration = REKEY_TIMEOUT;
/// A sealed datagram for a receiver index we do not hold (we restarted and lost the session,
/// or dropped it) makes us handshake with its sender at most this often per endpoint.
pub const UNKNOWN_INDEX_INTERVAL: Duration = REKEY_TIMEOUT;
/// Endpoints remembered for [`UNKNOWN_INDEX_INTERVAL`]; past this, unknown-index datagrams
/// from new endpoints are only counted (a flood of forged sources cannot make us dial them).
pub const UNKNOWN_INDEX_ENDPOINTS: usize = 64;

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
    /// A config with the defaults of DESIGN.md §5.
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
    /// Kubernetes Nodes, DESIGN.md §3): a handshake that authenticates any other key is
    /// refused, tunnels of peers no longer listed close, a dial of a listed endpoint expects
    /// that endpoint's key, and each listed peer is dialled at its endpoint. Replaces the
    /// previous pins; there is no way back to unpinned (a router is pinned for its lifetime).
    Pin(BTreeMap<PeerId, Endpoint>),
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
    /// No packet from it for [`DEAD_AFTER`].
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
    /// The route table changed (read it with [`Node::routes`]).
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
    /// [`Node::persistent_state`] changed: write it before sending the pending transmits.
    StateChanged,
}

/// Why a datagram or packet was dropped; each is counted ([`Node::drops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not a weft datagram (bad type, length, version).
    Malformed,
    /// A handshake message names no handshake of ours.
    UnknownIndex,
    /// A handshake message failed (authentication, replay, wrong peer...).
    HandshakeRejected,
    /// A sealed datagram failed to open (forged, replayed, expired).
    OpenFailed,
    /// A control message that does not decode.
    ControlMalformed,
    /// A control message of a version or kind this build does not know (skipped).
    ControlUnknown,
    /// A relay envelope that does not parse.
    RelayMalformed,
    /// A relay envelope from an endpoint that is not a member's.
    RelayFromStranger,
    /// A relay envelope that ran out of hops.
    RelayHops,
    /// A relay envelope for a peer we have no path to.
    RelayNoRoute,
    /// A relayed datagram whose inner sender is not the envelope's source.
    RelaySourceMismatch,
    /// A TUN packet that is not IPv4.
    NotIpv4,
    /// A TUN packet for an address no peer owns.
    NoRoute,
    /// A TUN packet for this node's own block.
    Local,
    /// The per-peer queue was full while the handshake ran.
    QueueFull,
    /// A packet for a peer with no path (no endpoint, no relay).
    NoPath,
    /// A data packet whose source address is not in the sender's block.
    SpoofedSource,
    /// A data packet from a peer whose record (and so block) we do not know yet.
    UnknownSender,
    /// A grant overlapping space we own, or outside the cluster range.
    BadGrant,
    /// A message from a peer that is not (or no longer) a member.
    NotMember,
    /// A handshake that authenticated a key other than the one pinned for the peer or
    /// endpoint (see [`Command::Pin`]): someone posing as another node, or a stale pin.
    NotPinned,
    /// A TUN frame the data plane could not split into packets (an offload frame with more
    /// segments than a batch holds, or a malformed virtio header): dropped whole.
    TunFrame,
}

/// Drop counts by reason.
pub type DropCounters = BTreeMap<DropReason, u64>;

/// Counters of what the node sent, for metrics and the scale figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Bytes of gossip datagrams sent (records and sync requests, sealed, on the wire).
    pub gossip_bytes: u64,
    /// Bytes of all control datagrams sent (gossip, keepalives, IPAM, NAT).
    pub control_bytes: u64,
    /// Bytes of handshake datagrams sent.
    pub handshake_bytes: u64,
    /// Datagrams forwarded for other peers (relay).
    pub relayed: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Introductions made for two other peers (as the mutual peer).
    pub introductions: u64,
    /// Hole punches sent.
    pub punches: u64,
}

/// A peer, as a status API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its id.
    pub id: PeerId,
    /// Its name, if its record is known.
    pub name: Option<String>,
    /// Tunnel state.
    pub state: TunnelState,
    /// How it is reached (when known).
    pub path: Option<NextHop>,
    /// Handshake round-trip time of the last handshake we initiated.
    pub rtt: Option<Duration>,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// Whether we list it as not directly reachable.
    pub unreachable: bool,
}

/// The node, as a status API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Our id.
    pub id: PeerId,
    /// Our name.
    pub name: String,
    /// Our incarnation.
    pub incarnation: u64,
    /// Our pod block, if any.
    pub block: Option<Ipv4Net>,
    /// Why we have none, if we have none.
    pub waiting: Option<WaitReason>,
    /// Free space we own.
    pub free_space: Vec<Ipv4Net>,
    /// Every peer with tunnel state.
    pub peers: Vec<PeerStatus>,
    /// Members known (tombstones excluded), ourselves included.
    pub members: usize,
}

/// Where a datagram came from: directly, or through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    /// The underlay source (the relay's, if relayed).
    endpoint: Endpoint,
    /// The source peer the relay envelope claims, if relayed.
    relayed_from: Option<PeerId>,
}

/// What a local index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexUse {
    /// Our initiation to a known peer.
    Initiating(PeerId),
    /// Our initiation to an endpoint whose key we do not know (a seed).
    Dialing(Endpoint),
    /// Our response, waiting for the finish.
    Responding,
    /// A session with this peer.
    Session(PeerId),
}

/// A handshake we answered.
struct Pending {
    state: weft_crypto::Responding,
    source: Source,
    expires: Instant,
}

/// A dial to an endpoint whose key we do not know.
#[derive(Debug)]
struct Dial {
    attempt: Option<Attempt>,
    retry_at: Instant,
    tries: u32,
    failures: u32,
    /// Dialled because it sent us data under a session we do not hold: one round of
    /// attempts, then forgotten (it is not a seed).
    once: bool,
}

/// Our state for one peer.
#[derive(Debug)]
struct Peer {
    tunnel: Tunnel,
    path: Option<NextHop>,
    queue: VecDeque<Vec<u8>>,
    failures: u32,
    /// Since when we want a session and have none (None while up).
    wanted_since: Option<Instant>,
    /// Listed in our `links_down`.
    unreachable: bool,
    last_rx: Instant,
    last_tx: Instant,
    last_direct_rx: Option<Instant>,
    up_since: Option<Instant>,
    tx_bytes: u64,
    rx_bytes: u64,
    last_handshake: Option<Instant>,
    rtt: Option<Duration>,
    /// Session indices we hold for it.
    indices: Vec<u32>,
    intro_at: Option<Instant>,
    punch_at: Option<Instant>,
    /// An endpoint learned from an introduction or a punch.
    punch_endpoint: Option<Endpoint>,
    /// The source endpoint we last reported to it.
    observed_sent: Option<Endpoint>,
    /// The incarnation of the run the current session was formed with, from the peer's own
    /// record sent under that session (None until it arrives).
    session_incarnation: Option<u64>,
    /// Since when data went out on the direct path with nothing received on it.
    unanswered_since: Option<Instant>,
    /// The direct endpoint of a session moved to a relay because the path went silent.
    lost_direct: Option<Endpoint>,
    /// When to send the next keepalive straight to `lost_direct` (and the record's
    /// endpoints), to find out whether the direct path is back.
    direct_probe_at: Option<Instant>,
}

impl Peer {
    fn new(now: Instant, retry_at: Instant) -> Self {
        Self {
            tunnel: Tunnel::Idle { retry_at },
            path: None,
            queue: VecDeque::new(),
            failures: 0,
            wanted_since: Some(now),
            unreachable: false,
            last_rx: now,
            last_tx: now,
            last_direct_rx: None,
            up_since: None,
            tx_bytes: 0,
            rx_bytes: 0,
            last_handshake: None,
            rtt: None,
            indices: Vec::new(),
            intro_at: None,
            punch_at: None,
            punch_endpoint: None,
            observed_sent: None,
            session_incarnation: None,
            unanswered_since: None,
            lost_direct: None,
            direct_probe_at: None,
        }
    }

    /// The peer's next deadline.
    fn deadline(&self) -> Option<Instant> {
        let mut d = match &self.tunnel {
            Tunnel::Idle { retry_at } => Some(*retry_at),
            Tunnel::Handshaking { attempt, .. } => Some(attempt.resend_at),
            Tunnel::Established { keys } => Some(up_deadline(self, keys)),
            Tunnel::Rekeying { keys, attempt, .. } => {
                Some(up_deadline(self, keys).min(attempt.resend_at))
            }
        };
        if let Some(since) = self.wanted_since {
            if !self.unreachable {
                d = min_opt(d, Some(since + DIRECT_PATH_BOUND));
            }
            if self.intro_at.is_none() {
                d = min_opt(d, Some(since + INTRODUCE_AFTER));
            }
        }
        d
    }
}

/// A session we initiated must be confirmed (a packet from the peer opened under it) within
/// this: if not, our finish was lost and the peer has no session; handshake again.
pub const CONFIRM_TIMEOUT: Duration = REKEY_TIMEOUT;

/// How young the current session must be for a session beside it to count as one that
/// crossed it (see `Node::on_session`): crossed handshakes complete within a round trip of
/// each other, and an older session is replaced as in any rekey. The two ends judge this a
/// round trip apart, so a session completing at the window's very edge can still be judged
/// differently by them (see the closing note of the change; a simulated bad-link test holds
/// the rule to zero silent pairs over 120 seeds).
pub const CROSSING_WINDOW: Duration = CONFIRM_TIMEOUT;

/// Whether the current session is ours, unconfirmed, and past [`CONFIRM_TIMEOUT`].
fn unconfirmed_since(keys: &Keyring) -> Option<Instant> {
    keys.current()
        .filter(|s| s.role() == Role::Initiator && !s.is_confirmed())
        .map(|s| s.established() + CONFIRM_TIMEOUT)
}

fn up_deadline(p: &Peer, keys: &Keyring) -> Instant {
    let mut d = (p.last_tx + KEEPALIVE_TIMEOUT).min(p.last_rx + DEAD_AFTER);
    if let (Tunnel::Established { .. }, Some(t)) = (&p.tunnel, unconfirmed_since(keys)) {
        d = d.min(t);
    }
    if let (Tunnel::Established { .. }, Some(t), Some(NextHop::Direct(_))) =
        (&p.tunnel, p.unanswered_since, p.path)
    {
        d = d.min(t + SILENT_PROBE_AFTER);
    }
    if let Some(t) = p.direct_probe_at {
        d = d.min(t);
    }
    if let Some(t) = keys.previous_until() {
        // The previous session's grace ends: release it, and let the data plane's snapshot
        // (whose choice of session depends on it) be rebuilt then.
        d = d.min(t);
    }
    if let Some(s) = keys.current() {
        // While rekeying, the rekey time has passed already: wake for the expiry instead.
        d = d.min(if matches!(p.tunnel, Tunnel::Rekeying { .. }) {
            s.expires_at()
        } else {
            s.rekey_at().min(s.expires_at())
        });
    }
    d
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The global timers (one table; per-peer deadlines are kept in an ordered set beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Gossip = 0,
    Digest = 1,
    Ipam = 2,
    Maintenance = 3,
    Routes = 4,
}
const TIMERS: usize = 5;

/// One router's mesh logic. See the module docs for the call order.
pub struct Node {
    config: Config,
    handshaker: Handshaker,
    id: PeerId,
    rng: Box<dyn Random + Send>,
    instant_base: Instant,
    wall_base: Duration,
    incarnation: u64,
    version: u64,
    own_dirty: bool,
    table: PeerTable,
    names: BTreeMap<String, PeerId>,
    forgotten: BTreeSet<PeerId>,
    peers: BTreeMap<PeerId, Peer>,
    by_endpoint: HashMap<Endpoint, PeerId>,
    dials: BTreeMap<Endpoint, Dial>,
    indices: HashMap<u32, IndexUse>,
    responding: HashMap<u32, Pending>,
    /// Endpoints peers reported seeing us at, newest last.
    seen: VecDeque<Endpoint>,
    synced: bool,
    rumors: BTreeSet<PeerId>,
    space: AddressSpace,
    waiting: Option<WaitReason>,
    denied: BTreeMap<PeerId, Instant>,
    /// Keys membership is pinned to and where each is expected ([`Command::Pin`]); `None`
    /// while unpinned.
    pinned: Option<BTreeMap<PeerId, Endpoint>>,
    /// Endpoints that sent us data for an unknown index, and when we last acted on it.
    unknown_index_from: HashMap<Endpoint, Instant>,
    routes: Arc<RouteTable>,
    routes_dirty: bool,
    routes_computed: Option<Instant>,
    data_plane: Option<Arc<DataPlane>>,
    timers: [Option<Instant>; TIMERS],
    peer_timers: BTreeSet<(Instant, PeerId)>,
    peer_deadlines: HashMap<PeerId, Instant>,
    touched: BTreeSet<PeerId>,
    transmits: VecDeque<Transmit>,
    tun: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    drops: DropCounters,
    stats: NodeStats,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The IPv4 source and destination of a packet, checked (version, header length, total
/// length within the buffer).
fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || (packet[0] & 0x0f) < 5 {
        return None;
    }
    let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    if total < 20 || total > packet.len() {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst))
}

fn rand_u64(rng: &mut dyn Random) -> u64 {
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    u64::from_le_bytes(b)
}

impl Node {
    /// A node. `persisted` is what [`Node::persistent_state`] returned in the last run (with
    /// the same key), if any. `now` and `wall` are the same instant on the two clocks; later
    /// wall times are derived from `now` (call [`Node::handle_wall_clock`] after a clock step).
    pub fn new(
        config: Config,
        handshaker: Handshaker,
        persisted: Option<PersistentState>,
        rng: Box<dyn Random + Send>,
        now: Instant,
        wall: Timestamp,
    ) -> Self {
        let id = PeerId::from(handshaker.public());
        let persisted = persisted.unwrap_or_default();
        // A fresh incarnation beats every record of earlier runs: the wall clock in ms, or
        // one more than the last run's if the clock went back.
        let wall_ms = wall.to_unix().as_millis() as u64;
        let incarnation = wall_ms.max(persisted.incarnation + 1);
        let mut space = persisted.space;
        if let Some(block) = config.pod_cidr {
            space = AddressSpace::external(block);
        } else if config.found_address_space
            && space.pod_block.is_none()
            && space.free.is_empty()
            && space.outgoing.is_empty()
            && persisted.incarnation == 0
        {
            space = AddressSpace::found(config.cluster_range, config.block_prefix);
        }
        let mut node = Self {
            handshaker,
            id,
            rng,
            instant_base: now,
            wall_base: wall.to_unix(),
            incarnation,
            version: 0,
            own_dirty: true,
            table: PeerTable::new(),
            names: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            peers: BTreeMap::new(),
            by_endpoint: HashMap::new(),
            dials: BTreeMap::new(),
            indices: HashMap::new(),
            responding: HashMap::new(),
            seen: VecDeque::new(),
            synced: false,
            rumors: BTreeSet::new(),
            space,
            waiting: None,
            denied: BTreeMap::new(),
            pinned: None,
            unknown_index_from: HashMap::new(),
            routes: Arc::default(),
            routes_dirty: true,
            routes_computed: None,
            data_plane: None,
            timers: [None; TIMERS],
            peer_timers: BTreeSet::new(),
            peer_deadlines: HashMap::new(),
            touched: BTreeSet::new(),
            transmits: VecDeque::new(),
            tun: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::new(),
            stats: NodeStats::default(),
            config,
        };
        node.publish_own(now);
        for seed in node.config.seeds.clone() {
            node.add_dial(seed, now);
        }
        node.timers[Timer::Gossip as usize] = Some(now + GOSSIP_INTERVAL);
        let jitter = node.jitter(DIGEST_INTERVAL);
        node.timers[Timer::Digest as usize] = Some(now + DIGEST_INTERVAL / 2 + jitter);
        node.timers[Timer::Ipam as usize] = Some(now);
        node.timers[Timer::Maintenance as usize] = Some(now + Duration::from_secs(1));
        node.timers[Timer::Routes as usize] = Some(now);
        if let Some(block) = node.space.block() {
            node.events.push_back(Event::BlockClaimed { block });
        }
        node.events.push_back(Event::StateChanged);
        info!(id = ?node.id, incarnation, "mesh node started");
        node
    }

    // ---------------------------------------------------------------- accessors

    /// Our id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Our name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// What to keep on disk (see [`Event::StateChanged`]).
    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            incarnation: self.incarnation,
            space: self.space.clone(),
        }
    }

    /// Our address space.
    pub fn address_space(&self) -> &AddressSpace {
        &self.space
    }

    /// Our pod block, if we have one.
    pub fn block(&self) -> Option<Ipv4Net> {
        self.space.block()
    }

    /// Why we have no block, if we have none.
    pub fn waiting(&self) -> Option<&WaitReason> {
        self.waiting.as_ref()
    }

    /// Every record we know, tombstones included.
    pub fn members(&self) -> &PeerTable {
        &self.table
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.clone()
    }

    /// Drop counts by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Send counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Whether a tunnel to `peer` is up.
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.tunnel.is_up())
    }

    /// How `peer` is reached, if it is.
    pub fn path(&self, peer: &PeerId) -> Option<NextHop> {
        self.peers
            .get(peer)
            .filter(|p| p.tunnel.is_up())
            .and_then(|p| p.path)
    }

    /// Peers with a tunnel up.
    pub fn up_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.tunnel.is_up())
            .map(|(id, _)| *id)
    }

    /// Whether we hold any session whose remote is `peer` (used by tests to show that a
    /// relay holds no session for the pair it relays).
    pub fn holds_session_with(&self, peer: &PeerId) -> bool {
        self.indices
            .values()
            .any(|u| matches!(u, IndexUse::Session(p) if p == peer))
    }

    /// Whether `index` is one of our local indices (a session, or a handshake in flight).
    /// Tests use it to show a relay holds nothing for the pair it relays.
    pub fn holds_index(&self, index: u32) -> bool {
        self.indices.contains_key(&index)
    }

    /// A snapshot for a status API.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id,
            name: self.config.name.clone(),
            incarnation: self.incarnation,
            block: self.space.block(),
            waiting: self.waiting.clone(),
            free_space: self.space.free.clone(),
            peers: self
                .peers
                .iter()
                .map(|(id, p)| PeerStatus {
                    id: *id,
                    name: self.table.get(id).map(|r| r.name.clone()),
                    state: p.tunnel.name(),
                    path: p.path,
                    rtt: p.rtt,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    last_handshake: p.last_handshake,
                    unreachable: p.unreachable,
                })
                .collect(),
            members: self.table.alive().count(),
        }
    }

    /// The read-mostly state for data-plane workers. It is rebuilt after any input changed
    /// the Node (the same `Arc` otherwise, so a router can compare pointers and swap): only
    /// confirmed sessions are in it, exactly those [`Node::handle_tun_packets`] would seal
    /// with, and a worker hands the Node anything the snapshot does not cover.
    pub fn data_plane(&mut self, now: Instant) -> Arc<DataPlane> {
        if let Some(dp) = &self.data_plane {
            return dp.clone();
        }
        let mut peers = BTreeMap::new();
        let mut receiving = HashMap::new();
        for (id, p) in &self.peers {
            let Some(keys) = p.tunnel.keys() else {
                continue;
            };
            if let (Some(session), Some(next_hop)) = (
                keys.sending(now)
                    .filter(|s| s.is_confirmed() && !s.is_expired(now)),
                p.path,
            ) {
                // `sending` changes its answer when the previous session's grace ends.
                let until = keys.previous_until().filter(|t| *t > now);
                let session = session.clone();
                peers.insert(
                    *id,
                    PeerPath {
                        session,
                        next_hop,
                        until,
                    },
                );
            }
            let direct = match p.path {
                Some(NextHop::Direct(ep)) => Some(ep),
                _ => None,
            };
            for session in keys.current().into_iter().chain(keys.previous(now)) {
                if session.is_confirmed() {
                    receiving.insert(
                        session.local_index(),
                        Receiving {
                            peer: *id,
                            session: session.clone(),
                            direct,
                        },
                    );
                }
            }
        }
        let dp = Arc::new(DataPlane {
            local: Some(self.id),
            routes: (*self.routes).clone(),
            peers,
            receiving,
        });
        self.data_plane = Some(dp.clone());
        dp
    }

    /// What data-plane workers sealed and opened outside the Node since their last report:
    /// keeps the liveness, keepalive and silent-path clocks as if the Node had done it.
    pub fn handle_data_activity(&mut self, now: Instant, activity: &[DataActivity]) {
        for a in activity {
            let Some(p) = self.peers.get_mut(&a.peer) else {
                continue;
            };
            if let Some((first, last)) = a.sent {
                p.last_tx = p.last_tx.max(last);
                p.tx_bytes += a.sent_bytes;
                if matches!(p.path, Some(NextHop::Direct(_))) && p.unanswered_since.is_none() {
                    p.unanswered_since = Some(first);
                }
            }
            if let Some((last, from)) = a.received {
                p.last_rx = p.last_rx.max(last);
                p.rx_bytes += a.received_bytes;
                if p.path == Some(NextHop::Direct(from)) {
                    p.last_direct_rx = Some(p.last_direct_rx.map_or(last, |t| t.max(last)));
                    if p.unanswered_since.is_some_and(|t| t <= last) {
                        p.unanswered_since = None;
                    }
                    p.direct_probe_at = None;
                }
            }
            self.touched.insert(a.peer);
        }
        self.finish(now);
    }

    /// Drops counted by a data-plane worker (the Node's [`Node::drops`] stays the one tally).
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.drops.entry(reason).or_default() += n;
        }
    }

    // ---------------------------------------------------------------- outputs

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next decrypted IP packet for the TUN device.
    pub fn poll_tun(&mut self) -> Option<Vec<u8>> {
        self.tun.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let global = self.timers.iter().flatten().min().copied();
        let peer = self.peer_timers.first().map(|(t, _)| *t);
        min_opt(global, peer)
    }

    // ---------------------------------------------------------------- inputs

    /// Resets the wall clock (after NTP stepped it): later wall times derive from this pair.
    pub fn handle_wall_clock(&mut self, now: Instant, wall: Timestamp) {
        self.instant_base = now;
        self.wall_base = wall.to_unix();
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: Endpoint, bytes: &[u8]) {
        match MessageType::of(bytes) {
            Err(_) => self.drop_for(DropReason::Malformed),
            Ok(MessageType::Relay) => self.handle_relay(now, from, bytes),
            Ok(_) => self.handle_inner(
                now,
                Source {
                    endpoint: from,
                    relayed_from: None,
                },
                bytes,
            ),
        }
        self.finish(now);
    }

    /// A batch of datagrams arrived.
    pub fn handle_datagrams<'a>(
        &mut self,
        now: Instant,
        batch: impl IntoIterator<Item = (Endpoint, &'a [u8])>,
    ) {
        for (from, bytes) in batch {
            self.handle_datagram(now, from, bytes);
        }
    }

    /// A batch of IP packets from the TUN device, to seal and send to their owners.
    pub fn handle_tun_packets(&mut self, now: Instant, packets: impl IntoIterator<Item = Vec<u8>>) {
        for packet in packets {
            let Some((_, dst)) = ipv4_addrs(&packet) else {
                self.drop_for(DropReason::NotIpv4);
                continue;
            };
            let Some(owner) = self.routes.owner(dst) else {
                self.drop_for(DropReason::NoRoute);
                continue;
            };
            if owner == self.id {
                self.drop_for(DropReason::Local);
                continue;
            }
            self.send_data(owner, packet, now);
        }
        self.finish(now);
    }

    /// An instruction.
    pub fn handle_command(&mut self, now: Instant, command: Command) {
        match command.clone() {
            Command::Connect(endpoint) => self.add_dial(endpoint, now),
            Command::Forget(peer) => {
                if peer == self.id {
                    self.refuse(command, "cannot forget ourselves");
                } else if let Some(r) = self.table.get(&peer).cloned() {
                    self.forgotten.insert(peer);
                    let tomb = r.tombstone(self.id, false);
                    self.merge_record(tomb, now);
                } else {
                    self.refuse(command, "unknown peer");
                }
            }
            Command::TakeOverBlocks(peer) => self.take_over(now, peer, command),
            Command::Pin(pins) => self.pin(pins, now),
        }
        self.finish(now);
    }

    /// The deadline from [`Node::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..TIMERS {
            if self.timers[i].is_some_and(|t| t <= now) {
                self.timers[i] = None;
                match i {
                    0 => self.on_gossip_timer(now),
                    1 => self.on_digest_timer(now),
                    2 => self.on_ipam_timer(now),
                    3 => self.on_maintenance_timer(now),
                    _ => self.on_routes_timer(now),
                }
            }
        }
        let due: Vec<PeerId> = self
            .peer_timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            if let Some(t) = self.peer_deadlines.remove(&id) {
                self.peer_timers.remove(&(t, id));
            }
            self.on_peer_timer(id, now);
            self.touched.insert(id);
        }
        self.finish(now);
    }

    // ---------------------------------------------------------------- plumbing

    fn wall(&self, now: Instant) -> Timestamp {
        Timestamp::from_unix(self.wall_base + now.saturating_duration_since(self.instant_base))
    }

    /// A uniformly random duration in `[0, max)`.
    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().max(1) as u64;
        Duration::from_nanos(rand_u64(&mut &mut *self.rng) % nanos)
    }

    fn drop_for(&mut self, reason: DropReason) {
        trace!(?reason, "drop");
        *self.drops.entry(reason).or_default() += 1;
    }

    fn refuse(&mut self, command: Command, reason: &'static str) {
        warn!(?command, reason, "command refused");
        self.events
            .push_back(Event::CommandRefused { command, reason });
    }

    fn alloc_index(&mut self, usage: IndexUse) -> u32 {
        loop {
            let mut b = [0u8; 4];
            self.rng.fill(&mut b);
            let i = u32::from_le_bytes(b);
            if i != 0 && !self.indices.contains_key(&i) {
                self.indices.insert(i, usage);
                return i;
            }
        }
    }

    /// Ends every input: reschedules touched peers, refreshes routes and our record.
    fn finish(&mut self, now: Instant) {
        // Any input may have moved a session, path or route: the data plane's snapshot is
        // rebuilt on next request rather than tracked change by change (a missed case there
        // would seal with a stale session). This is the one place it is dropped.
        self.data_plane = None;
        if self.own_dirty {
            // Our record changes are published at the next gossip tick (batched), but the
            // local table and routes see them at once.
            self.publish_own(now);
        }
        let touched = std::mem::take(&mut self.touched);
        for id in touched {
            self.reschedule(id);
        }
        if self.routes_dirty && self.timers[Timer::Routes as usize].is_none() {
            let slot = self.routes_computed.map_or(now, |t| t + ROUTE_INTERVAL);
            self.timers[Timer::Routes as usize] = Some(slot.max(now));
        }
    }

    fn reschedule(&mut self, id: PeerId) {
        if let Some(t) = self.peer_deadlines.remove(&id) {
            self.peer_timers.remove(&(t, id));
        }
        if let Some(d) = self.peers.get(&id).and_then(Peer::deadline) {
            self.peer_deadlines.insert(id, d);
            self.peer_timers.insert((d, id));
        }
    }

    fn transmit(&mut self, destination: Endpoint, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { destination, bytes });
    }

    /// Sends a datagram back the way `source` came (directly or through its relay).
    fn send_back(&mut self, source: Source, datagram: &[u8]) {
        match source.relayed_from {
            None => self.transmit(source.endpoint, datagram.to_vec()),
            Some(src) => {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, src, self.id, datagram);
                self.transmit(source.endpoint, wrapped);
            }
        }
    }

    fn path_of(&self, source: Source) -> Option<NextHop> {
        match source.relayed_from {
            None => Some(NextHop::Direct(source.endpoint)),
            Some(_) => self
                .by_endpoint
                .get(&source.endpoint)
                .map(|via| NextHop::Relay {
                    via: *via,
                    endpoint: source.endpoint,
                }),
        }
    }

    /// The direct endpoint of an up peer.
    fn direct_endpoint(&self, id: &PeerId) -> Option<Endpoint> {
        match self.peers.get(id)?.path? {
            NextHop::Direct(ep) if self.is_up(id) => Some(ep),
            _ => None,
        }
    }

    /// Sends a datagram to a peer along its path (or the route's relay).
    fn send_to_peer(&mut self, id: PeerId, datagram: Vec<u8>, now: Instant) {
        let hop = match self.peers.get(&id).and_then(|p| p.path) {
            Some(h) => Some(h),
            None => self.relay_hop(&id),
        };
        let Some(hop) = hop else {
            self.drop_for(DropReason::NoPath);
            return;
        };
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_tx = now;
            p.tx_bytes += datagram.len() as u64;
        }
        self.touched.insert(id);
        match hop {
            NextHop::Direct(ep) => self.transmit(ep, datagram),
            NextHop::Relay { endpoint, .. } => {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, id, self.id, &datagram);
                self.transmit(endpoint, wrapped);
            }
        }
    }

    /// The relay hop towards `id` from the route table, if its first relay is up directly.
    fn relay_hop(&self, id: &PeerId) -> Option<NextHop> {
        let via = self.routes.relay_for(id)?;
        let endpoint = self.direct_endpoint(&via)?;
        Some(NextHop::Relay { via, endpoint })
    }

    // ---------------------------------------------------------------- own record

    fn publish_own(&mut self, now: Instant) {
        self.own_dirty = false;
        self.version += 1;
        let links_down: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| p.unreachable)
            .map(|(id, _)| id.short())
            .take(MAX_LINKS_DOWN)
            .collect();
        let record = PeerRecord {
            id: self.id,
            incarnation: self.incarnation,
            version: self.version,
            name: self.config.name.clone(),
            liveness: Liveness::Alive,
            announced: self
                .config
                .announce
                .iter()
                .take(MAX_ENDPOINTS)
                .copied()
                .collect(),
            seen: self.seen.iter().copied().collect(),
            pod_blocks: self.space.block().into_iter().collect(),
            external: self.space.external.is_some(),
            free_space: self
                .space
                .free
                .iter()
                .take(crate::record::MAX_SPACE_ENTRIES)
                .copied()
                .collect(),
            links_down,
        };
        let old_blocks = self.table.get(&self.id).map(|r| r.pod_blocks.clone());
        self.table.merge(record.clone(), now);
        if old_blocks.as_ref() != Some(&record.pod_blocks) {
            self.routes_dirty = true;
        }
        self.rumors.insert(self.id);
    }

    // ---------------------------------------------------------------- datagrams

    fn handle_inner(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        match MessageType::of(bytes) {
            Ok(MessageType::HandshakeInitiation) => self.on_initiation(now, source, bytes),
            Ok(MessageType::HandshakeResponse) => self.on_response(now, source, bytes),
            Ok(MessageType::HandshakeFinish) => self.on_finish(now, source, bytes),
            Ok(MessageType::Data | MessageType::Control) => self.on_sealed(now, source, bytes),
            _ => self.drop_for(DropReason::Malformed),
        }
    }

    fn on_initiation(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        if Initiation::parse(bytes).is_err() {
            return self.drop_for(DropReason::Malformed);
        }
        let index = self.alloc_index(IndexUse::Responding);
        let wall = self.wall(now);
        match self
            .handshaker
            .handle_initiation(bytes, index, wall, &mut &mut *self.rng)
        {
            Ok((state, response)) => {
                self.stats.handshake_bytes += response.len() as u64;
                self.send_back(source, &response);
                self.responding.insert(
                    index,
                    Pending {
                        state,
                        source,
                        expires: now + RESPONDING_TIMEOUT,
                    },
                );
            }
            Err(e) => {
                debug!(error = %e, from = %source.endpoint, "initiation refused");
                self.indices.remove(&index);
                self.drop_for(DropReason::HandshakeRejected);
            }
        }
    }

    fn on_response(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let Ok(resp) = Response::parse(bytes) else {
            return self.drop_for(DropReason::Malformed);
        };
        let index = resp.receiver_index();
        match self.indices.get(&index).copied() {
            Some(IndexUse::Initiating(id)) => {
                let Some(attempt) = self
                    .peers
                    .get_mut(&id)
                    .and_then(|p| p.tunnel.attempt_mut())
                    .filter(|a| a.index == index)
                else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                let Some(initiator) = attempt.initiator.take() else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                let sent_at = attempt.sent_at;
                match self.handshaker.handle_response(initiator, bytes, now) {
                    Ok((session, finish)) => {
                        self.stats.handshake_bytes += finish.len() as u64;
                        self.send_back(source, &finish);
                        self.indices.remove(&index);
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.rtt = Some(now.saturating_duration_since(sent_at));
                        }
                        self.on_session(id, session, source, now);
                    }
                    Err(rejected) => self.on_rejected_response(id, index, rejected),
                }
            }
            Some(IndexUse::Dialing(endpoint)) => {
                let Some(initiator) = self
                    .dials
                    .get_mut(&endpoint)
                    .and_then(|d| d.attempt.as_mut())
                    .filter(|a| a.index == index)
                    .and_then(|a| a.initiator.take())
                else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                match self.handshaker.handle_response(initiator, bytes, now) {
                    Ok((session, finish)) => {
                        self.stats.handshake_bytes += finish.len() as u64;
                        self.send_back(source, &finish);
                        self.indices.remove(&index);
                        self.dials.remove(&endpoint);
                        let id = PeerId::from(session.remote());
                        if id == self.id || self.forgotten.contains(&id) {
                            return;
                        }
                        self.ensure_session_peer(id, now);
                        self.on_session(id, session, source, now);
                    }
                    Err(rejected) => {
                        debug!(%endpoint, error = %rejected.error, "response refused");
                        self.drop_for(self.handshake_drop(&rejected.error));
                        if let (Some(state), Some(a)) = (
                            rejected.state,
                            self.dials
                                .get_mut(&endpoint)
                                .and_then(|d| d.attempt.as_mut()),
                        ) {
                            a.initiator = Some(state);
                        }
                    }
                }
            }
            _ => self.drop_for(DropReason::UnknownIndex),
        }
    }

    fn on_rejected_response(
        &mut self,
        id: PeerId,
        index: u32,
        rejected: weft_crypto::Rejected<weft_crypto::Initiator>,
    ) {
        debug!(peer = ?id, error = %rejected.error, "response refused");
        self.drop_for(self.handshake_drop(&rejected.error));
        if let Some(a) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.tunnel.attempt_mut())
            .filter(|a| a.index == index)
        {
            // A forged response cannot kill the attempt: the state comes back untouched.
            a.initiator = rejected.state;
        }
    }

    fn on_finish(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let Ok(fin) = Finish::parse(bytes) else {
            return self.drop_for(DropReason::Malformed);
        };
        let index = fin.receiver_index();
        let Some(pending) = self.responding.remove(&index) else {
            return self.drop_for(DropReason::UnknownIndex);
        };
        let expected_source = pending.source;
        match self.handshaker.handle_finish(pending.state, bytes, now) {
            Ok(session) => {
                self.indices.remove(&index);
                let id = PeerId::from(session.remote());
                if source.relayed_from.is_some_and(|claimed| claimed != id)
                    || expected_source.relayed_from.is_some_and(|c| c != id)
                {
                    return self.drop_for(DropReason::RelaySourceMismatch);
                }
                if id == self.id || self.forgotten.contains(&id) {
                    return self.drop_for(DropReason::NotMember);
                }
                // A tombstoned peer that knows the join secret may come back: its record,
                // sent at once over this session, carries a new incarnation that revives it.
                self.ensure_session_peer(id, now);
                self.on_session(id, session, source, now);
            }
            Err(rejected) => {
                debug!(from = %source.endpoint, error = %rejected.error, "finish refused");
                self.drop_for(self.handshake_drop(&rejected.error));
                match rejected.state {
                    Some(state) => {
                        self.responding.insert(
                            index,
                            Pending {
                                state,
                                source: expected_source,
                                expires: now + RESPONDING_TIMEOUT,
                            },
                        );
                    }
                    None => {
                        self.indices.remove(&index);
                    }
                }
            }
        }
    }

    /// Whether our session with `id` is with its run `incarnation` (or a later one): formed
    /// after the restart, so the restart must not close it. A session whose record has not
    /// arrived yet gets the benefit of the doubt while it is young (the record is the first
    /// thing sent under it); if it was the old run's, the peer's probe or DEAD_AFTER ends it.
    fn session_with_run(&self, id: PeerId, incarnation: u64, now: Instant) -> bool {
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        let Some(current) = p.tunnel.keys().and_then(|k| k.current()) else {
            return false;
        };
        match p.session_incarnation {
            Some(i) => i >= incarnation,
            None => now.saturating_duration_since(current.established()) < REKEY_TIMEOUT,
        }
    }

    /// The peer's own record arrived under our current session: the session is with that run.
    /// If we already know of a later run, this session is with a dead one: close it.
    fn note_session_incarnation(&mut self, id: PeerId, incarnation: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.session_incarnation = Some(incarnation);
        let later = self
            .table
            .get(&id)
            .is_some_and(|r| r.is_alive() && r.incarnation > incarnation);
        if later {
            self.close_peer(id, DownReason::Restarted, now, false);
        }
    }

    /// A sealed datagram for an index we do not hold. Its sender believes in a session we
    /// lost (we restarted) or dropped: handshake with it now rather than let it send into the
    /// void until DEAD_AFTER. Rate limited per endpoint and bounded in endpoints, and only
    /// for direct sources (a forged source costs us at most one initiation per interval).
    fn on_unknown_index(&mut self, now: Instant, source: Source) {
        self.drop_for(DropReason::UnknownIndex);
        if source.relayed_from.is_some() {
            return;
        }
        let ep = source.endpoint;
        if self
            .unknown_index_from
            .get(&ep)
            .is_some_and(|t| now.saturating_duration_since(*t) < UNKNOWN_INDEX_INTERVAL)
        {
            return;
        }
        if self.unknown_index_from.len() >= UNKNOWN_INDEX_ENDPOINTS {
            self.unknown_index_from
                .retain(|_, t| now.saturating_duration_since(*t) < UNKNOWN_INDEX_INTERVAL);
            if self.unknown_index_from.len() >= UNKNOWN_INDEX_ENDPOINTS {
                return;
            }
        }
        self.unknown_index_from.insert(ep, now);
        match self.by_endpoint.get(&ep).copied() {
            Some(id) if self.peers.contains_key(&id) => {
                let Some(p) = self.peers.get(&id) else {
                    return;
                };
                // A packet under a session we just replaced is no news.
                let hears_it = p.tunnel.is_up()
                    && now.saturating_duration_since(p.last_rx) < UNKNOWN_INDEX_INTERVAL;
                if hears_it || p.tunnel.attempt().is_some() {
                    return;
                }
                debug!(peer = ?id, endpoint = %ep, "data for an unknown index: handshaking");
                self.start_handshake(id, now);
            }
            _ => {
                if self.dials.contains_key(&ep) || self.config.announce.contains(&ep) {
                    return;
                }
                debug!(endpoint = %ep, "data for an unknown index from a stranger: dialling it");
                self.dials.insert(
                    ep,
                    Dial {
                        attempt: None,
                        retry_at: now,
                        tries: 0,
                        failures: 0,
                        once: true,
                    },
                );
                self.dial(ep, now);
            }
        }
    }

    /// Moves the session with `id` off its silent direct path onto `relay` (or the route
    /// table's relay): the session is end to end, so the relay needs no keys. The peer is
    /// listed as unreachable directly (so every node routes the pair through relays) and the
    /// direct path is probed in the background.
    fn relay_session(&mut self, id: PeerId, relay: Option<NextHop>, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let old = p.path;
        if let Some(NextHop::Direct(ep)) = old {
            p.lost_direct = Some(ep);
        }
        p.unanswered_since = None;
        p.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        if !p.unreachable {
            p.unreachable = true;
            self.own_dirty = true;
            self.routes_dirty = true;
        }
        let hop = match relay {
            Some(hop) => Some(hop),
            None => {
                // Our record and routes now, not at the next slot: traffic waits on them.
                if let Some(p) = self.peers.get_mut(&id) {
                    p.path = None;
                }
                self.publish_own(now);
                self.compute_routes(now);
                self.relay_hop(&id)
            }
        };
        info!(peer = ?id, via = ?hop, "direct path silent: relaying");
        if let Some(p) = self.peers.get_mut(&id) {
            // With no relay at all, the direct path stays the only hope.
            p.path = hop.or(old);
        }
        self.touched.insert(id);
    }

    /// A keepalive under the current session straight to where the peer was last reached
    /// directly (and where its record says it is), past the relay it is reached through now.
    fn send_direct_probe(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        let mut targets: BTreeSet<Endpoint> = p.lost_direct.into_iter().collect();
        let Some(session) = p.tunnel.keys().and_then(|k| k.sending(now)).cloned() else {
            return;
        };
        if let Some(r) = self.table.get(&id) {
            targets.extend(r.announced.iter().chain(&r.seen));
        }
        for ep in targets {
            let mut buf = vec![0u8; DATA_OVERHEAD];
            if session
                .seal_in_place(PayloadKind::Control, &mut buf, now)
                .is_err()
            {
                return;
            }
            self.stats.control_bytes += buf.len() as u64;
            self.transmit(ep, buf);
        }
    }

    fn is_departed(&self, id: &PeerId) -> bool {
        self.table.get(id).is_some_and(|r| !r.is_alive())
    }

    /// A handshake completed with `id`.
    fn on_session(&mut self, id: PeerId, session: Session, source: Source, now: Instant) {
        let session = Arc::new(session);
        let sealing = session.clone();
        let local = session.local_index();
        let role = session.role();
        self.indices.insert(local, IndexUse::Session(id));
        self.stats.handshakes += 1;
        let path = self.path_of(source);
        let mut released = Vec::new();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let was_up = p.tunnel.is_up();
        p.indices.push(local);
        // Handshakes that crossed (each side initiated one at once, or one dialled a peer
        // whose data overtook its finish) leave each side with both sessions, installed in
        // opposite orders. Both must seal with the same one, or each drops what the other
        // seals once the previous session's grace is over and the pair goes silent. The one
        // the lower key initiated wins (the lower key is the one meant to initiate): a young
        // current session that the lower key initiated stays current, and a session the
        // higher key initiated beside it is kept for opening only.
        let lower = self.id < id;
        let initiated_by_lower = |r: Role| (r == Role::Initiator) == lower;
        let crossed = |keys: &Keyring| {
            !initiated_by_lower(role)
                && keys.current().is_some_and(|c| {
                    initiated_by_lower(c.role())
                        && now < c.established() + CROSSING_WINDOW
                        && !c.is_expired(now)
                })
        };
        let mut demoted = false;
        let mut install = |keys: &mut Keyring, session| {
            if crossed(keys) {
                debug!(peer = ?id, "handshakes crossed: the lower key's session stays current");
                demoted = true;
                keys.install_previous(session, now)
            } else {
                keys.install(session, now)
            }
        };
        let tunnel = std::mem::replace(&mut p.tunnel, Tunnel::Idle { retry_at: now });
        p.tunnel = match tunnel {
            Tunnel::Idle { .. } => {
                let mut keys = Keyring::new();
                released.extend(keys.install(session, now));
                Tunnel::Established { keys }
            }
            Tunnel::Handshaking { attempt, .. } => {
                if role == Role::Responder {
                    // The peer's handshake beat ours: ours is abandoned.
                    released.push(attempt.index);
                }
                let mut keys = Keyring::new();
                released.extend(keys.install(session, now));
                Tunnel::Established { keys }
            }
            Tunnel::Established { mut keys } => {
                released.extend(install(&mut keys, session));
                Tunnel::Established { keys }
            }
            Tunnel::Rekeying {
                mut keys, attempt, ..
            } => {
                if role == Role::Responder {
                    released.push(attempt.index);
                }
                released.extend(install(&mut keys, session));
                Tunnel::Established { keys }
            }
        };
        p.last_rx = now;
        p.last_handshake = Some(now);
        // Which run of the peer this session is with is told by its record, sent under it.
        // (A session kept for opening only leaves the current one's run as it was: should the
        // peer have restarted, its new record must still close the current session.)
        if !demoted {
            p.session_incarnation = None;
        }
        if let Some(path) = path {
            p.path = Some(path);
        }
        if !matches!(p.path, Some(NextHop::Direct(_))) {
            p.unanswered_since = None;
        }
        if matches!(path, Some(NextHop::Direct(_))) {
            p.last_direct_rx = Some(now);
            p.unanswered_since = None;
            p.lost_direct = None;
            p.direct_probe_at = None;
        } else if p.direct_probe_at.is_none() {
            p.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        }
        let mut own_changed = false;
        if !was_up {
            p.up_since = Some(now);
            p.wanted_since = None;
            p.intro_at = None;
        }
        if matches!(path, Some(NextHop::Direct(_))) && p.unreachable {
            p.unreachable = false;
            own_changed = true;
        }
        let queued: Vec<Vec<u8>> = p.queue.drain(..).collect();
        // Our abandoned initiation, and a previous session pushed out early by this one.
        p.indices.retain(|i| !released.contains(i));
        for i in released {
            self.indices.remove(&i);
        }
        if own_changed {
            self.own_dirty = true;
            self.routes_dirty = true;
        }
        self.note_path(id, path);
        self.touched.insert(id);
        if !was_up {
            info!(peer = ?id, ?path, "peer up");
            if let Some(path) = path {
                self.events.push_back(Event::PeerUp { peer: id, path });
            }
            self.routes_dirty = true;
        }
        // Both sides send their own record first under every new session: it tells the peer
        // which run of ours the session is with (a restart learned later by gossip closes
        // only sessions with an older run), it confirms the session to an initiator
        // (unconfirmed until a packet arrives under it), and packets waiting behind it come
        // from a block the peer then knows. Sealed under the new session even while it is
        // unconfirmed here: a restarted peer holds no other.
        if let Some(own) = self.table.get(&self.id).cloned() {
            let msg = ControlMessage::Gossip {
                full: false,
                records: vec![own],
            };
            self.send_sealed_control_with(id, &sealing, &msg.encode(), true, now);
        }
        // A peer we have no record of (it found us, we lost our state): ask for everything.
        if (!was_up && !self.synced) || !self.table.get(&id).is_some_and(|r| r.is_alive()) {
            self.send_control_with(id, &sealing, &ControlMessage::SyncRequest, now);
        }
        self.report_observed(id, source, now);
        for packet in queued {
            self.send_data(id, packet, now);
        }
    }

    /// Records a peer's path and keeps the endpoint → peer index for relayed traffic.
    fn note_path(&mut self, id: PeerId, path: Option<NextHop>) {
        if let Some(NextHop::Direct(ep)) = path {
            self.by_endpoint.insert(ep, id);
        }
    }

    /// Tells a peer where we see it, unless its record says it knows (NAT discovery).
    fn report_observed(&mut self, id: PeerId, source: Source, now: Instant) {
        if source.relayed_from.is_some() {
            return;
        }
        let known = self.table.get(&id).is_some_and(|r| {
            r.announced.contains(&source.endpoint) || r.seen.contains(&source.endpoint)
        });
        if known {
            return;
        }
        let changed = self
            .peers
            .get(&id)
            .is_some_and(|p| p.observed_sent != Some(source.endpoint));
        if changed {
            if let Some(p) = self.peers.get_mut(&id) {
                p.observed_sent = Some(source.endpoint);
            }
            self.send_control(
                id,
                &ControlMessage::Observed {
                    endpoint: source.endpoint,
                },
                now,
            );
        }
    }

    fn on_sealed(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let Ok(header) = weft_crypto::wire::DataHeader::parse(bytes) else {
            return self.drop_for(DropReason::Malformed);
        };
        let Some(IndexUse::Session(id)) = self.indices.get(&header.receiver_index).copied() else {
            return self.on_unknown_index(now, source);
        };
        let Some(session) = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.for_index(header.receiver_index, now))
            .cloned()
        else {
            return self.on_unknown_index(now, source);
        };
        let under_current = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.current())
            .is_some_and(|c| c.local_index() == header.receiver_index);
        let mut buf = bytes.to_vec();
        let opened = match session.open_in_place(&mut buf, now) {
            Ok(o) => o,
            Err(_) => return self.drop_for(DropReason::OpenFailed),
        };
        if source.relayed_from.is_some_and(|claimed| claimed != id) {
            return self.drop_for(DropReason::RelaySourceMismatch);
        }
        // Authenticated: the peer is alive and this is a way to reach it.
        let path = self.path_of(source);
        let mut new_direct = None;
        let mut relay_now = None;
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_rx = now;
            p.rx_bytes += bytes.len() as u64;
            match path {
                Some(NextHop::Direct(ep)) => {
                    p.last_direct_rx = Some(now);
                    p.unanswered_since = None;
                    p.direct_probe_at = None;
                    if p.path != path {
                        // Roaming (WireGuard's rule): the latest authenticated source wins.
                        p.path = path;
                        new_direct = Some(ep);
                    }
                    if p.lost_direct.is_some() || p.unreachable {
                        // The direct path works again (a probe of ours or the peer's got
                        // through): stop listing it as down.
                        p.lost_direct = None;
                        p.direct_probe_at = None;
                        if p.unreachable {
                            p.unreachable = false;
                            self.own_dirty = true;
                            self.routes_dirty = true;
                        }
                    }
                }
                Some(relay) => {
                    // The peer relays: its direct path went silent. Unless ours still hears
                    // it, follow (the session is end to end; only the path changes).
                    let direct_fresh = p
                        .last_direct_rx
                        .is_some_and(|t| now.saturating_duration_since(t) < SILENT_PROBE_AFTER);
                    if !direct_fresh && p.path != Some(relay) {
                        relay_now = Some(relay);
                    }
                }
                None => {}
            }
        }
        if let Some(relay) = relay_now {
            self.relay_session(id, Some(relay), now);
        }
        if let Some(ep) = new_direct {
            self.note_path(id, Some(NextHop::Direct(ep)));
            self.report_observed(id, source, now);
        }
        self.touched.insert(id);
        // The first packet under a session we initiated confirms it: send what waited.
        let waiting: Vec<Vec<u8>> = self
            .peers
            .get_mut(&id)
            .map(|p| p.queue.drain(..).collect())
            .unwrap_or_default();
        for packet in waiting {
            self.send_data(id, packet, now);
        }
        let plain = &buf[opened.range()];
        match opened.kind {
            PayloadKind::Data => self.on_data(id, plain),
            PayloadKind::Control if plain.is_empty() => {} // keepalive
            PayloadKind::Control => match ControlMessage::decode(plain) {
                Ok(msg) => self.on_control(now, id, msg, under_current),
                Err(DecodeError::UnknownKind(_) | DecodeError::UnknownVersion(_)) => {
                    self.drop_for(DropReason::ControlUnknown)
                }
                Err(e) => {
                    debug!(peer = ?id, error = %e, "control message refused");
                    self.drop_for(DropReason::ControlMalformed)
                }
            },
        }
    }

    fn on_data(&mut self, id: PeerId, packet: &[u8]) {
        let Some((src, _)) = ipv4_addrs(packet) else {
            return self.drop_for(DropReason::NotIpv4);
        };
        // Like WireGuard's allowed IPs: a peer may only send from its own block.
        let Some(record) = self.table.get(&id).filter(|r| r.is_alive()) else {
            return self.drop_for(DropReason::UnknownSender);
        };
        if !record.pod_blocks.iter().any(|b| b.contains(&src)) {
            return self.drop_for(DropReason::SpoofedSource);
        }
        self.tun.push_back(packet.to_vec());
    }

    fn handle_relay(&mut self, now: Instant, from: Endpoint, bytes: &[u8]) {
        let packet = match RelayPacket::parse(bytes) {
            Ok(p) => p,
            Err(_) => return self.drop_for(DropReason::RelayMalformed),
        };
        if packet.kind == RelayKind::Punch {
            if packet.destination == self.id {
                self.on_punch(now, packet.source, from);
            } else {
                self.drop_for(DropReason::RelayMalformed);
            }
            return;
        }
        // Only members with a direct tunnel to us may use us as a relay, or send through one.
        if !self.by_endpoint.get(&from).is_some_and(|p| self.is_up(p)) {
            return self.drop_for(DropReason::RelayFromStranger);
        }
        if packet.destination == self.id {
            let source = Source {
                endpoint: from,
                relayed_from: Some(packet.source),
            };
            return self.handle_inner(now, source, packet.inner);
        }
        if packet.hops_left == 0 {
            return self.drop_for(DropReason::RelayHops);
        }
        // Forward without opening: we hold no key for this pair.
        let next = self.direct_endpoint(&packet.destination).or_else(|| {
            match self.relay_hop(&packet.destination) {
                Some(NextHop::Relay { endpoint, .. }) => Some(endpoint),
                _ => None,
            }
        });
        let Some(next) = next else {
            return self.drop_for(DropReason::RelayNoRoute);
        };
        let forwarded = RelayPacket::encode(
            RelayKind::Forward,
            packet.hops_left - 1,
            packet.destination,
            packet.source,
            packet.inner,
        );
        self.stats.relayed += 1;
        self.transmit(next, forwarded);
    }

    /// A hole punch arrived: the sender's NAT now lets our packets in (and ours, theirs).
    fn on_punch(&mut self, now: Instant, from_peer: PeerId, endpoint: Endpoint) {
        if !self.table.get(&from_peer).is_some_and(|r| r.is_alive()) {
            return self.drop_for(DropReason::NotMember);
        }
        let Some(p) = self.peers.get_mut(&from_peer) else {
            return;
        };
        if p.tunnel.is_up() && matches!(p.path, Some(NextHop::Direct(_))) {
            return;
        }
        if p.punch_at
            .is_some_and(|t| now.saturating_duration_since(t) < PUNCH_INTERVAL)
        {
            return;
        }
        p.punch_at = Some(now);
        p.punch_endpoint = Some(endpoint);
        if self.id < from_peer {
            debug!(peer = ?from_peer, %endpoint, "punch received: initiating");
            self.start_handshake(from_peer, now);
        } else {
            self.stats.punches += 1;
            let punch = RelayPacket::encode(RelayKind::Punch, 0, from_peer, self.id, &[]);
            self.transmit(endpoint, punch);
        }
        self.touched.insert(from_peer);
    }

    // ---------------------------------------------------------------- control messages

    /// A control message from `from`; `under_current`: it opened under our current session
    /// with it.
    fn on_control(&mut self, now: Instant, from: PeerId, msg: ControlMessage, under_current: bool) {
        match msg {
            ControlMessage::Gossip { full, records } => {
                for r in records {
                    if r.id == from && under_current {
                        self.note_session_incarnation(from, r.incarnation, now);
                    }
                    self.merge_record(r, now);
                }
                if full {
                    self.synced = true;
                }
            }
            ControlMessage::SyncRequest => self.send_full(from, now),
            ControlMessage::DigestSummary { hash, count } => {
                if self.table_summary() != (hash, count) {
                    self.send_digest(from, ShortId(0), ShortId(u64::MAX), false, now);
                }
            }
            ControlMessage::Digest {
                reply,
                low,
                high,
                entries,
            } => self.on_digest(now, from, reply, low, high, entries),
            ControlMessage::Observed { endpoint } => {
                if !self.seen.contains(&endpoint) && !self.config.announce.contains(&endpoint) {
                    self.seen.push_back(endpoint);
                    while self.seen.len() > MAX_ENDPOINTS {
                        self.seen.pop_front();
                    }
                    self.own_dirty = true;
                }
            }
            ControlMessage::IntroduceRequest { target } => {
                let (Some(a), Some(b)) =
                    (self.direct_endpoint(&from), self.direct_endpoint(&target))
                else {
                    return;
                };
                // Both at once, so both punch at about the same time.
                self.stats.introductions += 1;
                self.send_control(
                    target,
                    &ControlMessage::Introduce {
                        peer: from,
                        endpoint: a,
                    },
                    now,
                );
                self.send_control(
                    from,
                    &ControlMessage::Introduce {
                        peer: target,
                        endpoint: b,
                    },
                    now,
                );
            }
            ControlMessage::Introduce { peer, endpoint } => {
                let direct_up = self.direct_endpoint(&peer).is_some();
                if direct_up || peer == self.id {
                    return;
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.punch_endpoint = Some(endpoint);
                    p.punch_at = Some(now);
                    self.stats.punches += 1;
                    let punch = RelayPacket::encode(RelayKind::Punch, 0, peer, self.id, &[]);
                    self.transmit(endpoint, punch);
                    if self.id < peer {
                        self.start_handshake(peer, now);
                    }
                    self.touched.insert(peer);
                }
            }
            ControlMessage::BlockRequest { request } => self.on_block_request(now, from, request),
            ControlMessage::BlockGrant { grant, space } => {
                self.on_block_grant(now, from, grant, space)
            }
            ControlMessage::BlockGrantAck { grant } => {
                if self
                    .space
                    .outgoing
                    .get(&grant)
                    .is_some_and(|g| g.to == from)
                {
                    self.space.outgoing.remove(&grant);
                    self.events.push_back(Event::StateChanged);
                }
            }
            ControlMessage::BlockDenied { .. } => {
                self.denied.insert(from, now + 4 * IPAM_RETRY);
                self.timers[Timer::Ipam as usize] = Some(now);
            }
        }
    }

    fn send_control(&mut self, id: PeerId, msg: &ControlMessage, now: Instant) {
        let plain = msg.encode();
        let is_gossip = matches!(
            msg,
            ControlMessage::Gossip { .. }
                | ControlMessage::SyncRequest
                | ControlMessage::Digest { .. }
                | ControlMessage::DigestSummary { .. }
        );
        self.send_sealed_control(id, &plain, is_gossip, now);
    }

    fn send_keepalive(&mut self, id: PeerId, now: Instant) {
        self.send_sealed_control(id, &[], false, now);
    }

    /// Sends a control message sealed under `session` (a new one, before it is confirmed).
    fn send_control_with(
        &mut self,
        id: PeerId,
        session: &Arc<Session>,
        msg: &ControlMessage,
        now: Instant,
    ) {
        self.send_sealed_control_with(id, session, &msg.encode(), true, now);
    }

    fn send_sealed_control(&mut self, id: PeerId, plain: &[u8], gossip: bool, now: Instant) {
        let Some(session) = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.sending(now))
            .cloned()
        else {
            return;
        };
        self.send_sealed_control_with(id, &session, plain, gossip, now);
    }

    fn send_sealed_control_with(
        &mut self,
        id: PeerId,
        session: &Arc<Session>,
        plain: &[u8],
        gossip: bool,
        now: Instant,
    ) {
        let mut buf = vec![0u8; DATA_OVERHEAD + plain.len()];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plain.len()].copy_from_slice(plain);
        if session
            .seal_in_place(PayloadKind::Control, &mut buf, now)
            .is_err()
        {
            return;
        }
        self.stats.control_bytes += buf.len() as u64;
        if gossip {
            self.stats.gossip_bytes += buf.len() as u64;
        }
        self.send_to_peer(id, buf, now);
    }

    fn send_data(&mut self, id: PeerId, packet: Vec<u8>, now: Instant) {
        // A session we initiated is not used for data until the peer confirms it: our finish
        // may still be on its way (or lost), and data overtaking it would be dropped there.
        let session = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.sending(now))
            .filter(|s| s.is_confirmed())
            .cloned();
        let Some(session) = session else {
            // Wait for the handshake, within bounds.
            if !self.peers.contains_key(&id) {
                self.ensure_peer(id, now);
            }
            let Some(p) = self.peers.get_mut(&id) else {
                return self.drop_for(DropReason::NoPath);
            };
            if p.queue.len() >= QUEUE_LIMIT {
                return self.drop_for(DropReason::QueueFull);
            }
            p.queue.push_back(packet);
            // Waiting on a session the peer has not confirmed over the direct path: the
            // silence clock runs, as it would for data sent.
            if p.tunnel.is_up()
                && matches!(p.path, Some(NextHop::Direct(_)))
                && p.unanswered_since.is_none()
            {
                p.unanswered_since = Some(now);
            }
            if let Tunnel::Idle { retry_at } = &mut p.tunnel {
                // Traffic waits: do not sit out the backoff or the fallback delay.
                *retry_at = (*retry_at).min(now);
            }
            self.touched.insert(id);
            return;
        };
        let mut buf = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(&packet);
        if session
            .seal_in_place(PayloadKind::Data, &mut buf, now)
            .is_err()
        {
            return self.drop_for(DropReason::NoPath);
        }
        if let Some(p) = self.peers.get_mut(&id)
            && matches!(p.path, Some(NextHop::Direct(_)))
            && p.unanswered_since.is_none()
        {
            p.unanswered_since = Some(now);
        }
        self.send_to_peer(id, buf, now);
    }

    /// Sends records in as many control datagrams as they need.
    fn send_records(&mut self, id: PeerId, records: Vec<PeerRecord>, full: bool, now: Instant) {
        // Envelope (2) + `full` (1) + a count of up to 3 varint bytes.
        const FIXED: usize = 6;
        let mut chunk = Vec::new();
        let mut size = FIXED;
        for r in records {
            let len = postcard::to_stdvec(&r).map(|v| v.len()).unwrap_or(0);
            if size + len > MAX_CONTROL_PAYLOAD && !chunk.is_empty() {
                let records = std::mem::take(&mut chunk);
                self.send_control(id, &ControlMessage::Gossip { full, records }, now);
                size = FIXED;
            }
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() || full {
            self.send_control(
                id,
                &ControlMessage::Gossip {
                    full,
                    records: chunk,
                },
                now,
            );
        }
    }

    fn send_full(&mut self, id: PeerId, now: Instant) {
        let records: Vec<PeerRecord> = self.table.records().cloned().collect();
        self.send_records(id, records, true, now);
    }

    // ---------------------------------------------------------------- membership

    /// Merges a record from gossip, with everything that follows from it.
    fn merge_record(&mut self, record: PeerRecord, now: Instant) {
        if record.id == self.id {
            return self.about_me(record, now);
        }
        let id = record.id;
        let old_blocks = self.table.get(&id).map(|r| r.pod_blocks.clone());
        let old_links = self.table.get(&id).map(|r| r.links_down.clone());
        let merged = self.table.merge(record, now);
        let Some(rec) = self.table.get(&id).cloned() else {
            return;
        };
        match merged {
            Merge::Stale => return,
            Merge::New => {
                if rec.is_alive() {
                    self.events.push_back(Event::MemberJoined {
                        peer: id,
                        name: rec.name.clone(),
                    });
                    self.ensure_peer(id, now);
                }
            }
            Merge::Updated {
                restarted,
                departed,
                revived,
            } => {
                if departed {
                    info!(peer = ?id, "member departed");
                    self.events.push_back(Event::MemberDeparted { peer: id });
                    self.close_peer(id, DownReason::Departed, now, true);
                } else if restarted && !revived && !self.session_with_run(id, rec.incarnation, now)
                {
                    self.close_peer(id, DownReason::Restarted, now, false);
                }
                if revived {
                    self.forgotten.remove(&id);
                    self.events.push_back(Event::MemberJoined {
                        peer: id,
                        name: rec.name.clone(),
                    });
                    self.ensure_peer(id, now);
                }
            }
        }
        if let Liveness::Departed {
            taken_over: true, ..
        } = rec.liveness
        {
            self.cancel_grants_to(&rec);
        }
        if old_blocks.as_ref() != Some(&rec.pod_blocks)
            || old_links.as_ref() != Some(&rec.links_down)
            || merged == Merge::New
            || !rec.is_alive()
        {
            self.routes_dirty = true;
        }
        self.rumors.insert(id);
        if rec.is_alive() {
            self.check_name(&rec, now);
        } else if self.names.get(&rec.name) == Some(&id) {
            self.names.remove(&rec.name);
        }
        if let Some(p) = self.peers.get(&id)
            && !p.tunnel.is_up()
        {
            self.touched.insert(id);
        }
    }

    /// The same name under two keys: the newer incarnation is the member, the other a
    /// tombstone (a node that lost its key and came back under a new one).
    fn check_name(&mut self, rec: &PeerRecord, now: Instant) {
        let Some(other) = self.names.get(&rec.name).copied() else {
            self.names.insert(rec.name.clone(), rec.id);
            return;
        };
        if other == rec.id {
            return;
        }
        let Some(o) = self.table.get(&other).filter(|o| o.is_alive()).cloned() else {
            self.names.insert(rec.name.clone(), rec.id);
            return;
        };
        let (winner, loser) = if (rec.incarnation, rec.id) > (o.incarnation, o.id) {
            (rec.clone(), o)
        } else {
            (o, rec.clone())
        };
        self.names.insert(winner.name.clone(), winner.id);
        if loser.id == self.id {
            warn!(name = %loser.name, other = ?winner.id, "another node uses our name");
            return;
        }
        info!(name = %loser.name, old = ?loser.id, new = ?winner.id, "name taken by a new key: tombstoning the old record");
        let tomb = loser.tombstone(winner.id, false);
        self.merge_record(tomb, now);
    }

    /// A record about ourselves: refute tombstones, give up space taken over.
    fn about_me(&mut self, record: PeerRecord, _now: Instant) {
        let mine = (self.incarnation, self.version);
        if let Liveness::Departed { taken_over, by } = record.liveness {
            if taken_over {
                let taken: Vec<Ipv4Net> = record
                    .pod_blocks
                    .iter()
                    .chain(&record.free_space)
                    .copied()
                    .collect();
                let had_block = self.space.block();
                if self.space.surrender(&taken) {
                    warn!(?by, "our address space was taken over while we were away");
                    self.events.push_back(Event::StateChanged);
                    self.own_dirty = true;
                    if had_block.is_some() && self.space.block().is_none() {
                        self.timers[Timer::Ipam as usize] = Some(_now);
                    }
                }
            }
            if record.incarnation >= self.incarnation {
                // Refute (SWIM): we are alive, under a newer incarnation.
                self.incarnation = record.incarnation + 1;
                self.version = 0;
                self.own_dirty = true;
                self.events.push_back(Event::StateChanged);
            }
        } else if record.stamp() > mine {
            // A record of ours from a run whose state we lost: jump past it.
            self.incarnation = record.incarnation + 1;
            self.version = 0;
            self.own_dirty = true;
            self.events.push_back(Event::StateChanged);
        }
    }

    /// A peer entry for a handshake that completed, even with a tombstoned peer (see
    /// `on_finish`); we do not dial tombstoned peers ourselves.
    fn ensure_session_peer(&mut self, id: PeerId, now: Instant) {
        if id == self.id || self.forgotten.contains(&id) || self.peers.contains_key(&id) {
            return;
        }
        self.peers
            .insert(id, Peer::new(now, now + INITIATE_FALLBACK));
        self.touched.insert(id);
    }

    /// Makes sure we try to keep a tunnel to a member.
    fn ensure_peer(&mut self, id: PeerId, now: Instant) {
        if id == self.id || self.forgotten.contains(&id) || self.peers.contains_key(&id) {
            return;
        }
        if self.is_departed(&id) || !self.may_connect(&id) {
            return;
        }
        let retry_at = if self.id < id {
            now
        } else {
            now + INITIATE_FALLBACK + self.jitter(Duration::from_secs(1))
        };
        self.peers.insert(id, Peer::new(now, retry_at));
        self.touched.insert(id);
    }

    /// Tears a tunnel down. `remove`: forget the peer entirely; otherwise reconnect.
    fn close_peer(&mut self, id: PeerId, reason: DownReason, now: Instant, remove: bool) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let was_up = p.tunnel.is_up();
        let mut released = std::mem::take(&mut p.indices);
        if let Some(a) = p.tunnel.attempt() {
            released.push(a.index);
        }
        let lived = p
            .up_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if was_up {
            // Backoff resets only after a connection that lived long enough.
            p.failures = if lived >= STABLE_AFTER {
                0
            } else {
                p.failures + 1
            };
        }
        let path = p.path.take();
        p.up_since = None;
        p.wanted_since = Some(now);
        p.intro_at = None;
        p.observed_sent = None;
        p.session_incarnation = None;
        p.unanswered_since = None;
        p.lost_direct = None;
        p.direct_probe_at = None;
        let failures = p.failures;
        for i in released {
            self.indices.remove(&i);
        }
        if let Some(NextHop::Direct(ep)) = path
            && self.by_endpoint.get(&ep) == Some(&id)
        {
            self.by_endpoint.remove(&ep);
        }
        if remove {
            self.peers.remove(&id);
            if let Some(t) = self.peer_deadlines.remove(&id) {
                self.peer_timers.remove(&(t, id));
            }
        } else {
            let delay = if reason == DownReason::Restarted {
                Duration::ZERO
            } else {
                backoff(failures) / 2 + self.jitter(backoff(failures) / 2)
            };
            let fallback = if self.id < id {
                Duration::ZERO
            } else {
                INITIATE_FALLBACK
            };
            if let Some(p) = self.peers.get_mut(&id) {
                p.tunnel = Tunnel::Idle {
                    retry_at: now + delay.max(fallback),
                };
            }
            self.touched.insert(id);
        }
        if was_up {
            info!(peer = ?id, ?reason, "peer down");
            self.events.push_back(Event::PeerDown { peer: id, reason });
        }
        self.routes_dirty = true;
    }

    // ---------------------------------------------------------------- handshakes

    fn add_dial(&mut self, endpoint: Endpoint, now: Instant) {
        let dial = self.dials.entry(endpoint).or_insert(Dial {
            attempt: None,
            retry_at: now,
            tries: 0,
            failures: 0,
            once: false,
        });
        dial.once = false;
        self.timers[Timer::Maintenance as usize] = Some(now);
    }

    fn dial(&mut self, endpoint: Endpoint, now: Instant) {
        let old = self
            .dials
            .get_mut(&endpoint)
            .and_then(|d| d.attempt.take())
            .map(|a| a.index);
        if let Some(i) = old {
            self.indices.remove(&i);
        }
        let index = self.alloc_index(IndexUse::Dialing(endpoint));
        let wall = self.wall(now);
        let expected = self.pinned_key_at(endpoint);
        let Ok((initiator, msg)) =
            self.handshaker
                .initiate(index, expected, wall, &mut &mut *self.rng)
        else {
            self.indices.remove(&index);
            return;
        };
        let resend_at = now + REKEY_TIMEOUT + self.jitter(Duration::from_millis(333));
        self.stats.handshake_bytes += msg.len() as u64;
        self.transmit(endpoint, msg.to_vec());
        if let Some(d) = self.dials.get_mut(&endpoint) {
            d.tries += 1;
            d.attempt = Some(Attempt {
                index,
                initiator: Some(initiator),
                sent_at: now,
                resend_at,
            });
        }
    }

    /// Sends a new initiation to `id` (direct candidates, and through a relay when the direct
    /// path is known not to work).
    fn start_handshake(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let old = p.tunnel.attempt().map(|a| a.index);
        if let Some(i) = old {
            self.indices.remove(&i);
        }
        let index = self.alloc_index(IndexUse::Initiating(id));
        let wall = self.wall(now);
        let Ok((initiator, msg)) =
            self.handshaker
                .initiate(index, Some(id.key()), wall, &mut &mut *self.rng)
        else {
            self.indices.remove(&index);
            return;
        };
        // WireGuard jitters its handshake resends by up to a third of a second.
        let resend_at = now + REKEY_TIMEOUT + self.jitter(Duration::from_millis(333));
        let attempt = Attempt {
            index,
            initiator: Some(initiator),
            sent_at: now,
            resend_at,
        };
        let p = self.peers.get_mut(&id).expect("checked above");
        let tunnel = std::mem::replace(&mut p.tunnel, Tunnel::Idle { retry_at: now });
        p.tunnel = match tunnel {
            Tunnel::Idle { .. } => Tunnel::Handshaking { attempt, tries: 1 },
            Tunnel::Handshaking { tries, .. } => Tunnel::Handshaking {
                attempt,
                tries: tries + 1,
            },
            Tunnel::Established { keys } => Tunnel::Rekeying {
                keys,
                attempt,
                tries: 1,
            },
            Tunnel::Rekeying { keys, tries, .. } => Tunnel::Rekeying {
                keys,
                attempt,
                tries: tries + 1,
            },
        };
        // Candidates: where it talks to us from, where it announces, where peers see it,
        // where an introducer or a punch said it is.
        let mut direct: BTreeSet<Endpoint> = BTreeSet::new();
        if let Some(NextHop::Direct(ep)) = p.path {
            direct.insert(ep);
        }
        if let Some(ep) = p.punch_endpoint {
            direct.insert(ep);
        }
        if let Some(ep) = self.pinned.as_ref().and_then(|pins| pins.get(&id)) {
            direct.insert(*ep);
        }
        let unreachable = p.unreachable;
        let path = p.path;
        if let Some(r) = self.table.get(&id) {
            direct.extend(r.announced.iter().chain(&r.seen));
        }
        for ep in &direct {
            self.stats.handshake_bytes += msg.len() as u64;
            self.transmit(*ep, msg.to_vec());
        }
        if unreachable || direct.is_empty() {
            let relay = match path {
                Some(hop @ NextHop::Relay { .. }) => Some(hop),
                _ => self.relay_hop(&id),
            };
            if let Some(NextHop::Relay { endpoint, .. }) = relay {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, id, self.id, &msg);
                self.stats.handshake_bytes += wrapped.len() as u64;
                self.transmit(endpoint, wrapped);
            }
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_tx = now;
            // An initiation must be answered: like data, it starts the silence clock.
            if p.tunnel.is_up()
                && matches!(p.path, Some(NextHop::Direct(_)))
                && p.unanswered_since.is_none()
            {
                p.unanswered_since = Some(now);
            }
        }
        self.touched.insert(id);
    }

    fn on_peer_timer(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        // Direct path bound and introductions, while we have no session.
        if let Some(since) = p.wanted_since {
            if !p.unreachable && now >= since + DIRECT_PATH_BOUND {
                p.unreachable = true;
                self.own_dirty = true;
                self.routes_dirty = true;
                debug!(peer = ?id, "no direct path: listing as unreachable, relaying");
            }
            if p.intro_at.is_none() && now >= since + INTRODUCE_AFTER {
                p.intro_at = Some(now);
                self.request_introduction(id, now);
            }
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        match &mut p.tunnel {
            Tunnel::Idle { retry_at } => {
                if now >= *retry_at {
                    self.start_handshake(id, now);
                }
            }
            Tunnel::Handshaking { attempt, tries } => {
                if now >= attempt.resend_at {
                    if *tries >= HANDSHAKE_ATTEMPTS {
                        let index = attempt.index;
                        p.failures += 1;
                        let b = backoff(p.failures);
                        self.indices.remove(&index);
                        let delay = b / 2 + self.jitter(b / 2);
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.tunnel = Tunnel::Idle {
                                retry_at: now + delay,
                            };
                        }
                    } else {
                        self.start_handshake(id, now);
                    }
                }
            }
            Tunnel::Established { .. } | Tunnel::Rekeying { .. } => {
                self.up_timer(id, now);
            }
        }
    }

    fn up_timer(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let released = p
            .tunnel
            .keys_mut()
            .map(|k| k.handle_timeout(now))
            .unwrap_or_default();
        p.indices.retain(|i| !released.contains(i));
        for i in &released {
            self.indices.remove(i);
        }
        let p = self.peers.get_mut(&id).expect("present");
        let expired = p.tunnel.keys().is_some_and(|k| k.current().is_none());
        if expired {
            return self.close_peer(id, DownReason::Expired, now, false);
        }
        if now.saturating_duration_since(p.last_rx) >= DEAD_AFTER {
            return self.close_peer(id, DownReason::Dead, now, false);
        }
        // Data went out directly and nothing came back: a handshake probes the path; if
        // that is not answered on it either, the session moves to a relay.
        let silent = p
            .unanswered_since
            .is_some_and(|t| now >= t + SILENT_PROBE_AFTER)
            && matches!(p.path, Some(NextHop::Direct(_)));
        let mut direct_dead = false;
        // Our session is still unconfirmed while the one beside it is newer: that one was
        // kept for opening only as crossing ours, but the peer never had ours (our finish was
        // lost). The peer's is the one both hold: seal with it rather than handshake again.
        if let Tunnel::Established { keys } = &mut p.tunnel
            && let Some(current) = keys.current()
            && unconfirmed_since(keys).is_some_and(|t| now >= t)
            && keys
                .previous(now)
                .is_some_and(|prev| prev.established() > current.established())
            && keys.promote_previous(now)
        {
            debug!(peer = ?id, "our crossed session was never confirmed: the peer's is current");
            self.touched.insert(id);
        }
        let rekey_due = match &p.tunnel {
            Tunnel::Established { keys } => {
                silent || keys.needs_rekey(now) || unconfirmed_since(keys).is_some_and(|t| now >= t)
            }
            Tunnel::Rekeying { attempt, .. } => {
                let due = now >= attempt.resend_at;
                direct_dead = due && silent && p.last_direct_rx.is_none_or(|t| t < attempt.sent_at);
                due
            }
            _ => false,
        };
        // A session on a relay path (the direct one went silent, or the handshake itself went
        // through a relay before we knew the peer's endpoints) probes the direct path.
        if matches!(p.path, Some(NextHop::Relay { .. })) && p.direct_probe_at.is_none() {
            p.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        }
        let probe_due = p.direct_probe_at.is_some_and(|t| now >= t)
            && !matches!(p.path, Some(NextHop::Direct(_)));
        let mut rekey_due = rekey_due;
        if direct_dead {
            // The session stays (it is end to end); only its path moves. The probe is
            // abandoned rather than resent through the relay: the peer may be doing the same,
            // and two handshakes crossing there would leave each side on a different session.
            let p = self.peers.get_mut(&id).expect("present");
            let tunnel = std::mem::replace(&mut p.tunnel, Tunnel::Idle { retry_at: now });
            p.tunnel = match tunnel {
                Tunnel::Rekeying { keys, attempt, .. } => {
                    self.indices.remove(&attempt.index);
                    Tunnel::Established { keys }
                }
                other => other,
            };
            rekey_due = false;
            self.relay_session(id, None, now);
        }
        if probe_due {
            self.send_direct_probe(id, now);
        }
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let keepalive_due = now.saturating_duration_since(p.last_tx) >= KEEPALIVE_TIMEOUT;
        if rekey_due {
            self.start_handshake(id, now);
        }
        if keepalive_due {
            self.send_keepalive(id, now);
        }
    }

    fn request_introduction(&mut self, target: PeerId, now: Instant) {
        // A mutual peer: up directly with us, and not listing the target as unreachable
        // (lowest key first: deterministic).
        let short = target.short();
        let via = self
            .peers
            .iter()
            .filter(|(id, p)| {
                **id != target && p.tunnel.is_up() && matches!(p.path, Some(NextHop::Direct(_)))
            })
            .map(|(id, _)| *id)
            .find(|id| {
                self.table
                    .get(id)
                    .is_some_and(|r| r.is_alive() && !r.links_down.contains(&short))
            });
        if let Some(via) = via {
            debug!(peer = ?target, ?via, "asking for an introduction");
            self.send_control(via, &ControlMessage::IntroduceRequest { target }, now);
        }
    }

    // ---------------------------------------------------------------- timers

    fn established_peers(&self) -> Vec<PeerId> {
        self.up_peers().collect()
    }

    fn pick(&mut self, from: &mut [PeerId], n: usize) -> Vec<PeerId> {
        // Partial Fisher-Yates with our (seeded, in tests) generator.
        let n = n.min(from.len());
        for i in 0..n {
            let j = i + (rand_u64(&mut &mut *self.rng) as usize) % (from.len() - i);
            from.swap(i, j);
        }
        from[..n].to_vec()
    }

    fn on_gossip_timer(&mut self, now: Instant) {
        self.timers[Timer::Gossip as usize] = Some(now + GOSSIP_INTERVAL);
        if self.own_dirty {
            self.publish_own(now);
        }
        for gone in self.table.expire_tombstones(now, TOMBSTONE_TTL) {
            self.rumors.remove(&gone);
        }
        if self.rumors.is_empty() {
            return;
        }
        let rumors = std::mem::take(&mut self.rumors);
        let records: Vec<PeerRecord> = rumors
            .iter()
            .filter_map(|id| self.table.get(id).cloned())
            .collect();
        let mut up = self.established_peers();
        // Fan-out about log2 N (+1), so a rumour reaches everyone with high probability in
        // O(log N) rounds; the periodic full exchange repairs the rest.
        let fanout = (usize::BITS - up.len().leading_zeros()) as usize + 1;
        for target in self.pick(&mut up, fanout) {
            self.send_records(target, records.clone(), false, now);
        }
    }

    fn on_digest_timer(&mut self, now: Instant) {
        let jitter = self.jitter(DIGEST_INTERVAL / 4);
        self.timers[Timer::Digest as usize] = Some(now + DIGEST_INTERVAL + jitter);
        let mut up = self.established_peers();
        if let Some(target) = self.pick(&mut up, 1).first().copied() {
            let (hash, count) = self.table_summary();
            self.send_control(target, &ControlMessage::DigestSummary { hash, count }, now);
        }
    }

    /// FNV-1a (64-bit) over the stamps of every record, in id order.
    fn table_summary(&self) -> (u64, u32) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut count = 0u32;
        for r in self.table.records() {
            count += 1;
            for word in [r.id.short().0, r.incarnation, r.version] {
                for b in word.to_le_bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
        (h, count)
    }

    /// Sends the stamps of our records with short ids in `[low, high]`, in chunks that each
    /// cover a sub-range, so the receiver can tell "absent" from "in another chunk".
    fn send_digest(&mut self, to: PeerId, low: ShortId, high: ShortId, reply: bool, now: Instant) {
        let entries: Vec<(ShortId, u64, u64)> = self
            .table
            .records()
            .map(|r| (r.id.short(), r.incarnation, r.version))
            .filter(|(s, _, _)| *s >= low && *s <= high)
            .collect();
        let chunks: Vec<&[(ShortId, u64, u64)]> = entries.chunks(MAX_DIGEST_ENTRIES).collect();
        let n = chunks.len().max(1);
        for i in 0..n {
            let chunk = chunks.get(i).copied().unwrap_or(&[]);
            let lo = if i == 0 { low } else { chunk[0].0 };
            let hi = match chunks.get(i + 1) {
                Some(next) => ShortId(next[0].0.0.saturating_sub(1)),
                None => high,
            };
            self.send_control(
                to,
                &ControlMessage::Digest {
                    reply,
                    low: lo,
                    high: hi,
                    entries: chunk.to_vec(),
                },
                now,
            );
        }
    }

    fn on_digest(
        &mut self,
        now: Instant,
        from: PeerId,
        reply: bool,
        low: ShortId,
        high: ShortId,
        entries: Vec<(ShortId, u64, u64)>,
    ) {
        let theirs: BTreeMap<ShortId, (u64, u64)> =
            entries.into_iter().map(|(s, i, v)| (s, (i, v))).collect();
        let newer: Vec<PeerRecord> = self
            .table
            .records()
            .filter(|r| {
                let s = r.id.short();
                s >= low && s <= high && theirs.get(&s).is_none_or(|st| *st < r.stamp())
            })
            .cloned()
            .collect();
        if !newer.is_empty() {
            self.send_records(from, newer, false, now);
        }
        if !reply {
            self.send_digest(from, low, high, true, now);
        }
    }

    fn on_maintenance_timer(&mut self, now: Instant) {
        self.timers[Timer::Maintenance as usize] = Some(now + Duration::from_secs(1));
        // Handshakes we answered whose finish never came.
        let expired: Vec<u32> = self
            .responding
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            self.responding.remove(&i);
            self.indices.remove(&i);
        }
        let wall = self.wall(now);
        self.handshaker.expire_initiations(wall);
        // Dials.
        let due: Vec<Endpoint> = self
            .dials
            .iter()
            .filter(|(_, d)| match &d.attempt {
                Some(a) => a.resend_at <= now,
                None => d.retry_at <= now,
            })
            .map(|(e, _)| *e)
            .collect();
        for ep in due {
            let Some(d) = self.dials.get_mut(&ep) else {
                continue;
            };
            if d.attempt.is_some() && d.tries >= HANDSHAKE_ATTEMPTS {
                if d.once {
                    if let Some(a) = self.dials.remove(&ep).and_then(|d| d.attempt) {
                        self.indices.remove(&a.index);
                    }
                    continue;
                }
                d.failures += 1;
                d.tries = 0;
                let b = backoff(d.failures);
                if let Some(a) = d.attempt.take() {
                    self.indices.remove(&a.index);
                }
                let delay = b / 2 + self.jitter(b / 2);
                if let Some(d) = self.dials.get_mut(&ep) {
                    d.retry_at = now + delay;
                }
            } else {
                self.dial(ep, now);
            }
        }
        // Alone: dial the seeds again (a partition healed, or every peer restarted).
        if self.dials.is_empty() && self.up_peers().next().is_none() {
            for seed in self.config.seeds.clone() {
                self.add_dial(seed, now);
            }
        }
        // Grants in flight are resent until acknowledged.
        let grants: Vec<(u64, PeerId, Vec<Ipv4Net>)> = self
            .space
            .outgoing
            .iter()
            .map(|(g, o)| (*g, o.to, o.space.clone()))
            .collect();
        for (grant, to, space) in grants {
            self.send_control(to, &ControlMessage::BlockGrant { grant, space }, now);
        }
    }

    fn on_routes_timer(&mut self, now: Instant) {
        if !self.routes_dirty {
            return;
        }
        // At most once per interval: the next change waits for the next slot.
        self.timers[Timer::Routes as usize] = None;
        self.compute_routes(now);
    }

    fn compute_routes(&mut self, now: Instant) {
        self.routes_dirty = false;
        let direct: BTreeSet<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.tunnel.is_up() && matches!(p.path, Some(NextHop::Direct(_))))
            .map(|(id, _)| *id)
            .collect();
        let table = RouteTable::compute(self.id, self.table.records(), &direct);
        if table != *self.routes {
            self.routes = Arc::new(table);
            self.events.push_back(Event::RoutesChanged);
        }
        self.routes_computed = Some(now);
    }

    // ---------------------------------------------------------------- address space

    fn set_waiting(&mut self, reason: Option<WaitReason>) {
        if self.waiting != reason {
            if let Some(r) = &reason {
                info!(reason = %r, "waiting for an address block");
                self.events
                    .push_back(Event::BlockWaiting { reason: r.clone() });
            }
            self.waiting = reason;
        }
    }

    fn on_ipam_timer(&mut self, now: Instant) {
        if self.space.block().is_some() {
            self.set_waiting(None);
            return;
        }
        let jitter = self.jitter(IPAM_RETRY / 2);
        self.timers[Timer::Ipam as usize] = Some(now + IPAM_RETRY + jitter);
        self.denied.retain(|_, until| *until > now);
        let mut owners = 0;
        let mut best: Option<(u64, PeerId)> = None;
        for r in self.table.alive() {
            if r.id == self.id || r.free_space.is_empty() || r.external {
                continue;
            }
            owners += 1;
            if !self.is_up(&r.id) || self.denied.contains_key(&r.id) {
                continue;
            }
            let free: u64 = r.free_space.iter().map(crate::ipam::size).sum();
            // Most free space first, then the lowest key.
            let better = match best {
                None => true,
                Some((f, id)) => free > f || (free == f && r.id < id),
            };
            if better {
                best = Some((free, r.id));
            }
        }
        match best {
            Some((_, owner)) => {
                let request = rand_u64(&mut &mut *self.rng);
                self.send_control(owner, &ControlMessage::BlockRequest { request }, now);
                self.set_waiting(Some(WaitReason::AwaitingGrant { owner }));
            }
            None if owners > 0 => self.set_waiting(Some(WaitReason::OwnersUnreachable { owners })),
            None => self.set_waiting(Some(WaitReason::NoOwnerWithFreeSpace)),
        }
    }

    fn on_block_request(&mut self, now: Instant, from: PeerId, request: u64) {
        // One grant in flight per peer: a repeated request gets the same grant again.
        if let Some((grant, g)) = self.space.outgoing.iter().find(|(_, g)| g.to == from) {
            let (grant, space) = (*grant, g.space.clone());
            return self.send_control(from, &ControlMessage::BlockGrant { grant, space }, now);
        }
        let grant = rand_u64(&mut &mut *self.rng);
        match self.space.give(from, grant, self.config.block_prefix) {
            Some(space) => {
                info!(to = ?from, ?space, "giving address space");
                // Persist before the grant leaves (events are drained before transmits).
                self.events.push_back(Event::StateChanged);
                self.own_dirty = true;
                self.send_control(from, &ControlMessage::BlockGrant { grant, space }, now);
            }
            None => self.send_control(
                from,
                &ControlMessage::BlockDenied {
                    request,
                    reason: DenyReason::NoFreeSpace,
                },
                now,
            ),
        }
    }

    fn on_block_grant(&mut self, now: Instant, from: PeerId, grant: u64, space: Vec<Ipv4Net>) {
        if self.space.accepted.contains(&(from, grant)) {
            return self.send_control(from, &ControlMessage::BlockGrantAck { grant }, now);
        }
        let range = self.config.cluster_range;
        let owned = self.space.owned();
        let bad = space.iter().any(|s| {
            !range.contains(s)
                || s.prefix_len() > self.config.block_prefix
                || owned.iter().any(|o| overlaps(o, s))
        }) || self.space.external.is_some();
        if bad {
            return self.drop_for(DropReason::BadGrant);
        }
        let had = self.space.block();
        self.space.take(space, self.config.block_prefix);
        self.space.accepted.insert((from, grant));
        self.events.push_back(Event::StateChanged);
        self.own_dirty = true;
        if had.is_none()
            && let Some(block) = self.space.block()
        {
            info!(%block, from = ?from, "block claimed");
            self.events.push_back(Event::BlockClaimed { block });
            self.set_waiting(None);
        }
        self.send_control(from, &ControlMessage::BlockGrantAck { grant }, now);
    }

    /// Another node took over a departed peer's space: grants we still had in flight to that
    /// peer come back to us, except space the tombstone lists (the taker owns that now).
    fn cancel_grants_to(&mut self, tomb: &PeerRecord) {
        let listed: Vec<Ipv4Net> = tomb
            .pod_blocks
            .iter()
            .chain(&tomb.free_space)
            .copied()
            .collect();
        let cancelled: Vec<u64> = self
            .space
            .outgoing
            .iter()
            .filter(|(_, g)| g.to == tomb.id)
            .map(|(id, _)| *id)
            .collect();
        for grant in cancelled {
            if let Some(g) = self.space.outgoing.remove(&grant) {
                for net in g.space {
                    if !listed.iter().any(|l| overlaps(l, &net)) {
                        self.space.free.push(net);
                    }
                }
                self.space.free.sort();
                self.events.push_back(Event::StateChanged);
                self.own_dirty = true;
            }
        }
    }

    fn take_over(&mut self, now: Instant, peer: PeerId, command: Command) {
        if peer == self.id {
            return self.refuse(command, "cannot take over our own blocks");
        }
        if self.is_up(&peer) {
            return self.refuse(command, "the peer is up: it is not gone");
        }
        let Some(r) = self.table.get(&peer).cloned() else {
            return self.refuse(command, "unknown peer");
        };
        if matches!(
            r.liveness,
            Liveness::Departed {
                taken_over: true,
                ..
            }
        ) {
            return self.refuse(command, "its blocks were taken over already");
        }
        if r.external {
            return self.refuse(command, "its block came from outside (podCIDR)");
        }
        let space: Vec<Ipv4Net> = r.pod_blocks.iter().chain(&r.free_space).copied().collect();
        let owned = self.space.owned();
        if space.iter().any(|s| owned.iter().any(|o| overlaps(o, s))) {
            return self.refuse(command, "its recorded space overlaps ours");
        }
        self.forgotten.insert(peer);
        let tomb = r.tombstone(self.id, true);
        self.merge_record(tomb, now);
        self.space.take(space.clone(), self.config.block_prefix);
        self.events.push_back(Event::StateChanged);
        self.own_dirty = true;
        if self.waiting.is_some()
            && let Some(block) = self.space.block()
        {
            self.events.push_back(Event::BlockClaimed { block });
            self.set_waiting(None);
        }
        warn!(from = ?peer, ?space, "took over the address space of a departed peer");
        self.events
            .push_back(Event::BlocksTakenOver { from: peer, space });
    }

    // ---------------------------------------------------------------- pinning

    /// Applies [`Command::Pin`]. The handshaker enforces the allow-list on every completed
    /// handshake, both roles; here the tunnels of peers dropped from it close, dials of a
    /// pinned endpoint with an unknown key give way to a dial of its pinned key, and a key
    /// pinned anew is un-forgotten (a Node deleted and registered again with the same key).
    fn pin(&mut self, pins: BTreeMap<PeerId, Endpoint>, now: Instant) {
        self.handshaker
            .set_allowed(Some(pins.keys().map(|id| id.key()).collect()));
        let unpinned: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| !pins.contains_key(id))
            .copied()
            .collect();
        for id in unpinned {
            info!(peer = ?id, "key no longer pinned: closing its tunnel");
            self.close_peer(id, DownReason::Unpinned, now, true);
        }
        let pinned_endpoints: BTreeSet<Endpoint> = pins.values().copied().collect();
        let stale: Vec<Endpoint> = self
            .dials
            .keys()
            .filter(|ep| pinned_endpoints.contains(ep))
            .copied()
            .collect();
        for ep in stale {
            if let Some(a) = self.dials.remove(&ep).and_then(|d| d.attempt) {
                self.indices.remove(&a.index);
            }
        }
        let before = self.pinned.replace(pins.clone()).unwrap_or_default();
        for (id, endpoint) in pins {
            if !before.contains_key(&id) {
                self.forgotten.remove(&id);
            }
            self.ensure_peer(id, now);
            // A peer waiting to retry tries its (new) pinned endpoint now. Both ends of a pair
            // may do so at once (they see the same pins): their handshakes cross, which
            // `on_session` settles. Waiting for the lower key instead would leave a peer that
            // still holds a session we dropped (its key was unpinned and is pinned again)
            // sealing into the void until our fallback dial.
            if before.get(&id) != Some(&endpoint)
                && let Some(p) = self.peers.get_mut(&id)
                && let Tunnel::Idle { retry_at } = &mut p.tunnel
            {
                *retry_at = (*retry_at).min(now);
                self.touched.insert(id);
            }
        }
    }

    /// The key pinned at `endpoint`, which a dial of it must reach.
    fn pinned_key_at(&self, endpoint: Endpoint) -> Option<weft_crypto::PublicKey> {
        self.pinned
            .as_ref()?
            .iter()
            .find(|(_, ep)| **ep == endpoint)
            .map(|(id, _)| id.key())
    }

    /// How a refused handshake is counted: a key other than the pinned one apart from the
    /// rest, so an impersonation attempt shows in the counters under its own name. (Unpinned,
    /// an unexpected key is a stale endpoint, not an impostor.)
    fn handshake_drop(&self, error: &weft_crypto::HandshakeError) -> DropReason {
        match error {
            weft_crypto::HandshakeError::PeerNotAllowed(_) => DropReason::NotPinned,
            weft_crypto::HandshakeError::UnexpectedPeer { .. } if self.pinned.is_some() => {
                DropReason::NotPinned
            }
            _ => DropReason::HandshakeRejected,
        }
    }

    /// Whether a key may hold a tunnel with us: every key while unpinned.
    fn may_connect(&self, id: &PeerId) -> bool {
        self.pinned.as_ref().is_none_or(|p| p.contains_key(id))
    }
}
