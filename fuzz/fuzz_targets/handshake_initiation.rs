//! Arbitrary bytes as a handshake initiation: the parser, then the responder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_crypto::wire::Initiation;
use weft_fuzz::{FuzzRng, node, wall};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Initiation::parse(data) {
        // A parsed view's fields are in bounds and re-read the same bytes.
        assert_eq!(view.sender_index().to_le_bytes(), data[4..8]);
        assert_eq!(&view.ephemeral()[..], &data[8..40]);
    }
    let mut b = node(2);
    // Random bytes never know the join secret: nothing may pass, and no DH may happen.
    assert!(
        b.handle_initiation(data, 2, wall(), &mut FuzzRng(3))
            .is_err()
    );
    assert_eq!(b.dh_operations(), 0);
});
