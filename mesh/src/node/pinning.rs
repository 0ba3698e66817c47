//! Pinning membership to a list of keys ([`Command::Pin`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tracing::info;

use crate::drop::DropReason;
use crate::id::{Endpoint, PeerId};
use crate::tunnel::Tunnel;

use super::{DownReason, Node};

impl Node {
    /// Applies [`Command::Pin`]. The handshaker enforces the allow-list on every completed
    /// handshake, both roles; here the tunnels of peers dropped from it close, dials of a
    /// pinned endpoint with an unknown key give way to a dial of its pinned key, and a key
    /// pinned anew is un-forgotten (a Node deleted and registered again with the same key).
    pub(super) fn pin(&mut self, pins: BTreeMap<PeerId, Endpoint>, now: Instant) {
        self.handshaker
            .set_allowed(Some(pins.keys().map(|id| id.key()).collect()));
        let unpinned: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| !pins.contains_key(id))
            .copied()
            .collect();
        for id in unpinned {
            info!(peer = %id, "key no longer pinned: closing its tunnel");
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
                self.indices.release(a.index);
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
    pub(super) fn pinned_key_at(&self, endpoint: Endpoint) -> Option<weft_crypto::PublicKey> {
        self.pinned
            .as_ref()?
            .iter()
            .find(|(_, ep)| **ep == endpoint)
            .map(|(id, _)| id.key())
    }

    /// How a refused handshake is counted: a key other than the pinned one apart from the
    /// rest, so an impersonation attempt shows in the counters under its own name. (Unpinned,
    /// an unexpected key is a stale endpoint, not an impostor.)
    pub(super) fn handshake_drop(&self, error: &weft_crypto::HandshakeError) -> DropReason {
        match error {
            weft_crypto::HandshakeError::PeerNotAllowed(_) => DropReason::NotPinned,
            weft_crypto::HandshakeError::BadMac1 => DropReason::BadMac1,
            weft_crypto::HandshakeError::Malformed(
                weft_crypto::wire::WireError::UnsupportedVersion(_),
            ) => DropReason::HandshakeVersion,
            weft_crypto::HandshakeError::UnexpectedPeer { .. } if self.pinned.is_some() => {
                DropReason::NotPinned
            }
            _ => DropReason::HandshakeRejected,
        }
    }

    /// Whether a key may hold a tunnel with us: every key while unpinned.
    pub(super) fn may_connect(&self, id: &PeerId) -> bool {
        self.pinned.as_ref().is_none_or(|p| p.contains_key(id))
    }
}
