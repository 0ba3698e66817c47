//! The deterministic simulator: N [`Node`]s, a virtual clock, one seeded generator, and an
//! underlay with per-link latency, loss, duplication, reordering and MTU, partitions, blocked
//! links, NATs (Linux conntrack's rules: `nat.rs`), crashes and restarts.
//!
//! Faults live here, outside the logic under test (STYLE.md: smoltcp's `FaultInjector`).
//!
//! Data packets take one of two paths ([`DataPath`]): through the Node alone
//! ([`Node::handle_tun_packets`], [`Node::handle_datagram`]), or the way a router moves them,
//! through a data plane beside the Node that seals and opens with the Node's [`DataPlane`]
//! snapshot and hands the Node only what the snapshot does not cover (`router/src/dataplane`).
//! Scenarios run on both ([`both_data_paths!`](crate::both_data_paths)).
//! Every run prints its seed; `WEFT_SIM_SEED=<seed>` replays it exactly: all randomness comes
//! from the seed, events at the same instant run in the order they were scheduled, and
//! nothing iterates a `HashMap` where order could matter.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_crypto::wire::MAC_LEN;
use weft_crypto::{
    DATA_HEADER_LEN, DATA_OVERHEAD, DEFAULT_CLUSTER_NAME, Handshaker, JoinSecret, JoinSecrets,
    KeyPair, SeededRng, Timestamp,
};
use weft_mesh::Ipv4View;
use weft_mesh::{
    Config, DataPlane, DropReason, Event, Node, PeerId, PersistentState, Received, Tally,
    ipam::overlaps,
};

/// The port every simulated router listens on (docs/design.md §1).
pub const PORT: u16 = 6786;

/// A join secret for simulated clusters.
pub const JOIN_SECRET: &[u8] = b"weft simulated cluster join secret";

/// The derived join secret for `text` in the default cluster. Argon2id runs once per text in
/// a test binary: every simulated node shares the result, so a 500-node run derives once.
pub fn join_secret(text: &[u8]) -> JoinSecret {
    static DERIVED: std::sync::Mutex<BTreeMap<Vec<u8>, JoinSecret>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut derived = DERIVED.lock().unwrap_or_else(|e| e.into_inner());
    derived
        .entry(text.trim_ascii().to_vec())
        .or_insert_with(|| JoinSecret::new(text, DEFAULT_CLUSTER_NAME).expect("a valid secret"))
        .clone()
}

/// A join secret file's text (one secret per line, the primary first), each line derived
/// through [`join_secret`]'s cache.
pub fn join_secrets(text: &[u8]) -> JoinSecrets {
    JoinSecrets::parse_with(text, DEFAULT_CLUSTER_NAME, |line| Ok(join_secret(line)))
        .expect("valid join secrets")
}

/// The simulator's generator: weft-crypto's seeded xoshiro256++ (feature `test-rng`), so a
/// seed replays a run exactly.
pub type SimRng = SeededRng;

/// How often the simulated data plane reports its activity to the Node: the router's
/// (a test in `mesh_dataplane.rs` keeps them equal).
pub use weft_mesh::dataplane::REPORT_EVERY;

/// Which path data packets take through a simulated router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// The Node seals and opens every packet ([`Node::handle_tun_packets`],
    /// [`Node::handle_datagram`]).
    #[default]
    Node,
    /// A data plane beside the Node seals and opens what the Node's [`DataPlane`] snapshot
    /// covers and hands the Node the rest, as a router's data-plane thread does.
    DataPlane,
}

impl DataPath {
    /// Both paths, for scenarios that run on each.
    pub const ALL: [DataPath; 2] = [DataPath::Node, DataPath::DataPlane];
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node => "node",
            Self::DataPlane => "data-plane",
        })
    }
}

/// How a simulator runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConfig {
    /// The path data packets take.
    pub data_path: DataPath,
}

/// What the simulated data planes did (all hosts): zero on [`DataPath::Node`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataPlaneStats {
    /// Packets sealed and sent without the Node.
    pub sealed: u64,
    /// Datagrams opened and delivered without the Node.
    pub opened: u64,
    /// Datagrams opened whose packet was refused (spoofed or unknown source), counted.
    pub refused: u64,
    /// Datagrams that failed to open (forged, replayed, expired), counted.
    pub failed: u64,
    /// Packets handed to the Node (no route, a relay, no confirmed session...).
    pub packets_to_node: u64,
    /// Datagrams handed to the Node (control, relayed, roaming, a new session's first...).
    pub datagrams_to_node: u64,
    /// Activity reports given to the Node.
    pub reports: u64,
}

/// The two halves of a data plane, each with its own tally, as the router's `tx` and `rx`.
const TX: usize = 0;
const RX: usize = 1;

