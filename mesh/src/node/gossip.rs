//! Gossip: our own record, rumours pushed to a few peers each interval, and anti-entropy
//! digests that heal what rumours missed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::id::{PeerId, ShortId};
use crate::record::{Liveness, MAX_ENDPOINTS, MAX_LINKS_DOWN, PeerRecord};
use crate::wire::{ControlMessage, MAX_CONTROL_PAYLOAD, MAX_DIGEST_ENTRIES};

use super::{Node, Timer, rand_u64};

/// Changed records are batched and pushed to a few peers this often.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(1);

/// Every this often, a digest of all records goes to one random peer, which answers with what
/// we lack and its own digest (anti-entropy: heals what rumours missed, and partitions).
pub const DIGEST_INTERVAL: Duration = Duration::from_secs(5);

/// Tombstones are kept this long, so a departed peer is not revived by a stale record that
/// is still travelling.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

impl Node {
    pub(super) fn publish_own(&mut self, now: Instant) {
        self.own_dirty = false;
        self.version += 1;
        let links_down: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| p.unreachable)
            .map(|(id, _)| id.short())
            .take(MAX_LINKS_DOWN)
            .collect();
        let record = PeerRecord {
            id: self.id,
            incarnation: self.incarnation,
            version: self.version,
            name: self.config.name.clone(),
            liveness: Liveness::Alive,
            announced: self
                .config
                .announce
                .iter()
                .take(MAX_ENDPOINTS)
                .copied()
                .collect(),
            seen: self.seen.iter().copied().collect(),
            pod_blocks: self.space.block().into_iter().collect(),
            external: self.space.external.is_some(),
            free_space: self
                .space
                .free
                .iter()
                .take(crate::record::MAX_SPACE_ENTRIES)
                .copied()
                .collect(),
            links_down,
        };
        let old_blocks = self.table.get(&self.id).map(|r| r.pod_blocks.clone());
        self.table.merge(record.clone(), now);
        if old_blocks.as_ref() != Some(&record.pod_blocks) {
            self.routes_dirty = true;
            self.owners_dirty = true;
        }
        self.rumors.insert(self.id);
    }

    /// Sends records in as many control datagrams as they need.
    pub(super) fn send_records(
        &mut self,
        id: PeerId,
        records: Vec<PeerRecord>,
        full: bool,
        now: Instant,
    ) {
        // Envelope (2) + `full` (1) + a count of up to 3 varint bytes.
        const FIXED: usize = 6;
        let mut chunk = Vec::new();
        let mut size = FIXED;
        for r in records {
            let len = postcard::to_stdvec(&r).map(|v| v.len()).unwrap_or(0);
            if size + len > MAX_CONTROL_PAYLOAD && !chunk.is_empty() {
                let records = std::mem::take(&mut chunk);
                self.send_control(id, &ControlMessage::Gossip { full, records }, now);
                size = FIXED;
            }
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() || full {
            self.send_control(
                id,
                &ControlMessage::Gossip {
                    full,
                    records: chunk,
                },
                now,
            );
        }
    }

    pub(super) fn send_full(&mut self, id: PeerId, now: Instant) {
        let records: Vec<PeerRecord> = self.table.records().cloned().collect();
        self.send_records(id, records, true, now);
    }

    pub(super) fn established_peers(&self) -> Vec<PeerId> {
        self.up_peers().collect()
    }

    pub(super) fn pick(&mut self, from: &mut [PeerId], n: usize) -> Vec<PeerId> {
        // Partial Fisher-Yates with our (seeded, in tests) generator.
        let n = n.min(from.len());
        for i in 0..n {
            let j = i + (rand_u64(&mut &mut *self.rng) as usize) % (from.len() - i);
            from.swap(i, j);
        }
        from[..n].to_vec()
    }

    pub(super) fn on_gossip_timer(&mut self, now: Instant) {
        self.timers.set(Timer::Gossip, now + GOSSIP_INTERVAL);
        if self.own_dirty {
            self.publish_own(now);
        }
        for gone in self.table.expire_tombstones(now, TOMBSTONE_TTL) {
            self.rumors.remove(&gone);
        }
        if self.rumors.is_empty() {
            return;
        }
        let rumors = std::mem::take(&mut self.rumors);
        let records: Vec<PeerRecord> = rumors
            .iter()
            .filter_map(|id| self.table.get(id).cloned())
            .collect();
        let mut up = self.established_peers();
        // Fan-out about log2 N (+1), so a rumour reaches everyone with high probability in
        // O(log N) rounds; the periodic full exchange repairs the rest.
        let fanout = (usize::BITS - up.len().leading_zeros()) as usize + 1;
        for target in self.pick(&mut up, fanout) {
            self.send_records(target, records.clone(), false, now);
        }
    }

    pub(super) fn on_digest_timer(&mut self, now: Instant) {
        let jitter = self.jitter(DIGEST_INTERVAL / 4);
        self.timers
            .set(Timer::Digest, now + DIGEST_INTERVAL + jitter);
        let mut up = self.established_peers();
        if let Some(target) = self.pick(&mut up, 1).first().copied() {
            let (hash, count) = self.table_summary();
            self.send_control(target, &ControlMessage::DigestSummary { hash, count }, now);
        }
    }

    /// FNV-1a (64-bit) over the stamps of every record, in id order.
    pub(super) fn table_summary(&self) -> (u64, u32) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut count = 0u32;
        for r in self.table.records() {
            count += 1;
            for word in [r.id.short().0, r.incarnation, r.version] {
                for b in word.to_le_bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
        (h, count)
    }

    /// Sends the stamps of our records with short ids in `[low, high]`, in chunks that each
    /// cover a sub-range, so the receiver can tell "absent" from "in another chunk".
    pub(super) fn send_digest(
        &mut self,
        to: PeerId,
        low: ShortId,
        high: ShortId,
        reply: bool,
        now: Instant,
    ) {
        let entries: Vec<(ShortId, u64, u64)> = self
            .table
            .records()
            .map(|r| (r.id.short(), r.incarnation, r.version))
            .filter(|(s, _, _)| *s >= low && *s <= high)
            .collect();
        let chunks: Vec<&[(ShortId, u64, u64)]> = entries.chunks(MAX_DIGEST_ENTRIES).collect();
        let n = chunks.len().max(1);
        for i in 0..n {
            let chunk = chunks.get(i).copied().unwrap_or(&[]);
            let lo = if i == 0 { low } else { chunk[0].0 };
            let hi = match chunks.get(i + 1) {
                Some(next) => ShortId(next[0].0.0.saturating_sub(1)),
                None => high,
            };
            self.send_control(
                to,
                &ControlMessage::Digest {
                    reply,
                    low: lo,
                    high: hi,
                    entries: chunk.to_vec(),
                },
                now,
            );
        }
    }

    pub(super) fn on_digest(
        &mut self,
        now: Instant,
        from: PeerId,
        reply: bool,
        low: ShortId,
        high: ShortId,
        entries: Vec<(ShortId, u64, u64)>,
    ) {
        let theirs: BTreeMap<ShortId, (u64, u64)> =
            entries.into_iter().map(|(s, i, v)| (s, (i, v))).collect();
        let newer: Vec<PeerRecord> = self
            .table
            .records()
            .filter(|r| {
                let s = r.id.short();
                s >= low && s <= high && theirs.get(&s).is_none_or(|st| *st < r.stamp())
            })
            .cloned()
            .collect();
        if !newer.is_empty() {
            self.send_records(from, newer, false, now);
        }
        if !reply {
            self.send_digest(from, low, high, true, now);
        }
    }
}
