//! End-to-end: no first packet before the NetworkPolicy rules (docs/networkpolicy.md). A
//! 2-node lab under `--api` (routers in Kubernetes mode, NetworkPolicy on). weft-cni is run
//! here as the kubelet runs it, with the conflist's `policy` key and CNI_ARGS naming the Pod:
//!
//! - a pod created after a policy that denies it all ingress is never reached, not even by
//!   the first packet: probes from a pod on its node (across the bridge) and from a pod on
//!   the other node (through the tunnel) are sent to its address before it exists, all
//!   through its ADD and after; none is answered, while the pod itself reaches out;
//! - a Pod that reaches the API server a second after ADD starts makes ADD wait, then succeed;
//! - a Pod that never appears makes ADD fail with code 11 after the timeout, leaving no veth
//!   and no lease; CNI_ARGS without the pod fails with code 4 before anything is done;
//! - once the policy is deleted, the first pod answers.
//!
//! Without the wait (no `policy` key) the probes' flow is answered in the gap before the
//! rules hold the pod, and conntrack keeps it open after them (the rules judge new
//! connections): every probe is answered, and the first assertion below fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_tests::e2e::*;

const PREFIX: &str = "fpkt";
const PORT: u16 = 7401;

/// The lab's API server on its loopback port, by hand (HTTP/1.1, `Connection: close`).
struct Api {
    addr: String,
}

impl Api {
    fn new(lab: &Lab) -> Api {
        let kubeconfig = PathBuf::from(lab.lab(&["kubeconfig"]).trim());
        let text = std::fs::read_to_string(&kubeconfig).unwrap();
        let addr = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: http://"))
            .expect("a server in the lab's kubeconfig")
            .to_string();
        Api { addr }
    }

    fn call(&self, method: &str, path: &str, content_type: &str, body: &Value) -> (u16, String) {
        let body = body.to_string();
        let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_string())
    }

    fn ok(&self, method: &str, path: &str, content_type: &str, body: &Value) {
        let (code, reply) = self.call(method, path, content_type, body);
        assert!(
            (200..300).contains(&code),
            "{method} {path}: {code} {reply}"
        );
    }

    /// A Pod as the scheduler leaves it: bound to `node`, Pending, no address.
    fn pending_pod(&self, name: &str, node: &str, labels: Value) {
        self.ok(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": "default", "name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Pending"}}),
        );
    }

    /// What the kubelet reports once the sandbox is up.
    fn running(&self, name: &str, ip: Ipv4Addr) {
        self.ok(
            "PATCH",
            &format!("/api/v1/namespaces/default/pods/{name}/status"),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Running", "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}]}}),
        );
    }
}

/// A network namespace of this test's own (the new pods'), deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let ns = Netns(format!("{PREFIX}-{name}"));
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.0])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &ns.0])
                .status()
                .unwrap()
                .success()
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// How one weft-cni call went.
struct Outcome {
    ok: bool,
    out: Value,
    took: Duration,
}

/// Runs weft-cni `command` for a pod in `netns` on `node`, as the kubelet would.
fn cni(
    lab: &Lab,
    node: &str,
    command: &str,
    netns: &str,
    args: &str,
    timeout_seconds: u64,
) -> Outcome {
    let n = lab.node(node);
    let config = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
        "bridge": "weft", "stateDir": n.state_dir,
        "policy": {"control_socket": n.control_socket(), "timeout_seconds": timeout_seconds}});
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.namespace])
        .arg(weft_bin().with_file_name("weft-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("c-{netns}"))
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    Outcome {
        ok: out.status.success(),
        out: serde_json::from_str(text.trim()).unwrap_or(Value::Null),
        took,
    }
}

fn kubelet_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
}

fn address_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

