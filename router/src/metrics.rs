//! Metrics in Prometheus text format, and health for probes, over HTTP.
//!
//! The driver publishes a [`Snapshot`] after every turn of its loop; scrapes read the last one
//! through a prometheus-client [`Collector`], so the Node is never touched from the HTTP
//! task. Every metric name is listed in one place: [`NAMES`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use weft_mesh::NodeStats;

use crate::control::StatusReport;

/// Every metric the router exports, with its help text: the one list of names.
pub const NAMES: [(&str, &str); 17] = [
    ("weft_peers", "Peers by tunnel state."),
    ("weft_handshakes", "Handshakes completed."),
    (
        "weft_peer_bytes",
        "Bytes sent (tx) and received (rx) per peer.",
    ),
    (
        "weft_peer_packets",
        "Datagrams sent (tx) and received (rx) per peer.",
    ),
    ("weft_drops", "Packets and datagrams dropped, by reason."),
    ("weft_members", "Members known, this node included."),
    ("weft_block_ready", "1 when this node has a pod block."),
    (
        "weft_control_bytes",
        "Bytes of control datagrams sent (gossip, keepalives, IPAM, NAT).",
    ),
    ("weft_relayed", "Datagrams forwarded for other peers."),
    (
        "weft_data_plane_builds",
        "Data-plane snapshots built (one per change to a session, path or route).",
    ),
    (
        "weft_block_addresses",
        "Pod addresses in this node's block (the gateway excluded).",
    ),
    (
        "weft_addresses_in_use",
        "Pod addresses leased by weft-cni on this node.",
    ),
    (
        "weft_policy_denied_packets",
        "Packets NetworkPolicy denied, per isolating policy (ns/name) and direction.",
    ),
    (
        "weft_policy_problems",
        "Malformed NetworkPolicies, Pods or Namespaces seen (each policy fails closed).",
    ),
    (
        "weft_peers_old_join_secret",
        "Peers whose session was made with a join secret other than this node's primary; \
         0 on every node: the old secret can be removed.",
    ),
    (
        "weft_join_secret_reloads",
        "New contents of the join secret file applied.",
    ),
    (
        "weft_join_secret_reload_errors",
        "Contents of the join secret file refused (unreadable or invalid; the secrets in \
         use stay).",
    ),
];

/// What a scrape reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    peers_by_state: BTreeMap<String, i64>,
    handshakes: u64,
    /// (peer id, peer name, tx, rx): labelled by id, since names are only labels.
    peer_bytes: Vec<(String, String, u64, u64)>,
    /// The same for datagrams.
    peer_packets: Vec<(String, String, u64, u64)>,
    drops: BTreeMap<String, u64>,
    members: i64,
    block_ready: i64,
    control_bytes: u64,
    relayed: u64,
    data_plane_builds: u64,
    block_addresses: i64,
    /// Filled in at scrape time from the lease files.
    addresses_in_use: i64,
    /// (policy, direction, packets), when NetworkPolicy is enforced.
    policy_denied: Vec<(String, String, u64)>,
    policy_problems: u64,
    peers_old_join_secret: i64,
    join_secret_reloads: u64,
    join_secret_reload_errors: u64,
}

impl Snapshot {
    /// Builds the snapshot from the status the control API reports.
    pub fn from_report(report: &StatusReport, stats: NodeStats) -> Self {
        let mut peers_by_state: BTreeMap<String, i64> =
            ["idle", "handshaking", "established", "rekeying"]
                .iter()
                .map(|s| (s.to_string(), 0))
                .collect();
        let (mut peer_bytes, mut peer_packets) = (Vec::new(), Vec::new());
        for p in &report.peers {
            *peers_by_state.entry(p.state.clone()).or_default() += 1;
            let name = p.name.clone().unwrap_or_default();
            peer_bytes.push((p.id.clone(), name.clone(), p.tx_bytes, p.rx_bytes));
            peer_packets.push((p.id.clone(), name, p.tx_packets, p.rx_packets));
        }
        Self {
            peers_by_state,
            handshakes: stats.handshakes,
            peer_bytes,
            peer_packets,
            drops: report.drops.clone(),
            members: report.members as i64,
            block_ready: i64::from(report.block.is_some()),
            control_bytes: stats.control_bytes,
            relayed: stats.relayed,
            data_plane_builds: stats.data_plane_builds,
            block_addresses: report
                .block
                .as_deref()
                .and_then(|b| b.parse::<ipnet::Ipv4Net>().ok())
                .map_or(0, |b| (1i64 << (32 - b.prefix_len())) - 3),
            addresses_in_use: 0,
            policy_denied: report
                .policy
                .iter()
                .flat_map(|p| &p.denied)
                .map(|d| (d.policy.clone(), d.direction.clone(), d.packets))
                .collect(),
            policy_problems: report.policy.as_ref().map_or(0, |p| p.problems_seen),
            peers_old_join_secret: report
                .peers
                .iter()
                .filter(|p| p.join_secret.as_deref().is_some_and(|s| s != "primary"))
                .count() as i64,
            join_secret_reloads: report.join_secrets.as_ref().map_or(0, |j| j.reloads),
            join_secret_reload_errors: report.join_secrets.as_ref().map_or(0, |j| j.reload_errors),
        }
    }
}

