//! End-to-end: the upstream netpol suite's world on a lab that kubectl drives. `weft lab up
//! --api --model` builds namespaces x, y, z (label `ns`) with pods a, b, c (label `pod`), each
//! a real lab pod attached by weft-cni, serving TCP and UDP on 80 and 81 (ports named
//! `serve-80-tcp` etc.); the routers enforce NetworkPolicy from the lab's API server. Each
//! step is a `kubectl apply`, `delete` or `label`; after it the full 9×9 grid is probed with
//! real connections for the step's protocols and ports, and must equal both the grid written
//! in the step and the engine's verdicts (`weft_policy::allows`) on the objects read back
//! through kubectl. One pair that the step changes is watched from the moment kubectl
//! returns: its reachability must change within 1 s. The same steps run with the pods
//! spread over three nodes and with all nine on one node (bridged traffic). An established
//! connection that a new policy allows keeps working through the update.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;
use weft_policy::{Local, Protocol, allows};
use weft_tests::e2e::*;
use world::{
    OPEN, TCP80, TCP81, UDP80, UDP81, XA_FROM_Y, XA_FROM_Z, XA_ISOLATED, parse_grid, render,
};

/// The engine's grid tests' world: its grids, their parser and printer, shared, not copied.
#[path = "../../policy/tests/support/mod.rs"]
mod world;

const NAMES: [&str; 9] = ["xa", "xb", "xc", "ya", "yb", "yc", "za", "zb", "zc"];
/// How long a probe waits before it calls the pair blocked.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Namespaces y and z (both labelled `ns: z`) reach x/a, x's other pods do not.
const XA_FROM_Y_AND_Z: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  X  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";

/// The pods labelled `pod: b` in every namespace reach x/a.
const XA_FROM_PODS_B: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  X  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .";

/// The same once y/c is labelled `pod: b` too.
const XA_FROM_PODS_B_AND_YC: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  X  .  .  .  .  .  .  .  .
    ya  X  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  X  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  X  .  .  .  .  .  .  .  .";

/// Nobody reaches x's pods but themselves.
const X_DENIES_INGRESS: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  X  X  .  .  .  .  .  .
    xb  X  .  X  .  .  .  .  .  .
    xc  X  X  .  .  .  .  .  .  .
    ya  X  X  X  .  .  .  .  .  .
    yb  X  X  X  .  .  .  .  .  .
    yc  X  X  X  .  .  .  .  .  .
    za  X  X  X  .  .  .  .  .  .
    zb  X  X  X  .  .  .  .  .  .
    zc  X  X  X  .  .  .  .  .  .";

/// x's pods reach nobody but themselves.
const X_DENIES_EGRESS: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  X  X  X  X  X  X  X  X
    xb  X  .  X  X  X  X  X  X  X
    xc  X  X  .  X  X  X  X  X  X
    ya  .  .  .  .  .  .  .  .  .
    yb  .  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";

/// Everyone but y/b reaches x/a.
const XA_NOT_FROM_YB: &str = "
        xa xb xc ya yb yc za zb zc
    xa  .  .  .  .  .  .  .  .  .
    xb  .  .  .  .  .  .  .  .  .
    xc  .  .  .  .  .  .  .  .  .
    ya  .  .  .  .  .  .  .  .  .
    yb  X  .  .  .  .  .  .  .  .
    yc  .  .  .  .  .  .  .  .  .
    za  .  .  .  .  .  .  .  .  .
    zb  .  .  .  .  .  .  .  .  .
    zc  .  .  .  .  .  .  .  .  .";

