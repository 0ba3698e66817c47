//! The sliding replay window of RFC 6479 ("IPsec Anti-Replay Algorithm without Bit
//! Shifting"): a ring of 64-bit blocks, advanced by clearing whole blocks instead of shifting.

/// Bits per block of the ring.
const BLOCK_BITS: u64 = 64;
/// Blocks in the ring: a power of two so the block index is a mask.
const BLOCKS: usize = 64;
/// Counters behind the highest one that can still be accepted: (BLOCKS - 1) × 64 = 4032, more
/// than the 2048 WireGuard keeps, so heavy reordering across GRO batches and several receive
/// workers does not look like replay. One block is kept as slack, as RFC 6479 §2 describes.
pub const WINDOW_SIZE: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Which counters have been seen. Only counters of packets that authenticated may be marked
/// ([`ReplayWindow::check`] before opening, [`ReplayWindow::mark`] after).
#[derive(Clone)]
pub struct ReplayWindow {
    ring: [u64; BLOCKS],
    /// One more than the highest counter marked; 0 when none was.
    next: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub const fn new() -> Self {
        Self {
            ring: [0; BLOCKS],
            next: 0,
        }
    }

    /// Whether `counter` could be accepted: newer than everything seen, or inside the window
    /// and not seen. Changes nothing. `u64::MAX` is never accepted (sessions stop long before
    /// it, and "one more than the highest" must fit).
    pub fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & (1 << bit) == 0
    }

    /// Marks `counter` as seen. Returns false (and changes nothing) if [`check`] would refuse
    /// it: between a check and a mark, another packet with the same counter may have won.
    ///
    /// [`check`]: ReplayWindow::check
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear every block between the old highest and the new one (at most the ring).
            let old_top = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / BLOCK_BITS)
            };
            let new_top = counter / BLOCK_BITS;
            match old_top {
                Some(old) if old == new_top => {}
                Some(old) => {
                    let steps = (new_top - old).min(BLOCKS as u64);
                    for i in 1..=steps {
                        self.ring[((old + i) % BLOCKS as u64) as usize] = 0;
                    }
                }
                None => self.ring = [0; BLOCKS],
            }
            self.next = counter + 1;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] |= 1 << bit;
        true
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BLOCK_BITS) % BLOCKS as u64) as usize,
            counter % BLOCK_BITS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The obvious model: a set of everything seen and the highest counter.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        next: u64,
    }

    impl Model {
        fn accept(&mut self, c: u64) -> bool {
            let fresh = c != u64::MAX
                && (c >= self.next || (self.next - c <= WINDOW_SIZE && !self.seen.contains(&c)));
            if fresh {
                self.seen.insert(c);
                self.next = self.next.max(c + 1);
            }
            fresh
        }
    }

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW_SIZE >= 2048) };
    }

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(0));
        assert!(!w.mark(0));
        assert!(w.mark(5));
        assert!(w.mark(3));
        assert!(!w.mark(3));
        assert!(w.mark(WINDOW_SIZE + 5));
        assert!(w.mark(6), "exactly WINDOW_SIZE behind is still inside");
        assert!(!w.mark(4), "one further is outside");
        assert!(w.check(u64::MAX - 1));
        assert!(w.mark(u64::MAX - 1));
        assert!(!w.check(u64::MAX - 1));
        assert!(!w.check(0));
        assert!(!w.mark(u64::MAX));
    }

    /// A counter sequence with duplicates, small reordering and far jumps.
    fn sequences() -> impl Strategy<Value = Vec<u64>> {
        let step = prop_oneof![
            6 => 0u64..4,                // in order, or nearly
            3 => Just(u64::MAX),         // marker: repeat an earlier counter
            2 => 0u64..200,              // reorder within a few blocks
            1 => 0u64..(3 * WINDOW_SIZE) // far jump
        ];
        prop::collection::vec((step, any::<bool>(), any::<prop::sample::Index>()), 1..600).prop_map(
            |steps| {
                let mut out: Vec<u64> = Vec::new();
                let mut top = 0u64;
                for (s, back, idx) in steps {
                    let c = if s == u64::MAX && !out.is_empty() {
                        out[idx.index(out.len())]
                    } else if back {
                        top.saturating_sub(s % (WINDOW_SIZE + 70))
                    } else {
                        top += s % (3 * WINDOW_SIZE);
                        top
                    };
                    out.push(c);
                }
                out
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_the_reference_model(seq in sequences(), base in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from), Just(u64::MAX - 20_000)]) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for c in seq {
                let c = base.saturating_add(c);
                let expect = c != u64::MAX
                    && (c >= m.next || (m.next - c <= WINDOW_SIZE && !m.seen.contains(&c)));
                prop_assert_eq!(w.check(c), expect, "check({})", c);
                prop_assert_eq!(w.mark(c), m.accept(c), "mark({})", c);
            }
        }
    }
}
