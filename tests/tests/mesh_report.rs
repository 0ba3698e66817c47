//! `weft report` on a simulated mesh: the JSON shape frozen by a golden file, packets counted
//! beside bytes on both data paths, and a relayed pair shown through its relay.
//!
//! The golden file freezes the shape and the meaning (which members, which links, which state,
//! through whom); counters, times and keys are masked, since they follow the protocol's
//! timing. After a deliberate change of the shape (a new `SCHEMA_VERSION`, or a field
//! added), rewrite it with `WEFT_BLESS=1 cargo test -p weft-tests --test mesh_report`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weft_router::report::{self, Local, MeshReport};
use weft_tests::sim::DataPath;
use weft_tests::{NodeSpec, Sim, seed_from_env};

weft_tests::both_data_paths!(packets_are_counted_beside_bytes);

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/report.json");

/// Three nodes with fixed blocks, the link node-1–node-2 blocked: it relays through node-0.
fn relayed_trio(data_path: DataPath) -> Sim {
    let mut sim = Sim::with_data_path(seed_from_env(15), data_path);
    for i in 0..3u8 {
        let mut spec = NodeSpec::new(format!("node-{i}"), if i == 0 { vec![] } else { vec![0] });
        spec.pod_cidr = Some(format!("10.32.{}.0/24", i + 1).parse().unwrap());
        sim.add(spec);
    }
    sim.block(1, 2);
    let ok = sim.run_until(Duration::from_secs(60), Duration::from_millis(500), |s| {
        s.full_mesh() && s.all_know_all_blocks() && relayed(s, 1, 2) && relayed(s, 2, 1)
    });
    assert!(ok.is_some(), "seed {}: not settled", sim.seed);
    // Some traffic each way on every tunnel, so counters move.
    for round in 0..3 {
        sim.traffic_round(round);
    }
    sim.run_for(Duration::from_secs(1));
    sim
}

fn relayed(sim: &Sim, a: usize, b: usize) -> bool {
    matches!(
        sim.node(a).path(&sim.id(b)),
        Some(weft_mesh::NextHop::Relay { .. })
    )
}

fn report_of(sim: &mut Sim, i: usize) -> MeshReport {
    report_with(sim, i, &report::TunnelHistory::default())
}

fn report_with(sim: &mut Sim, i: usize, history: &report::TunnelHistory) -> MeshReport {
    let drops = sim
        .node(i)
        .drops()
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), *n))
        .collect();
    let listen = sim.endpoint(i);
    sim.with_node(i, |n, now| {
        report::build(
            n,
            now,
            Local {
                version: "test".into(),
                listen,
                pod_mtu: 1375,
                drops,
            },
            history,
        )
    })
}

/// The report as JSON with keys named after their nodes and every counter, time and
/// incarnation (set or not) replaced by `"<n>"`.
fn masked(sim: &Sim, r: &MeshReport) -> Value {
    let keys: BTreeMap<String, String> = (0..sim.len())
        .map(|i| (sim.id(i).to_string(), format!("<key of {}>", sim.name(i))))
        .collect();
    fn walk(v: &mut Value, keys: &BTreeMap<String, String>, field: Option<&str>) {
        const MASKED: [&str; 8] = [
            "incarnation",
            "record_version",
            "tx_bytes",
            "rx_bytes",
            "tx_packets",
            "rx_packets",
            "rtt_ms",
            "handshake_age_secs",
        ];
        match v {
            Value::String(s) => {
                if let Some(k) = keys.get(s.as_str()) {
                    *s = k.clone();
                }
            }
            // Masked whether set or not: an RTT is known only to the side that initiated.
            _ if field.is_some_and(|f| MASKED.contains(&f)) => *v = Value::String("<n>".into()),
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, keys, None)),
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    walk(x, keys, Some(k));
                }
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(r).unwrap();
    walk(&mut v, &keys, None);
    // Drops follow timing too: the reasons and counts are not part of the shape.
    v["drops"] = serde_json::json!({ "<reason>": "<n>" });
    v
}