/// The model: three namespaces of three pods, each pod naming its four ports; on `node`
/// when given, spread round-robin otherwise.
fn model(node: Option<&str>) -> String {
    let mut out = String::new();
    for ns in ["x", "y", "z"] {
        out += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n---\n"
        );
    }
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            out += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: \"{pod}\", namespace: \"{ns}\", labels: {{pod: \"{pod}\"}}}}\nspec:\n"
            );
            if let Some(node) = node {
                out += &format!("  nodeName: {node}\n");
            }
            out += "  containers:\n  - name: serve\n    ports:\n";
            for port in [80, 81] {
                for proto in ["tcp", "udp"] {
                    out += &format!(
                        "    - {{name: serve-{port}-{proto}, containerPort: {port}, protocol: {}}}\n",
                        proto.to_uppercase()
                    );
                }
            }
            out += "---\n";
        }
    }
    out
}

/// A grid: row = source, column = destination, true = connected.
type Grid = [[bool; 9]; 9];

/// TCP echo and UDP echo servers on 80 and 81 in every pod, until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(netns: &[String]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in netns {
            for port in [80u16, 81] {
                let (tcp, udp) = in_netns(ns, move || {
                    (
                        TcpListener::bind(("0.0.0.0", port)).expect("tcp bind"),
                        UdpSocket::bind(("0.0.0.0", port)).expect("udp bind"),
                    )
                });
                tcp.set_nonblocking(true).unwrap();
                let s = stop.clone();
                threads.push(std::thread::spawn(move || serve_tcp(tcp, s)));
                udp.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let s = stop.clone();
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while !s.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = udp.recv_from(&mut buf) {
                            let _ = udp.send_to(&buf[..n], from);
                        }
                    }
                }));
            }
        }
        Servers { stop, threads }
    }
}