/// The address node `state_dir`'s next ADD gets: the first free one after the cursor.
fn next_address(state_dir: &Path, block: ipnet::Ipv4Net) -> Ipv4Addr {
    let cni = state_dir.join("cni");
    let last: Option<Ipv4Addr> = std::fs::read_to_string(cni.join("last-reserved"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let taken: Vec<Ipv4Addr> = std::fs::read_dir(cni.join("leases"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let gateway = block.hosts().last().unwrap();
    let candidates: Vec<Ipv4Addr> = block.hosts().filter(|a| *a != gateway).collect();
    let start = last
        .and_then(|l| candidates.iter().position(|a| *a == l))
        .map_or(0, |i| i + 1);
    (0..candidates.len())
        .map(|i| candidates[(start + i) % candidates.len()])
        .find(|a| !taken.contains(a))
        .unwrap()
}

/// UDP probes from one pod to an address every 20 ms, from before the target exists; every
/// reply's arrival time recorded.
struct Probes {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<Mutex<u64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probes {
    fn start(from_ns: &str, to: Ipv4Addr) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let client = in_netns(from_ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
        client.connect((to, PORT)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let sender = client.try_clone().unwrap();
        let (s, n) = (stop.clone(), sent.clone());
        let mut threads = vec![std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // ICMP errors (no neighbour yet) come back as send errors: still a probe.
                let _ = sender.send(b"first-packet");
                *n.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })];
        let (s, r) = (stop.clone(), replies.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = client.recv(&mut buf)
                    && &buf[..n] == b"first-packet"
                {
                    r.lock().unwrap().push(Instant::now());
                }
            }
        }));
        Probes {
            stop,
            replies,
            sent,
            threads,
        }
    }

    fn replies(&self) -> Vec<Instant> {
        self.replies.lock().unwrap().clone()
    }

    fn sent(&self) -> u64 {
        *self.sent.lock().unwrap()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP echo in `ns`, bound before the namespace has any interface.
fn echo(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let socket = in_netns(ns, || UdpSocket::bind(("0.0.0.0", PORT))).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    })
}

fn ping_from(ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn denied(status: &Value, policy: &str) -> u64 {
    status["policy"]["denied"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["policy"] == policy && d["direction"] == "ingress")
        .and_then(|d| d["packets"].as_u64())
        .unwrap_or(0)
}

/// Links in `node_ns` whose name is `name`.
fn has_link(node_ns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", node_ns, "link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_new_pod_is_judged_from_its_first_packet() {
    let test = "a_new_pod_is_judged_from_its_first_packet";
    if !can_run(test, &["ping", "nft"]) {
        return;
    }
    let lab = Lab::up(PREFIX, &["--nodes", "2", "--pods", "1", "--api"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let api = Api::new(&lab);
    let n1 = lab.node("n1");
    let (near, far) = (lab.pod("n1-p1"), lab.pod("n2-p1"));
    assert!(lab.ping("n2-p1", near.address), "lab pods reach each other");

    // Deny all ingress to app=locked, before any such pod exists.
    api.ok(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        "application/json",
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "default", "name": "deny-locked"},
            "spec": {"podSelector": {"matchLabels": {"app": "locked"}},
                "policyTypes": ["Ingress"]}}),
    );
    // The routers' watches deliver in milliseconds; no rule changes yet (it selects nobody).
    std::thread::sleep(Duration::from_secs(1));

    // Probes to the address the new pod will get, from both nodes, before it exists.
    let locked_ns = Netns::new("locked");
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = echo(&locked_ns.0, stop.clone());
    let block: ipnet::Ipv4Net = lab.status("n1")["block"].as_str().unwrap().parse().unwrap();
    let expected = next_address(&n1.state_dir, block);
    let probes = [
        ("same node", Probes::start(&near.namespace, expected)),
        ("other node", Probes::start(&far.namespace, expected)),
    ];
    std::thread::sleep(Duration::from_millis(500));

    api.pending_pod("locked", "n1", json!({"app": "locked"}));
    let add = cni(&lab, "n1", "ADD", &locked_ns.0, &kubelet_args("locked"), 10);
    assert!(
        add.ok,
        "ADD of the locked pod: {}\n{}",
        add.out,
        lab.log_tail("n1")
    );
    let locked = address_of(&add.out);
    assert_eq!(locked, expected, "the address predicted for the probes");
    report(&format!(
        "{PREFIX}: ADD with the Pod in the API: {} ms",
        add.took.as_millis()
    ));
    api.running("locked", locked);
    // The pod is up and reaches out (egress is open): its silence is the policy's doing.
    assert!(
        ping_from(&locked_ns.0, near.address),
        "the locked pod reaches n1-p1"
    );
    std::thread::sleep(Duration::from_secs(3));
    for (from, p) in &probes {
        assert!(p.sent() > 100, "{from}: only {} probes sent", p.sent());
        assert_eq!(
            p.replies().len(),
            0,
            "{from}: the locked pod answered {} of {} probes",
            p.replies().len(),
            p.sent()
        );
    }
    let refused = denied(&lab.status("n1"), "default/deny-locked");
    assert!(refused > 0, "n1 counted no denial for default/deny-locked");
    report(&format!(
        "{PREFIX}: {} + {} probes from before the pod existed, 0 answered, {refused} denied",
        probes[0].1.sent(),
        probes[1].1.sent()
    ));

    // CNI_ARGS without the pod: code 4, nothing made.
    let bare_ns = Netns::new("bare");
    let bare = cni(&lab, "n1", "ADD", &bare_ns.0, "IgnoreUnknown=1", 10);
    assert!(!bare.ok);
    assert_eq!(bare.out["code"], 4, "{}", bare.out);
    assert!(
        bare.out["msg"]
            .as_str()
            .unwrap()
            .contains("K8S_POD_NAMESPACE"),
        "{}",
        bare.out
    );

    // A Pod the API server gets a second after ADD started: ADD waits for it.
    let late_ns = Netns::new("late");
    let creator = {
        let api = Api {
            addr: api.addr.clone(),
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            api.pending_pod("late", "n1", json!({"app": "late"}));
        })
    };
    let late = cni(&lab, "n1", "ADD", &late_ns.0, &kubelet_args("late"), 10);
    creator.join().unwrap();
    assert!(
        late.ok,
        "ADD of the late pod: {}\n{}",
        late.out,
        lab.log_tail("n1")
    );
    assert!(
        late.took >= Duration::from_millis(950) && late.took < Duration::from_secs(5),
        "ADD of a Pod created 1 s late took {:?}",
        late.took
    );
    report(&format!(
        "{PREFIX}: ADD with the Pod created 1 s later: {} ms",
        late.took.as_millis()
    ));
    let late_ip = address_of(&late.out);
    api.running("late", late_ip);
    assert!(
        ping_from(&near.namespace, late_ip),
        "n1-p1 reaches the late pod"
    );

    // A Pod that never appears: code 11 after the timeout, nothing left behind.
    let never_ns = Netns::new("never");
    let leases_before = std::fs::read_dir(n1.state_dir.join("cni/leases"))
        .unwrap()
        .count();
    let never = cni(&lab, "n1", "ADD", &never_ns.0, &kubelet_args("never"), 2);
    assert!(!never.ok);
    assert_eq!(never.out["code"], 11, "{}", never.out);
    assert!(
        never.took >= Duration::from_secs(2) && never.took < Duration::from_secs(4),
        "{:?}",
        never.took
    );
    report(&format!(
        "{PREFIX}: ADD with no Pod ever: code 11 after {} ms",
        never.took.as_millis()
    ));
    let attachment = weft_cni::env::Attachment {
        container_id: weft_cni::env::ContainerId::parse(&format!("c-{}", never_ns.0)).unwrap(),
        ifname: weft_cni::env::IfName::parse("eth0").unwrap(),
    };
    let veth = weft_cni::plugin::host_veth_name(&attachment);
    assert!(!has_link(&n1.namespace, &veth), "{veth} left behind");
    assert!(!has_link(&never_ns.0, "eth0"), "the pod's eth0 left behind");
    assert_eq!(
        std::fs::read_dir(n1.state_dir.join("cni/leases"))
            .unwrap()
            .count(),
        leases_before,
        "a lease left behind"
    );

    // The policy goes: the locked pod answers.
    let gone = Instant::now();
    api.ok(
        "DELETE",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/deny-locked",
        "application/json",
        &json!({}),
    );
    for (from, p) in &probes {
        let deadline = gone + Duration::from_secs(10);
        while !p.replies().iter().any(|r| *r >= gone) {
            assert!(
                Instant::now() < deadline,
                "{from}: no answer after the policy went"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let first = p.replies().into_iter().find(|r| *r >= gone).unwrap();
        report(&format!(
            "{PREFIX}: {from}: first answer {} ms after the policy was deleted",
            (first - gone).as_millis()
        ));
    }
    drop(probes);
    stop.store(true, Ordering::Relaxed);
    echo_thread.join().unwrap();
    for (ns, name) in [(&locked_ns.0, "locked"), (&late_ns.0, "late")] {
        let del = cni(&lab, "n1", "DEL", ns, &kubelet_args(name), 10);
        assert!(del.ok, "DEL {name}: {}", del.out);
    }
}
