//! What a [`Node`](super::Node) shows a status API and metrics: counters, and snapshots of
//! itself and its peers.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::id::PeerId;
use crate::ipam::WaitReason;
use crate::routes::NextHop;
use crate::tunnel::TunnelState;

pub use super::path_state::DirectAttempt;

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
    /// Data-plane snapshots built ([`super::Node::data_plane`]): one per change to a
    /// session, path or route that a worker asked about, not one per activity report.
    pub data_plane_builds: u64,
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
    /// Datagrams sent to it (data and control, sealed; handshakes excluded).
    pub tx_packets: u64,
    /// Datagrams from it that opened.
    pub rx_packets: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// Whether we list it as not directly reachable.
    pub unreachable: bool,
    /// Whether it and we are both behind NAT (a direct path needs punching).
    pub nat_pair: bool,
    /// Where the direct attempt of a NATed pair stands, and since when it runs (None once
    /// direct, or for a pair that needs no punching).
    pub direct_attempt: Option<(DirectAttempt, Instant)>,
    /// Which of our accepted join secrets made the current session (None while no session).
    pub join_secret: Option<JoinSecretUse>,
}

/// Which join secret made a peer's current session, judged against the ones accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinSecretUse {
    /// Our primary: nothing to do.
    Primary,
    /// Another accepted one (an older secret during a rotation): the peer still initiates
    /// with it, or the session predates the last change. While any peer shows this, the
    /// secret cannot be removed without cutting that peer off.
    Other,
    /// One no longer accepted: the session is being re-made with the primary.
    Removed,
}

impl JoinSecretUse {
    /// As shown in `weft peers` and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Other => "other",
            Self::Removed => "removed",
        }
    }
}

impl PeerStatus {
    /// Why the peer is not reached directly, for people (None when it is, or not up).
    pub fn why_relayed(&self, now: Instant) -> Option<String> {
        if !matches!(self.path, Some(NextHop::Relay { .. })) {
            return None;
        }
        let secs = |since: Instant| now.saturating_duration_since(since).as_secs();
        Some(match self.direct_attempt {
            Some((DirectAttempt::Punching { rounds }, since)) => format!(
                "both behind NAT: punching for {}s, round {rounds} of {}",
                secs(since),
                super::PUNCH_ROUNDS
            ),
            Some((DirectAttempt::GaveUp { rounds }, since)) => format!(
                "both behind NAT: no punch got through in {rounds} rounds ({}s); a NAT that \
                 maps per destination (symmetric), most likely",
                secs(since)
            ),
            None if self.nat_pair => "both behind NAT: waiting for the first punch round".into(),
            None if self.unreachable => "the direct path does not answer".into(),
            None => "the direct path is not known yet".into(),
        })
    }
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