fn serve_tcp(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = [0u8; 512];
                    while !stop.load(Ordering::Relaxed) {
                        match conn.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection attempt from inside `ns`: a TCP handshake, or a UDP datagram echoed (sent
/// twice, for a first packet that waits on ARP).
fn probe(ns: &str, to: SocketAddr, protocol: Protocol, timeout: Duration) -> bool {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    match protocol {
        Protocol::Tcp => TcpStream::connect_timeout(&to, timeout).is_ok(),
        Protocol::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(timeout / 2)).unwrap();
            let mut buf = [0u8; 16];
            for _ in 0..2 {
                let _ = s.send_to(b"probe", to);
                if let Ok((_, from)) = s.recv_from(&mut buf)
                    && from == to
                {
                    return true;
                }
            }
            false
        }
        other => panic!("no probe for {other}"),
    }
}

struct Cluster {
    lab: Lab,
    kubeconfig: PathBuf,
    /// Per pod, in [`NAMES`] order: its network namespace and address.
    pods: Vec<(String, Ipv4Addr)>,
    _servers: Servers,
    /// The slowest change after a kubectl command returned, and after it started.
    slowest: (Duration, Duration),
}

impl Cluster {
    fn up(prefix: &str, nodes: usize, node: Option<&str>) -> Cluster {
        let file = std::env::temp_dir().join(format!("weft-{prefix}-model.yaml"));
        std::fs::write(&file, model(node)).unwrap();
        let n = nodes.to_string();
        let lab = Lab::up(
            prefix,
            &[
                "--nodes",
                &n,
                "--pods",
                "0",
                "--api",
                "--model",
                file.to_str().unwrap(),
            ],
        );
        let _ = std::fs::remove_file(&file);
        let kubeconfig = PathBuf::from(lab.lab(&["kubeconfig"]).trim());
        let pods: Vec<(String, Ipv4Addr)> = NAMES
            .iter()
            .map(|n| {
                let p = lab.pod(&format!("{}/{}", &n[..1], &n[1..]));
                (p.namespace.clone(), p.address)
            })
            .collect();
        let servers = Servers::start(&pods.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
        lab.wait_full_mesh(Duration::from_secs(30));
        Cluster {
            lab,
            kubeconfig,
            pods,
            _servers: servers,
            slowest: (Duration::ZERO, Duration::ZERO),
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn addr(&self, pod: usize, port: u16) -> SocketAddr {
        (self.pods[pod].1, port).into()
    }

    /// The grid as real traffic finds it, every pair probed at once.
    fn probe_grid(&self, (protocol, port): (Protocol, u16)) -> Grid {
        let mut threads = Vec::new();
        for i in 0..9 {
            for j in 0..9 {
                let (ns, to) = (self.pods[i].0.clone(), self.addr(j, port));
                threads.push(std::thread::spawn(move || {
                    probe(&ns, to, protocol, PROBE_TIMEOUT)
                }));
            }
        }
        let mut out = [[false; 9]; 9];
        for (k, t) in threads.into_iter().enumerate() {
            out[k / 9][k % 9] = t.join().unwrap();
        }
        out
    }

    /// The engine's grid on the objects the API server holds now.
    fn engine_grid(&self, (protocol, port): (Protocol, u16)) -> Grid {
        fn items<T: serde::de::DeserializeOwned>(c: &Cluster, kind: &str) -> Vec<T> {
            let list: Value =
                serde_json::from_str(&c.kubectl(&["get", kind, "-A", "-o", "json"], None))
                    .expect("kubectl's JSON");
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| serde_json::from_value(o.clone()).expect("an object"))
                .collect()
        }
        let policies: Vec<NetworkPolicy> = items(self, "networkpolicies");
        let pods: Vec<Pod> = items(self, "pods");
        let namespaces: Vec<Namespace> = items(self, "namespaces");
        let model = weft_policy::compute(&policies, &pods, &namespaces, Local::All);
        assert!(model.problems().is_empty(), "{:?}", model.problems());
        let mut out = [[false; 9]; 9];
        for (i, row) in out.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                let (src, dst) = (self.pods[i].1.into(), self.pods[j].1.into());
                *cell = allows(&model, src, dst, protocol, port).is_allowed();
            }
        }
        out
    }

    /// Runs `action` (a kubectl command) while watching `from -> to` on TCP 80, which it
    /// must turn to `now_connected` within 1 s; then checks the grid of every probe.
    fn step(
        &mut self,
        what: &str,
        action: &dyn Fn(&Cluster),
        watch: (&str, &str, bool),
        probes: &[(Protocol, u16)],
        expected: &str,
    ) {
        let (from, to, now_connected) = watch;
        let index = |n: &str| NAMES.iter().position(|x| *x == n).unwrap();
        let (ns, dst) = (self.pods[index(from)].0.clone(), self.addr(index(to), 80));
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        // Attempts every 50 ms, each a new connection (a new conntrack entry); the change
        // is the first of three attempts in a row with the new outcome.
        let watcher = std::thread::spawn(move || {
            let mut attempts: Vec<(Instant, bool)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let started = Instant::now();
                let ns = ns.clone();
                let ok = std::thread::spawn(move || {
                    probe(&ns, dst, Protocol::Tcp, Duration::from_millis(150))
                })
                .join()
                .unwrap();
                attempts.push((started, ok));
                let n = attempts.len();
                if d.load(Ordering::Relaxed)
                    && n >= 3
                    && attempts[n - 3..].iter().all(|a| a.1 == now_connected)
                {
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50).saturating_sub(started.elapsed()));
            }
            attempts
        });
        let started = Instant::now();
        action(self);
        let returned = Instant::now();
        done.store(true, Ordering::Relaxed);
        let attempts = watcher.join().unwrap();
        let n = attempts.len();
        assert!(
            n >= 3 && attempts[n - 3..].iter().all(|a| a.1 == now_connected),
            "{what}: {from} -> {to} did not become {} within 20 s\n{}",
            if now_connected {
                "connected"
            } else {
                "blocked"
            },
            self.lab.log_tail("n1")
        );
        // The first attempt of the final run of the new outcome, from kubectl's return.
        let mut k = n - 1;
        while k > 0 && attempts[k - 1].1 == now_connected {
            k -= 1;
        }
        let changed = attempts[k].0;
        let after_return = changed.saturating_duration_since(returned);
        let after_start = changed.saturating_duration_since(started);
        report(&format!(
            "{}: {what}: {from} -> {to} {} {:.0} ms after kubectl returned ({:.0} ms after it started)",
            self.lab.prefix,
            if now_connected {
                "connected"
            } else {
                "blocked"
            },
            after_return.as_secs_f64() * 1000.0,
            after_start.as_secs_f64() * 1000.0,
        ));
        assert!(
            after_return <= Duration::from_secs(1),
            "{what}: reachability changed {after_return:?} after kubectl returned"
        );
        self.slowest.0 = self.slowest.0.max(after_return);
        self.slowest.1 = self.slowest.1.max(after_start);
        self.expect(what, probes, expected);
    }

    /// The probed grid, the written grid and the engine's grid agree for every probe.
    fn expect(&self, what: &str, probes: &[(Protocol, u16)], expected: &str) {
        let want = parse_grid(expected);
        for &p in probes {
            let engine = self.engine_grid(p);
            assert!(
                engine == want,
                "{what}, {} {}: the engine's grid\n{}differs from the step's\n{}",
                p.0,
                p.1,
                render(&engine),
                render(&want)
            );
            let got = self.probe_grid(p);
            assert!(
                got == want,
                "{what}, {} {}: real traffic\n{}expected\n{}{}",
                p.0,
                p.1,
                render(&got),
                render(&want),
                self.lab.log_tail("n1")
            );
        }
    }
}

