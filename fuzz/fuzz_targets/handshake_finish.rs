//! Arbitrary bytes as the finish of a real handshake: parser, then the responder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use weft_crypto::wire::Finish;
use weft_fuzz::pair;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Finish::parse(data) {
        assert_eq!(view.receiver_index().to_le_bytes(), data[4..8]);
    }
    let mut p = pair();
    let now = Instant::now();
    match p.b.handle_finish(p.responding, data, now) {
        Ok(_) => panic!("forged finish accepted"),
        Err(rejected) => {
            if let Some(responding) = rejected.state {
                // The real finish still completes the handshake.
                let (_s, fin) =
                    p.a.handle_response(p.initiator, &p.response, now)
                        .map_err(|r| r.error)
                        .unwrap();
                assert!(p.b.handle_finish(responding, &fin, now).is_ok());
            }
        }
    }
});
