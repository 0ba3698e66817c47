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
//! Read access for a status API: [`Node::status`], [`Node::members`], [`Node::links`],
//! [`Node::routes`], [`Node::drops`], [`Node::stats`]; for data-plane workers: [`Node::data_plane`].
//!
//! # The parts
//!
//! This file is the entry point: the public API, the [`Node`] struct and the dispatch of
//! datagrams and control messages. The types that go in and out are in `io.rs` and
//! `status.rs`; each protocol is a file of its own beside them:
//!
//! | file | owns |
//! |---|---|
//! | `io.rs` | what goes in and out: `Config`, `PersistentState`, `Command`, `Transmit`, `Event` |
//! | `status.rs` | what a status API and metrics read: `NodeStatus`, `PeerStatus`, `NodeStats` |
//! | `peer.rs` | `Peer`: one peer's tunnel, path, queue and counters, and its next deadline |
//! | `path_state.rs` | `PathState`: how one peer is reached; the silence clock, probes, punches, introductions |
//! | `timers.rs` | `TimerTable`: the named global timers and per-peer deadlines, one next deadline |
//! | `indices.rs` | `Indices`: every local index we handed out and what it is for (the only record of a peer's indices) |
//! | `handshake.rs` | handshakes (answering, initiating, dialling), installing sessions |
//! | `tunnels.rs` | the per-peer clock: retries, rekeys, keepalives, dead peers, closing |
//! | `paths.rs` | sending along paths, relaying, NAT discovery, introductions, punching, routes |
//! | `sealed.rs` | opening and sealing data and control; the anti-spoofing check on delivery |
//! | `gossip.rs` | our record, rumours, digests |
//! | `membership.rs` | merging records, names, refuting our tombstone, which members we keep |
//! | `address_space.rs` | asking for, granting and taking over address space (IPAM) |
//! | `pinning.rs` | membership pinned to a list of keys |
//! | `join_secrets.rs` | a change of the accepted join secrets (rotation), which secret made each session |
//! | `ratelimit.rs` | `InitiationLimiter`: per-source budgets for the initiations we answer |
//!
//! Tunnel state transitions are methods of [`crate::tunnel::Tunnel`]; drop reasons are in
//! [`crate::drop`]; the IPv4 view and the anti-spoofing rule in [`crate::packet`].
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, trace, warn};
use weft_crypto::wire::Sealed;
use weft_crypto::{Handshaker, MessageType, Random, Timestamp};

use crate::dataplane::{DataActivity, DataPlane, PeerPath, Receiving};
use crate::drop::{DropCounters, DropReason};
use crate::id::{Endpoint, PeerId, ShortId};
use crate::ipam::{AddressSpace, WaitReason};
use crate::packet::Ipv4View;
use crate::record::PeerTable;
use crate::routes::{NextHop, RouteTable};
use crate::wire::ControlMessage;

mod address_space;
mod cookies;
mod gossip;
mod handshake;
mod indices;
mod io;
mod join_secrets;
mod membership;
mod path_state;
mod paths;
mod peer;
mod pinning;
mod ratelimit;
mod sealed;
mod status;
mod timers;
mod tunnels;

pub use address_space::{GRANT_RESEND, IPAM_RETRY};
pub use gossip::{DIGEST_INTERVAL, GOSSIP_INTERVAL, TOMBSTONE_TTL};
pub use io::{Command, Config, DownReason, Event, PersistentState, Transmit};
pub use status::{DirectAttempt, JoinSecretUse, NodeStats, NodeStatus, PeerStatus};

pub use cookies::{COOKIE_VALID, COOKIES_KEPT, LOAD_THRESHOLD};
pub use handshake::{
    CROSSING_WINDOW, INITIATE_FALLBACK, PENDING_LIMIT, RESPONDING_TIMEOUT, UNKNOWN_INDEX_ENDPOINTS,
    UNKNOWN_INDEX_INTERVAL,
};
pub use path_state::{
    DIRECT_PROBE_INTERVAL, INTRODUCE_AFTER, PUNCH_INTERVAL, PUNCH_RETRY, PUNCH_ROUNDS,
    SILENT_PROBE_AFTER,
};
pub use paths::{DIRECT_PATH_BOUND, ROUTE_INTERVAL};
pub use peer::CONFIRM_TIMEOUT;
pub use ratelimit::{INITIATION_BURST, INITIATIONS_PER_SECOND, LIMITER_ADDRESSES};
pub use sealed::QUEUE_LIMIT;

