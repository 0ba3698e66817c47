//! The per-packet decisions, for data-plane workers that run beside the Node (docs/design.md §2:
//! "the mesh decides, the data plane executes").
//!
//! [`crate::Node::data_plane`] publishes a read-mostly [`DataPlane`] snapshot: the route
//! table, each peer's confirmed sending session and next hop, and the confirmed sessions that
//! open datagrams by local index. A worker seals ([`DataPlane::route`], [`PeerPath::seal`])
//! and opens ([`DataPlane::open`]) with it in parallel with the Node and with other workers,
//! and hands the Node what the snapshot does not cover, unopened. Only the common case is
//! here; anything that changes the Node's state (a new session's first packet, a roaming or
//! relayed datagram, control messages) stays the Node's. Workers keep what they did in a
//! [`Tally`] and hand the Node its [`ActivityReport`] every [`REPORT_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_crypto::wire::Sealed;
use weft_crypto::{PayloadKind, Session};

use crate::drop::DropReason;
use crate::id::{Endpoint, PeerId};
use crate::node::Node;
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
    /// Datagrams sealed and sent to it.
    pub sent_packets: u64,
    /// When the first and the last of them went out.
    pub sent: Option<(Instant, Instant)>,
    /// Datagram bytes opened from it.
    pub received_bytes: u64,
    /// Datagrams opened from it.
    pub received_packets: u64,
    /// When the last of them arrived, and from where.
    pub received: Option<(Instant, Endpoint)>,
}

/// How often a data-plane worker reports its activity to the Node while traffic flows. The
/// Node's clocks work in seconds (keepalives, silent paths), so a tenth of one is plenty.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// A data-plane worker's running tally between reports: bytes and times per peer, drops per
/// reason. Sans-IO: the worker says what it did and when, and takes the report when
/// [`Tally::due`] (a router's workers, and the simulator's data plane, keep one per
/// direction).
#[derive(Debug, Default)]
pub struct Tally {
    /// Per peer, in the order each first appeared.
    peers: Vec<DataActivity>,
    /// Where each peer is in `peers`; consecutive packets mostly share a peer, so the last
    /// hit is tried before hashing.
    index: HashMap<PeerId, usize>,
    last: usize,
    /// Ordered, so a report (and a simulated run) is the same whatever the hash seed.
    drops: BTreeMap<DropReason, u64>,
    /// When the first thing since the last report happened.
    since: Option<Instant>,
}

/// What a [`Tally`] hands the Node ([`ActivityReport::apply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityReport {
    /// Per peer, in the order each first appeared.
    pub activity: Vec<DataActivity>,
    /// Per reason, in [`DropReason`] order.
    pub drops: Vec<(DropReason, u64)>,
}

impl ActivityReport {
    /// Gives the Node the report: its drops, then its activity.
    pub fn apply(&self, node: &mut Node, now: Instant) {
        for &(reason, n) in &self.drops {
            node.count_drops(reason, n);
        }
        node.handle_data_activity(now, &self.activity);
    }
}

impl Tally {
    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut DataActivity {
        self.since.get_or_insert(now);
        if self.peers.get(self.last).is_none_or(|a| a.peer != peer) {
            let peers = &mut self.peers;
            self.last = *self.index.entry(peer).or_insert_with(|| {
                peers.push(DataActivity {
                    peer,
                    sent_bytes: 0,
                    sent_packets: 0,
                    sent: None,
                    received_bytes: 0,
                    received_packets: 0,
                    received: None,
                });
                peers.len() - 1
            });
        }
        &mut self.peers[self.last]
    }

    /// A datagram of `bytes` was sealed and sent to `peer` at `now`.
    pub fn sent(&mut self, peer: PeerId, bytes: usize, now: Instant) {
        let a = self.entry(peer, now);
        a.sent_bytes += bytes as u64;
        a.sent_packets += 1;
        a.sent = Some((a.sent.map_or(now, |(first, _)| first), now));
    }

    /// A datagram of `bytes` from `peer` opened at `now`; it came from `from`.
    pub fn received(&mut self, peer: PeerId, bytes: usize, now: Instant, from: Endpoint) {
        let a = self.entry(peer, now);
        a.received_bytes += bytes as u64;
        a.received_packets += 1;
        a.received = Some((now, from));
    }

    /// Something was dropped at `now`, for `reason`.
    pub fn drop_for(&mut self, reason: DropReason, now: Instant) {
        self.drops_for(reason, 1, now);
    }

    /// `n` things were dropped at `now`, for `reason`.
    pub fn drops_for(&mut self, reason: DropReason, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        self.since.get_or_insert(now);
        *self.drops.entry(reason).or_default() += n;
    }

