//! Fuzzes the one parser of the CNI caller's stdin: any bytes either become a `NetConf`
//! whose fields are all valid, or an error with a CNI code. When a prevResult parses, it must
//! survive a write/read round trip in the config's version unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::config::{MTU_RANGE, NetConf, POLICY_TIMEOUT_RANGE};
use weft_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Random bytes rarely get past the JSON decoder, so also try them as the fields of a
    // config whose required keys are valid: that reaches the checks behind the decoder.
    let mut spliced = br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","#.to_vec();
    spliced.extend_from_slice(data);
    spliced.push(b'}');
    check(&spliced);
    // And as the `policy` object, whose checks sit behind the decoder too.
    let mut spliced =
        br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","policy":{"#.to_vec();
    spliced.extend_from_slice(data);
    spliced.extend_from_slice(b"}}");
    check(&spliced);
});

fn check(data: &[u8]) {
    match NetConf::parse(data) {
        Ok(conf) => {
            assert!(MTU_RANGE.contains(&conf.mtu));
            assert!(conf.state_dir.is_absolute());
            assert!(conf.bridge.as_str().len() <= 15);
            for r in &conf.routes {
                assert_eq!(r.dst.trunc(), r.dst);
            }
            if let Some(p) = &conf.policy {
                assert!(p.control_socket.is_absolute());
                assert!(POLICY_TIMEOUT_RANGE.contains(&p.timeout.as_secs()));
            }
            if let Some(prev) = &conf.prev_result {
                let mut want = prev.clone();
                if conf.cni_version < weft_cni::version::CniVersion::V1_1_0 {
                    for i in &mut want.interfaces {
                        i.mtu = None;
                    }
                }
                let back = CniResult::from_json(&prev.to_json(conf.cni_version))
                    .expect("our own output must parse");
                assert_eq!(back, want);
            }
        }
        Err(e) => {
            let code = e.to_cni().code;
            assert!(matches!(code, 1 | 2 | 6 | 7), "unexpected code {code}");
        }
    }
}
