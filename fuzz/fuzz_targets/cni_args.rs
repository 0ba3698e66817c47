//! Fuzzes CNI_ARGS as an ADD's environment carries it: any string either is refused with
//! code 4, or parses; and the pod it names (K8S_POD_NAMESPACE, K8S_POD_NAME), when taken, is
//! either a valid Kubernetes namespace and name or a code-4 error.
#![no_main]

use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;
use weft_cni::env::Invocation;

fuzz_target!(|data: &[u8]| {
    let Ok(args) = std::str::from_utf8(data) else {
        return;
    };
    let env = |k: &str| -> Option<OsString> {
        Some(OsString::from(match k {
            "CNI_COMMAND" => "ADD",
            "CNI_CONTAINERID" => "c1",
            "CNI_IFNAME" => "eth0",
            "CNI_NETNS" => "/run/netns/x",
            "CNI_ARGS" => args,
            _ => return None,
        }))
    };
    match Invocation::from_env(env) {
        Ok(Invocation::Add { pod, .. }) => match pod.pod() {
            Ok(p) => {
                assert!(!p.namespace.is_empty() && p.namespace.len() <= 63);
                assert!(!p.name.is_empty() && p.name.len() <= 253);
                for s in [&p.namespace, &p.name] {
                    assert!(s.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b'.'));
                }
                assert!(!p.namespace.contains('.'));
            }
            Err(e) => assert_eq!(e.code, 4),
        },
        Ok(other) => panic!("an ADD environment parsed as {other:?}"),
        Err(e) => assert_eq!(e.code, 4),
    }
});
