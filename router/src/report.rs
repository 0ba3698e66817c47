//! `weft report`: one document with this node's view of the whole mesh, as gossip and its own
//! tunnels tell it (docs/report.md). The JSON shape is versioned by [`SCHEMA_VERSION`]: a
//! field is only ever added; renaming or removing one, or changing what it means, takes a new
//! version. The same document feeds the page the router serves ([`crate::ui`]) and the text
//! `weft report` prints ([`render_text`]).
//!
//! It never holds a secret: keys here are public keys, and nothing reads the join secret or
//! the private key to build it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_mesh::{LinkState, NextHop, Node, PeerId, PeerStatus};

/// The version of the JSON shape. Readers check it before anything else.
pub const SCHEMA_VERSION: u32 = 1;

/// The data cipher every tunnel uses today (docs/design.md §3): one cipher, so one name.
pub const DATA_CIPHER: &str = "ChaCha20-Poly1305";

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema: u32,
    /// The node that wrote the report.
    pub node: ReportingNode,
    /// Every live member, this node included, by key.
    pub members: Vec<MemberReport>,
    /// Every link between two live members, by `(a, b)`, `a` the lower key.
    pub links: Vec<LinkReport>,
    /// This node's own tunnels, by peer key.
    pub tunnels: Vec<TunnelReport>,
    /// Packets and datagrams this node dropped, by reason (the labels of `weft_drops_total`).
    pub drops: BTreeMap<String, u64>,
}

/// The node that wrote the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportingNode {
    /// Its public key.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The weft version it runs.
    pub version: String,
    /// Where it listens (UDP).
    pub listen: SocketAddr,
    /// The MTU its pods get.
    pub pod_mtu: u32,
}

/// A member, from its gossiped record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Its public key.
    pub id: String,
    /// Its name (a label another node chose: shown escaped, never trusted as markup).
    pub name: String,
    /// The member is the node that wrote the report.
    pub this_node: bool,
    /// Its incarnation (grows at each start) and record version (grows at each change).
    pub incarnation: u64,
    /// See `incarnation`.
    pub record_version: u64,
    /// Endpoints it announces.
    pub announced: Vec<SocketAddr>,
    /// Endpoints its peers saw it at (its NAT's public side, if any).
    pub seen: Vec<SocketAddr>,
    /// Its pod blocks.
    pub blocks: Vec<String>,
    /// Members it lists as not directly reachable, by key.
    pub unreachable: Vec<String>,
}

/// A link between two members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The lower key.
    pub a: String,
    /// The higher key.
    pub b: String,
    /// `direct`, `relayed`, `handshaking` (only for this node's own tunnels) or `down`.
    pub state: String,
    /// The relay, when `relayed`: the first relay on the path from `a`.
    pub via: Option<String>,
    /// `a` does not list `b` as unreachable.
    pub a_sees_b: bool,
    /// `b` does not list `a` as unreachable.
    pub b_sees_a: bool,
    /// The two ends disagree about the direct link.
    pub asymmetric: bool,
    /// One end is this node: the state is its tunnel's, not gossip's.
    pub local: bool,
}

/// One of this node's tunnels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelReport {
    /// The peer's public key.
    pub peer: String,
    /// Its name, when its record is known.
    pub name: Option<String>,
    /// `idle`, `handshaking`, `established` or `rekeying`.
    pub state: String,
    /// `direct` or `relayed`, when the peer is reached.
    pub path: Option<String>,
    /// The relay's key, when relayed.
    pub via: Option<String>,
    /// The endpoint datagrams go to (the peer's, or the relay's).
    pub endpoint: Option<SocketAddr>,
    /// Round-trip time of the last handshake this node initiated, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Datagrams sent to it.
    pub tx_packets: u64,
    /// Datagrams received from it.
    pub rx_packets: u64,
    /// Seconds since the last handshake completed.
    pub handshake_age_secs: Option<u64>,
    /// The data cipher of the session.
    pub cipher: Option<String>,
    /// The largest packet a pod may send through it.
    pub mtu: u32,
    /// Rates since the router's last sample (at most [`SAMPLE_EVERY`] ago), when it has one.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Rates over each [`SAMPLE_EVERY`] of the last [`HISTORY_SAMPLES`] of them, oldest first.
    #[serde(default)]
    pub recent: Vec<Rate>,
}

