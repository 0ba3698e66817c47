//! `weft lab flood`: a hostile sender inside the lab, to see what a node's router does under
//! a flood (bench/flood.sh, scripts/soak.sh).
//!
//! For a given time and at the highest rate one thread reaches, it sends to one node's
//! router either garbage (random bytes of random length) or valid handshake initiations made
//! with the lab's join secret, each with a new ephemeral key (a rogue member: they pass the
//! join-secret check and cost the router its Diffie-Hellman work unless a budget stops them
//! first). It sends from one address or from many addresses of the underlay range, round
//! robin, and counts the datagrams that come back (the router's responses).
//!
//! It stays inside the lab: a namespace `PREFIX-fPID` of its own, joined to the lab's switch
//! by a veth, holding the source addresses (from `198.18.192.1` up, away from the nodes'
//! `198.18.0.N` and `198.18.1.N`). The namespace is removed when the flood ends, and `weft
//! lab down` removes it too (its name is the lab's); one left by a flood that was killed is
//! removed by the next flood of the lab.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use weft_crypto::{
    Handshaker, JoinSecret, JoinSecrets, KeyPair, MessageType, OsRandom, Random, Timestamp,
};

use crate::LabError;
use crate::error::{refuse, refuse_unless};
use crate::plan::Names;
use crate::{build, state, sys};

/// The most source addresses a flood uses (`198.18.192.1` to `198.18.208.0`).
pub const MAX_SOURCES: usize = 4096;
/// The longest flood, an hour: a typo should not flood all night.
pub const MAX_SECONDS: u64 = 3600;

/// What a flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodKind {
    /// Random bytes, 1 to 200 of them.
    Garbage,
    /// Handshake initiations made with the lab's join secret, a new ephemeral key each.
    Initiation,
}

impl std::str::FromStr for FloodKind {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "garbage" => Ok(Self::Garbage),
            "initiation" | "initiations" => Ok(Self::Initiation),
            other => Err(LabError::Refused(format!(
                "flood kind {other:?} is not garbage or initiation"
            ))),
        }
    }
}

/// What `weft lab flood` sent, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub kind: FloodKind,
    /// The node flooded, and its router's address.
    pub node: String,
    pub target: SocketAddrV4,
    /// Source addresses used.
    pub sources: usize,
    /// Seconds the sending took.
    pub seconds: f64,
    /// Datagrams the kernel accepted for sending (each then crossed the switch: the
    /// flooder's link is a veth, which does not drop), the one-byte datagram each source
    /// sends first (to resolve the router's address before the clock starts) included.
    pub datagrams: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// Datagrams per second.
    pub rate: f64,
    /// Sends the kernel refused with an error other than a full buffer (not counted above).
    pub send_errors: u64,
    /// Datagrams that came back to the flooder's addresses: handshake responses, and
    /// whatever else the router sends a stranger (stale-index notices for garbage).
    pub answers: u64,
    /// Of those, handshake responses: initiations the router answered rather than dropped.
    /// Everything else that came back answers a datagram the router also counted as a drop.
    pub responses: u64,
}

impl FloodReport {
    /// One line for people.
    pub fn render(&self) -> String {
        format!(
            "flooded {} ({}) with {} from {} source address{} for {:.1} s: {} datagrams, \
             {} bytes, {:.0} datagrams/s, {} send errors, {} answers ({} handshake responses)",
            self.node,
            self.target,
            match self.kind {
                FloodKind::Garbage => "garbage",
                FloodKind::Initiation => "handshake initiations",
            },
            self.sources,
            if self.sources == 1 { "" } else { "es" },
            self.seconds,
            self.datagrams,
            self.bytes,
            self.rate,
            self.send_errors,
            self.answers,
            self.responses
        )
    }
}

/// The `k`th source address (from 0).
fn source_addr(k: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(198, 18, 192, 0)) + k as u32 + 1;
    Ipv4Addr::from(n)
}

/// Removes the namespace of a flood of this lab whose process is gone (killed before it
/// could clean up), and refuses while another flood of it runs: two would share addresses.
fn sweep(prefix: &str) -> Result<(), LabError> {
    let head = format!("{prefix}-f");
    for ns in sys::namespaces()? {
        let Some(pid) = ns.strip_prefix(&head).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            refuse!("a flood of lab {prefix:?} runs already (pid {pid}, namespace {ns})");
        }
        sys::run("ip", &["netns", "del", &ns])?;
    }
    Ok(())
}