/// A host's data plane: the snapshot it works on and its two tallies.
#[derive(Debug, Default)]
struct Worker {
    snapshot: Arc<DataPlane>,
    /// The Node changed at this instant (a drain): the snapshot is the Node's
    /// [`Node::data_plane`] as of then. A router publishes after every drain; building it
    /// only when a packet needs it gives the same snapshot (no input came in between, and it
    /// is built for the drain's instant) without rebuilding it at every gossip message.
    stale_since: Option<Instant>,
    tallies: [Tally; 2],
    /// When each tally's pending report is due.
    report_at: [Option<Duration>; 2],
}

/// The underlay between two hosts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter)`.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram arrives twice.
    pub duplicate: f64,
    /// Probability a datagram is held back (up to 3× the latency), so later ones pass it.
    pub reorder: f64,
    /// Largest datagram (UDP payload) the link carries.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            mtu: 1420,
        }
    }
}

use crate::nat::Nat;
pub use crate::nat::NatKind;

/// How a simulated node starts.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// Hosts it knows at start (their endpoints become seeds).
    pub seeds: Vec<usize>,
    /// Whether it founds the address space.
    pub found: bool,
    /// A NAT in front of it.
    pub nat: Option<NatKind>,
    /// An externally given block.
    pub pod_cidr: Option<Ipv4Net>,
    /// Its join secret file's text: one secret per line, the primary first.
    pub join_secret: Vec<u8>,
    /// Clock skew of its wall clock, in seconds (may be negative).
    pub skew_secs: i64,
}

impl NodeSpec {
    /// A node named `name` that knows `seeds`.
    pub fn new(name: impl Into<String>, seeds: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            seeds,
            found: false,
            nat: None,
            pod_cidr: None,
            join_secret: JOIN_SECRET.to_vec(),
            skew_secs: 0,
        }
    }
}

struct Host {
    spec: NodeSpec,
    key: KeyPair,
    node: Option<Node>,
    persisted: Option<PersistentState>,
    /// Its own address (private, behind a NAT).
    addr: SocketAddr,
    nat: Option<Nat>,
    next_timer: Option<Duration>,
    starts: u64,
    tun_rx: Vec<Vec<u8>>,
    events: Vec<Event>,
    worker: Worker,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    Deliver {
        to: usize,
        dst: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer {
        host: usize,
    },
    /// A data-plane half's activity report is due.
    Report {
        host: usize,
        half: usize,
    },
}

/// Counters of what the underlay did.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnderlayStats {
    /// Datagrams sent by nodes.
    pub sent: u64,
    /// Delivered to a node.
    pub delivered: u64,
    /// Lost by link loss.
    pub lost: u64,
    /// Over the MTU.
    pub too_big: u64,
    /// Refused by a NAT.
    pub nat_refused: u64,
    /// Dropped by a partition or a blocked link.
    pub cut: u64,
    /// To an address nobody has.
    pub unroutable: u64,
    /// To a crashed host.
    pub host_down: u64,
}

/// The simulator.
pub struct Sim {
    /// The seed of this run.
    pub seed: u64,
    config: SimConfig,
    base: Instant,
    wall_base: Duration,
    now: Duration,
    rng: SimRng,
    queue: BinaryHeap<Reverse<(Duration, u64, What)>>,
    seq: u64,
    hosts: Vec<Host>,
    by_ip: HashMap<IpAddr, usize>,
    /// Link settings for every pair without an override.
    pub default_link: LinkConfig,
    overrides: BTreeMap<(usize, usize), LinkConfig>,
    blocked: BTreeSet<(usize, usize)>,
    partition: Option<Vec<u8>>,
    fast_dh: bool,
    /// What the underlay did.
    pub underlay: UnderlayStats,
    check_ownership: bool,
    ownership_checks: u64,
    events_processed: u64,
    data_plane: DataPlaneStats,
    /// [`Sim::forge_handshakes`]: flip a bit in one of this many last bytes.
    forge_tail: Option<usize>,
    /// The forger's own handshaker: it holds the join secret, to make `mac1` good again.
    forger: Handshaker,
    /// [`Sim::watch`]: bytes nodes sent to each watched address.
    watched: BTreeMap<SocketAddr, u64>,
    /// [`Sim::capture`]: datagrams nodes sent to each captured address, not yet taken.
    captured: BTreeMap<SocketAddr, Vec<Vec<u8>>>,
    /// [`Sim::forge_cookie_replies`]: cookie replies forged so far.
    forged_cookie_replies: Option<u64>,
    /// The last timer served (host, virtual time) and how many times in a row it fired at
    /// that same instant: a Node whose deadline stays in the past spins (see `step`).
    same_instant_timers: (usize, Duration, u32),
}