    /// When the pending report is due ([`REPORT_EVERY`] after the first thing in it), if
    /// anything is pending.
    pub fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + REPORT_EVERY)
    }

    /// The pending report, when it is due at `now`.
    pub fn take_if_due(&mut self, now: Instant) -> Option<ActivityReport> {
        if self.due().is_some_and(|t| t <= now) {
            self.take()
        } else {
            None
        }
    }

    /// The pending report, due or not, leaving the tally empty; `None` if nothing is pending.
    pub fn take(&mut self) -> Option<ActivityReport> {
        self.since.take()?;
        self.index.clear();
        Some(ActivityReport {
            activity: std::mem::take(&mut self.peers),
            drops: std::mem::take(&mut self.drops).into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reports_first_and_last_send_and_the_last_receive() {
        let t0 = Instant::now();
        let peer = PeerId([7; 32]);
        let from: Endpoint = "198.18.0.2:6786".parse().unwrap();
        let mut tally = Tally::default();
        assert!(tally.due().is_none());
        tally.sent(peer, 100, t0);
        tally.sent(peer, 50, t0 + Duration::from_millis(5));
        tally.received(peer, 70, t0 + Duration::from_millis(7), from);
        tally.drop_for(DropReason::SpoofedSource, t0);
        assert_eq!(tally.due(), Some(t0 + REPORT_EVERY));
        let Some(ActivityReport { activity, drops }) = tally.take() else {
            panic!("a report was pending");
        };
        assert_eq!(activity.len(), 1);
        let a = activity[0];
        assert_eq!((a.sent_bytes, a.sent_packets), (150, 2));
        assert_eq!(a.sent, Some((t0, t0 + Duration::from_millis(5))));
        assert_eq!((a.received_bytes, a.received_packets), (70, 1));
        assert_eq!(a.received, Some((t0 + Duration::from_millis(7), from)));
        assert_eq!(drops, vec![(DropReason::SpoofedSource, 1)]);
        assert!(tally.take().is_none(), "nothing is reported twice");

        // Peers interleaved: each keeps its own sums.
        let other = PeerId([8; 32]);
        for i in 0..10 {
            tally.sent(if i % 3 == 0 { other } else { peer }, 10, t0);
        }
        let Some(ActivityReport { mut activity, .. }) = tally.take() else {
            panic!("a report was pending");
        };
        activity.sort_by_key(|a| a.peer);
        let sums: Vec<_> = activity.iter().map(|a| (a.peer, a.sent_bytes)).collect();
        assert_eq!(sums, vec![(peer, 60), (other, 40)]);
    }

    #[test]
    fn a_report_lists_peers_as_they_first_appeared_and_drops_in_order() {
        let t0 = Instant::now();
        let from: Endpoint = "198.18.0.3:6786".parse().unwrap();
        let (a, b, c) = (PeerId([3; 32]), PeerId([1; 32]), PeerId([2; 32]));
        let mut tally = Tally::default();
        tally.drop_for(DropReason::UnknownSender, t0);
        tally.received(a, 1, t0, from);
        tally.sent(b, 2, t0);
        tally.drop_for(DropReason::OpenFailed, t0);
        tally.sent(a, 4, t0);
        tally.received(c, 8, t0, from);
        tally.drop_for(DropReason::UnknownSender, t0);
        let report = tally.take().expect("pending");
        let order: Vec<_> = report.activity.iter().map(|x| x.peer).collect();
        assert_eq!(order, vec![a, b, c]);
        assert_eq!(
            (
                report.activity[0].sent_bytes,
                report.activity[0].received_bytes
            ),
            (4, 1)
        );
        assert_eq!(
            report.drops,
            vec![(DropReason::OpenFailed, 1), (DropReason::UnknownSender, 2)]
        );
        // After a report the same peers start again from nothing.
        tally.sent(c, 16, t0);
        let again = tally.take().expect("pending");
        assert_eq!(again.activity.len(), 1);
        assert_eq!(
            (again.activity[0].peer, again.activity[0].sent_bytes),
            (c, 16)
        );
        assert!(again.drops.is_empty());
    }

    #[test]
    fn a_report_is_due_a_period_after_the_first_thing_in_it() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        assert!(
            tally.take_if_due(t0 + REPORT_EVERY).is_none(),
            "nothing pending"
        );
        tally.drop_for(DropReason::OpenFailed, t0);
        // Later entries do not push the report back.
        tally.sent(PeerId([1; 32]), 10, t0 + REPORT_EVERY / 2);
        assert_eq!(tally.due(), Some(t0 + REPORT_EVERY));
        let early = t0 + REPORT_EVERY - Duration::from_millis(1);
        assert!(tally.take_if_due(early).is_none());
        let report = tally.take_if_due(t0 + REPORT_EVERY).expect("due");
        assert_eq!(report.drops, vec![(DropReason::OpenFailed, 1)]);
        assert_eq!(report.activity.len(), 1);
        assert!(tally.due().is_none());
    }
}
