//! The one checked view of an IPv4 packet, and the one anti-spoofing rule.
//!
//! Pod packets reach the mesh from the TUN device (to seal) and out of opened datagrams (to
//! deliver). Both the Node and the data-plane workers read them through [`Ipv4View`], checked
//! once (smoltcp's `new_checked` habit), and both decide whether a peer may send a packet with
//! [`admit`], so the slow path and the fast path cannot disagree.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::id::PeerId;
use crate::routes::RouteTable;

/// The length of an IPv4 header without options.
pub const IPV4_MIN_HEADER: usize = 20;

/// Why bytes are not an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    /// Shorter than the minimal header.
    #[error("{0} bytes: shorter than an IPv4 header")]
    Truncated(usize),
    /// The version nibble is not 4.
    #[error("IP version {0}, not 4")]
    Version(u8),
    /// The header length field is below 5 words or runs past the packet.
    #[error("IPv4 header length {0} bytes is invalid")]
    HeaderLength(usize),
    /// The total length field is shorter than the header or longer than the buffer.
    #[error("IPv4 total length {total} does not fit a {len}-byte buffer")]
    TotalLength {
        /// The field's value.
        total: usize,
        /// The buffer's length.
        len: usize,
    },
}

/// A checked view of an IPv4 packet: version 4, a header length of at least 20 bytes, and a
/// total length that covers the header and lies within the buffer (trailing bytes past it
/// are allowed, as a link may pad).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4View<'a> {
    bytes: &'a [u8],
}

impl<'a> Ipv4View<'a> {
    /// Checks `bytes` and returns a view of them.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Ipv4Error> {
        if bytes.len() < IPV4_MIN_HEADER {
            return Err(Ipv4Error::Truncated(bytes.len()));
        }
        let version = bytes[0] >> 4;
        if version != 4 {
            return Err(Ipv4Error::Version(version));
        }
        let header = usize::from(bytes[0] & 0x0f) * 4;
        if header < IPV4_MIN_HEADER || header > bytes.len() {
            return Err(Ipv4Error::HeaderLength(header));
        }
        let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if total < header || total > bytes.len() {
            return Err(Ipv4Error::TotalLength {
                total,
                len: bytes.len(),
            });
        }
        Ok(Self { bytes })
    }

    /// The source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = self.bytes;
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.bytes;
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }

    /// The header length in bytes (options included).
    pub fn header_len(&self) -> usize {
        usize::from(self.bytes[0] & 0x0f) * 4
    }

    /// The total length field: header and payload.
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.bytes[2], self.bytes[3]]))
    }

    /// The bytes the view was made from.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The anti-spoofing rule (WireGuard's allowed IPs, one table for both directions): a packet
/// opened under `peer`'s session is accepted only if it is IPv4 and its source lies in a block
/// that `routes` gives to `peer`: the same table that sends replies to that address sends
/// them to `peer`, so a peer can answer only for addresses it owns. `UnknownSender`: no
/// block holds the source (yet); `SpoofedSource`: another peer's block (or ours) does.
pub fn admit<'a>(
    routes: &RouteTable,
    peer: PeerId,
    packet: &'a [u8],
) -> Result<Ipv4View<'a>, DropReason> {
    let view = Ipv4View::new_checked(packet).map_err(|_| DropReason::NotIpv4)?;
    match routes.owner(view.src()) {
        None => Err(DropReason::UnknownSender),
        Some(owner) if owner != peer => Err(DropReason::SpoofedSource),
        Some(_) => Ok(view),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4], total: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn a_valid_packet_gives_its_addresses() {
        let p = packet([10, 32, 1, 2], [10, 32, 2, 3], 20, 20);
        let v = Ipv4View::new_checked(&p).unwrap();
        assert_eq!(v.src(), Ipv4Addr::new(10, 32, 1, 2));
        assert_eq!(v.dst(), Ipv4Addr::new(10, 32, 2, 3));
        assert_eq!((v.header_len(), v.total_len()), (20, 20));
        // Padding past the total length is allowed.
        assert!(Ipv4View::new_checked(&packet([1; 4], [2; 4], 20, 28)).is_ok());
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(
            Ipv4View::new_checked(&[0x45; 19]),
            Err(Ipv4Error::Truncated(19))
        );
        let mut p = packet([1; 4], [2; 4], 20, 20);
        p[0] = 0x60;
        assert_eq!(Ipv4View::new_checked(&p), Err(Ipv4Error::Version(6)));
        p[0] = 0x44;
        assert_eq!(Ipv4View::new_checked(&p), Err(Ipv4Error::HeaderLength(16)));
        p[0] = 0x46;
        assert_eq!(Ipv4View::new_checked(&p), Err(Ipv4Error::HeaderLength(24)));
        let p = packet([1; 4], [2; 4], 21, 20);
        assert_eq!(
            Ipv4View::new_checked(&p),
            Err(Ipv4Error::TotalLength { total: 21, len: 20 })
        );
        let p = packet([1; 4], [2; 4], 19, 20);
        assert!(Ipv4View::new_checked(&p).is_err());
    }

    fn record(id: PeerId, blocks: Vec<ipnet::Ipv4Net>) -> crate::record::PeerRecord {
        crate::record::PeerRecord {
            id,
            incarnation: 1,
            version: 1,
            name: String::new(),
            liveness: crate::record::Liveness::Alive,
            announced: vec![],
            seen: vec![],
            pod_blocks: blocks,
            external: false,
            free_space: vec![],
            links_down: vec![],
        }
    }

    proptest::proptest! {
        /// Whatever the blocks (overlapping ones included), a packet from a peer is admitted
        /// exactly when the peer owns the longest block holding its source, and refused with
        /// `UnknownSender` when no block holds it and `SpoofedSource` when another's does.
        #[test]
        fn admit_follows_the_route_table(
            blocks in proptest::collection::vec((0u8..4, 0u8..4, 22u8..27), 0..6),
            sender in 0u8..4,
            src in proptest::array::uniform4(0u8..4),
        ) {
            let ids: Vec<PeerId> = (0..4u8).map(|i| PeerId([i + 1; 32])).collect();
            let records: Vec<_> = blocks
                .iter()
                .map(|(owner, third, prefix)| {
                    let net = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 32, *third, 0), *prefix)
                        .unwrap()
                        .trunc();
                    record(ids[*owner as usize], vec![net])
                })
                .collect();
            let routes = RouteTable::compute(ids[0], records.iter(), &Default::default());
            let src = Ipv4Addr::new(10, 32, src[2], src[3]);
            let p = packet(src.octets(), [10, 32, 9, 9], 20, 20);
            let peer = ids[sender as usize];
            let got = admit(&routes, peer, &p).map(|v| v.src());
            // The owner, read off the records: the longest block holding the source, the
            // lowest key among equals.
            let owner = records
                .iter()
                .flat_map(|r| r.pod_blocks.iter().map(move |b| (b, r.id)))
                .filter(|(b, _)| b.contains(&src))
                .min_by_key(|(b, id)| (std::cmp::Reverse(b.prefix_len()), **b, *id))
                .map(|(_, id)| id);
            let want = match owner {
                None => Err(DropReason::UnknownSender),
                Some(o) if o != peer => Err(DropReason::SpoofedSource),
                Some(_) => Ok(src),
            };
            proptest::prop_assert_eq!(got, want);
            let mut bad = p.clone();
            bad[0] = 0x65;
            proptest::prop_assert_eq!(admit(&routes, peer, &bad), Err(DropReason::NotIpv4));
        }
    }
}
