//! `InitiationLimiter`: how many handshake initiations one source address may have answered
//! (docs/design.md §3, "Handshakes under load"). A token bucket per source IP, as WireGuard's
//! ratelimiter keeps one: a member initiates to us once per rekey (two minutes) and resends
//! every five seconds, so a few per second per address is generous, while a flood from one
//! address costs us a handful of Diffie-Hellman operations a second instead of thousands.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Initiations one address may send at once.
pub const INITIATION_BURST: u32 = 10;
/// Initiations one address may send per second, sustained.
pub const INITIATIONS_PER_SECOND: u32 = 5;
/// Addresses tracked at once. Past this, addresses whose bucket is full again are forgotten;
/// if all are still busy, new addresses are refused until some are (bounded memory under a
/// flood from forged sources).
pub const LIMITER_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in units of 1/INITIATIONS_PER_SECOND s, so refill is integer arithmetic.
    tokens: u64,
    last: Instant,
}

/// One unit of time per token.
const TOKEN: Duration = Duration::from_nanos(1_000_000_000 / INITIATIONS_PER_SECOND as u64);

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let gained = (elapsed.as_nanos() / TOKEN.as_nanos()) as u64;
        if gained > 0 {
            self.tokens = (self.tokens + gained).min(u64::from(INITIATION_BURST));
            // Keep the remainder, so a steady sender is not rounded down.
            self.last += TOKEN * gained.min(u64::from(u32::MAX)) as u32;
            if self.tokens == u64::from(INITIATION_BURST) {
                self.last = now;
            }
        }
    }

    fn is_full(&self) -> bool {
        self.tokens >= u64::from(INITIATION_BURST)
    }
}

/// Per-source token buckets for initiations.
#[derive(Debug, Default)]
pub struct InitiationLimiter {
    buckets: HashMap<IpAddr, Bucket>,
}

impl InitiationLimiter {
    /// Whether an initiation from `source` may be answered now (and takes its token).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= LIMITER_ADDRESSES {
            self.buckets.retain(|_, b| {
                b.refill(now);
                !b.is_full()
            });
            if self.buckets.len() >= LIMITER_ADDRESSES {
                return false;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: u64::from(INITIATION_BURST),
            last: now,
        });
        bucket.refill(now);
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i))
    }

    #[test]
    fn a_burst_then_the_sustained_rate_per_address() {
        let mut l = InitiationLimiter::default();
        let t = Instant::now();
        let admitted = (0..100).filter(|_| l.admit(ip(1), t)).count();
        assert_eq!(admitted, INITIATION_BURST as usize);
        // Another address is not held back by the first.
        assert!(l.admit(ip(2), t));
        // Over ten seconds of a flood, the burst plus the rate.
        let mut admitted = 0;
        for ms in 0..10_000u64 {
            if l.admit(ip(1), t + Duration::from_millis(ms + 1)) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10 * INITIATIONS_PER_SECOND as usize);
        // Quiet for long enough, the whole burst again.
        let later = t + Duration::from_secs(60);
        assert_eq!(
            (0..100).filter(|_| l.admit(ip(1), later)).count(),
            INITIATION_BURST as usize
        );
    }

    #[test]
    fn addresses_are_bounded_and_idle_ones_forgotten() {
        let mut l = InitiationLimiter::default();
        let t = Instant::now();
        // Each address spends its whole burst: all busy.
        for i in 0..LIMITER_ADDRESSES as u32 {
            for _ in 0..INITIATION_BURST {
                assert!(l.admit(ip(i), t));
            }
        }
        assert!(!l.admit(ip(1 << 20), t), "a new address while all are busy");
        assert_eq!(l.len(), LIMITER_ADDRESSES);
        // Once their buckets are full again, they make room.
        let later = t + TOKEN * INITIATION_BURST;
        assert!(l.admit(ip(1 << 20), later));
        assert_eq!(l.len(), 1);
    }
}