use handshake::{Dial, Pending};
use indices::{IndexUse, Indices};
use paths::Source;
use peer::Peer;
use ratelimit::InitiationLimiter;
use timers::{Timer, TimerTable};

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
    indices: Indices,
    responding: HashMap<u32, Pending>,
    /// Per-source budgets for initiations we answer.
    initiations: InitiationLimiter,
    /// Load, cookies held as initiator (`cookies.rs`).
    cookies: cookies::Cookies,
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
    /// Which member owns which block changed since routes were computed: unlike a path
    /// change, this cannot wait for the routes' slot in the data plane's snapshot (see
    /// [`Node::data_plane`]).
    owners_dirty: bool,
    routes_computed: Option<Instant>,
    data_plane: Option<Arc<DataPlane>>,
    timers: TimerTable,
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
            indices: Indices::default(),
            responding: HashMap::new(),
            initiations: InitiationLimiter::default(),
            cookies: cookies::Cookies::new(),
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
            owners_dirty: true,
            routes_computed: None,
            data_plane: None,
            timers: TimerTable::default(),
            touched: BTreeSet::new(),
            transmits: VecDeque::new(),
            tun: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::new(),
            stats: NodeStats::default(),
            config,
        };
        node.publish_own(now);
        node.timers.set(Timer::Gossip, now + GOSSIP_INTERVAL);
        let jitter = node.jitter(DIGEST_INTERVAL);
        node.timers
            .set(Timer::Digest, now + DIGEST_INTERVAL / 2 + jitter);
        node.timers.set(Timer::Ipam, now);
        node.timers
            .set(Timer::Maintenance, now + Duration::from_secs(1));
        node.timers.set(Timer::Routes, now);
        // After the timers: dialling sets the maintenance timer to now, which the line above
        // would otherwise push back a second and every start would wait that long to dial.
        for seed in node.config.seeds.clone() {
            node.add_dial(seed, now);
        }
        if let Some(block) = node.space.block() {
            node.events.push_back(Event::BlockClaimed { block });
        }
        node.events.push_back(Event::StateChanged);
        info!(peer = %node.id, incarnation, "mesh node started");
        node
    }

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

    /// The join secrets accepted now ([`Command::SetJoinSecrets`]).
    pub fn join_secrets(&self) -> &weft_crypto::JoinSecrets {
        self.handshaker.join_secrets()
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
            .and_then(|p| p.path.next_hop)
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
        self.indices.holds_session_with(peer)
    }

    /// Responder handshakes waiting for their finish (at most [`PENDING_LIMIT`]).
    pub fn pending_handshakes(&self) -> usize {
        self.responding.len()
    }

    /// X25519 operations this Node's handshaker performed so far.
    pub fn dh_operations(&self) -> u64 {
        self.handshaker.dh_operations()
    }

    /// Whether `index` is one of our local indices (a session, or a handshake in flight).
    /// Tests use it to show a relay holds nothing for the pair it relays.
    pub fn holds_index(&self, index: u32) -> bool {
        self.indices.contains(index)
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
                    path: p.path.next_hop,
                    rtt: p.rtt,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    tx_packets: p.tx_packets,
                    rx_packets: p.rx_packets,
                    last_handshake: p.last_handshake,
                    unreachable: p.unreachable,
                    nat_pair: self.nat_pair(id),
                    direct_attempt: p.path.attempt(),
                    join_secret: self.join_secret_use(p),
                })
                .collect(),
            members: self.table.alive().count(),
        }
    }

    /// Every link between live members as this node knows them: its own from its tunnels,
    /// the others from gossip ([`crate::topology`]).
    pub fn links(&self) -> Vec<crate::topology::LinkView> {
        let own = self
            .peers
            .iter()
            .map(|(id, p)| {
                let tunnel = crate::topology::OwnTunnel {
                    state: p.tunnel.name(),
                    path: p.path.next_hop,
                };
                (*id, tunnel)
            })
            .collect();
        crate::topology::links(self.id, self.table.records(), &own)
    }

    /// The read-mostly state for data-plane workers. It is rebuilt after any input changed
    /// the Node (the same `Arc` otherwise, so a router can compare pointers and swap): only
    /// confirmed sessions are in it, exactly those [`Node::handle_tun_packets`] would seal
    /// with, and a worker hands the Node anything the snapshot does not cover.
    pub fn data_plane(&mut self, now: Instant) -> Arc<DataPlane> {
        if let Some(dp) = &self.data_plane {
            return dp.clone();
        }
        // Workers judge each packet's source by who owns it (`packet::admit`), as the Node
        // does with routes it recomputes first (`on_data`): a block just learned must not be
        // refused by one path and delivered by the other until the next route slot.
        self.refresh_owners(now);
        let mut peers = BTreeMap::new();
        let mut receiving = HashMap::new();
        for (id, p) in &self.peers {
            let Some(keys) = p.tunnel.keys() else {
                continue;
            };
            if let (Some(session), Some(next_hop)) = (
                keys.sending(now)
                    .filter(|s| s.is_confirmed() && !s.is_expired(now)),
                p.path.next_hop,
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
            let direct = p.path.direct();
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
        self.stats.data_plane_builds += 1;
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
                p.tx_packets += a.sent_packets;
                p.path.expect_answer(first);
            }
            if let Some((last, from)) = a.received {
                p.last_rx = p.last_rx.max(last);
                p.rx_bytes += a.received_bytes;
                p.rx_packets += a.received_packets;
                p.path.direct_rx_reported(from, last);
            }
            self.touched.insert(a.peer);
        }
        // Activity moves clocks and counters only: no session, path or route the snapshot
        // holds (a report never changes a peer's path: `direct_rx_reported`). Keep it, so a
        // worker's report does not rebuild and republish it ten times a second per worker.
        // Anything else this call's `finish` could do (our record changed) drops it as usual.
        let kept = if self.own_dirty {
            None
        } else {
            self.data_plane.take()
        };
        self.finish(now);
        self.data_plane = kept;
    }

    /// Drops counted by a data-plane worker (the Node's [`Node::drops`] stays the one tally).
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.drops.entry(reason).or_default() += n;
        }
    }

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
        self.timers.next_deadline()
    }

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
            Ok(kind) => self.dispatch(
                now,
                Source {
                    endpoint: from,
                    relayed_from: None,
                },
                kind,
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
        // Routed by the blocks the table holds, as the data plane's snapshot routes them: a
        // block learned since the last route slot is not dropped as unroutable meanwhile.
        self.refresh_owners(now);
        for packet in packets {
            let Ok(view) = Ipv4View::new_checked(&packet) else {
                self.drop_for(DropReason::NotIpv4);
                continue;
            };
            let Some(owner) = self.routes.owner(view.dst()) else {
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
            Command::SetJoinSecrets(secrets) => self.set_join_secrets(secrets, now),
        }
        self.finish(now);
    }

    /// The deadline from [`Node::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if self.timers.expire(timer, now) {
                match timer {
                    Timer::Gossip => self.on_gossip_timer(now),
                    Timer::Digest => self.on_digest_timer(now),
                    Timer::Ipam => self.on_ipam_timer(now),
                    Timer::Maintenance => self.on_maintenance_timer(now),
                    Timer::Routes => self.on_routes_timer(now),
                }
            }
        }
        for id in self.timers.expire_peers(now) {
            self.on_peer_timer(id, now);
            self.touched.insert(id);
        }
        self.finish(now);
    }

    fn wall(&self, now: Instant) -> Timestamp {
        Timestamp::from_unix(self.wall_base + now.saturating_duration_since(self.instant_base))
    }

    /// A uniformly random duration in `[0, max)`.
    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().max(1) as u64;
        Duration::from_nanos(rand_u64(&mut &mut *self.rng) % nanos)
    }

    fn drop_for(&mut self, reason: DropReason) {
        trace!(reason = reason.as_str(), "drop");
        *self.drops.entry(reason).or_default() += 1;
    }

    fn refuse(&mut self, command: Command, reason: &'static str) {
        warn!(?command, reason, "command refused");
        self.events
            .push_back(Event::CommandRefused { command, reason });
    }

    fn alloc_index(&mut self, usage: IndexUse) -> u32 {
        self.indices.alloc(&mut *self.rng, usage)
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
        if self.routes_dirty && !self.timers.is_set(Timer::Routes) {
            let slot = self.routes_computed.map_or(now, |t| t + ROUTE_INTERVAL);
            self.timers.set(Timer::Routes, slot.max(now));
        }
    }

    fn transmit(&mut self, destination: Endpoint, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { destination, bytes });
    }

    /// A datagram that came inside a relay envelope.
    fn handle_inner(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        match MessageType::of(bytes) {
            Ok(kind) => self.dispatch(now, source, kind, bytes),
            Err(_) => self.drop_for(DropReason::Malformed),
        }
    }

    /// Hands a datagram whose type was read once (`kind`) to its handler; a sealed one goes
    /// on as the checked view the session opens.
    fn dispatch(&mut self, now: Instant, source: Source, kind: MessageType, bytes: &[u8]) {
        match kind {
            MessageType::HandshakeInitiation => self.on_initiation(now, source, bytes),
            MessageType::HandshakeResponse => self.on_response(now, source, bytes),
            MessageType::HandshakeFinish => self.on_finish(now, source, bytes),
            MessageType::Data | MessageType::Control => match Sealed::parse(bytes) {
                Ok(sealed) => self.on_sealed(now, source, sealed),
                Err(_) => self.drop_for(DropReason::Malformed),
            },
            MessageType::StaleIndex => self.on_stale_index(now, source, bytes),
            MessageType::CookieReply => self.on_cookie_reply(now, source, bytes),
            // A relay envelope inside a relay envelope.
            MessageType::Relay => self.drop_for(DropReason::Malformed),
        }
    }

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
            ControlMessage::Observed { endpoint } => self.on_observed(endpoint, now),
            ControlMessage::IntroduceRequest { target } => {
                self.on_introduce_request(now, from, target)
            }
            ControlMessage::Introduce { peer, endpoint } => self.on_introduce(now, peer, endpoint),
            ControlMessage::BlockRequest { request } => self.on_block_request(now, from, request),
            ControlMessage::BlockGrant { grant, space } => {
                self.on_block_grant(now, from, grant, space)
            }
            ControlMessage::BlockGrantAck { grant } => self.on_block_grant_ack(from, grant),
            ControlMessage::BlockDenied { .. } => self.on_block_denied(now, from),
        }
    }
}