/// The snapshot shared between the driver and the HTTP task, with when it was last replaced.
#[derive(Debug, Clone, Default)]
pub struct Shared(
    Arc<RwLock<Snapshot>>,
    Arc<RwLock<Option<std::time::Instant>>>,
);

/// `/healthz` fails when the driver has not refreshed the snapshot for this long: its loop
/// wakes at least every second (gossip), so this means it is stuck.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

impl Shared {
    /// Replaces the snapshot.
    pub fn update(&self, s: Snapshot) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = s;
        *self.1.write().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// Whether the driver refreshed the snapshot recently.
    pub fn is_fresh(&self) -> bool {
        self.1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < STALE_AFTER)
    }
}

fn help(name: &str) -> &'static str {
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .expect("every metric is listed in NAMES")
}

impl Collector for Shared {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let gauge = |v: i64| ConstGauge::new(v);
        let counter = |v: u64| ConstCounter::new(v);

        let g = gauge(0);
        let mut family =
            encoder.encode_descriptor("weft_peers", help("weft_peers"), None, g.metric_type())?;
        for (state, n) in &s.peers_by_state {
            gauge(*n).encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        let c = counter(s.handshakes);
        c.encode(encoder.encode_descriptor(
            "weft_handshakes",
            help("weft_handshakes"),
            None,
            c.metric_type(),
        )?)?;
        for (metric, rows) in [
            ("weft_peer_bytes", &s.peer_bytes),
            ("weft_peer_packets", &s.peer_packets),
        ] {
            let mut family =
                encoder.encode_descriptor(metric, help(metric), None, counter(0).metric_type())?;
            for (peer, name, tx, rx) in rows {
                for (direction, v) in [("tx", tx), ("rx", rx)] {
                    let labels = [
                        ("peer", peer.as_str()),
                        ("name", name.as_str()),
                        ("direction", direction),
                    ];
                    counter(*v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "weft_drops",
            help("weft_drops"),
            None,
            counter(0).metric_type(),
        )?;
        for (reason, n) in &s.drops {
            counter(*n).encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        for (name, v) in [
            ("weft_members", s.members),
            ("weft_block_ready", s.block_ready),
            ("weft_block_addresses", s.block_addresses),
            ("weft_addresses_in_use", s.addresses_in_use),
            ("weft_peers_old_join_secret", s.peers_old_join_secret),
        ] {
            let g = gauge(v);
            g.encode(encoder.encode_descriptor(name, help(name), None, g.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "weft_policy_denied_packets",
            help("weft_policy_denied_packets"),
            None,
            counter(0).metric_type(),
        )?;
        for (policy, direction, n) in &s.policy_denied {
            let labels = [
                ("policy", policy.as_str()),
                ("direction", direction.as_str()),
            ];
            counter(*n).encode(family.encode_family(&labels)?)?;
        }
        for (name, v) in [
            ("weft_control_bytes", s.control_bytes),
            ("weft_relayed", s.relayed),
            ("weft_data_plane_builds", s.data_plane_builds),
            ("weft_policy_problems", s.policy_problems),
            ("weft_join_secret_reloads", s.join_secret_reloads),
            (
                "weft_join_secret_reload_errors",
                s.join_secret_reload_errors,
            ),
        ] {
            let c = counter(v);
            c.encode(encoder.encode_descriptor(name, help(name), None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// Counts the leases weft-cni holds under `state_dir` (one file per address, named by it).
pub fn count_leases(state_dir: &Path) -> i64 {
    std::fs::read_dir(state_dir.join("cni").join("leases"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok())
                })
                .count() as i64
        })
        .unwrap_or(0)
}

/// Renders the metrics in Prometheus text format, with `addresses_in_use` as counted now.
pub fn render(shared: &Shared, addresses_in_use: i64) -> String {
    let snapshot = Shared::default();
    let mut s = shared.0.read().unwrap_or_else(|e| e.into_inner()).clone();
    s.addresses_in_use = addresses_in_use;
    snapshot.update(s);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

#[derive(Clone)]
struct AppState {
    shared: Shared,
    ready: Arc<AtomicBool>,
    state_dir: PathBuf,
}

/// Serves `/metrics`, `/healthz` (the router's loop turns) and `/readyz` (its pod block is
/// known); with `ui`, the live page and `/report.json` ([`crate::ui`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    ready: Arc<AtomicBool>,
    state_dir: PathBuf,
    ui: Option<crate::ui::Published>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                let dir = s.state_dir.clone();
                let leases = tokio::task::spawn_blocking(move || count_leases(&dir))
                    .await
                    .unwrap_or(0);
                render(&s.shared, leases)
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                if s.shared.is_fresh() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the router's loop is not turning\n",
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for a pod block\n")
                }
            }),
        )
        .with_state(AppState {
            shared,
            ready,
            state_dir,
        });
    let app = match ui {
        Some(published) => app.merge(crate::ui::routes(published)),
        None => app,
    };
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::PeerReport;

    #[test]
    fn renders_every_listed_metric_in_text_format() {
        let report = StatusReport {
            id: "k".into(),
            name: "n1".into(),
            incarnation: 1,
            listen: "198.18.0.1:6786".parse().unwrap(),
            block: Some("10.32.1.0/24".into()),
            waiting: None,
            free_space: vec![],
            pod_mtu: 1375,
            members: 2,
            peers: vec![PeerReport {
                id: "p".into(),
                name: Some("n2".into()),
                state: "established".into(),
                endpoint: None,
                path: Some("direct".into()),
                rtt_ms: Some(0.2),
                tx_bytes: 10,
                rx_bytes: 20,
                tx_packets: 1,
                rx_packets: 2,
                last_handshake_secs: Some(1),
                why_relayed: None,
                join_secret: Some("other".into()),
            }],
            drops: BTreeMap::from([("malformed".to_string(), 3)]),
            routes: vec![],
            data_path: None,
            policy: Some(crate::control::PolicyReport {
                denied: vec![crate::control::DeniedReport {
                    policy: "x/deny".into(),
                    direction: "ingress".into(),
                    packets: 5,
                }],
                problems_seen: 2,
                ..Default::default()
            }),
            join_secrets: None,
        };
        let shared = Shared::default();
        shared.update(Snapshot::from_report(&report, NodeStats::default()));
        let text = render(&shared, 4);
        for (name, _) in NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("weft_peers{state=\"established\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weft_peer_bytes_total{peer=\"p\",name=\"n2\",direction=\"rx\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("weft_peer_packets_total{peer=\"p\",name=\"n2\",direction=\"tx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weft_drops_total{reason=\"malformed\"} 3"),
            "{text}"
        );
        assert!(text.contains("weft_block_ready 1"), "{text}");
        assert!(text.contains("weft_block_addresses 253"), "{text}");
        assert!(text.contains("weft_addresses_in_use 4"), "{text}");
        assert!(
            text.contains(
                "weft_policy_denied_packets_total{policy=\"x/deny\",direction=\"ingress\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("weft_policy_problems_total 2"), "{text}");
        assert!(text.contains("weft_peers_old_join_secret 1"), "{text}");
    }

    /// The mesh's undecodable control messages and the control socket's malformed requests
    /// are two counters: when both have counted, both are exported, each with its own count.
    #[test]
    fn mesh_and_control_socket_malformed_counts_are_exported_separately() {
        use std::sync::atomic::Ordering;

        let mut node = weft_mesh::DropCounters::new();
        node.insert(weft_mesh::DropReason::ControlMalformed, 2);
        let refused = crate::control::RefusedRequests::default();
        refused.malformed.store(5, Ordering::Relaxed);
        let drops = crate::driver::drop_counts(&node, &refused);
        assert_eq!(drops.get("control_malformed"), Some(&2), "{drops:?}");
        assert_eq!(
            drops.get("control_request_malformed"),
            Some(&5),
            "{drops:?}"
        );
        // Refusals that counted nothing are not reported.
        assert_eq!(drops.len(), 2, "{drops:?}");

        let report = StatusReport {
            id: "k".into(),
            name: "n1".into(),
            incarnation: 1,
            listen: "198.18.0.1:6786".parse().unwrap(),
            block: None,
            waiting: None,
            free_space: vec![],
            pod_mtu: 1375,
            members: 1,
            peers: vec![],
            drops,
            routes: vec![],
            data_path: None,
            policy: None,
            join_secrets: None,
        };
        let shared = Shared::default();
        shared.update(Snapshot::from_report(&report, NodeStats::default()));
        let text = render(&shared, 0);
        assert!(
            text.contains("weft_drops_total{reason=\"control_malformed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("weft_drops_total{reason=\"control_request_malformed\"} 5"),
            "{text}"
        );
    }
}