/// Traffic per second through a tunnel, each way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Bytes per second sent.
    pub tx_bytes: f64,
    /// Bytes per second received.
    pub rx_bytes: f64,
    /// Datagrams per second sent.
    pub tx_packets: f64,
    /// Datagrams per second received.
    pub rx_packets: f64,
}

/// How often the router samples each tunnel's counters for [`TunnelReport::recent`].
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How many intervals of [`SAMPLE_EVERY`] a report shows: five minutes.
pub const HISTORY_SAMPLES: usize = 30;

/// A tunnel's counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    counters: [u64; 4],
}

impl Sample {
    fn of(at: Instant, p: &PeerStatus) -> Self {
        Sample {
            at,
            counters: [p.tx_bytes, p.rx_bytes, p.tx_packets, p.rx_packets],
        }
    }

    /// The rate from `earlier` to `self`; counters that went back (a new tunnel state after a
    /// peer was forgotten and came back) count as zero.
    fn rate_since(&self, earlier: &Sample) -> Option<Rate> {
        let secs = self.at.checked_duration_since(earlier.at)?.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let d = |i: usize| self.counters[i].saturating_sub(earlier.counters[i]) as f64 / secs;
        Some(Rate {
            tx_bytes: d(0),
            rx_bytes: d(1),
            tx_packets: d(2),
            rx_packets: d(3),
        })
    }
}

/// The router's samples of each tunnel's counters, one every [`SAMPLE_EVERY`], so a report
/// shows rates over the last minutes even to a page that just opened. The Node keeps only
/// totals; this is the driver's, fed from the status it already reads once a second.
#[derive(Debug, Default)]
pub struct TunnelHistory {
    peers: BTreeMap<PeerId, VecDeque<Sample>>,
}

impl TunnelHistory {
    /// Takes a sample of every peer in `peers` whose last one is [`SAMPLE_EVERY`] old, and
    /// forgets peers that are gone.
    pub fn observe(&mut self, now: Instant, peers: &[PeerStatus]) {
        self.peers.retain(|id, _| peers.iter().any(|p| p.id == *id));
        for p in peers {
            let samples = self.peers.entry(p.id).or_default();
            if samples
                .back()
                .is_none_or(|s| now.saturating_duration_since(s.at) >= SAMPLE_EVERY)
            {
                samples.push_back(Sample::of(now, p));
                while samples.len() > HISTORY_SAMPLES + 1 {
                    samples.pop_front();
                }
            }
        }
    }

    /// `p`'s rate since its last sample, and its rates over each sampled interval.
    fn rates(&self, now: Instant, p: &PeerStatus) -> (Option<Rate>, Vec<Rate>) {
        let Some(samples) = self.peers.get(&p.id) else {
            return (None, Vec::new());
        };
        let current = Sample::of(now, p);
        // A sample taken this very second says nothing yet: use the one before it.
        let base = samples
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= Duration::from_secs(1));
        let rate = base.and_then(|b| current.rate_since(b));
        let recent = samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter_map(|(a, b)| b.rate_since(a))
            .collect();
        (rate, recent)
    }
}

/// What the router knows beside the Node.
#[derive(Debug, Clone)]
pub struct Local {
    /// The weft version.
    pub version: String,
    /// Where the router listens.
    pub listen: SocketAddr,
    /// The pod MTU.
    pub pod_mtu: u32,
    /// Drops by label: the Node's and the control socket's (`driver::drop_counts`).
    pub drops: BTreeMap<String, u64>,
}

fn link_state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Direct => "direct",
        LinkState::Relayed { .. } => "relayed",
        LinkState::Handshaking => "handshaking",
        LinkState::Down => "down",
    }
}