impl Cluster {
    /// `weft policy explain` on `from -> to`, TCP 80: (exit code, what it printed).
    fn explain(&self, from: &str, to: &str) -> (Option<i32>, String) {
        let out = Command::new(&self.lab.weft)
            .arg("policy")
            .arg("explain")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([&spec(from), &spec(to), "--port", "80"])
            .output()
            .expect("running weft policy explain");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.stderr.is_empty(),
            "weft policy explain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// A drop is explained by the policy that isolates `to`, and the deny counter the
    /// explanation names, on `to`'s node, has counted the probes the grid just made.
    fn explain_drop(&self, from: &str, to: &str, policy: &str) {
        let (code, text) = self.explain(from, to);
        assert_eq!(code, Some(3), "a drop exits 3:\n{text}");
        let want = format!("ingress of {}: DROPPED: isolated by {policy},", spec(to));
        assert!(text.contains(&want), "{want:?} not in\n{text}");
        let counter = format!("deny-ingress/{policy}");
        assert!(text.contains(&counter), "{counter} not in\n{text}");
        let node = self.lab.pod(&spec(to)).node.clone();
        let (ok, out, err) = self.lab.on_node(
            &node,
            &["nft", "-j", "list", "counter", "ip", "weft", &counter],
        );
        assert!(ok, "nft list counter {counter} on {node}: {err}");
        let json: Value = serde_json::from_str(&out).expect("nft's JSON");
        let packets = json["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no counter in {out}"));
        assert!(packets > 0, "{counter} on {node} counted nothing");
        report(&format!(
            "{}: weft policy explain {from} -> {to}: {}; {counter} on {node}: {packets} packets",
            self.lab.prefix,
            text.lines().next().unwrap_or("")
        ));
    }
}

/// `xa` -> `x/a`.
fn spec(short: &str) -> String {
    format!("{}/{}", &short[..1], &short[1..])
}

fn apply(yaml: impl Into<String>) -> impl Fn(&Cluster) {
    let yaml = yaml.into();
    move |c: &Cluster| {
        c.kubectl(&["apply", "-f", "-"], Some(&yaml));
    }
}

fn kubectl(args: &'static [&'static str]) -> impl Fn(&Cluster) {
    move |c: &Cluster| {
        c.kubectl(args, None);
    }
}

const DENY_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: "x"}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const DENY_EGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: "x"}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#;

const FROM_NS_Y: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: "a"}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ["y"]}]}
"#;

