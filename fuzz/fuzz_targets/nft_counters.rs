//! Fuzzes the parser of `nft -j list counters` (router/src/nftables/counters.rs, compiled on
//! its own: it needs only serde): any bytes either give packets per counter name, the same
//! on a second parse, or an error that names the command; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../router/src/nftables/counters.rs"]
mod counters;

fuzz_target!(|data: &[u8]| {
    match counters::parse_counters(data, "weft") {
        Ok(c) => assert_eq!(counters::parse_counters(data, "weft"), Ok(c)),
        Err(e) => assert!(e.to_string().starts_with("nft -j list counters"), "{e}"),
    }
});
