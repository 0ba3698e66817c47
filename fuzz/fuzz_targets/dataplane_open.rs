//! Arbitrary bytes through a data-plane worker's receive decision (`DataPlane::open`), as
//! they come off the network, and as the payload of a real sealed datagram: random bytes
//! never authenticate, and an authentic packet is delivered exactly when it is IPv4 (checked
//! as `Ipv4View` checks it) from the sender's own block.
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_crypto::{DATA_HEADER_LEN, DATA_OVERHEAD, PayloadKind, Session};
use weft_fuzz::sessions;
use weft_mesh::{
    DataPlane, DropReason, Liveness, PeerId, PeerRecord, Received, Receiving, RouteTable,
};

struct Setup {
    now: Instant,
    sender: Session,
    dp: DataPlane,
    peer: PeerId,
    from: SocketAddr,
}

static SETUP: OnceLock<Setup> = OnceLock::new();

fn record(id: PeerId, block: &str) -> PeerRecord {
    PeerRecord {
        id,
        incarnation: 1,
        version: 1,
        name: String::new(),
        liveness: Liveness::Alive,
        announced: vec![],
        seen: vec![],
        pod_blocks: vec![block.parse().unwrap()],
        external: false,
        free_space: vec![],
        links_down: vec![],
    }
}

fn setup() -> Setup {
    let now = Instant::now();
    let (a, b) = sessions(now);
    let peer = PeerId::from(b.remote());
    let me = PeerId::from(a.remote());
    let other = PeerId([9; 32]);
    let records = [
        record(me, "10.32.0.0/24"),
        record(peer, "10.32.1.0/24"),
        record(other, "10.32.2.0/24"),
    ];
    let routes = RouteTable::compute(me, records.iter(), &BTreeSet::from([peer]));
    let from: SocketAddr = "198.18.0.2:6786".parse().unwrap();
    let mut receiving = HashMap::new();
    receiving.insert(
        b.local_index(),
        Receiving {
            peer,
            session: Arc::new(b),
            direct: Some(from),
        },
    );
    let dp = DataPlane {
        local: Some(me),
        routes,
        peers: Default::default(),
        receiving,
    };
    Setup {
        now,
        sender: a,
        dp,
        peer,
        from,
    }
}

fuzz_target!(|data: &[u8]| {
    let s = SETUP.get_or_init(setup);
    // Off the network: never authentic.
    let mut raw = data.to_vec();
    let got = s.dp.open(&mut raw, s.from, s.now);
    assert!(
        matches!(got, Received::ToNode | Received::Failed),
        "random bytes opened: {got:?}"
    );

    // The same bytes as a packet the peer sealed.
    let mut d = vec![0u8; DATA_OVERHEAD + data.len()];
    d[DATA_HEADER_LEN..DATA_HEADER_LEN + data.len()].copy_from_slice(data);
    s.sender.seal_in_place(PayloadKind::Data, &mut d, s.now).unwrap();
    // From another endpoint it is the Node's (roaming), untouched.
    let mut elsewhere = d.clone();
    let other: SocketAddr = "198.18.0.3:6786".parse().unwrap();
    assert_eq!(s.dp.open(&mut elsewhere, other, s.now), Received::ToNode);
    assert_eq!(elsewhere, d);
    // A flipped byte fails.
    if data.len() > 1 {
        let mut bad = d.clone();
        bad[DATA_HEADER_LEN] ^= 1;
        assert_eq!(s.dp.open(&mut bad, s.from, s.now), Received::Failed);
    }
    // IPv4 as the checked view defines it: version 4, a header of 5 words or more within
    // the packet, a total length between the header's and the buffer's.
    let ihl = data.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    let total = data.get(2..4).map_or(0, |t| usize::from(u16::from_be_bytes([t[0], t[1]])));
    let src = (data.len() >= 20
        && data[0] >> 4 == 4
        && ihl >= 20
        && ihl <= data.len()
        && total >= ihl
        && total <= data.len())
    .then(|| Ipv4Addr::new(data[12], data[13], data[14], data[15]));
    let want = match src {
        None => Received::Refused {
            peer: s.peer,
            reason: DropReason::NotIpv4,
        },
        Some(a) if a.octets()[..3] == [10, 32, 1] => Received::Deliver {
            peer: s.peer,
            range: DATA_HEADER_LEN..DATA_HEADER_LEN + data.len(),
        },
        Some(a) if a.octets()[..2] == [10, 32] && a.octets()[2] <= 2 => Received::Refused {
            peer: s.peer,
            reason: DropReason::SpoofedSource,
        },
        Some(_) => Received::Refused {
            peer: s.peer,
            reason: DropReason::UnknownSender,
        },
    };
    assert_eq!(s.dp.open(&mut d, s.from, s.now), want);
    if let Received::Deliver { range, .. } = want {
        assert_eq!(&d[range], data);
    }
});
