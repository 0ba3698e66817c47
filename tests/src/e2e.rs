//! The end-to-end tests' harness (`tests/tests/e2e_*.rs`): they drive weft as a user does,
//! through the `weft` CLI (`weft lab …`, `weft status --json`) and `ip netns exec`, against
//! real routers in a lab ([`weft_lab`]). What `weft lab status --json` prints is read back
//! into the lab's own types ([`LabState`]), and every path comes from the lab crate. Traffic
//! is made by this process from threads that entered a pod's namespace (`setns` is per
//! thread), so a transfer is measured and checked without parsing tool output.
//!
//! Every lab lives under its test's own prefix and is removed by [`Lab`]'s `Drop`, also when
//! the test fails. Nothing here touches the root namespace's network.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use weft_lab::{LabState, NodeState, PodState};

/// The weft UDP port (docs/design.md §1).
pub const WEFT_PORT: u16 = weft_router::config::DEFAULT_PORT;

/// `target/debug/weft`, built beside this test binary (`target/debug/deps/e2e_x-HASH`), with
/// `weft-cni` beside it.
pub fn weft_bin() -> PathBuf {
    weft_lab::Binaries::beside_test_binary()
        .unwrap_or_else(|e| panic!("{e:#}"))
        .weft
}

/// Whether this test can run: root, the lab's tools and `tools`. Without them it says so
/// loudly and returns false; under `CI=true` it panics instead, since a skip there is a
/// failure ([`weft_lab::capability::can_run`]).
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    let all: Vec<&str> = weft_lab::LAB_TOOLS.iter().chain(tools).copied().collect();
    weft_lab::capability::can_run(test, &all)
}

/// Prints a measured figure past libtest's capture, for the report.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "[e2e] {line}");
}

/// Runs a program, returning (success, stdout, stderr).
pub fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A lab brought up with `weft lab up`; `weft lab down` runs when it is dropped.
pub struct Lab {
    /// Its prefix (`weft lab --prefix`).
    pub prefix: String,
    /// The `weft` binary that runs it.
    pub weft: PathBuf,
    /// Its nodes, as `weft lab status --json` last reported them.
    pub nodes: Vec<NodeState>,
    /// Its pods, likewise.
    pub pods: Vec<PodState>,
}

impl Lab {
    /// `weft lab up --prefix PREFIX ARGS…`. The guard exists before `up` runs, so a failing
    /// `up` is cleaned up too.
    pub fn up(prefix: &str, args: &[&str]) -> Lab {
        let mut lab = Lab {
            prefix: prefix.into(),
            weft: weft_bin(),
            nodes: vec![],
            pods: vec![],
        };
        let mut full = vec!["lab", "up", "--prefix", prefix];
        full.extend_from_slice(args);
        let start = Instant::now();
        let (ok, out, err) = run(&lab.weft, &full);
        assert!(ok, "weft {}: {err}\n{out}", full.join(" "));
        report(&format!(
            "{prefix}: lab up {} in {:.1}s",
            args.join(" "),
            start.elapsed().as_secs_f64()
        ));
        lab.refresh();
        lab
    }

    /// The lab's directory (state dirs, logs; removed by `weft lab down`).
    pub fn dir(&self) -> PathBuf {
        weft_lab::lab_dir(&self.prefix)
    }

