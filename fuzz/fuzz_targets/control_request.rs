//! Fuzzes the control socket's request parser (router/src/control/request.rs, compiled on its
//! own: it needs only serde): any bytes either become a `Request` that is exactly what was
//! sent (it serialises back to the same JSON value and parses again to itself), or an error
//! whose message tells the client what to send. The second pass splices the input into a
//! request object, where the command and field checks behind the JSON decoder are.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../router/src/control/request.rs"]
mod request;
use request::{Request, parse_request};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut spliced = br#"{"command":"#.to_vec();
    spliced.extend_from_slice(data);
    spliced.push(b'}');
    check(&spliced);
});

fn check(data: &[u8]) {
    match parse_request(data) {
        Ok(request) => {
            let sent: serde_json::Value =
                serde_json::from_slice(data.trim_ascii()).expect("a parsed request is JSON");
            let back = serde_json::to_value(&request).expect("a request serialises");
            assert_eq!(back, sent, "a request is exactly what was sent");
            let again: Request =
                parse_request(&serde_json::to_vec(&request).unwrap()).expect("our own output");
            assert_eq!(again, request);
        }
        Err(e) => {
            assert!(e.to_string().contains("cannot parse the request"), "{e}");
        }
    }
}