/// The report of `node` at `now`, with tunnel rates from `history` (empty: none).
pub fn build(node: &Node, now: Instant, local: Local, history: &TunnelHistory) -> MeshReport {
    let me = node.id();
    let alive: Vec<_> = node.members().alive().collect();
    let by_short: BTreeMap<_, PeerId> = alive.iter().map(|r| (r.id.short(), r.id)).collect();
    let members = alive
        .iter()
        .map(|r| MemberReport {
            id: r.id.to_string(),
            name: r.name.clone(),
            this_node: r.id == me,
            incarnation: r.incarnation,
            record_version: r.version,
            announced: r.announced.clone(),
            seen: r.seen.clone(),
            blocks: r.pod_blocks.iter().map(|b| b.to_string()).collect(),
            unreachable: r
                .links_down
                .iter()
                .filter_map(|s| by_short.get(s))
                .map(|id| id.to_string())
                .collect(),
        })
        .collect();
    let links = node
        .links()
        .into_iter()
        .map(|l| LinkReport {
            a: l.a.to_string(),
            b: l.b.to_string(),
            state: link_state_name(l.state).into(),
            via: match l.state {
                LinkState::Relayed { via } => Some(via.to_string()),
                _ => None,
            },
            a_sees_b: l.a_sees_b,
            b_sees_a: l.b_sees_a,
            asymmetric: l.asymmetric(),
            local: l.local,
        })
        .collect();
    let status = node.status();
    let tunnels = status
        .peers
        .into_iter()
        .map(|p| {
            let up = node.is_up(&p.id);
            let (rate, recent) = history.rates(now, &p);
            TunnelReport {
                peer: p.id.to_string(),
                name: p.name,
                state: format!("{:?}", p.state).to_lowercase(),
                path: p.path.map(|h| match h {
                    NextHop::Direct(_) => "direct".into(),
                    NextHop::Relay { .. } => "relayed".into(),
                }),
                via: match p.path {
                    Some(NextHop::Relay { via, .. }) => Some(via.to_string()),
                    _ => None,
                },
                endpoint: p.path.map(|h| match h {
                    NextHop::Direct(e) => e,
                    NextHop::Relay { endpoint, .. } => endpoint,
                }),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                tx_packets: p.tx_packets,
                rx_packets: p.rx_packets,
                handshake_age_secs: p
                    .last_handshake
                    .map(|t| now.saturating_duration_since(t).as_secs()),
                cipher: up.then(|| DATA_CIPHER.to_string()),
                mtu: local.pod_mtu,
                rate,
                recent,
            }
        })
        .collect();
    MeshReport {
        schema: SCHEMA_VERSION,
        node: ReportingNode {
            id: me.to_string(),
            name: node.name().to_owned(),
            version: local.version,
            listen: local.listen,
            pod_mtu: local.pod_mtu,
        },
        members,
        links,
        tunnels,
        drops: local.drops,
    }
}

