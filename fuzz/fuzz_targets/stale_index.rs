//! Arbitrary bytes as a stale-index notice: the parser accepts exactly the 13-byte echo of a
//! sealed datagram's header under type 7, and what it reads encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_crypto::wire::{STALE_INDEX_LEN, StaleIndex};
use weft_crypto::{DATA_OVERHEAD, MessageType};

fuzz_target!(|data: &[u8]| {
    match StaleIndex::parse(data) {
        Ok(notice) => {
            assert_eq!(data.len(), STALE_INDEX_LEN);
            assert_eq!(MessageType::of(data), Ok(MessageType::StaleIndex));
            assert_eq!(&notice.encode()[..], data);
            // Smaller than the smallest datagram it can answer: no amplification.
            assert!(data.len() < DATA_OVERHEAD);
        }
        Err(_) => assert!(data.len() != STALE_INDEX_LEN || data[0] != 7),
    }
});
