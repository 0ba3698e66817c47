//! Control messages (gossip, digests, IPAM, NAT) and relay envelopes from arbitrary bytes:
//! decoding never panics, and whatever decodes re-encodes to something that decodes to the
//! same message (rustls' decode → encode → compare habit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::wire::{ControlMessage, RelayPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ControlMessage::decode(data) {
        let bytes = msg.encode();
        let again = ControlMessage::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again, msg);
    }
    if let Ok(p) = RelayPacket::parse(data) {
        let bytes = RelayPacket::encode(p.kind, p.hops_left, p.destination, p.source, p.inner);
        assert_eq!(bytes, data, "a relay envelope re-encodes byte for byte");
    }
});