/// A name another node chose, made safe for a terminal (escape sequences shown escaped).
pub fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// The report as an operator reads it: members, links (asymmetric ones marked), this node's
/// tunnels, drops.
pub fn render_text(r: &MeshReport) -> String {
    let names: BTreeMap<&str, String> = r
        .members
        .iter()
        .map(|m| (m.id.as_str(), printable(&m.name)))
        .collect();
    let name = |key: &str| {
        names
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.chars().take(10).collect())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "weft report (schema {}) from {} ({}), weft {}",
        r.schema,
        printable(&r.node.name),
        r.node.id,
        r.node.version
    );
    let _ = writeln!(out, "\nMEMBERS ({})", r.members.len());
    let _ = writeln!(
        out,
        "  {:<12} {:<12} {:<20} {:<24} UNREACHABLE",
        "NAME", "KEY", "BLOCKS", "ENDPOINTS"
    );
    for m in &r.members {
        let endpoints: Vec<String> = m
            .announced
            .iter()
            .chain(&m.seen)
            .map(|e| e.to_string())
            .collect();
        let unreachable: Vec<String> = m.unreachable.iter().map(|k| name(k)).collect();
        let _ = writeln!(
            out,
            "{} {:<12} {:<12} {:<20} {:<24} {}",
            if m.this_node { "*" } else { " " },
            printable(&m.name),
            m.id.chars().take(10).collect::<String>(),
            or_dash(m.blocks.join(",")),
            or_dash(endpoints.join(",")),
            or_dash(unreachable.join(",")),
        );
    }
    let _ = writeln!(out, "\nLINKS ({})", r.links.len());
    for l in &r.links {
        let state = match &l.via {
            Some(via) => format!("{} via {}", l.state, name(via)),
            None => l.state.clone(),
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<12} {:<24}{}{}",
            name(&l.a),
            name(&l.b),
            state,
            if l.local { " (this node's tunnel)" } else { "" },
            if l.asymmetric {
                format!(
                    " ASYMMETRIC: {} sees it {}, {} sees it {}",
                    name(&l.a),
                    if l.a_sees_b { "up" } else { "down" },
                    name(&l.b),
                    if l.b_sees_a { "up" } else { "down" }
                )
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(out, "\nTUNNELS ({})", r.tunnels.len());
    let _ = writeln!(
        out,
        "  {:<12} {:<12} {:<16} {:>9} {:>12} {:>12} {:>9} {:>9} {:>10} {:>10} {:>9} {:>5}",
        "PEER",
        "STATE",
        "PATH",
        "RTT",
        "TX BYTES",
        "RX BYTES",
        "TX PKTS",
        "RX PKTS",
        "TX B/S",
        "RX B/S",
        "HANDSHAKE",
        "MTU"
    );
    for t in &r.tunnels {
        let path = match (&t.path, &t.via) {
            (Some(p), Some(via)) => format!("{p} via {}", name(via)),
            (Some(p), None) => p.clone(),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<12} {:<16} {:>9} {:>12} {:>12} {:>9} {:>9} {:>10} {:>10} {:>9} {:>5}",
            name(&t.peer),
            t.state,
            path,
            t.rtt_ms
                .map(|v| format!("{v:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            t.tx_bytes,
            t.rx_bytes,
            t.tx_packets,
            t.rx_packets,
            t.rate
                .map(|r| format!("{:.0}", r.tx_bytes))
                .unwrap_or_else(|| "-".into()),
            t.rate
                .map(|r| format!("{:.0}", r.rx_bytes))
                .unwrap_or_else(|| "-".into()),
            t.handshake_age_secs
                .map(|s| format!("{s}s ago"))
                .unwrap_or_else(|| "-".into()),
            t.mtu,
        );
    }
    let dropped: u64 = r.drops.values().sum();
    let _ = writeln!(out, "\nDROPS ({dropped})");
    for (reason, n) in &r.drops {
        let _ = writeln!(out, "  {reason:<28} {n}");
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, name: &str) -> MemberReport {
        MemberReport {
            id: id.into(),
            name: name.into(),
            this_node: id == "A",
            incarnation: 1,
            record_version: 1,
            announced: vec!["198.18.0.1:6786".parse().unwrap()],
            seen: vec![],
            blocks: vec!["10.32.1.0/24".into()],
            unreachable: vec![],
        }
    }

    /// An operator sees which view disagrees, and a hostile name never reaches the terminal
    /// as an escape sequence.
    #[test]
    fn the_text_flags_asymmetric_links_and_escapes_names() {
        let r = MeshReport {
            schema: SCHEMA_VERSION,
            node: ReportingNode {
                id: "A".into(),
                name: "n1".into(),
                version: "0.1.0".into(),
                listen: "198.18.0.1:6786".parse().unwrap(),
                pod_mtu: 1375,
            },
            members: vec![member("A", "n1"), member("B", "\u{1b}[31mevil")],
            links: vec![LinkReport {
                a: "A".into(),
                b: "B".into(),
                state: "relayed".into(),
                via: Some("C".into()),
                a_sees_b: true,
                b_sees_a: false,
                asymmetric: true,
                local: true,
            }],
            tunnels: vec![],
            drops: BTreeMap::from([("open_failed".into(), 2)]),
        };
        let text = render_text(&r);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("\\u{1b}[31mevil"), "{text}");
        assert!(
            text.contains("ASYMMETRIC: n1 sees it up, \\u{1b}[31mevil sees it down"),
            "{text}"
        );
        // An unknown relay is shown by its key's start.
        assert!(text.contains("relayed via C"), "{text}");
        assert!(
            text.contains("DROPS (2)") && text.contains("open_failed"),
            "{text}"
        );
    }
}
