//! Test harness: namespaces that clean up after themselves, and a driver that runs CNI
//! plugins exactly as a container runtime does (environment, stdin, conflist chaining,
//! prevResult, a result cache), against weft-cni or the reference bridge + host-local.
//!
//! Everything happens in namespaces the tests create: one stands in for the node (the plugin
//! runs there through `ip netns exec`, so its "host" namespace is the node namespace), one per
//! pod. Nothing is created in, or sent to, the root namespace.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_cni::node_block::NodeBlock;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft-cni");
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// True when this test can create namespaces: root, iproute2 and the reference bridge plugin
/// (weft-sys's one capability check). Otherwise it says so loudly and, under `CI=true`,
/// fails: a skipped namespace test in CI would be a silent hole.
pub fn can_run(test: &str) -> bool {
    weft_sys::capability::can_run_with(test, &["ip"], &["/usr/lib/cni/bridge"])
}

/// Runs `ip ARGS`, panicking with its stderr on failure (harness use only: the plugin
/// itself never runs `ip`).
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (also when the test panics).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        // A crashed earlier run may have left one of this name.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        Netns {
            name: name.to_owned(),
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Link names in this namespace, except `lo`.
    pub fn links(&self) -> Vec<String> {
        links_of(&self.name)
    }

    /// Deletes the namespace now (as a runtime does before a late DEL).
    pub fn delete(&self) {
        ip(&["netns", "del", &self.name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn links_of(ns: &str) -> Vec<String> {
    let out = ip(&["-n", ns, "-j", "link", "show"]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
}

/// IPv4 addresses (`a.b.c.d/len`) of `dev` in `ns`.
pub fn addresses_of(ns: &str, dev: &str) -> Vec<String> {
    let out = ip(&["-n", ns, "-j", "-4", "addr", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Runs `f` on a thread that has entered `ns`; the calling thread stays where it is.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Which plugin under test builds the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Weft,
    /// Debian's reference `bridge` with `host-local`.
    Reference,
}

/// One node namespace, its state directory and its bridge, for one flavor.
pub struct Lab {
    pub prefix: String,
    pub flavor: Flavor,
    pub node: Netns,
    pub state: PathBuf,
    pub block: NodeBlock,
    pub bridge: String,
}

impl Lab {
    /// `prefix` must be unique per test (tests run in parallel); `cidr` is the node block.
    pub fn new(prefix: &str, flavor: Flavor, cidr: &str) -> Lab {
        let node = Netns::new(&format!("{prefix}-node"));
        let state = std::env::temp_dir().join(format!("weft-cni-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let block = NodeBlock::new(cidr.parse().unwrap()).unwrap();
        if flavor == Flavor::Weft {
            // The router's side of the contract, through the same library call it will use.
            block.write(&state).unwrap();
        }
        ip(&["-n", &node.name, "link", "set", "lo", "up"]);
        Lab {
            prefix: prefix.to_owned(),
            flavor,
            node,
            state,
            block,
            bridge: match flavor {
                Flavor::Weft => "weft".into(),
                Flavor::Reference => "cni0".into(),
            },
        }
    }

    pub fn pod(&self, name: &str) -> Netns {
        let ns = Netns::new(&format!("{}-{name}", self.prefix));
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The main plugin's config for this flavor.
    pub fn plugin_conf(&self) -> Value {
        match self.flavor {
            Flavor::Weft => json!({
                "type": "weft-cni",
                "bridge": self.bridge,
                "mtu": 1376,
                "stateDir": self.state,
            }),
            Flavor::Reference => json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "hairpinMode": true,
                "mtu": 1376,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.block.cidr().to_string(),
                                 "gateway": self.block.gateway().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.state.join("host-local"),
                },
            }),
        }
    }

    pub fn conflist(&self, version: &str) -> ConfList {
        ConfList {
            version: version.into(),
            name: "podnet".into(),
            plugins: vec![self.plugin_conf()],
        }
    }

    pub fn runtime(&self) -> Runtime {
        Runtime::new(&self.node.name)
    }

    /// Leased addresses, in the flavor's store.
    pub fn leases(&self) -> Vec<String> {
        let dir = match self.flavor {
            Flavor::Weft => self.state.join("cni/leases"),
            Flavor::Reference => self.state.join("host-local/podnet"),
        };
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Links in the node namespace other than the bridge: the host veths.
    pub fn host_veths(&self) -> Vec<String> {
        self.node
            .links()
            .into_iter()
            .filter(|n| *n != self.bridge)
            .collect()
    }

    /// Every firewall rule in the node namespace (what portmap and ipMasq add).
    pub fn node_ruleset(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node.name, "nft", "list", "ruleset"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A network configuration list as a runtime holds it.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub version: String,
    pub name: String,
    pub plugins: Vec<Value>,
}

impl ConfList {
    pub fn from_json(v: &Value) -> ConfList {
        ConfList {
            version: v["cniVersion"].as_str().unwrap().into(),
            name: v["name"].as_str().unwrap().into(),
            plugins: v["plugins"].as_array().unwrap().clone(),
        }
    }
}

/// What a plugin run printed and how it exited.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub plugin: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{} printed no JSON ({e}): {:?} / {:?}",
                self.plugin, self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code of a failed run.
    pub fn code(&self) -> u64 {
        assert!(!self.success, "{} succeeded: {}", self.plugin, self.stdout);
        self.json()["code"].as_u64().expect("error has a code")
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_owned()
    }
}

/// Runs one plugin binary in the node namespace with the CNI environment and `stdin`.
pub fn exec_plugin(node: &str, plugin: &str, env: &[(&str, &str)], stdin: &[u8]) -> PluginRun {
    let exe = if plugin == "weft-cni" {
        PathBuf::from(WEFT)
    } else {
        Path::new(REFERENCE_DIR).join(plugin)
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(&exe)
        .env_clear()
        // portmap finds iptables through PATH; bridge finds host-local through CNI_PATH.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", REFERENCE_DIR)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    PluginRun {
        plugin: plugin.into(),
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A container runtime in miniature: conflist execution order, prevResult threading,
/// runtimeConfig for declared capabilities, and a result cache keyed like libcni's.
pub struct Runtime {
    pub node: String,
    cache: Mutex<HashMap<(String, String), Value>>,
    pub port_mappings: Option<Value>,
}

/// One attachment's environment.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// `None` sends no CNI_NETNS at all; `Some("")` sends an empty one (containerd's DEL).
    pub netns: Option<&'a str>,
}

impl Runtime {
    pub fn new(node: &str) -> Runtime {
        Runtime {
            node: node.into(),
            cache: Mutex::new(HashMap::new()),
            port_mappings: None,
        }
    }

    fn plugin_conf(&self, list: &ConfList, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = list.version.clone().into();
        conf["name"] = list.name.clone().into();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if plugin["capabilities"]["portMappings"] == json!(true)
            && let Some(pm) = &self.port_mappings
        {
            conf["runtimeConfig"] = json!({"portMappings": pm});
        }
        conf
    }

    fn env<'a>(command: &'a str, t: &Target<'a>) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", t.container_id),
            ("CNI_IFNAME", t.ifname),
        ];
        if let Some(ns) = t.netns {
            env.push(("CNI_NETNS", ns));
        }
        env
    }

    fn run(
        &self,
        list: &ConfList,
        plugin: &Value,
        command: &str,
        t: &Target,
        prev: Option<&Value>,
    ) -> PluginRun {
        let conf = self.plugin_conf(list, plugin, prev);
        let kind = plugin["type"].as_str().unwrap();
        exec_plugin(
            &self.node,
            kind,
            &Self::env(command, t),
            conf.to_string().as_bytes(),
        )
    }

    /// ADD through the list; the last result is cached and returned.
    pub fn add(&self, list: &ConfList, t: Target) -> Result<Value, PluginRun> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let run = self.run(list, plugin, "ADD", &t, prev.as_ref());
            if !run.success {
                return Err(run);
            }
            prev = Some(run.json());
        }
        let result = prev.unwrap();
        self.cache
            .lock()
            .unwrap()
            .insert((t.container_id.into(), t.ifname.into()), result.clone());
        Ok(result)
    }

    pub fn cached(&self, t: &Target) -> Option<Value> {
        self.cache
            .lock()
            .unwrap()
            .get(&(t.container_id.to_owned(), t.ifname.to_owned()))
            .cloned()
    }

    /// Replaces the cached result (to test CHECK against a doctored prevResult).
    pub fn set_cached(&self, t: &Target, v: Value) {
        self.cache
            .lock()
            .unwrap()
            .insert((t.container_id.into(), t.ifname.into()), v);
    }

    /// DEL through the list in reverse, with the cached result as prevResult when
    /// `with_prev` (a runtime may have lost it). The cache entry goes either way.
    pub fn del(&self, list: &ConfList, t: Target, with_prev: bool) -> Result<(), PluginRun> {
        let prev = self
            .cache
            .lock()
            .unwrap()
            .remove(&(t.container_id.to_owned(), t.ifname.to_owned()));
        let prev = prev.filter(|_| with_prev);
        for plugin in list.plugins.iter().rev() {
            let run = self.run(list, plugin, "DEL", &t, prev.as_ref());
            if !run.success {
                return Err(run);
            }
        }
        Ok(())
    }

    /// CHECK through the list with the cached result as prevResult.
    pub fn check(&self, list: &ConfList, t: Target) -> Result<(), PluginRun> {
        let prev = self.cached(&t).expect("CHECK needs a cached ADD result");
        for plugin in &list.plugins {
            let run = self.run(list, plugin, "CHECK", &t, Some(&prev));
            if !run.success {
                return Err(run);
            }
        }
        Ok(())
    }

    /// STATUS of the first plugin (the one that owns the network).
    pub fn status(&self, list: &ConfList) -> PluginRun {
        let conf = self.plugin_conf(list, &list.plugins[0], None);
        exec_plugin(
            &self.node,
            list.plugins[0]["type"].as_str().unwrap(),
            &[("CNI_COMMAND", "STATUS")],
            conf.to_string().as_bytes(),
        )
    }

    /// GC of every plugin, with `valid` under both keys runtimes send.
    pub fn gc(&self, list: &ConfList, valid: &[(&str, &str)]) -> Result<(), PluginRun> {
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        for plugin in &list.plugins {
            let mut conf = self.plugin_conf(list, plugin, None);
            conf["cni.dev/valid-attachments"] = attachments.clone().into();
            conf["cni.dev/attachments"] = attachments.clone().into();
            let run = exec_plugin(
                &self.node,
                plugin["type"].as_str().unwrap(),
                &[("CNI_COMMAND", "GC")],
                conf.to_string().as_bytes(),
            );
            if !run.success {
                return Err(run);
            }
        }
        Ok(())
    }
}

/// The address ADD gave the sandbox interface `ifname`.
pub fn pod_address(result: &Value, ifname: &str) -> Ipv4Addr {
    let ifaces = result["interfaces"].as_array().unwrap();
    let idx = ifaces
        .iter()
        .position(|i| i["name"] == ifname && i.get("sandbox").is_some())
        .expect("sandbox interface in result");
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["interface"] == idx)
        .expect("address of the interface");
    let s = ip["address"].as_str().unwrap();
    s.split('/').next().unwrap().parse().unwrap()
}

/// One ICMP echo from inside `ns` to `dst`, through a raw socket (no ping binary needed).
pub fn ping(ns: &str, dst: Ipv4Addr) -> bool {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
        setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;

    in_netns(ns, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
        .expect("raw socket");
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 300_000)).unwrap();
        let id = (std::process::id() as u16) ^ (u32::from(dst) as u16);
        let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seq: u16 = 0;
        while Instant::now() < deadline {
            seq += 1;
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"weft-cni test ping");
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            if sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty()).is_err() {
                // No route (yet): wait and try again until the deadline.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let mut buf = [0u8; 1500];
            // Read until this attempt's timeout; other ICMP in the namespace is ignored.
            while let Ok((n, Some(from))) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if n < ihl + 8 || from.ip() != dst {
                    continue;
                }
                let icmp = &buf[ihl..n];
                if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP exchange: a listener bound to `at` in `server_ns`, a client in `client_ns` that
/// connects to `connect_to` (the same address, or a DNATed one), sends a line and reads it
/// back reversed. True when the reply arrived.
pub fn tcp_exchange(
    server_ns: &str,
    at: SocketAddrV4,
    client_ns: &str,
    connect_to: SocketAddrV4,
) -> bool {
    let listener = in_netns(server_ns, || TcpListener::bind(at).expect("bind listener"));
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut buf = [0u8; 12];
                    if s.read_exact(&mut buf).is_ok() {
                        buf.reverse();
                        let _ = s.write_all(&buf);
                    }
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let ok = in_netns(client_ns, || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::V4(connect_to), Duration::from_secs(3))
        else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let msg = *b"weft-cni tcp";
        let mut back = [0u8; 12];
        s.write_all(&msg).is_ok()
            && s.read_exact(&mut back).is_ok()
            && back.iter().rev().eq(msg.iter())
    });
    server.join().unwrap();
    ok
}

/// Polls `cond` for up to five seconds: a deleted namespace takes its links with it
/// asynchronously (the kernel cleans namespaces up in a work queue).
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