/// The JSON shape of the report, frozen; and its content on a mesh with one relayed pair.
#[test]
fn the_report_of_a_relayed_trio_matches_the_golden_file() {
    let mut sim = relayed_trio(DataPath::Node);
    let r = report_of(&mut sim, 1);
    assert_eq!(r.schema, report::SCHEMA_VERSION);
    let got = serde_json::to_string_pretty(&masked(&sim, &r)).unwrap() + "\n";
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("the golden file (WEFT_BLESS=1 writes it)");
    assert_eq!(
        got, want,
        "the report's shape or content changed; if deliberately, bump SCHEMA_VERSION when a \
         field changed meaning and bless the file (see this file's docs)"
    );

    // What the golden file says, said as assertions a reader can check.
    let (n0, n1, n2) = (
        sim.id(0).to_string(),
        sim.id(1).to_string(),
        sim.id(2).to_string(),
    );
    assert_eq!(r.members.len(), 3);
    assert_eq!(r.links.len(), 3);
    let link = |x: &str, y: &str| {
        r.links
            .iter()
            .find(|l| (l.a == x && l.b == y) || (l.a == y && l.b == x))
            .expect("link listed")
    };
    let l12 = link(&n1, &n2);
    assert_eq!(l12.state, "relayed");
    assert_eq!(l12.via.as_deref(), Some(n0.as_str()));
    assert!(l12.local && !l12.a_sees_b && !l12.b_sees_a && !l12.asymmetric);
    assert_eq!(link(&n0, &n2).state, "direct");
    assert!(!link(&n0, &n2).local);
    let t = r.tunnels.iter().find(|t| t.peer == n2).expect("tunnel");
    assert_eq!(
        (t.path.as_deref(), t.via.as_deref()),
        (Some("relayed"), Some(n0.as_str()))
    );

    // The text form names the relay and the nodes.
    let text = report::render_text(&r);
    assert!(text.contains("relayed via node-0"), "{text}");
    assert!(text.contains("node-2"), "{text}");

    // What a script reads back is what the router wrote.
    let back: MeshReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);

    // The same mesh gives the same report: nothing depends on hash order.
    assert_eq!(report_of(&mut sim, 1), r);
}

/// The report never shows the join secret.
#[test]
fn the_report_holds_no_join_secret() {
    let mut sim = relayed_trio(DataPath::Node);
    for i in 0..3 {
        let json = serde_json::to_string(&report_of(&mut sim, i)).unwrap();
        let secret = String::from_utf8_lossy(weft_tests::sim::JOIN_SECRET);
        assert!(!json.contains(secret.as_ref()));
    }
}

/// Packets are counted beside bytes on both data paths, in the status and the report.
fn packets_are_counted_beside_bytes(data_path: DataPath) {
    let mut sim = relayed_trio(data_path);
    let before = report_of(&mut sim, 0);
    for round in 10..20 {
        sim.traffic_round(round);
    }
    sim.run_for(Duration::from_secs(1));
    let after = report_of(&mut sim, 0);
    for t in &after.tunnels {
        let b = before.tunnels.iter().find(|x| x.peer == t.peer).unwrap();
        // Ten rounds each carry at least one packet each way between every pair.
        assert!(t.tx_packets >= b.tx_packets + 10, "{t:?} after {b:?}");
        assert!(t.rx_packets >= b.rx_packets + 10, "{t:?} after {b:?}");
        assert!(t.tx_bytes > b.tx_bytes && t.rx_bytes > b.rx_bytes);
        assert_eq!(t.state, "established");
        assert_eq!(t.cipher.as_deref(), Some(report::DATA_CIPHER));
    }
    let status = sim.node(0).status();
    for p in &status.peers {
        let t = after.tunnels.iter().find(|t| t.peer == p.id.to_string());
        assert_eq!(t.map(|t| t.tx_packets), Some(p.tx_packets));
    }
}

/// The router's samples give each tunnel a current rate and one rate per sampled interval of
/// the last minutes, from the counters alone.
#[test]
fn sampled_counters_give_rates_over_the_last_minutes() {
    let mut sim = relayed_trio(DataPath::Node);
    let mut history = report::TunnelHistory::default();
    let observe = |sim: &mut Sim, history: &mut report::TunnelHistory| {
        let peers = sim.node(0).status().peers;
        sim.with_node(0, |_, now| history.observe(now, &peers));
    };
    observe(&mut sim, &mut history);
    assert!(
        report_with(&mut sim, 0, &history).tunnels[0]
            .recent
            .is_empty()
    );
    // 25 s of one packet each way between every pair every half second, sampled each second
    // as the router does: two full intervals and a part.
    for round in 0..50 {
        sim.traffic_round(100 + round);
        if round % 2 == 1 {
            observe(&mut sim, &mut history);
        }
    }
    let r = report_with(&mut sim, 0, &history);
    for t in &r.tunnels {
        assert_eq!(t.recent.len(), 2, "{t:?}");
        for rate in t.recent.iter().chain(&t.rate) {
            // Two data packets a second each way, and some control traffic.
            assert!(rate.tx_packets >= 1.5 && rate.rx_packets >= 1.5, "{rate:?}");
            assert!(rate.tx_bytes > rate.tx_packets * 20.0, "{rate:?}");
        }
        assert!(t.rate.is_some(), "{t:?}");
    }
    // Quiet again: the next interval shows less.
    sim.run_for(std::time::Duration::from_secs(11));
    observe(&mut sim, &mut history);
    let r = report_with(&mut sim, 0, &history);
    let last = r.tunnels[0].recent.last().unwrap();
    assert!(last.tx_packets < 1.5, "{last:?}");
}