const FROM_NS_Z: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: "a"}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ["z"]}]}
"#;

const FROM_PODS_B: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: "a"}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: "b"}}
"#;

const ONLY_NAMED_81: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: "a"}}
  ingress:
  - ports: [{port: serve-81-tcp}]
"#;

const ALLOW_FROM_Y: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y, namespace: "x"}
spec:
  podSelector: {matchLabels: {pod: "a"}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: "y"}}
"#;

/// The steps, in order; every step leaves the grid its expectation states.
fn suite(c: &mut Cluster) {
    c.expect("no policy", &[TCP80, UDP81], OPEN);

    // Deny all ingress in x, then delete it.
    c.step(
        "x/deny-all applied",
        &apply(DENY_INGRESS),
        ("ya", "xb", false),
        &[TCP80, UDP81],
        X_DENIES_INGRESS,
    );
    c.step(
        "x/deny-all deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "deny-all"]),
        ("ya", "xb", true),
        &[TCP80],
        OPEN,
    );

    // A namespace selector, updated in place, then the namespaces' labels changing.
    c.step(
        "x/allow-ns from ns y",
        &apply(FROM_NS_Y),
        ("za", "xa", false),
        &[TCP80, UDP80],
        XA_FROM_Y,
    );
    c.step(
        "x/allow-ns updated to ns z",
        &apply(FROM_NS_Z),
        ("za", "xa", true),
        &[TCP80],
        XA_FROM_Z,
    );
    c.step(
        "namespace y labelled ns=z",
        &kubectl(&["label", "--overwrite", "ns", "y", "ns=z"]),
        ("ya", "xa", true),
        &[TCP80],
        XA_FROM_Y_AND_Z,
    );
    c.step(
        "namespace y labelled ns=y again",
        &kubectl(&["label", "--overwrite", "ns", "y", "ns=y"]),
        ("ya", "xa", false),
        &[TCP80],
        XA_FROM_Z,
    );
    c.step(
        "x/allow-ns deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-ns"]),
        ("ya", "xa", true),
        &[TCP80],
        OPEN,
    );

    // Pod and namespace selector in one peer, then a pod's label changing.
    c.step(
        "x/allow-b",
        &apply(FROM_PODS_B),
        ("ya", "xa", false),
        &[TCP80, UDP81],
        XA_FROM_PODS_B,
    );
    c.explain_drop("ya", "xa", "x/allow-b");
    let (code, text) = c.explain("yb", "xa");
    assert_eq!(code, Some(0), "an allowed connection exits 0:\n{text}");
    assert!(
        text.contains("ingress of x/a: allowed by x/allow-b"),
        "{text}"
    );
    c.step(
        "pod y/c labelled pod=b",
        &kubectl(&["label", "--overwrite", "pod", "-n", "y", "c", "pod=b"]),
        ("yc", "xa", true),
        &[TCP80],
        XA_FROM_PODS_B_AND_YC,
    );
    c.step(
        "pod y/c labelled pod=c again",
        &kubectl(&["label", "--overwrite", "pod", "-n", "y", "c", "pod=c"]),
        ("yc", "xa", false),
        &[TCP80],
        XA_FROM_PODS_B,
    );
    c.step(
        "x/allow-b deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-b"]),
        ("ya", "xa", true),
        &[TCP80],
        OPEN,
    );

    // A named port: TCP 81 only, resolved on x/a; never UDP 81.
    c.step(
        "x/allow-81 (named port)",
        &apply(ONLY_NAMED_81),
        ("ya", "xa", false),
        &[TCP80, UDP81],
        XA_ISOLATED,
    );
    c.expect("x/allow-81 (named port)", &[TCP81], OPEN);
    c.step(
        "x/allow-81 deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-81"]),
        ("ya", "xa", true),
        &[TCP80],
        OPEN,
    );

    // Egress: x's pods reach nobody else, across nodes and across the bridge alike.
    c.step(
        "x/deny-egress",
        &apply(DENY_EGRESS),
        ("xb", "ya", false),
        &[TCP80, UDP80],
        X_DENIES_EGRESS,
    );
    c.step(
        "x/deny-egress deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "deny-egress"]),
        ("xb", "ya", true),
        &[TCP80],
        OPEN,
    );

    // ipBlock with except (it matches pod addresses), then a second policy adding up.
    let yb = c.pods[4].1;
    let ip_block = format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-block, namespace: "x"}}