/// Deletes the flood's namespace (and with it its veth) however the flood ends.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = sys::run("ip", &["netns", "del", &self.0]) {
            eprintln!("weft lab flood: removing namespace {}: {e:#}", self.0);
        }
    }
}

/// Floods the router of `node` in lab `prefix` for `seconds` with `kind` from `sources`
/// addresses, and says what it sent.
pub fn flood(
    prefix: &str,
    node: &str,
    kind: FloodKind,
    seconds: u64,
    sources: usize,
) -> Result<FloodReport, LabError> {
    refuse_unless!(
        (1..=MAX_SECONDS).contains(&seconds),
        "--seconds must be 1 to {MAX_SECONDS}"
    );
    refuse_unless!(
        (1..=MAX_SOURCES).contains(&sources),
        "--sources must be 1 to {MAX_SOURCES}"
    );
    let mut lab = state::status(prefix)?;
    let n = crate::routers::find_node(&mut lab, node)?.clone();
    refuse_unless!(
        !n.behind_nat,
        "{} sits behind a NAT box, which drops what it did not ask for: flood a node on the \
         switch",
        n.name
    );
    let target = SocketAddrV4::new(n.underlay.addr(), weft_router::config::DEFAULT_PORT);
    let secret = match kind {
        FloodKind::Garbage => None,
        FloodKind::Initiation => {
            refuse_unless!(lab.spec.routers, "lab {prefix:?} runs no routers to flood");
            let path = state::join_secret_file(prefix);
            let text = std::fs::read(&path)
                .with_context(|| format!("reading the lab's join secret {}", path.display()))?;
            // The primary (first line): the secret members initiate with. The lab's routers
            // run with the default cluster name.
            let secrets = JoinSecrets::parse(&text, weft_crypto::DEFAULT_CLUSTER_NAME)
                .map_err(|e| LabError::Refused(e.to_string()))?;
            Some(secrets.primary().clone())
        }
    };
    sweep(prefix)?;

    let names = Names::new(prefix);
    let u = names.underlay_ns();
    let ns = format!("{prefix}-f{}", std::process::id());
    let port = format!("f{}", std::process::id());
    build::add_ns(&ns)?;
    let _guard = NsGuard(ns.clone());
    sys::ip_in(
        &u,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    sys::ip_in(&u, &["link", "set", &port, "master", "sw", "up"])?;
    let batch: String = (0..sources)
        .map(|k| format!("addr add {}/16 dev eth0\n", source_addr(k)))
        .collect();
    sys::run_with(
        "ip",
        &["-n", &ns, "-batch", "-"],
        &[],
        Some(batch.as_bytes()),
    )
    .context("adding the flood's source addresses")?;
    sys::ip_in(&ns, &["link", "set", "eth0", "up"])?;

    let netns = weft_sys::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{ns}")))
        .context("opening the flood's namespace")?;
    let sockets: Vec<UdpSocket> = (0..sources)
        .map(|k| {
            let s = netns.bind_udp(SocketAddr::from((source_addr(k), 0)))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<anyhow::Result<_>>()?;
    // Let the switch learn the port before the clock starts: the first datagrams would
    // otherwise wait for ARP while the rest queue behind them.
    let mut warm_up = 0;
    for s in &sockets {
        if s.send_to(&[0u8], target).is_ok() {
            warm_up += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut scratch = [0u8; 2048];
    for s in &sockets {
        while s.recv_from(&mut scratch).is_ok() {}
    }

    let mut sender = Sender::new(kind, secret);
    let mut report = FloodReport {
        kind,
        node: n.name.clone(),
        target,
        sources,
        seconds: 0.0,
        // The warm-up datagrams reached the router too (one byte each: malformed).
        datagrams: warm_up,
        bytes: warm_up,
        rate: 0.0,
        send_errors: 0,
        answers: 0,
        responses: 0,
    };
    let drain = |report: &mut FloodReport, scratch: &mut [u8]| {
        for s in &sockets {
            while let Ok((n, _)) = s.recv_from(scratch) {
                report.answers += 1;
                if n > 0 && scratch[0] == MessageType::HandshakeResponse as u8 {
                    report.responses += 1;
                }
            }
        }
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut k = 0usize;
    let mut last_drain = start;
    let mut datagram = Vec::with_capacity(256);
    'flood: loop {
        // The clock is read every 64 datagrams: a system call each time would halve the rate.
        for _ in 0..64 {
            sender.next(&mut datagram);
            loop {
                match sockets[k].send_to(&datagram, target) {
                    Ok(n) => {
                        report.datagrams += 1;
                        report.bytes += n as u64;
                        break;
                    }
                    // A full send buffer: wait for the veth to take it, then send again.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(_) => {
                        report.send_errors += 1;
                        break;
                    }
                }
            }
            k = (k + 1) % sources;
        }
        let now = Instant::now();
        if now.duration_since(last_drain) > Duration::from_millis(50) {
            drain(&mut report, &mut scratch);
            last_drain = now;
        }
        if now >= end {
            break 'flood;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    // The last answers are on their way.
    std::thread::sleep(Duration::from_millis(500));
    drain(&mut report, &mut scratch);
    report.rate = report.datagrams as f64 / report.seconds;
    drop(sockets);
    Ok(report)
}

/// xorshift64*: garbage needs speed, not quality (weft-crypto's seeded generator is for its
/// tests only).
struct Fast(u64);

impl Fast {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Makes the flood's datagrams.
struct Sender {
    kind: FloodKind,
    handshaker: Option<Handshaker>,
    rng: Fast,
}

impl Sender {
    fn new(kind: FloodKind, secret: Option<JoinSecret>) -> Self {
        let mut seed = [0u8; 8];
        OsRandom.fill(&mut seed);
        Self {
            kind,
            // A rogue member: a key of its own, the cluster's secret.
            handshaker: secret.map(|s| Handshaker::new(KeyPair::generate(&mut OsRandom), s)),
            rng: Fast(u64::from_le_bytes(seed) | 1),
        }
    }

    fn next(&mut self, out: &mut Vec<u8>) {
        out.clear();
        match (self.kind, &self.handshaker) {
            (FloodKind::Initiation, Some(h)) => {
                let wall = Timestamp::from_unix(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default(),
                );
                let index = self.rng.next_u64() as u32;
                // A new ephemeral key from the OS for each: every initiation is a fresh one,
                // not a replay the router refuses cheaply.
                let (_, init) = h
                    .initiate(index, None, wall, &mut OsRandom)
                    .expect("initiating with a valid key and secret");
                out.extend_from_slice(&init);
            }
            _ => {
                let len = 1 + (self.rng.next_u64() % 200) as usize;
                out.resize(len, 0);
                self.rng.fill(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_their_corner_of_the_underlay() {
        assert_eq!(source_addr(0), Ipv4Addr::new(198, 18, 192, 1));
        assert_eq!(source_addr(255), Ipv4Addr::new(198, 18, 193, 0));
        let last = source_addr(MAX_SOURCES - 1);
        assert_eq!(last, Ipv4Addr::new(198, 18, 208, 0));
        // Nodes sit at 198.18.0.N and 198.18.1.N; the API server at 198.18.255.254.
        assert!(last < Ipv4Addr::new(198, 18, 255, 254));
    }

    #[test]
    fn kinds_parse_with_clear_errors() {
        assert_eq!("garbage".parse::<FloodKind>().unwrap(), FloodKind::Garbage);
        assert_eq!(
            "initiation".parse::<FloodKind>().unwrap(),
            FloodKind::Initiation
        );
        let e = "syn".parse::<FloodKind>().unwrap_err().to_string();
        assert!(e.contains("garbage or initiation"), "{e}");
    }

    #[test]
    fn garbage_has_random_lengths_and_initiations_the_wire_length() {
        let mut g = Sender::new(FloodKind::Garbage, None);
        let mut d = Vec::new();
        let lens: std::collections::BTreeSet<usize> = (0..200)
            .map(|_| {
                g.next(&mut d);
                d.len()
            })
            .collect();
        assert!(lens.len() > 20 && lens.iter().all(|l| (1..=200).contains(l)));
        let secret = JoinSecret::new(
            b"a lab secret of enough length here",
            weft_crypto::DEFAULT_CLUSTER_NAME,
        )
        .unwrap();
        let mut i = Sender::new(FloodKind::Initiation, Some(secret));
        i.next(&mut d);
        let first = d.clone();
        i.next(&mut d);
        assert_eq!(d.len(), weft_crypto::wire::INITIATION_LEN);
        assert_ne!(first, d, "a new ephemeral key for each initiation");
    }
}
