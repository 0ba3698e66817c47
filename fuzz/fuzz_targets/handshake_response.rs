//! Arbitrary bytes as the response to a real initiation: parser, then the initiator.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use weft_crypto::wire::Response;
use weft_fuzz::pair;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Response::parse(data) {
        assert_eq!(view.receiver_index().to_le_bytes(), data[4..8]);
    }
    let p = pair();
    match p.a.handle_response(p.initiator, data, Instant::now()) {
        // Only the real response completes the handshake.
        Ok(_) => assert_eq!(data, &p.response[..]),
        // A refusal before the state changed hands it back, still able to finish.
        Err(rejected) => {
            if let Some(initiator) = rejected.state {
                assert!(
                    p.a.handle_response(initiator, &p.response, Instant::now())
                        .is_ok()
                );
            }
        }
    }
});