spec:
  podSelector: {{matchLabels: {{pod: "a"}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: 10.32.0.0/12, except: [{yb}/32]}}
"#
    );
    c.step(
        "x/allow-block (ipBlock except y/b)",
        &apply(ip_block),
        ("yb", "xa", false),
        &[TCP80, UDP80],
        XA_NOT_FROM_YB,
    );
    c.step(
        "x/allow-y added (policies add up)",
        &apply(ALLOW_FROM_Y),
        ("yb", "xa", true),
        &[TCP80],
        OPEN,
    );
    c.step(
        "x/allow-block deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-block"]),
        ("zb", "xa", false),
        &[TCP80, UDP81],
        XA_FROM_Y,
    );
    c.step(
        "x/allow-y deleted",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-y"]),
        ("zb", "xa", true),
        &[TCP80],
        OPEN,
    );

    // An established connection that a new policy allows survives the update.
    let (ya_ns, xa) = (c.pods[3].0.clone(), c.addr(0, 80));
    let mut conn = in_netns(&ya_ns, move || {
        TcpStream::connect_timeout(&xa, PROBE_TIMEOUT)
    })
    .expect("y/a connects to x/a");
    conn.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let echo = |conn: &mut TcpStream, word: &[u8]| -> bool {
        let mut buf = vec![0u8; word.len()];
        conn.write_all(word).is_ok() && conn.read_exact(&mut buf).is_ok() && buf == word
    };
    assert!(echo(&mut conn, b"before"), "x/a's echo");
    c.step(
        "x/allow-y with a connection open from y/a",
        &apply(ALLOW_FROM_Y),
        ("za", "xa", false),
        &[TCP80],
        XA_FROM_Y,
    );
    assert!(
        echo(&mut conn, b"after the policy"),
        "the connection y/a -> x/a did not survive a policy that allows it"
    );
    c.step(
        "x/allow-y deleted again",
        &kubectl(&["delete", "networkpolicy", "-n", "x", "allow-y"]),
        ("za", "xa", true),
        &[TCP80],
        OPEN,
    );
    assert!(echo(&mut conn, b"at the end"), "the connection y/a -> x/a");
    report(&format!(
        "{}: slowest change {:.0} ms after kubectl returned ({:.0} ms after it started)",
        c.lab.prefix,
        c.slowest.0.as_secs_f64() * 1000.0,
        c.slowest.1.as_secs_f64() * 1000.0
    ));
}

fn runnable(test: &str) -> bool {
    can_run(test, &["kubectl", "nft"])
}

#[test]
fn the_suite_with_pods_spread_over_three_nodes() {
    let test = "the_suite_with_pods_spread_over_three_nodes";
    if !runnable(test) {
        return;
    }
    let mut c = Cluster::up("npgs", 3, None);
    // Round-robin: each namespace has a pod on every node.
    for (k, name) in NAMES.iter().enumerate() {
        let pod = c.lab.pod(&format!("{}/{}", &name[..1], &name[1..]));
        assert_eq!(pod.node, format!("n{}", k % 3 + 1), "{name}");
    }
    suite(&mut c);
}

#[test]
fn the_suite_with_every_pod_on_one_node() {
    let test = "the_suite_with_every_pod_on_one_node";
    if !runnable(test) {
        return;
    }
    let mut c = Cluster::up("npgo", 2, Some("n2"));
    assert!(c.lab.pods.iter().all(|p| p.node == "n2"));
    suite(&mut c);
}
