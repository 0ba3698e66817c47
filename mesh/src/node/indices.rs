//! Local session indices: what each index we handed out is for. This table is the only
//! record of them: a peer's indices are the ones whose use names it.

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

    /// Frees every index held for `peer`: its sessions and our initiation to it (its
    /// tunnel closed).
    pub(super) fn release_peer(&mut self, peer: PeerId) {
        self.uses.retain(|_, u| !Self::is_for(u, peer));
    }

    fn is_for(usage: &IndexUse, peer: PeerId) -> bool {
        matches!(usage, IndexUse::Session(p) | IndexUse::Initiating(p) if *p == peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts up: every index is fresh.
    struct Counter(u32);

    impl Random for Counter {
        fn fill(&mut self, dest: &mut [u8]) {
            self.0 += 1;
            dest.copy_from_slice(&self.0.to_le_bytes());
        }
    }

    fn peer(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    #[test]
    fn release_peer_frees_its_sessions_and_initiation_only() {
        let mut rng = Counter(0);
        let mut t = Indices::default();
        let a = peer(1);
        let b = peer(2);
        let a_session = t.alloc(&mut rng, IndexUse::Session(a));
        let a_init = t.alloc(&mut rng, IndexUse::Initiating(a));
        let b_session = t.alloc(&mut rng, IndexUse::Session(b));
        let dial = t.alloc(
            &mut rng,
            IndexUse::Dialing("198.18.0.1:6786".parse().unwrap()),
        );
        let responding = t.alloc(&mut rng, IndexUse::Responding);

        t.release_peer(a);
        assert!(!t.holds_session_with(&a));
        assert!(!t.contains(a_session) && !t.contains(a_init));
        assert!(t.contains(b_session) && t.contains(dial) && t.contains(responding));
        assert!(t.holds_session_with(&b));
    }

    #[test]
    fn a_completed_handshake_keeps_its_index_as_a_session() {
        let mut rng = Counter(0);
        let mut t = Indices::default();
        let a = peer(1);
        let i = t.alloc(&mut rng, IndexUse::Initiating(a));
        t.set_session(i, a);
        assert_eq!(t.get(i), Some(IndexUse::Session(a)));
        assert!(t.holds_session_with(&a));
        t.release_peer(a);
        assert!(!t.contains(i));
    }

    #[test]
    fn alloc_skips_zero_and_indices_in_use() {
        // The generator yields 0, then 1 twice, then 2.
        struct Seq(Vec<u32>);
        impl Random for Seq {
            fn fill(&mut self, dest: &mut [u8]) {
                dest.copy_from_slice(&self.0.remove(0).to_le_bytes());
            }
        }
        let mut rng = Seq(vec![0, 1, 1, 2]);
        let mut t = Indices::default();
        assert_eq!(t.alloc(&mut rng, IndexUse::Responding), 1);
        assert_eq!(t.alloc(&mut rng, IndexUse::Responding), 2);
    }
}