    /// Reads `weft lab status --json` again, into the lab's own state type.
    pub fn refresh(&mut self) {
        let args = ["lab", "status", "--json", "--prefix", &self.prefix];
        let out = self.weft(&args);
        let state: LabState =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("weft {args:?}: {e}: {out}"));
        self.nodes = state.nodes;
        self.pods = state.pods;
    }

    /// Runs `weft ARGS…`, panicking with its output on failure.
    pub fn weft(&self, args: &[&str]) -> String {
        let (ok, out, err) = run(&self.weft, args);
        assert!(ok, "weft {} failed: {err}\n{out}", args.join(" "));
        out
    }

    /// `weft lab SUBCOMMAND --prefix PREFIX REST…` (the prefix before any `--`).
    pub fn lab(&self, args: &[&str]) -> String {
        let mut full = vec!["lab", args[0], "--prefix", &self.prefix];
        full.extend_from_slice(&args[1..]);
        self.weft(&full)
    }

    /// The node named `name` (`n1`).
    pub fn node(&self, name: &str) -> &NodeState {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The pod named `name` (`n1-p1`).
    pub fn pod(&self, name: &str) -> &PodState {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `ip netns exec NODE weft status --json --state-dir DIR`: the router's own report.
    pub fn status(&self, node: &str) -> Value {
        self.try_status(node)
            .unwrap_or_else(|e| panic!("weft status of {node}: {e}"))
    }

    /// Like [`Lab::status`], an error when the router does not answer.
    pub fn try_status(&self, node: &str) -> Result<Value, String> {
        let n = self.node(node);
        let dir = n.state_dir.to_str().unwrap();
        let (ok, out, err) = run(
            Path::new("ip"),
            &[
                "netns",
                "exec",
                &n.namespace,
                self.weft.to_str().unwrap(),
                "status",
                "--json",
                "--state-dir",
                dir,
            ],
        );
        if !ok {
            return Err(err);
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// The peer named `peer` in `node`'s status, if it has one.
    pub fn peer(&self, node: &str, peer: &str) -> Option<Value> {
        self.status(node)["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(peer))
            .cloned()
    }

    /// `weft lab exec POD -- ping -c 1 -W 2 ADDR` succeeded.
    pub fn ping(&self, pod: &str, to: Ipv4Addr) -> bool {
        let (ok, _, _) = run(
            &self.weft,
            &[
                "lab",
                "exec",
                pod,
                "--prefix",
                &self.prefix,
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                &to.to_string(),
            ],
        );
        ok
    }

    /// Pings from `pod` until a reply comes, for up to `within`; returns the attempts it
    /// took (reported when more than one), or None.
    pub fn reaches(&self, pod: &str, to: Ipv4Addr, within: Duration) -> Option<u32> {
        let start = Instant::now();
        let mut attempts = 0;
        while attempts == 0 || start.elapsed() < within {
            attempts += 1;
            if self.ping(pod, to) {
                if attempts > 1 {
                    report(&format!(
                        "{}: {pod} -> {to} answered only at attempt {attempts}",
                        self.prefix
                    ));
                }
                return Some(attempts);
            }
        }
        None
    }

    /// The last lines of a node's router log, for failure messages.
    pub fn log_tail(&self, node: &str) -> String {
        self.node(node).router_log_tail(15)
    }

    /// Waits until `node` lists `peer` as established with a path for which `path_ok` holds.
    /// Returns how long it took, or None after `timeout`.
    pub fn wait_peer(
        &self,
        node: &str,
        peer: &str,
        timeout: Duration,
        path_ok: impl Fn(&str) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if let Some(p) = self.peer(node, peer) {
                let state = p["state"].as_str().unwrap_or("");
                let path = p["path"].as_str().unwrap_or("");
                if (state == "established" || state == "rekeying") && path_ok(path) {
                    return Some(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every node has an established tunnel to every other node, and knows
    /// every other node's pod block: a pod on each node answers a pod on every other node.
    /// (A tunnel comes up before the records carrying the blocks have spread by gossip, about
    /// a second, during which pod packets are dropped as `no_route`.)
    pub fn wait_full_mesh(&self, timeout: Duration) {
        let start = Instant::now();
        self.wait_tunnels(timeout);
        for a in &self.nodes {
            for b in &self.nodes {
                let (Some(pa), Some(pb)) = (
                    self.pods.iter().find(|p| p.node == a.name),
                    self.pods.iter().find(|p| p.node == b.name),
                ) else {
                    continue;
                };
                if a.name != b.name {
                    let left = timeout.saturating_sub(start.elapsed());
                    assert!(
                        self.reaches(&pa.name, pb.address, left).is_some(),
                        "{} does not reach {} within {timeout:?}: {}",
                        pa.name,
                        pb.name,
                        self.status(&a.name)
                    );
                }
            }
        }
        report(&format!(
            "{}: full mesh, every node's pods reachable, {:.1}s after up",
            self.prefix,
            start.elapsed().as_secs_f64()
        ));
    }

    /// Waits until every node has an established tunnel to every other node.
    pub fn wait_tunnels(&self, timeout: Duration) {
        let start = Instant::now();
        for a in &self.nodes {
            for b in &self.nodes {
                if a.name != b.name {
                    let left = timeout.saturating_sub(start.elapsed());
                    assert!(
                        self.wait_peer(&a.name, &b.name, left, |_| true).is_some(),
                        "{} has no tunnel to {} after {:?}: {}\n{}",
                        a.name,
                        b.name,
                        timeout,
                        self.status(&a.name),
                        self.log_tail(&a.name)
                    );
                }
            }
        }
    }

    /// Checks that every router runs the data path the test run asks for, and names it. The
    /// suite runs twice (scripts/test-all.sh): with `WEFT_OFFLOAD=off`, which the lab's
    /// routers inherit, every offload must be off; otherwise (auto) the TUN offloads, UDP GSO
    /// and GRO must all be on, which every kernel these tests run on supports.
    pub fn assert_data_path(&self) -> &'static str {
        let off = std::env::var("WEFT_OFFLOAD").is_ok_and(|v| v == "off");
        for node in &self.nodes {
            let d = &self.status(&node.name)["data_path"];
            let (tun, gso, gro) = (
                d["tun_offload"].as_bool(),
                d["gso_segments"].as_u64(),
                d["gro_segments"].as_u64(),
            );
            if off {
                assert_eq!(
                    (tun, gso, gro),
                    (Some(false), Some(1), Some(1)),
                    "{}: WEFT_OFFLOAD=off, but the data path is {d}",
                    node.name
                );
            } else {
                assert!(
                    tun == Some(true) && gso.is_some_and(|n| n > 1) && gro.is_some_and(|n| n > 1),
                    "{}: offloads expected on (auto), but the data path is {d}",
                    node.name
                );
                // The TUN device's GSO frames are capped to what one batch holds.
                let (_, link, _) = run(
                    Path::new("ip"),
                    &["-n", &node.namespace, "-d", "link", "show", "weft-tun"],
                );
                assert!(
                    link.contains("gso_max_segs 128 "),
                    "{}: weft-tun without its GSO cap: {link}",
                    node.name
                );
            }
        }
        if off {
            "without offloads"
        } else {
            "with offloads"
        }
    }

    /// `GET /metrics` from the router of `node`, inside its namespace.
    pub fn metrics(&self, node: &str) -> String {
        in_netns(&self.node(node).namespace, || {
            let mut s = TcpStream::connect("127.0.0.1:6787").expect("metrics port");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }
}

/// The switch's address once [`Lab::add_world`] made it the nodes' default gateway.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// A host outside the cluster, behind the gateway ([`Lab::add_world`]): what the internet or
/// a cloud API is to a real cluster. It has no route to the pods.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 2);

impl Lab {
    /// Makes the lab look like the world real nodes live in: the switch's namespace becomes a
    /// router at [`UNDERLAY_GATEWAY`], every node gets a default route through it, and a
    /// namespace `PREFIX-o` behind it holds [`OUTSIDE`] (which routes nothing back to the
    /// pods). All of it inside the lab's namespaces, removed by `weft lab down`. Returns the
    /// outside namespace's name.
    pub fn add_world(&self) -> String {
        let names = weft_lab::Names::new(&self.prefix);
        let u = names.underlay_ns();
        let outside = format!("{}-o", self.prefix);
        let ip = |args: &[&str]| {
            let (ok, out, err) = run(Path::new("ip"), args);
            assert!(ok, "ip {}: {err}{out}", args.join(" "));
        };
        ip(&["-n", &u, "addr", "add", "198.18.255.1/16", "dev", "sw"]);
        ip(&["netns", "add", &outside]);
        ip(&["-n", &outside, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &u, "link", "add", "out", "type", "veth", "peer", "name", "eth0", "netns",
            &outside,
        ]);
        ip(&["-n", &u, "addr", "add", "198.19.254.1/24", "dev", "out"]);
        ip(&["-n", &u, "link", "set", "out", "up"]);
        ip(&[
            "-n",
            &outside,
            "addr",
            "add",
            "198.19.254.2/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &outside, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &outside,
            "route",
            "add",
            "default",
            "via",
            "198.19.254.1",
        ]);
        ip(&[
            "netns",
            "exec",
            &u,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        for n in &self.nodes {
            ip(&[
                "-n",
                &n.namespace,
                "route",
                "add",
                "default",
                "via",
                &UNDERLAY_GATEWAY.to_string(),
            ]);
        }
        outside
    }

    /// Runs `args` inside node `node`'s namespace (its host network), returning (success,
    /// stdout, stderr).
    pub fn on_node(&self, node: &str, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["netns", "exec", &self.node(node).namespace];
        full.extend_from_slice(args);
        run(Path::new("ip"), &full)
    }
}

/// Whether any frame carries `marker` anywhere in its bytes: a payload seen in plaintext.
pub fn frames_carry(frames: &[Vec<u8>], marker: &[u8]) -> usize {
    frames
        .iter()
        .filter(|f| f.windows(marker.len()).any(|w| w == marker))
        .count()
}

/// Sends `count` UDP datagrams carrying `marker` from a socket in `ns` to `to`, 20 ms apart;
/// send errors (no route, a blackhole) are part of what is tested and ignored.
pub fn send_marked(ns: &str, to: SocketAddr, marker: &'static [u8], count: usize) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..count {
            let _ = s.send_to(marker, to);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// A UDP echo in `ns` on `port`: answers every datagram with its sender's address as text,
/// so a test sees which source address arrived. Stops when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &str, port: u16) -> Echo {
        let socket = in_netns(ns, move || UdpSocket::bind(("0.0.0.0", port))).expect("echo bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(from.ip().to_string().as_bytes(), from);
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks the [`Echo`] at `to` from a socket in `ns`, retrying for up to `within`: the source
/// address the echo saw, or None when no answer came.
pub fn ask_echo(ns: &str, to: SocketAddr, within: Duration) -> Option<Ipv4Addr> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while start.elapsed() < within {
            let _ = s.send_to(b"who am i", to);
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && from == to
            {
                return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
            }
        }
        None
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        let (ok, _, err) = run(&self.weft, &["lab", "down", "--prefix", &self.prefix]);
        if !ok {
            report(&format!("cleaning up lab {}: {err}", self.prefix));
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns` (`/run/netns/NS`). Sockets made there
/// stay in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // setns changes only this thread.
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// A deterministic byte stream (xorshift64*), different per seed.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a, 64 bits: the transfer checksum, computed by sender and receiver independently.
#[derive(Clone, Copy)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn value(self) -> u64 {
        self.0
    }
}

/// What a TCP transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    pub sent_sum: u64,
    pub received_sum: u64,
    pub secs: f64,
}

impl Transfer {
    /// Whether everything sent arrived, unchanged.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent_sum == self.received_sum
    }
    pub fn mbytes_per_sec(&self) -> f64 {
        self.received as f64 / 1e6 / self.secs
    }
}

/// What to send in a transfer.
#[derive(Clone)]
pub enum Payload {
    /// `bytes` of the seeded pseudo-random stream.
    Random { seed: u64, bytes: u64 },
    /// `bytes` of `text` repeated (a recognisable plaintext).
    Repeat { text: Vec<u8>, bytes: u64 },
}

/// Sends `payload` over TCP from a socket in `from_ns` to a listener in `to_ns` at
/// `to:port`, and checks what arrived. `pace`, when set, sleeps that long after every 64 KiB
/// (a long-running flow for fault tests). A transfer making no progress for `stall` fails.
pub fn transfer(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    payload: Payload,
    pace: Option<Duration>,
    stall: Duration,
) -> Result<Transfer, String> {
    transfer_with_mss(from_ns, to_ns, to, port, payload, pace, None, stall)
}

/// A TCP connection from a socket made in `ns`, with its maximum segment size set first
/// when `mss` is given (TCP_MAXSEG must be set before connecting).
fn connect_in(
    ns: &str,
    to: SocketAddr,
    mss: Option<u32>,
    stall: Duration,
) -> std::io::Result<TcpStream> {
    let Some(mss) = mss else {
        return in_netns(ns, move || TcpStream::connect_timeout(&to, stall));
    };
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    let fd = in_netns(ns, || {
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
    })?;
    setsockopt(&fd, sockopt::TcpMaxSeg, &mss)?;
    let SocketAddr::V4(v4) = to else {
        unreachable!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    Ok(TcpStream::from(fd))
}

/// [`transfer`] from a socket whose TCP maximum segment size is `mss`, when given.
#[allow(clippy::too_many_arguments)]
pub fn transfer_with_mss(
    from_ns: &str,
    to_ns: &str,
    to: Ipv4Addr,
    port: u16,
    payload: Payload,
    pace: Option<Duration>,
    mss: Option<u32>,
    stall: Duration,
) -> Result<Transfer, String> {
    let listener = in_netns(to_ns, move || TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| format!("listen in {to_ns}: {e}"))?;
    let receiver = std::thread::spawn(move || -> Result<(u64, u64), String> {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(_) if start.elapsed() < stall => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("no connection arrived: {e}")),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(stall)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut n, mut sum) = (0u64, Checksum::default());
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    n += k as u64;
                    sum.update(&buf[..k]);
                }
                Err(e) => return Err(format!("receiving after {n} bytes: {e}")),
            }
        }
        Ok((n, sum.value()))
    });
    let start = Instant::now();
    let sender = connect_in(from_ns, SocketAddr::from((to, port)), mss, stall);
    let mut s = sender.map_err(|e| format!("connect to {to}:{port}: {e}"))?;
    s.set_write_timeout(Some(stall)).unwrap();
    let (bytes, mut random, text) = match &payload {
        Payload::Random { seed, bytes } => (*bytes, Some(Pattern::new(*seed)), vec![]),
        Payload::Repeat { text, bytes } => (*bytes, None, text.clone()),
    };
    let mut buf = vec![0u8; 1 << 16];
    if random.is_none() {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = text[i % text.len()];
        }
    }
    let (mut sent, mut sum) = (0u64, Checksum::default());
    while sent < bytes {
        let k = ((bytes - sent) as usize).min(buf.len());
        if let Some(p) = random.as_mut() {
            p.fill(&mut buf[..k]);
        } else {
            // Keep the repetition continuous across writes.
            let off = (sent % text.len() as u64) as usize;
            for (i, b) in buf[..k].iter_mut().enumerate() {
                *b = text[(off + i) % text.len()];
            }
        }
        s.write_all(&buf[..k])
            .map_err(|e| format!("sending after {sent} bytes: {e}"))?;
        sum.update(&buf[..k]);
        sent += k as u64;
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (received, received_sum) = receiver.join().expect("receiver thread")?;
    Ok(Transfer {
        sent,
        received,
        sent_sum: sum.value(),
        received_sum,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// A UDP echo flow from one pod to another: a probe every 50 ms, each reply's arrival time
/// recorded. It measures how long traffic stops during a fault.
pub struct Prober {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub interval: Duration,
}

impl Prober {
    pub fn start(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16) -> Prober {
        Self::start_marked(from_ns, to_ns, to, port, Duration::from_millis(50), b"")
    }

    /// Like [`Prober::start`], a probe every `interval`, each payload `marker` followed by
    /// its sequence number: a capture finds the flow by `marker` if it ever shows in
    /// plaintext.
    pub fn start_marked(
        from_ns: &str,
        to_ns: &str,
        to: Ipv4Addr,
        port: u16,
        interval: Duration,
        marker: &'static [u8],
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let echo = in_netns(to_ns, move || UdpSocket::bind(("0.0.0.0", port))).expect("echo bind");
        echo.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let client = in_netns(from_ns, || UdpSocket::bind("0.0.0.0:0")).expect("client bind");
        client.connect((to, port)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut threads = Vec::new();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        }));
        let sender = client.try_clone().unwrap();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                // Errors (no route while a router is down) are part of what is measured.
                let _ = sender.send(&[marker, &seq.to_le_bytes()].concat());
                seq += 1;
                std::thread::sleep(interval);
            }
        }));
        let (s, r) = (stop.clone(), replies.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if client.recv(&mut buf).is_ok() {
                    r.lock().unwrap().push(Instant::now());
                }
            }
        }));
        Prober {
            stop,
            replies,
            threads,
            interval,
        }
    }

    /// Replies received so far.
    pub fn replies(&self) -> Vec<Instant> {
        self.replies.lock().unwrap().clone()
    }

    /// The first reply at or after `t`.
    pub fn first_reply_after(&self, t: Instant) -> Option<Instant> {
        self.replies().into_iter().find(|r| *r >= t)
    }

    /// Waits up to `timeout` for a reply at or after `t`; returns how long after `t` it came.
    pub fn wait_reply_after(&self, t: Instant, timeout: Duration) -> Option<Duration> {
        while t.elapsed() < timeout {
            if let Some(r) = self.first_reply_after(t) {
                return Some(r - t);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.first_reply_after(t).map(|r| r - t)
    }

    /// Waits until `n` replies in a row arrive (no gap above 3 intervals) after `t`.
    pub fn wait_steady_after(&self, t: Instant, n: usize, timeout: Duration) -> bool {
        while t.elapsed() < timeout {
            let after: Vec<Instant> = self.replies().into_iter().filter(|r| *r >= t).collect();
            if after.len() >= n
                && after[after.len() - n..]
                    .windows(2)
                    .all(|w| w[1] - w[0] < 3 * self.interval)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The longest time without a reply between `from` and `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for r in self
            .replies()
            .into_iter()
            .filter(|r| *r >= from && *r <= to)
        {
            gap = gap.max(r - last);
            last = r;
        }
        gap.max(to.saturating_duration_since(last))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A tcpdump writing a pcap inside a namespace, stopped by [`Capture::stop`] (or dropped).
pub struct Capture {
    child: std::process::Child,
    pub path: PathBuf,
}

impl Capture {
    /// Captures every frame on `iface` in `ns` (no filter: the test inspects all of it).
    pub fn start(ns: &str, iface: &str, path: &Path) -> Capture {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-U", "-s", "0",
            ])
            // Stay root: the pcap goes into the lab's directory, which only root may write.
            .args(["-Z", "root", "-w"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // Wait for "listening on", so nothing sent afterwards is missed.
        let mut err = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            match err.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen)),
            }
        }
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = err.read_to_end(&mut rest);
        });
        Capture {
            child,
            path: path.to_owned(),
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns the frames captured.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        // The child is `ip netns exec`, which execs tcpdump: the pid is tcpdump's.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        read_pcap(&std::fs::read(&self.path).expect("read the pcap"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frames of a classic pcap file (either byte order, any link type: Ethernet here).
pub fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "pcap too short: {} bytes", bytes.len());
    let le = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |at: usize| {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type is Ethernet");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(at + 8) as usize;
        let start = at + 16;
        if start + caplen > bytes.len() {
            break; // a record cut short by the stop
        }
        frames.push(bytes[start..start + caplen].to_vec());
        at = start + caplen;
    }
    frames
}

/// The total of `weft_drops_total` lines in a metrics text, by reason.
pub fn metric_drops(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("weft_drops_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `drops` of a `weft status --json` report, by reason.
pub fn status_drops(status: &Value) -> std::collections::BTreeMap<String, u64> {
    status["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends UDP datagrams from a socket in `ns` to `to`.
pub fn spray(ns: &str, to: SocketAddr, datagrams: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in &datagrams {
            s.send_to(d, to).unwrap();
            // Paced, so the router's socket buffer never overflows and every one is counted.
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

/// A lab whose routers run with `--kubernetes` against a fake API server on port 6443 of the
/// lab's switch (`weft lab up --kubernetes` gives the switch `weft_lab::plan::API_SERVER`),
/// which holds a Node per lab node (`n1`, … at their underlay addresses, with podCIDR
/// `pod_cidr(i)`) before the routers start: `weft lab up --prefix PREFIX --nodes N
/// --kubernetes KUBECONFIG ARGS…`. The kubeconfig file goes when the third value is dropped.
pub fn kube_lab(
    prefix: &str,
    nodes: usize,
    pod_cidr: fn(usize) -> String,
    args: &[&str],
) -> (Lab, crate::fake_kube::FakeApi, KubeconfigFile) {
    const API_PORT: u16 = 6443;
    // A lab left by a crashed run must be gone before the server looks for the namespace.
    let _ = run(&weft_bin(), &["lab", "down", "--prefix", prefix]);
    let objects: Vec<Value> = (1..=nodes)
        .map(|i| {
            crate::fake_kube::node(
                &format!("n{i}"),
                &weft_lab::plan::underlay_addr(i, false).addr().to_string(),
                Some(&pod_cidr(i)),
            )
        })
        .collect();
    let switch_ns = weft_lab::Names::new(prefix).underlay_ns();
    let server = std::thread::spawn(move || {
        crate::fake_kube::FakeApi::start_with_nodes(
            ([0, 0, 0, 0], API_PORT).into(),
            Some(format!("/run/netns/{switch_ns}").into()),
            objects,
        )
    });
    let kubeconfig = KubeconfigFile(std::env::temp_dir().join(format!("weft-{prefix}-kubeconfig")));
    let api_addr = weft_lab::plan::API_SERVER.split('/').next().unwrap();
    std::fs::write(
        &kubeconfig.0,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: \
             http://{api_addr}:{API_PORT}\ncontexts:\n- name: lab\n  context:\n    \
             cluster: lab\n    user: lab\ncurrent-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let n = nodes.to_string();
    let mut full = vec![
        "--nodes",
        &n,
        "--kubernetes",
        kubeconfig.0.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let lab = Lab::up(prefix, &full);
    let api = server.join().expect("the fake API server started");
    (lab, api, kubeconfig)
}

/// The kubeconfig file of a [`kube_lab`], removed when dropped.
pub struct KubeconfigFile(PathBuf);

impl Drop for KubeconfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