/// Timer firings of one host at one virtual instant past which the simulator calls it a
/// livelock: a Node must move every deadline it served past `now` (a real router would spin
/// a core on it). Legitimate work at one instant takes a handful.
const TIMER_SPIN_LIMIT: u32 = 1000;

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The seed to use: `WEFT_SIM_SEED` if set, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("WEFT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Installs a `tracing` subscriber once if `WEFT_SIM_LOG` is set (e.g. `debug`), so each
/// node's events show under its span.
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("WEFT_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl Sim {
    /// A simulator with no hosts, data through the Node alone. Prints the seed.
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, SimConfig::default())
    }

    /// A simulator with no hosts whose data takes `data_path`. Prints the seed.
    pub fn with_data_path(seed: u64, data_path: DataPath) -> Self {
        Self::with_config(seed, SimConfig { data_path })
    }

    /// A simulator with no hosts. Prints the seed and the data path.
    pub fn with_config(seed: u64, config: SimConfig) -> Self {
        init_tracing();
        eprintln!(
            "simulator seed {seed}, data path {}: WEFT_SIM_SEED={seed} to replay",
            config.data_path
        );
        Self {
            seed,
            config,
            base: Instant::now(),
            // 2027-01-15, a fixed wall-clock start.
            wall_base: Duration::from_secs(1_800_000_000),
            now: Duration::ZERO,
            rng: SimRng::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            hosts: Vec::new(),
            by_ip: HashMap::new(),
            default_link: LinkConfig::default(),
            overrides: BTreeMap::new(),
            blocked: BTreeSet::new(),
            partition: None,
            fast_dh: false,
            underlay: UnderlayStats::default(),
            check_ownership: false,
            ownership_checks: 0,
            events_processed: 0,
            data_plane: DataPlaneStats::default(),
            forge_tail: None,
            forger: Handshaker::new(KeyPair::from_private([0x66; 32]), join_secret(JOIN_SECRET)),
            watched: BTreeMap::new(),
            captured: BTreeMap::new(),
            forged_cookie_replies: None,
            same_instant_timers: (usize::MAX, Duration::ZERO, 0),
        }
    }

    /// An on-path forger from now on: every direct handshake message (initiation, response,
    /// finish) is raced by a copy with one bit flipped in one of the last `tail` bytes of its
    /// Noise message (`usize::MAX`: anywhere, the MACs included), delivered just ahead of the
    /// real one. The forger knows the join secret: it makes the `mac1` of its copy good
    /// again, so the copy reaches the Noise checks (a stranger's dies at `mac1`).
    pub fn forge_handshakes(&mut self, tail: usize) {
        self.forge_tail = Some(tail);
    }

    /// Counts from now on the bytes nodes send to `address` ([`Sim::bytes_sent_to`]).
    pub fn watch(&mut self, address: SocketAddr) {
        self.watched.entry(address).or_default();
    }

    /// Bytes nodes sent to a watched address since [`Sim::watch`].
    pub fn bytes_sent_to(&self, address: SocketAddr) -> u64 {
        self.watched.get(&address).copied().unwrap_or(0)
    }

    /// Keeps from now on the datagrams nodes send to `address` (nobody's: a flooder that
    /// receives at its addresses), for [`Sim::take_captured`]; watches it too.
    pub fn capture(&mut self, address: SocketAddr) {
        self.watch(address);
        self.captured.entry(address).or_default();
    }

    /// The datagrams sent to a captured address since the last call.
    pub fn take_captured(&mut self, address: SocketAddr) -> Vec<Vec<u8>> {
        self.captured
            .get_mut(&address)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// An on-path forger of cookie replies from now on: every direct initiation is answered,
    /// ahead of its responder, with two cookie replies from the responder's address naming
    /// its index: one of random bytes, and one the forger (a member) sealed for a copy of the
    /// initiation with another timestamp (a genuine reply to another initiation).
    pub fn forge_cookie_replies(&mut self) {
        self.forged_cookie_replies = Some(0);
    }

    /// Cookie replies forged by [`Sim::forge_cookie_replies`].
    pub fn cookie_replies_forged(&self) -> u64 {
        self.forged_cookie_replies.unwrap_or(0)
    }

    /// The forged cookie replies for an initiation (see [`Sim::forge_cookie_replies`]).
    fn forged_cookie_replies_for(&mut self, bytes: &[u8], responder: SocketAddr) -> Vec<Vec<u8>> {
        let Some(count) = self.forged_cookie_replies else {
            return Vec::new();
        };
        if bytes.first() != Some(&1) || bytes.len() != weft_crypto::wire::INITIATION_LEN {
            return Vec::new();
        }
        let mut random = vec![0u8; weft_crypto::wire::COOKIE_REPLY_LEN];
        random[0] = 8;
        random[1] = weft_crypto::wire::PROTOCOL_VERSION;
        random[4..8].copy_from_slice(&bytes[4..8]);
        for b in &mut random[8..] {
            *b = self.rng.next_u64() as u8;
        }
        // Another timestamp ciphertext, mac1 made good: a genuine initiation to the forger.
        let mut other = bytes.to_vec();
        other[50] ^= 1;
        self.forger.stamp_mac1(&mut other);
        let mut rng = SeededRng::new(self.rng.next_u64());
        let stray = match self
            .forger
            .screen_initiation(&other, responder, true, self.base, &mut rng)
        {
            Ok(weft_crypto::Screened::CookieReply(r)) => r.to_vec(),
            other => panic!("the forger's cookie reply: {other:?}"),
        };
        self.forged_cookie_replies = Some(count + 2);
        vec![random, stray]
    }

    /// Delivers `bytes` to host `to` from `from`, any address (spoofed, or nobody's), after
    /// the default link's latency.
    pub fn inject(&mut self, to: usize, from: SocketAddr, bytes: Vec<u8>) {
        let dst = self.hosts[to].addr;
        let at = self.now + self.default_link.latency;
        self.schedule(
            at,
            What::Deliver {
                to,
                dst,
                from,
                bytes,
            },
        );
    }

    /// Queues `what` at `at`; among events at the same instant, the one queued first runs first.
    fn schedule(&mut self, at: Duration, what: What) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, what)));
    }

    /// A forged copy of a handshake message, if forging is on and `bytes` is one.
    fn forgery(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let tail = self.forge_tail?;
        // Initiations and responses end in mac1 and mac2; a finish has none.
        let noise_end = match bytes.first() {
            Some(1 | 2) if tail != usize::MAX => bytes.len().checked_sub(2 * MAC_LEN)?,
            Some(1..=3) => bytes.len(),
            _ => return None,
        };
        let tail = tail.min(noise_end);
        if tail == 0 {
            return None;
        }
        let at = noise_end - 1 - (self.rng.next_u64() % tail as u64) as usize;
        let mut forged = bytes.to_vec();
        forged[at] ^= 1 << (self.rng.next_u64() % 8);
        if at < bytes.len().saturating_sub(2 * MAC_LEN) {
            self.forger.stamp_mac1(&mut forged);
        }
        Some(forged)
    }

    /// The path data packets take.
    pub fn data_path(&self) -> DataPath {
        self.config.data_path
    }

    /// What the simulated data planes did so far.
    pub fn data_plane_stats(&self) -> DataPlaneStats {
        self.data_plane
    }

    /// Panics unless data went the configured way: on [`DataPath::DataPlane`] the data
    /// planes sealed and opened packets themselves (the mode did not quietly leave it all to
    /// the Node); on [`DataPath::Node`] they did nothing.
    pub fn assert_data_path_carried_traffic(&self) {
        let s = self.data_plane;
        match self.config.data_path {
            DataPath::DataPlane => assert!(
                s.sealed > 0 && s.opened > 0 && s.reports > 0,
                "seed {}: the data plane carried nothing: {s:?}",
                self.seed
            ),
            DataPath::Node => assert_eq!(
                s,
                DataPlaneStats::default(),
                "seed {}: no data plane on the Node path",
                self.seed
            ),
        }
    }

    /// Handshakes with a hash instead of X25519 (weft-crypto's `insecure-fast-dh`, debug
    /// builds only) for hosts started from now on: for the scale scenario.
    pub fn use_fast_insecure_dh(&mut self) {
        self.fast_dh = true;
    }

    /// Checks after every step at which any node's owned space changed (ownership changes
    /// at no other step) that no address is owned by two nodes; panics with the seed if so.
    pub fn check_ownership_every_step(&mut self) {
        self.check_ownership = true;
    }

    /// How many ownership checks ran.
    pub fn ownership_checks(&self) -> u64 {
        self.ownership_checks
    }

    /// Events (deliveries and timers) processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Adds a host and starts its node. Returns its index.
    pub fn add(&mut self, spec: NodeSpec) -> usize {
        let i = self.hosts.len();
        let key = KeyPair::generate(&mut self.rng);
        let (hi, lo) = ((i >> 8) as u8, i as u8);
        let public = Ipv4Addr::new(198, 18, hi, lo);
        let (addr, nat) = match spec.nat {
            None => (SocketAddr::new(public.into(), PORT), None),
            Some(kind) => {
                let nat_ip = Ipv4Addr::new(198, 19, hi, lo);
                self.by_ip.insert(nat_ip.into(), i);
                (
                    SocketAddr::new(Ipv4Addr::new(100, 64, hi, lo).into(), PORT),
                    Some(Nat::new(kind, nat_ip)),
                )
            }
        };
        if nat.is_none() {
            self.by_ip.insert(addr.ip(), i);
        }
        self.hosts.push(Host {
            spec,
            key,
            node: None,
            persisted: None,
            addr,
            nat,
            next_timer: None,
            starts: 0,
            tun_rx: Vec::new(),
            events: Vec::new(),
            worker: Worker::default(),
        });
        self.start(i);
        i
    }

    fn start(&mut self, i: usize) {
        let now = self.instant();
        let h = &self.hosts[i];
        let mut config = Config::new(h.spec.name.clone());
        config.announce = vec![h.addr];
        config.seeds = h.spec.seeds.iter().map(|s| self.hosts[*s].addr).collect();
        config.found_address_space = h.spec.found;
        config.pod_cidr = h.spec.pod_cidr;
        let secret = join_secrets(&h.spec.join_secret);
        let handshaker = if self.fast_dh {
            Handshaker::new_insecure_for_simulation(h.key.clone(), secret)
        } else {
            Handshaker::new(h.key.clone(), secret)
        };
        let rng =
            SeededRng::new(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9) ^ (h.starts << 48));
        let wall = if h.spec.skew_secs >= 0 {
            self.wall_base + self.now + Duration::from_secs(h.spec.skew_secs as u64)
        } else {
            self.wall_base + self.now - Duration::from_secs(h.spec.skew_secs.unsigned_abs())
        };
        let span = tracing::info_span!("node", name = %h.spec.name, t = ?self.now);
        let node = span.in_scope(|| {
            Node::new(
                config,
                handshaker,
                h.persisted.clone(),
                Box::new(rng),
                now,
                Timestamp::from_unix(wall),
            )
        });
        let h = &mut self.hosts[i];
        h.node = Some(node);
        h.starts += 1;
        h.next_timer = None;
        self.drain(i);
    }

    /// Stops a host's node; its persisted state stays ("on disk"). Its data plane stops with
    /// it: an unreported tally is lost, as a router's is.
    pub fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(node) = h.node.take() {
            h.persisted = Some(node.persistent_state());
        }
        h.next_timer = None;
        h.worker = Worker::default();
    }

    /// Starts a crashed host again, with its key and state, or as a new member (new key, no
    /// state) when `new_key`.
    pub fn restart(&mut self, i: usize, new_key: bool) {
        self.crash(i);
        if new_key {
            let key = KeyPair::generate(&mut self.rng);
            let h = &mut self.hosts[i];
            h.key = key;
            h.persisted = None;
        }
        self.start(i);
    }

    /// Whether a host's node runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.hosts[i].node.is_some()
    }

    /// Sets the link between two hosts (both directions).
    pub fn set_link(&mut self, a: usize, b: usize, link: LinkConfig) {
        self.overrides.insert(pair(a, b), link);
    }

    /// Drops everything between two hosts.
    pub fn block(&mut self, a: usize, b: usize) {
        self.blocked.insert(pair(a, b));
    }

    /// Undoes [`Sim::block`].
    pub fn unblock(&mut self, a: usize, b: usize) {
        self.blocked.remove(&pair(a, b));
    }

    /// Splits hosts into groups (`group[i]` for host i); only hosts in one group talk.
    pub fn partition(&mut self, groups: Vec<u8>) {
        self.partition = Some(groups);
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// A host's node (panics if crashed).
    pub fn node(&self, i: usize) -> &Node {
        self.hosts[i].node.as_ref().expect("host is running")
    }

    /// A host's node, to poke it (call [`Sim::drain`] after).
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        self.hosts[i].node.as_mut().expect("host is running")
    }

    /// A host's peer id.
    pub fn id(&self, i: usize) -> PeerId {
        PeerId::from(self.hosts[i].key.public())
    }

    /// A host's own underlay endpoint (behind its NAT, if it has one).
    pub fn endpoint(&self, i: usize) -> SocketAddr {
        self.hosts[i].addr
    }

    /// A host's name.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].spec.name
    }

    /// Packets a host's node gave its TUN device, taken.
    pub fn take_tun(&mut self, i: usize) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.hosts[i].tun_rx)
    }

    /// Events a host's node emitted so far.
    pub fn events(&self, i: usize) -> &[Event] {
        &self.hosts[i].events
    }

    /// Gives node `i` new join secrets (a join secret file's text), as a router does when its
    /// file changes; a restart keeps them.
    pub fn set_join_secrets(&mut self, i: usize, text: &[u8]) {
        self.hosts[i].spec.join_secret = text.to_vec();
        let secrets = join_secrets(text);
        self.with_node(i, |node, now| {
            node.handle_command(now, weft_mesh::Command::SetJoinSecrets(secrets))
        });
    }

    /// Runs a closure on a node inside its span, then drains its outputs.
    pub fn with_node<T>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> T) -> T {
        let now = self.instant();
        let span = tracing::info_span!("node", name = %self.hosts[i].spec.name, t = ?self.now);
        let node = self.hosts[i].node.as_mut().expect("host is running");
        let out = span.in_scope(|| f(node, now));
        self.drain(i);
        out
    }

    /// Takes a node's outputs: events (persisting on `StateChanged`), then datagrams, then
    /// TUN packets, then its next deadline, as the Node's docs ask; then, on
    /// [`DataPath::DataPlane`], publishes its snapshot to its data plane, as a router does
    /// after every drain.
    pub fn drain(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut ownership_changed = false;
        let now = self.instant();
        {
            let h = &mut self.hosts[i];
            let Some(node) = h.node.as_mut() else {
                return;
            };
            while let Some(e) = node.poll_event() {
                if e == Event::StateChanged {
                    h.persisted = Some(node.persistent_state());
                    ownership_changed = true;
                }
                h.events.push(e);
            }
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(p) = node.poll_tun() {
                h.tun_rx.push(p);
            }
            if let Some(t) = node.poll_timeout() {
                let at = t.saturating_duration_since(self.base).max(self.now);
                if h.next_timer != Some(at) {
                    h.next_timer = Some(at);
                    self.seq += 1;
                    self.queue
                        .push(Reverse((at, self.seq, What::Timer { host: i })));
                }
            }
            if self.config.data_path == DataPath::DataPlane {
                h.worker.stale_since = Some(now);
            }
        }
        for t in transmits {
            self.send(i, t.destination, t.bytes);
        }
        if ownership_changed && self.check_ownership {
            self.assert_single_owners();
        }
    }

    fn link(&self, a: usize, b: usize) -> LinkConfig {
        self.overrides
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.default_link)
    }

    fn send(&mut self, from_host: usize, dst: SocketAddr, bytes: Vec<u8>) {
        self.underlay.sent += 1;
        if let Some(n) = self.watched.get_mut(&dst) {
            *n += bytes.len() as u64;
        }
        if let Some(kept) = self.captured.get_mut(&dst) {
            kept.push(bytes.clone());
        }
        // Source translation.
        let h = &mut self.hosts[from_host];
        let src = match &mut h.nat {
            None => h.addr,
            Some(nat) => {
                let port = nat.outbound(self.now, h.addr, dst);
                SocketAddr::new(nat.public.into(), port)
            }
        };
        let Some(&to) = self.by_ip.get(&dst.ip()) else {
            self.underlay.unroutable += 1;
            return;
        };
        if self.blocked.contains(&pair(from_host, to))
            || self
                .partition
                .as_ref()
                .is_some_and(|g| g.get(from_host) != g.get(to))
        {
            self.underlay.cut += 1;
            return;
        }
        let link = self.link(from_host, to);
        if bytes.len() > link.mtu {
            self.underlay.too_big += 1;
            return;
        }
        if self.rng.chance(link.loss) {
            self.underlay.lost += 1;
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut delay = link.latency + self.rng.duration(link.jitter);
            if self.rng.chance(link.reorder) {
                delay += self.rng.duration(link.latency * 3);
            }
            let forged = if copy == 0 {
                self.forgery(&bytes)
            } else {
                None
            };
            if copy == 0 {
                let sender = self.hosts[from_host].addr;
                for reply in self.forged_cookie_replies_for(&bytes, dst) {
                    self.schedule(
                        self.now + delay,
                        What::Deliver {
                            to: from_host,
                            dst: sender,
                            from: dst,
                            bytes: reply,
                        },
                    );
                }
            }
            // A forgery goes first at the same instant: delivered ahead of the real one.
            for bytes in forged.into_iter().chain([bytes.clone()]) {
                let at = self.now + delay;
                self.schedule(
                    at,
                    What::Deliver {
                        to,
                        dst,
                        from: src,
                        bytes,
                    },
                );
            }
        }
    }

    /// Processes the next event. Returns false when there is none.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, _, what))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        self.events_processed += 1;
        let now = self.instant();
        match what {
            What::Timer { host } => {
                let h = &mut self.hosts[host];
                if h.next_timer != Some(at) || h.node.is_none() {
                    return true; // superseded
                }
                h.next_timer = None;
                let span = tracing::info_span!("node", name = %h.spec.name, t = ?self.now);
                let node = h.node.as_mut().expect("checked");
                span.in_scope(|| node.handle_timeout(now));
                let spin = &mut self.same_instant_timers;
                if (spin.0, spin.1) == (host, at) {
                    spin.2 += 1;
                    assert!(
                        spin.2 < TIMER_SPIN_LIMIT,
                        "seed {}: {}'s timer fired {} times at {:?} of virtual time: a \
                         deadline it served stays in the past (the router would spin)",
                        self.seed,
                        h.spec.name,
                        spin.2,
                        at
                    );
                } else {
                    *spin = (host, at, 1);
                }
                self.drain(host);
            }
            What::Report { host, half } => self.report(host, half, at),
            What::Deliver {
                to,
                dst,
                from,
                mut bytes,
            } => {
                let h = &mut self.hosts[to];
                if let Some(nat) = &mut h.nat {
                    // Inbound through the NAT: a reply to a flow of the inside's (docs in
                    // nat.rs: conntrack's rules).
                    let ok = IpAddr::from(nat.public) == dst.ip()
                        && nat.inbound(self.now, from, dst.port()).is_some();
                    if !ok {
                        self.underlay.nat_refused += 1;
                        return true;
                    }
                } else if dst != h.addr {
                    self.underlay.unroutable += 1;
                    return true;
                }
                if h.node.is_none() {
                    self.underlay.host_down += 1;
                    return true;
                }
                self.underlay.delivered += 1;
                if self.config.data_path == DataPath::DataPlane
                    && self.receive(to, from, &mut bytes)
                {
                    return true;
                }
                let h = &mut self.hosts[to];
                let node = h.node.as_mut().expect("checked");
                let span = tracing::info_span!("node", name = %h.spec.name, t = ?self.now);
                span.in_scope(|| node.handle_datagram(now, from, &bytes));
                self.drain(to);
            }
        }
        true
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            self.step();
        }
        self.now = end;
    }

    /// Runs until `done` holds (checked every `every` of virtual time) or `limit` passes.
    /// Returns the virtual time it took from the call, or `None` at the limit.
    pub fn run_until(
        &mut self,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(every);
        }
    }

    /// Running hosts.
    pub fn running(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|i| self.is_running(*i))
            .collect()
    }

    /// Whether every pair of the given hosts has a tunnel up, both ways.
    pub fn full_mesh_among(&self, hosts: &[usize]) -> bool {
        hosts.iter().all(|&a| {
            let node = self.node(a);
            hosts.iter().all(|&b| a == b || node.is_up(&self.id(b)))
        })
    }

    /// Whether every running pair has a tunnel up.
    pub fn full_mesh(&self) -> bool {
        self.full_mesh_among(&self.running())
    }

    /// How many ordered pairs of running hosts have a tunnel up, and how many there are.
    pub fn mesh_progress(&self) -> (usize, usize) {
        let hosts = self.running();
        let mut up = 0;
        for &a in &hosts {
            for &b in &hosts {
                if a != b && self.node(a).is_up(&self.id(b)) {
                    up += 1;
                }
            }
        }
        (up, hosts.len() * hosts.len().saturating_sub(1))
    }

    /// Whether every running host has a block and every running host knows every other's.
    pub fn all_know_all_blocks(&self) -> bool {
        let hosts = self.running();
        let blocks: Vec<_> = hosts.iter().map(|i| self.node(*i).block()).collect();
        if blocks.iter().any(Option::is_none) {
            return false;
        }
        hosts.iter().all(|&a| {
            let table = self.node(a).members();
            hosts.iter().zip(&blocks).all(|(&b, block)| {
                table
                    .get(&self.id(b))
                    .is_some_and(|r| r.is_alive() && r.pod_blocks.first().copied() == *block)
            })
        })
    }

    /// Owned space of every host, running or crashed (a crashed host still owns what its
    /// disk says; it resumes with it).
    pub fn ownership(&self) -> Vec<(Ipv4Net, usize)> {
        let mut all = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let space = match &h.node {
                Some(n) => Some(n.address_space().clone()),
                None => h.persisted.as_ref().map(|p| p.space.clone()),
            };
            if let Some(s) = space {
                all.extend(s.owned().into_iter().map(|n| (n, i)));
            }
        }
        all.sort();
        all
    }

    /// Panics if any address is owned by two hosts.
    pub fn assert_single_owners(&mut self) {
        self.ownership_checks += 1;
        let all = self.ownership();
        // Sorted by network address: any overlap shows between a range and a later one that
        // starts inside it; keep the furthest end seen so far.
        let mut reach: Option<(Ipv4Net, usize)> = None;
        for (net, owner) in all {
            if let Some((r, o)) = reach {
                assert!(
                    !overlaps(&r, &net),
                    "seed {}: at {:?}, {net} (host {owner}) overlaps {r} (host {o})",
                    self.seed,
                    self.now
                );
                if net.broadcast() > r.broadcast() {
                    reach = Some((net, owner));
                }
            } else {
                reach = Some((net, owner));
            }
        }
    }

    /// An IPv4/UDP-ish packet from host `a`'s block to host `b`'s, with `tag` as payload.
    pub fn packet(&self, a: usize, b: usize, tag: u32) -> Vec<u8> {
        let src = self.node(a).block().expect("a has a block").network();
        let dst = self.node(b).block().expect("b has a block").network();
        ipv4_packet(
            Ipv4Addr::from(u32::from(src) + 2),
            Ipv4Addr::from(u32::from(dst) + 2),
            &tag.to_be_bytes(),
        )
    }

    /// One packet from every node to every other (tagged `round`), half a second of simulated
    /// time, and what each node's pods received meanwhile.
    pub fn traffic_round(&mut self, round: u32) -> Vec<Vec<Vec<u8>>> {
        let n = self.len();
        for a in 0..n {
            for b in (0..n).filter(|b| *b != a) {
                let p = self.packet(a, b, round);
                self.send_packets(a, vec![p]);
            }
        }
        self.run_for(Duration::from_millis(500));
        (0..n).map(|b| self.take_tun(b)).collect()
    }

    /// Hands a batch of packets to host `a` as if read from its TUN device: to its node, or
    /// on [`DataPath::DataPlane`] to its data plane, which hands the node what it cannot send.
    pub fn send_packets(&mut self, a: usize, packets: Vec<Vec<u8>>) {
        match self.config.data_path {
            DataPath::Node => self.with_node(a, |n, now| n.handle_tun_packets(now, packets)),
            DataPath::DataPlane => self.seal_and_send(a, packets),
        }
    }

    /// Host `i`'s data-plane snapshot: the Node's, as of its last drain.
    fn snapshot(&mut self, i: usize) -> Arc<DataPlane> {
        let h = &mut self.hosts[i];
        if let Some(at) = h.worker.stale_since.take() {
            let node = h.node.as_mut().expect("host is running");
            h.worker.snapshot = node.data_plane(at);
        }
        h.worker.snapshot.clone()
    }

    /// The sending half of a router's data plane (`router/src/dataplane/tx.rs`): each packet
    /// is routed, sealed in a slot with room for the header and tag, and sent to its peer's
    /// endpoint; what `route` or `seal` leaves (no route, a relay, no confirmed session, a
    /// session past its limits) goes to the Node.
    fn seal_and_send(&mut self, a: usize, packets: Vec<Vec<u8>>) {
        let now = self.instant();
        let dp = self.snapshot(a);
        let tally = &mut self.hosts[a].worker.tallies[TX];
        let mut sealed = Vec::new();
        let mut slow = Vec::new();
        for packet in packets {
            let len = packet.len();
            let mut slot = vec![0u8; DATA_OVERHEAD + len];
            slot[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&packet);
            if let Some((peer, path)) = Ipv4View::new_checked(&packet)
                .ok()
                .and_then(|ip| dp.route(ip.dst()))
                && let Some(endpoint) = path.seal(&mut slot, now)
            {
                tally.sent(peer, slot.len(), now);
                sealed.push((endpoint, slot));
            } else {
                slow.push(packet);
            }
        }
        self.data_plane.sealed += sealed.len() as u64;
        for (endpoint, datagram) in sealed {
            self.send(a, endpoint, datagram);
        }
        self.schedule_report(a, TX);
        if !slow.is_empty() {
            self.data_plane.packets_to_node += slow.len() as u64;
            self.with_node(a, |n, now| n.handle_tun_packets(now, slow));
        }
    }

    /// The receiving half (`router/src/dataplane/rx.rs`): opens a datagram the snapshot
    /// covers, delivering its packet or counting its drop. Returns false when the Node must
    /// see it, untouched.
    fn receive(&mut self, i: usize, from: SocketAddr, datagram: &mut [u8]) -> bool {
        if datagram.is_empty() {
            // The router hands an empty datagram to the Node, which counts it.
            self.data_plane.datagrams_to_node += 1;
            return false;
        }
        let now = self.instant();
        let dp = self.snapshot(i);
        let len = datagram.len();
        let h = &mut self.hosts[i];
        let tally = &mut h.worker.tallies[RX];
        match dp.open(datagram, from, now) {
            Received::ToNode => {
                self.data_plane.datagrams_to_node += 1;
                return false;
            }
            Received::Failed => {
                self.data_plane.failed += 1;
                tally.drop_for(DropReason::OpenFailed, now);
            }
            Received::Refused { peer, reason } => {
                self.data_plane.refused += 1;
                tally.received(peer, len, now, from);
                tally.drop_for(reason, now);
            }
            Received::Deliver { peer, range } => {
                self.data_plane.opened += 1;
                tally.received(peer, len, now, from);
                h.tun_rx.push(datagram[range].to_vec());
            }
        }
        self.schedule_report(i, RX);
        true
    }

    /// Schedules a tally's report [`REPORT_EVERY`] after its first entry, as a router's
    /// worker wakes for it even when no more traffic comes.
    fn schedule_report(&mut self, i: usize, half: usize) {
        let w = &mut self.hosts[i].worker;
        let Some(due) = w.tallies[half].due() else {
            return;
        };
        if w.report_at[half].is_some() {
            return;
        }
        let at = due.saturating_duration_since(self.base);
        w.report_at[half] = Some(at);
        self.schedule(at, What::Report { host: i, half });
    }

    /// Gives the Node a tally's report: its drops, then its activity, as the router's
    /// control task does.
    fn report(&mut self, i: usize, half: usize, at: Duration) {
        let now = self.instant();
        let h = &mut self.hosts[i];
        if h.worker.report_at[half] != Some(at) {
            return; // from a run that crashed since
        }
        h.worker.report_at[half] = None;
        let Some(node) = h.node.as_mut() else {
            return;
        };
        let report = h.worker.tallies[half].take().unwrap_or_default();
        self.data_plane.reports += 1;
        let span = tracing::info_span!("node", name = %h.spec.name, t = ?self.now);
        span.in_scope(|| report.apply(node, now));
        self.drain(i);
    }
}

/// A minimal IPv4 packet (protocol 253, "experimentation", RFC 3692) around `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

/// Runs simulator scenarios once on each [`DataPath`]: for each `name`, a function
/// `fn name(data_path: DataPath)` becomes the tests `name::node` and `name::data_plane`.
#[macro_export]
macro_rules! both_data_paths {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn node() {
                super::$name($crate::sim::DataPath::Node)
            }

            #[test]
            fn data_plane() {
                super::$name($crate::sim::DataPath::DataPlane)
            }
        }
    )+};
}
