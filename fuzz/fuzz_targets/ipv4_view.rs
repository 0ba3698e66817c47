//! Arbitrary bytes as an IPv4 packet (from the TUN device, or opened from a peer): the checked
//! view never panics, accepts exactly what a reference reading of RFC 791's header accepts,
//! and a view it gives reads the addresses at their fixed offsets.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft_mesh::Ipv4View;

fuzz_target!(|data: &[u8]| {
    let got = Ipv4View::new_checked(data);
    let valid = data.len() >= 20 && {
        let ihl = usize::from(data[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([data[2], data[3]]));
        data[0] >> 4 == 4 && ihl >= 20 && ihl <= data.len() && total >= ihl && total <= data.len()
    };
    assert_eq!(got.is_ok(), valid, "{got:?}");
    if let Ok(v) = got {
        assert_eq!(v.src(), Ipv4Addr::new(data[12], data[13], data[14], data[15]));
        assert_eq!(v.dst(), Ipv4Addr::new(data[16], data[17], data[18], data[19]));
        assert!(v.header_len() >= 20 && v.header_len() <= v.total_len());
        assert!(v.total_len() <= data.len());
        assert_eq!(v.as_bytes(), data);
    }
});
