//! End-to-end: a 3-node lab where every pod reaches every other pod, and an underlay that
//! carries nothing but weft's sealed UDP.

use std::time::{Duration, Instant};

use weft_tests::e2e::*;

/// Bytes of each pod-to-pod transfer (at least 50 MB).
const TRANSFER: u64 = 50_000_000;

/// 3 nodes with 2 pods each: every pod reaches every other pod by ICMP, and by a TCP
/// transfer of 50 MB whose checksum the receiver verifies.
#[test]
fn every_pod_reaches_every_pod_by_icmp_and_50mb_tcp() {
    if !can_run(
        "every_pod_reaches_every_pod_by_icmp_and_50mb_tcp",
        &["ping"],
    ) {
        return;
    }
    let lab = Lab::up("e2ea", &["--nodes", "3", "--pods", "2"]);
    assert_eq!(lab.pods.len(), 6);
    lab.wait_full_mesh(Duration::from_secs(30));
    let path = lab.assert_data_path();

    let mut unreachable = Vec::new();
    for a in &lab.pods {
        for b in &lab.pods {
            if a != b && !lab.ping(&a.name, b.address) {
                unreachable.push(format!("{} -> {} ({})", a.name, b.name, b.address));
            }
        }
    }
    assert!(unreachable.is_empty(), "ICMP failed: {unreachable:?}");

    // Every ordered pair gets its own 50 MB flow. In round k each pod sends to the pod k
    // places after it, so every pod sends and receives once per round, six flows at a time.
    let start = Instant::now();
    let n = lab.pods.len();
    let mut total = 0u64;
    for k in 1..n {
        let flows: Vec<_> = (0..n)
            .map(|i| {
                let (a, b) = (lab.pods[i].clone(), lab.pods[(i + k) % n].clone());
                let port = 5000 + (k * 10 + i) as u16;
                std::thread::spawn(move || {
                    let t = transfer(
                        &a.namespace,
                        &b.namespace,
                        b.address,
                        port,
                        Payload::Random {
                            seed: port.into(),
                            bytes: TRANSFER,
                        },
                        None,
                        Duration::from_secs(30),
                    );
                    (a.name, b.name, t)
                })
            })
            .collect();
        for f in flows {
            let (a, b, t) = f.join().expect("flow thread");
            let t = t.unwrap_or_else(|e| panic!("TCP {a} -> {b}: {e}"));
            assert!(
                t.intact(),
                "TCP {a} -> {b}: sent {} bytes (checksum {:016x}), received {} ({:016x})",
                t.sent,
                t.sent_sum,
                t.received,
                t.received_sum
            );
            total += t.received;
        }
    }
    let secs = start.elapsed().as_secs_f64();

    // A pod that clamps its MSS to TCP's minimum (88): its 64 KiB TSO frames would hold
    // ~750 segments, more than a data-plane batch; the router caps the TUN device's GSO
    // frames, so the kernel cuts them first and the transfer arrives intact.
    let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n2-p1").clone());
    let small = transfer_with_mss(
        &a.namespace,
        &b.namespace,
        b.address,
        5900,
        Payload::Random {
            seed: 88,
            bytes: 2_000_000,
        },
        None,
        Some(88),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("TCP with MSS 88 {} -> {}: {e}", a.name, b.name));
    assert!(small.intact(), "TCP with MSS 88: {small:?}");

    report(&format!(
        "a: 30 ordered pod pairs pinged; 30 TCP transfers of {} MB intact, {:.0} MB in {secs:.1}s \
         ({:.1} MB/s aggregate, 6 flows at a time; data path {path})",
        TRANSFER / 1_000_000,
        total as f64 / 1e6,
        total as f64 / 1e6 / secs
    ));
}

/// The recognisable plaintext of test b.
const CANARY: &[u8] = b"weft-e2e-plaintext-canary:0123456789abcdef;";

/// During a transfer of a known plaintext, a capture on the underlay switch never holds
/// the plaintext, and every IPv4 packet between nodes is UDP to or from the weft port.
#[test]
fn the_underlay_carries_only_sealed_udp_on_the_weft_port() {
    if !can_run(
        "the_underlay_carries_only_sealed_udp_on_the_weft_port",
        &["tcpdump"],
    ) {
        return;
    }
    let lab = Lab::up("e2eb", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let pcap = lab.dir().join("underlay.pcap");
    let capture = Capture::start(&format!("{}-u", lab.prefix), "sw", &pcap);
    let (a, b) = (lab.pod("n1-p1"), lab.pod("n3-p1"));
    let bytes = 8_000_000;
    let t = transfer(
        &a.namespace,
        &b.namespace,
        b.address,
        5001,
        Payload::Repeat {
            text: CANARY.to_vec(),
            bytes,
        },
        None,
        Duration::from_secs(30),
    )
    .expect("transfer");
    assert!(t.intact(), "{t:?}");
    assert!(lab.ping("n3-p1", lab.pod("n2-p1").address));
    // Let the last frames reach the file.
    std::thread::sleep(Duration::from_millis(300));
    let frames = capture.stop();

    let mut weft_udp_bytes = 0u64;
    let (mut other_ipv4, mut ipv6_l4, mut others) = (Vec::new(), 0, Vec::new());
    let mut plaintext_frames = 0;
    for f in &frames {
        if f.windows(CANARY.len()).any(|w| w == CANARY) {
            plaintext_frames += 1;
        }
        if f.len() < 14 {
            others.push(format!("runt of {} bytes", f.len()));
            continue;
        }
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => {
                let ip = &f[14..];
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                let ports = (ip[9] == 17).then(|| {
                    let l4 = &ip[ihl..];
                    (
                        u16::from_be_bytes([l4[0], l4[1]]),
                        u16::from_be_bytes([l4[2], l4[3]]),
                    )
                });
                match ports {
                    Some((sp, dp)) if sp == WEFT_PORT || dp == WEFT_PORT => {
                        weft_udp_bytes += (f.len() - 14 - ihl - 8) as u64;
                    }
                    _ => other_ipv4
                        .push(format!("{src} -> {dst} protocol {} ports {ports:?}", ip[9])),
                }
            }
            0x86dd => {
                // Link-local neighbour discovery and MLD of the veths are not traffic
                // between nodes; any TCP or UDP over IPv6 would be.
                if matches!(f.get(14 + 6), Some(6) | Some(17)) {
                    ipv6_l4 += 1;
                }
            }
            0x0806 => {}
            other => others.push(format!("ethertype {other:04x}")),
        }
    }
    report(&format!(
        "b: {} frames captured on the switch, {:.1} MB of weft UDP payload for an {:.0} MB \
         plaintext transfer; plaintext found in {plaintext_frames} frames",
        frames.len(),
        weft_udp_bytes as f64 / 1e6,
        bytes as f64 / 1e6
    ));
    assert!(
        weft_udp_bytes >= bytes,
        "the capture saw only {weft_udp_bytes} bytes of weft UDP for a {bytes}-byte transfer: \
         it did not see the traffic"
    );
    assert_eq!(plaintext_frames, 0, "plaintext on the underlay");
    assert!(
        other_ipv4.is_empty(),
        "IPv4 on the underlay that is not UDP on port {WEFT_PORT}: {:?}",
        &other_ipv4[..other_ipv4.len().min(10)]
    );
    assert_eq!(ipv6_l4, 0, "TCP or UDP over IPv6 on the underlay");
    assert!(others.is_empty(), "unexpected frames: {others:?}");
}
