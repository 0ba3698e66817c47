//! Why a packet died: one vocabulary for every drop the mesh and the data plane count, and
//! the stable label each is exported under (metrics and logs), as smoltcp keeps its drop
//! accounting in one place.

use std::collections::BTreeMap;

/// Why a datagram or packet was dropped; each is counted ([`crate::Node::drops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not a weft datagram (bad type, length, reserved bytes; another handshake version is
    /// [`DropReason::HandshakeVersion`]).
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
    /// A packet whose session refused to seal it (past its message limit or expired): the
    /// Node rekeys; the packet is lost, not for want of a path.
    SealFailed,
    /// A data packet whose source address is not in the sender's block.
    SpoofedSource,
    /// A data packet from a peer whose record (and so block) we do not know yet.
    UnknownSender,
    /// A grant overlapping space we own, or outside the cluster range.
    BadGrant,
    /// A message from a peer that is not (or no longer) a member.
    NotMember,
    /// A handshake that authenticated a key other than the one pinned for the peer or
    /// endpoint (see [`crate::Command::Pin`]): someone posing as another node, or a stale pin.
    NotPinned,
    /// A TUN frame the data plane could not split into packets (an offload frame with more
    /// segments than a batch holds, or a malformed virtio header): dropped whole.
    TunFrame,
    /// A handshake initiation from an address that sent more than its share (a per-source
    /// token bucket, `mesh/src/node/ratelimit.rs`): refused before any Diffie-Hellman.
    InitiationRateLimited,
    /// A handshake initiation refused because as many handshakes as we keep are waiting for
    /// their finish already (bounded memory under a flood).
    PendingFull,
    /// A handshake initiation the data plane dropped because the queue of initiations waiting
    /// for the control task was full (a flood): established traffic has a queue of its own.
    HandshakeQueueFull,
    /// A datagram or packet the data plane dropped because the control task's queue for
    /// everything but initiations was full (the control task fell behind).
    NodeQueueFull,
    /// A handshake message of another protocol version than this build's: routers of two
    /// releases that cannot handshake (upgrade every router).
    HandshakeVersion,
    /// An initiation or response without a valid `mac1`: not sent with this cluster's join
    /// secret, or corrupted. Refused before any Noise processing.
    BadMac1,
    /// Under load, an initiation without a valid `mac2`: answered with a cookie reply instead
    /// of a handshake, no Diffie-Hellman (docs/design.md §3).
    CookieSent,
    /// A cookie reply that names no initiation of ours, or does not open (forged, stray).
    CookieRejected,
}

/// Drop counts by reason.
pub type DropCounters = BTreeMap<DropReason, u64>;

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 31] = [
        Self::Malformed,
        Self::UnknownIndex,
        Self::HandshakeRejected,
        Self::OpenFailed,
        Self::ControlMalformed,
        Self::ControlUnknown,
        Self::RelayMalformed,
        Self::RelayFromStranger,
        Self::RelayHops,
        Self::RelayNoRoute,
        Self::RelaySourceMismatch,
        Self::NotIpv4,
        Self::NoRoute,
        Self::Local,
        Self::QueueFull,
        Self::NoPath,
        Self::SealFailed,
        Self::SpoofedSource,
        Self::UnknownSender,
        Self::BadGrant,
        Self::NotMember,
        Self::NotPinned,
        Self::TunFrame,
        Self::InitiationRateLimited,
        Self::PendingFull,
        Self::HandshakeQueueFull,
        Self::NodeQueueFull,
        Self::HandshakeVersion,
        Self::BadMac1,
        Self::CookieSent,
        Self::CookieRejected,
    ];

    /// The stable snake_case label metrics and logs use (`reason="spoofed_source"`). Fixed
    /// here rather than derived from `Debug`, so renaming a variant cannot break a dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownIndex => "unknown_index",
            Self::HandshakeRejected => "handshake_rejected",
            Self::OpenFailed => "open_failed",
            Self::ControlMalformed => "control_malformed",
            Self::ControlUnknown => "control_unknown",
            Self::RelayMalformed => "relay_malformed",
            Self::RelayFromStranger => "relay_from_stranger",
            Self::RelayHops => "relay_hops",
            Self::RelayNoRoute => "relay_no_route",
            Self::RelaySourceMismatch => "relay_source_mismatch",
            Self::NotIpv4 => "not_ipv4",
            Self::NoRoute => "no_route",
            Self::Local => "local",
            Self::QueueFull => "queue_full",
            Self::NoPath => "no_path",
            Self::SealFailed => "seal_failed",
            Self::SpoofedSource => "spoofed_source",
            Self::UnknownSender => "unknown_sender",
            Self::BadGrant => "bad_grant",
            Self::NotMember => "not_member",
            Self::NotPinned => "not_pinned",
            Self::TunFrame => "tun_frame",
            Self::InitiationRateLimited => "initiation_rate_limited",
            Self::PendingFull => "pending_full",
            Self::HandshakeQueueFull => "handshake_queue_full",
            Self::NodeQueueFull => "node_queue_full",
            Self::HandshakeVersion => "handshake_version",
            Self::BadMac1 => "bad_mac1",
            Self::CookieSent => "cookie_sent",
            Self::CookieRejected => "cookie_rejected",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are the ones dashboards already use: the variant name in snake_case.
    #[test]
    fn labels_are_the_variant_names_in_snake_case() {
        for reason in DropReason::ALL {
            let mut expected = String::new();
            for (i, c) in format!("{reason:?}").chars().enumerate() {
                if c.is_ascii_uppercase() {
                    if i > 0 {
                        expected.push('_');
                    }
                    expected.push(c.to_ascii_lowercase());
                } else {
                    expected.push(c);
                }
            }
            assert_eq!(reason.as_str(), expected);
        }
        let labels: std::collections::BTreeSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
