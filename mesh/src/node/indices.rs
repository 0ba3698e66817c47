//! Local session indices: what each index we handed out is for.

use std::collections::HashMap;

use weft_crypto::Random;

use crate::id::{Endpoint, PeerId};

/// What a local index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexUse {
    /// Our initiation to a known peer.
    Initiating(PeerId),
    /// Our initiation to an endpoint whose key we do not know (a seed).
    Dialing(Endpoint),
    /// Our response, waiting for the finish.
    Responding,
    /// A session with this peer.
    Session(PeerId),
}

/// Every local index we handed out and what it is for: allocation, lookup and release in
/// one place, so an index is never freed by hand in one path and forgotten in another.
#[derive(Debug, Default)]
pub(super) struct Indices {
    uses: HashMap<u32, IndexUse>,
}

impl Indices {
    /// A fresh, unused, non-zero index for `usage`.
    pub(super) fn alloc(&mut self, rng: &mut dyn Random, usage: IndexUse) -> u32 {
        loop {
            let mut b = [0u8; 4];
            rng.fill(&mut b);
            let i = u32::from_le_bytes(b);
            if i != 0 && !self.uses.contains_key(&i) {
                self.uses.insert(i, usage);
                return i;
            }
        }
    }

    /// What `index` is for.
    pub(super) fn get(&self, index: u32) -> Option<IndexUse> {
        self.uses.get(&index).copied()
    }

    /// Whether `index` is ours.
    pub(super) fn contains(&self, index: u32) -> bool {
        self.uses.contains_key(&index)
    }

    /// `index` now names a session with `peer` (a completed handshake keeps its index).
    pub(super) fn set_session(&mut self, index: u32, peer: PeerId) {
        self.uses.insert(index, IndexUse::Session(peer));
    }

    /// Whether any index names a session with `peer`.
    pub(super) fn holds_session_with(&self, peer: &PeerId) -> bool {
        self.uses
            .values()
            .any(|u| matches!(u, IndexUse::Session(p) if p == peer))
    }

    /// Frees `index`.
    pub(super) fn release(&mut self, index: u32) {
        self.uses.remove(&index);
    }

    /// Frees every index in `indices`.
    pub(super) fn release_all(&mut self, indices: impl IntoIterator<Item = u32>) {
        for i in indices {
            self.uses.remove(&i);
        }
    }
}
