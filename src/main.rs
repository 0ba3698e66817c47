//! `weft`: the command-line tool, the router daemon (`weft router`) and the lab.

mod install_cni;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use weft_crypto::{JoinSecret, KeyPair, OsRandom};
use weft_router::control::{Request, Response};
use weft_router::kubernetes::explain::{self, EndSpec};
use weft_router::report::printable;

/// weft: an encrypted mesh overlay network for Kubernetes.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a node key pair (written to --key-file, mode 0600) or a cluster join secret.
    ///
    /// A node's identity is its public key, printed on stdout. The join secret decides who
    /// may join the cluster: store it in a file (or a Kubernetes Secret) on every node.
    Keygen {
        /// Where to write the new private key. Refuses to replace an existing file.
        #[arg(long, env = "WEFT_KEY_FILE", conflicts_with = "join_secret")]
        key_file: Option<PathBuf>,
        /// Print a new random join secret (32 bytes, base64) instead of making a key pair.
        #[arg(long)]
        join_secret: bool,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The private key file (as written by `weft keygen`).
        #[arg(long, env = "WEFT_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Run the router: this node's end of the encrypted mesh (a daemon; needs root).
    ///
    /// Every option can also be set through the environment variable named beside it, as a
    /// DaemonSet would. The join secret is read from a file or from WEFT_JOIN_SECRET, never
    /// from the command line, where `ps` would show it.
    Router(Box<RouterArgs>),
    /// Show this node and its peers (from the router's control socket).
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The router's state directory (its control socket is there).
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// Show this node's peers as a table, like `weave status connections`.
    Peers {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The router's state directory (its control socket is there).
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// This node's view of the whole mesh: members, every link (direct, relayed and through
    /// whom, handshaking, down; asymmetric views flagged), this node's tunnels, drops.
    ///
    /// `--json` prints the versioned document described in docs/report.md.
    Report {
        /// Print the JSON document (its `schema` field is the version of its shape).
        #[arg(long)]
        json: bool,
        /// The router's state directory (its control socket is there).
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// Ask the router to dial an endpoint (address:port).
    Connect {
        /// The endpoint to dial, address:port (e.g. 198.18.0.2:6786).
        endpoint: std::net::SocketAddr,
        /// The router's state directory (its control socket is there).
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// Ask the router to forget a member (its public key).
    Forget {
        /// The member's public key (base64, as `weft peers --json` shows it).
        peer: String,
        /// The router's state directory (its control socket is there).
        #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
        state_dir: PathBuf,
    },
    /// NetworkPolicy as weft enforces it (docs/networkpolicy.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A weft cluster inside network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Install weft-cni and this node's conflist for the container runtime: atomic,
    /// idempotent, removes stale weft configs, chains portmap if present. The DaemonSet's init
    /// step runs it with `--only plugin`; its router writes the conflist when ready.
    InstallCni(install_cni::Args),
    /// Remove what a stopped router leaves on this node on purpose: the blackhole route
    /// that keeps the cluster range off the underlay while no router runs, and weft's
    /// nftables table. Run it only to take weft off the node (never between a stop and a
    /// start: pod traffic would leave in plaintext).
    Uninstall {
        /// The cluster range the router was started with.
        #[arg(long, env = "WEFT_CLUSTER_RANGE", default_value = "10.32.0.0/12")]
        cluster_range: ipnet::Ipv4Net,
    },
}

#[derive(clap::Args, Debug)]
struct RouterArgs {
    /// This node's name (a label: its identity is its key).
    #[arg(long, env = "WEFT_NAME")]
    name: Option<String>,
    /// Address and UDP port to listen on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:6786")]
    listen: std::net::SocketAddr,
    /// Endpoints to announce to peers, besides the one they observe (comma-separated).
    #[arg(long, env = "WEFT_ANNOUNCE", value_delimiter = ',')]
    announce: Vec<std::net::SocketAddr>,
    /// Another node to contact at start, address:port (repeatable, or comma-separated).
    #[arg(long = "seed", env = "WEFT_SEEDS", value_delimiter = ',')]
    seeds: Vec<std::net::SocketAddr>,
    /// A file of seeds, one address:port per line (# comments allowed).
    #[arg(long, env = "WEFT_SEEDS_FILE")]
    seeds_file: Option<PathBuf>,
    /// State directory: key, address space, block file, leases, control socket.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// File holding the cluster join secret (or set WEFT_JOIN_SECRET). One secret per line:
    /// the first is the primary (this node's handshakes use it), the others (at most 3) are
    /// also accepted from peers. The file is re-read every 2 s, so a secret rotates without
    /// a restart: `old` -> `old\nnew` -> `new\nold` -> `new`, each step on every node before
    /// the next (docs/design.md §3). An unreadable or invalid file is logged and ignored.
    #[arg(long, env = "WEFT_JOIN_SECRET_FILE")]
    join_secret_file: Option<PathBuf>,
    /// The cluster's name, the same on every node of a cluster: it salts the join secret's
    /// derivation (Argon2id), so a table of guessed secrets made for one cluster is useless
    /// for another. Give each cluster its own; changing it is like changing the secret.
    #[arg(long, env = "WEFT_CLUSTER_NAME", default_value = weft_crypto::DEFAULT_CLUSTER_NAME)]
    cluster_name: String,
    /// The cluster's pod range.
    #[arg(long, env = "WEFT_CLUSTER_RANGE", default_value = "10.32.0.0/12")]
    cluster_range: ipnet::Ipv4Net,
    /// Prefix length of each node's pod block.
    #[arg(long, env = "WEFT_BLOCK_PREFIX", default_value_t = 24)]
    block_prefix: u8,
    /// Use this block for pods instead of claiming one (a Kubernetes podCIDR).
    #[arg(long, env = "WEFT_POD_CIDR")]
    pod_cidr: Option<ipnet::Ipv4Net>,
    /// Start a new cluster's address space on this node (exactly one node of a new cluster
    /// without pod CIDRs; the others get blocks from it through gossip).
    #[arg(long, env = "WEFT_FOUND_ADDRESS_SPACE")]
    found_address_space: bool,
    /// The bridge pods attach to.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    bridge: String,
    /// The underlay MTU (default: detected from the default route's interface).
    #[arg(long, env = "WEFT_UNDERLAY_MTU")]
    underlay_mtu: Option<u32>,
    /// Where to serve /metrics, /healthz and /readyz over HTTP ("off" to disable). The
    /// default keeps them on the node itself; kubelet probes of a hostNetwork pod go to the
    /// node's address, so set httpGet.host: 127.0.0.1 in the probes or bind another address.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "127.0.0.1:6787")]
    metrics_addr: String,
    /// The live page of the mesh (`/`, `/report.json`) beside the metrics: auto (only when
    /// the metrics address is loopback), on (on any metrics address: it shows every member's
    /// key, endpoints and blocks to whoever reaches it), off.
    #[arg(long, env = "WEFT_UI", default_value = "auto")]
    ui: weft_router::ui::UiMode,
    /// The kernel's segmentation offloads on the data path: auto (use what the kernel
    /// supports: TUN TSO/GRO with virtio headers, UDP GSO/GRO), on (refuse to start without
    /// TUN offloads), off (one packet per system call; for comparison and old kernels).
    #[arg(long, env = "WEFT_OFFLOAD", default_value = "auto")]
    offload: weft_router::dataplane::Offload,
    /// Masquerade pod traffic to destinations outside the cluster range with the node's
    /// address (the internet, cloud APIs, other nodes' host addresses). Off for a network
    /// that routes the pod range itself.
    #[arg(long, env = "WEFT_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    masquerade: bool,
    /// Destinations pods reach with their own address although outside the cluster range
    /// (comma-separated CIDRs: a VPC that routes pod ranges).
    #[arg(long, env = "WEFT_MASQUERADE_EXEMPT", value_delimiter = ',')]
    masquerade_exempt: Vec<ipnet::Ipv4Net>,
    /// Find peers, this node's pod block and the keys to pin from the Kubernetes API: Node
    /// objects instead of seeds, the Node's podCIDR as the block (see docs/kubernetes.md).
    #[arg(long, env = "WEFT_KUBERNETES", requires = "node_name", conflicts_with_all = ["pod_cidr", "found_address_space"])]
    kubernetes: bool,
    /// This node's Node name (in a DaemonSet: the downward API's spec.nodeName).
    #[arg(long, env = "WEFT_NODE_NAME")]
    node_name: Option<String>,
    /// A kubeconfig file for --kubernetes (default: KUBECONFIG, ~/.kube/config, then the
    /// pod's ServiceAccount).
    #[arg(long, env = "WEFT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: enforce NetworkPolicy on this node's pods (watches NetworkPolicies,
    /// Pods and Namespaces; see docs/networkpolicy.md). Off: every pod reaches every pod.
    #[arg(long, env = "WEFT_NETWORK_POLICY", default_value = "on")]
    network_policy: OnOff,
    /// Write weft-cni's conflist into this directory once the router can carry pod traffic
    /// (its block, bridge, TUN device and route up: when /readyz turns 200), so that the
    /// kubelet calls the node's network ready only then. Not set: the router writes none.
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// The CNI plugin directory, with --cni-conf-dir: weft-cni must already be there
    /// (`weft install-cni --only plugin`), and portmap is chained when it is there.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Log format: text or json.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text")]
    log_format: weft_router::logging::LogFormat,
    /// Log level (RUST_LOG, when set, takes precedence).
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Why a new connection FROM -> TO is allowed or dropped: which policies isolate each
    /// end, which allow it, and the deny counters a drop is counted in.
    ///
    /// Judged by weft's policy engine on the NetworkPolicies, Pods and Namespaces the API
    /// server holds now, as every router does; a router applies a change within about a
    /// second of it. Replies within an allowed connection are never dropped. Exit status:
    /// 0 allowed, 3 dropped, 1 on error.
    Explain {
        /// The source: NAMESPACE/POD or an IP address.
        #[arg(value_parser = |s: &str| s.parse::<EndSpec>())]
        from: EndSpec,
        /// The destination: NAMESPACE/POD or an IP address.
        #[arg(value_parser = |s: &str| s.parse::<EndSpec>())]
        to: EndSpec,
        /// The destination port.
        #[arg(long)]
        port: u16,
        /// tcp, udp or sctp.
        #[arg(long, default_value = "tcp", value_parser = explain::parse_protocol)]
        protocol: explain::Protocol,
        /// A kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster
        /// ServiceAccount). Its user must be allowed to list pods, namespaces and
        /// networkpolicies in every namespace.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build a lab: an underlay switch, N nodes, M pods per node attached by weft-cni.
    ///
    /// Removes what an earlier run with the same prefix left behind first; if anything fails
    /// half-way, removes what it made.
    Up {
        /// Number of nodes (1–200).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node (0–50).
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Put node N behind a NAT box (repeatable): `N` or `N:KIND`, KIND being `masquerade`
        /// (the default: a bare nftables masquerade), `restricted` (a port-restricted home
        /// router: masquerade behind a stateful input firewall) or `symmetric` (a random port
        /// per destination). A NAT box sits 5 ms from the switch, as NATs in the
        /// world sit at a distance from each other. A `--netem` for that node replaces the
        /// 5 ms (`--netem N:delay=0ms` puts the box right on the switch, where the punches of
        /// two bare masquerades race; docs/design.md §4).
        #[arg(long = "nat", value_name = "NODE[:KIND]", value_parser = weft_lab::plan::parse_nat)]
        nat: Vec<(usize, weft_lab::NatKind)>,
        /// Impair node N's underlay link both ways, e.g. `2:loss=5%,delay=20ms` (repeatable).
        /// Loss is an nftables rule on the switch; delay is `tc netem`, or, on kernels without
        /// netem, a userspace delay line in a namespace between the node and the switch.
        #[arg(long = "netem", value_name = "NODE:OPTS", value_parser = weft_lab::plan::parse_netem)]
        netem: Vec<(usize, weft_lab::Netem)>,
        /// Delay links with the userspace delay line even where `tc netem` works.
        #[arg(long)]
        delay_line: bool,
        /// Give node N's router a join secret of its own (repeatable): it must never get a
        /// tunnel. It uses its static block (10.32.N.0/24) for its pods.
        #[arg(long = "wrong-secret", value_name = "NODE")]
        wrong_secret: Vec<usize>,
        /// Drop all underlay traffic between two nodes, e.g. `1-3` (repeatable).
        #[arg(long = "block", value_name = "A-B", value_parser = weft_lab::plan::parse_link)]
        block: Vec<(usize, usize)>,
        /// The routers' data path: auto, on or off (see `weft router --help`). Default: the
        /// routers' own, which follows WEFT_OFFLOAD when it is set.
        #[arg(long)]
        offload: Option<weft_router::dataplane::Offload>,
        /// The weft-cni binary (default: next to this weft binary).
        #[arg(long, env = "WEFT_CNI_BIN")]
        cni_bin: Option<PathBuf>,
        /// Run no routers: hand each node a static block (pods talk only within a node).
        #[arg(long)]
        no_routers: bool,
        /// Run the routers with `--kubernetes` and this kubeconfig instead of seeds: Nodes
        /// n1..nN in its API server give them peers, blocks and pins. The switch gets the
        /// address 198.18.255.254 for an API server run in the underlay namespace.
        #[arg(long, value_name = "KUBECONFIG", conflicts_with = "no_routers")]
        kubernetes: Option<PathBuf>,
        /// Run the lab's own Kubernetes API server (Nodes, Namespaces, Pods,
        /// NetworkPolicies) and the routers in Kubernetes mode against it: a Node per lab
        /// node, with its static block as podCIDR. `weft lab kubeconfig` prints the path of a
        /// kubeconfig for kubectl (plain http on a loopback port).
        #[arg(long, conflicts_with_all = ["no_routers", "kubernetes"])]
        api: bool,
        /// With --api: Namespaces and Pods from this Kubernetes YAML (several documents). Each
        /// Pod becomes a lab pod attached by weft-cni on its `spec.nodeName` (n1, n2…; pods
        /// without one are spread round-robin), stored running with its address, and
        /// reachable as `weft lab exec NAMESPACE/NAME -- CMD`. No images run.
        #[arg(long, value_name = "FILE", requires = "api")]
        model: Option<PathBuf>,
        #[command(flatten)]
        which: LabName,
    },
    /// Print the path of a kubeconfig for the lab's API server (`weft lab up --api`):
    /// `kubectl --kubeconfig "$(weft lab kubeconfig)" get nodes`.
    Kubeconfig {
        #[command(flatten)]
        which: LabName,
    },
    /// The lab's API server (run by `weft lab up --api`, detached).
    #[command(hide = true)]
    ApiServe {
        #[command(flatten)]
        which: LabName,
    },
    /// Stop, kill (SIGKILL, a crash) or start again one node's router, keeping its state
    /// directory: `weft lab router kill n3`, then `weft lab router start n3`.
    Router {
        /// What to do.
        #[arg(value_enum)]
        action: RouterActionArg,
        /// The node, `n3` or `3`.
        node: String,
        /// On `start`, pass only the seeds of the first start (the founder has none) instead
        /// of every other reachable node, as under Kubernetes.
        #[arg(long)]
        original_seeds: bool,
        /// On `start`, run the router from this binary instead of this weft: a new build,
        /// as a rolling upgrade does. Later starts without it use this weft again.
        #[arg(long, value_name = "PATH")]
        weft_bin: Option<PathBuf>,
        #[command(flatten)]
        which: LabName,
    },
    /// Attach a new pod to a node through weft-cni (`weft lab pod add n2`: prints its name
    /// and address), or delete one with weft-cni DEL (`weft lab pod del n2-p3`), as a
    /// container runtime does. Not for labs run with --api (use kubectl there).
    Pod {
        #[command(subcommand)]
        action: PodAction,
    },
    /// Flood one node's router from inside the lab, to see what a flood does: for SECONDS at
    /// the highest rate one thread reaches, send garbage (random bytes) or valid handshake
    /// initiations made with the lab's join secret (a rogue member; a new ephemeral key each),
    /// from one source address or from many in the underlay range. It sends from a namespace
    /// of its own joined to the lab's switch (PREFIX-fPID), removed when it ends or when the
    /// lab goes down, and prints what it sent: datagrams, bytes, rate, and the datagrams
    /// that came back. The routers count what they drop (`weft_drops_total`).
    Flood {
        /// The node whose router is flooded, `n1` or `1`.
        node: String,
        /// What to send.
        #[arg(long, value_parser = ["garbage", "initiation"], default_value = "initiation")]
        kind: String,
        /// How long, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// How many source addresses to send from, round robin (from 198.18.192.1 up).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        which: LabName,
    },
    /// Drop all underlay traffic between two nodes from now on, e.g. `weft lab block 1-3`.
    Block {
        /// The two nodes, `A-B`.
        #[arg(value_parser = weft_lab::plan::parse_link)]
        link: (usize, usize),
        #[command(flatten)]
        which: LabName,
    },
    /// Lift a block made by `weft lab block` or `weft lab up --block`.
    Unblock {
        /// The two nodes, `A-B`.
        #[arg(value_parser = weft_lab::plan::parse_link)]
        link: (usize, usize),
        #[command(flatten)]
        which: LabName,
    },
    /// The lab's userspace delay line (run by `weft lab up` inside a delay namespace).
    #[command(hide = true)]
    DelayLine {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        /// How long each frame is held, both ways.
        #[arg(long)]
        delay_ms: u64,
    },
    /// Make a node's live page reachable from this machine's browser: prints a loopback
    /// address and forwards it into the node's namespace until stopped or the lab goes down.
    /// Nothing but that loopback listener is added outside the lab's namespaces.
    Ui {
        /// The node, `n1` or `1`.
        node: String,
        /// The loopback port to listen on (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[command(flatten)]
        which: LabName,
    },
    /// Remove a lab and everything it made.
    Down {
        #[command(flatten)]
        which: LabName,
    },
    /// Show a lab's nodes and pods.
    Status {
        /// Print JSON (nodes, and pods with name, node and address) for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        which: LabName,
    },
    /// Run a command inside a pod: `weft lab exec n1-p1 -- ping 10.32.2.2`.
    Exec {
        /// The pod, as `weft lab status` names it (e.g. n1-p1, or NAMESPACE/NAME for a pod of
        /// a --model file).
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        which: LabName,
    },
}

/// What `weft lab pod` does.
#[derive(Subcommand, Debug)]
enum PodAction {
    /// Attach a new pod to NODE (`n2` or `2`) through weft-cni ADD.
    Add {
        node: String,
        #[command(flatten)]
        which: LabName,
    },
    /// Delete POD (`n2-p3`) through weft-cni DEL, and its namespace.
    Del {
        pod: String,
        #[command(flatten)]
        which: LabName,
    },
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// What `weft lab router` does to one node's router.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RouterActionArg {
    /// SIGTERM, and wait until it has exited (it removes its TUN device on the way out).
    Stop,
    /// SIGKILL, a crash: nothing is cleaned up. Waits until it is gone.
    Kill,
    /// Start it again with the same arguments and state directory (it must not be running).
    Start,
}

impl From<RouterActionArg> for weft_lab::RouterAction {
    fn from(a: RouterActionArg) -> Self {
        match a {
            RouterActionArg::Stop => Self::Stop,
            RouterActionArg::Kill => Self::Kill,
            RouterActionArg::Start => Self::Start,
        }
    }
}

#[derive(clap::Args, Debug)]
struct LabName {
    /// Name prefix of the lab's namespaces (1–8 lowercase letters or digits); several labs
    /// with different prefixes can run side by side.
    #[arg(long, env = "WEFT_LAB_PREFIX", default_value = "weft")]
    prefix: String,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen {
            join_secret: true, ..
        } => {
            let text = JoinSecret::generate_text(&mut OsRandom);
            println!("{}", text.expose());
        }
        Command::Keygen {
            key_file: Some(path),
            ..
        } => println!("{}", keygen(&path)?),
        Command::Keygen { .. } => bail!("say what to make: --key-file PATH or --join-secret"),
        Command::Pubkey { key_file } => {
            println!("{}", weft_router::keyfile::load(&key_file)?.public())
        }
        Command::Lab(cmd) => return run_lab(cmd),
        Command::Policy(PolicyCommand::Explain {
            from,
            to,
            port,
            protocol,
            kubeconfig,
        }) => {
            let config = weft_router::kubernetes::KubeConfig {
                node_name: String::new(),
                kubeconfig,
                network_policy: true,
            };
            let explanation = runtime()?.block_on(explain::fetch_and_explain(
                &config, &from, &to, protocol, port,
            ))?;
            print!("{explanation}");
            if !explanation.is_allowed() {
                use std::io::Write;
                std::io::stdout().flush()?;
                // Like diff's 1: a verdict, not a failure, yet scripts can tell.
                std::process::exit(3);
            }
        }
        Command::InstallCni(args) => return install_cni::run(args),
        Command::Uninstall { cluster_range } => {
            for line in weft_router::netconf::uninstall(cluster_range)? {
                println!("{line}");
            }
        }
        Command::Router(args) => return run_router(*args),
        Command::Status { json, state_dir } => return show_status(&state_dir, json, false),
        Command::Peers { json, state_dir } => return show_status(&state_dir, json, true),
        Command::Report { json, state_dir } => {
            let Response::Report(report) = control_call(&state_dir, &Request::Report)? else {
                bail!("the router answered something other than a report");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", weft_router::report::render_text(&report));
            }
        }
        Command::Connect {
            endpoint,
            state_dir,
        } => {
            control_call(&state_dir, &Request::Connect { endpoint })?;
            println!("asked the router to connect to {endpoint}");
        }
        Command::Forget { peer, state_dir } => {
            control_call(&state_dir, &Request::Forget { peer: peer.clone() })?;
            println!("asked the router to forget {peer}");
        }
    }
    Ok(())
}

/// `weft keygen --key-file PATH`: a new key pair, its private key written to a new file at
/// `path` (never over an existing one: checked and created in one step); returns the public
/// key to print.
fn keygen(path: &std::path::Path) -> anyhow::Result<weft_crypto::PublicKey> {
    use weft_router::keyfile::{self, KeyFileError};
    let pair = KeyPair::generate(&mut OsRandom);
    match keyfile::create(&pair, path) {
        Ok(()) => Ok(pair.public()),
        Err(KeyFileError::Exists { .. }) => bail!(
            "{} already exists; weft keygen never replaces a key (a node's key is its \
             identity). Remove it first if you really mean to",
            path.display()
        ),
        Err(e) => Err(e).context("writing the new key"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run_router(args: RouterArgs) -> anyhow::Result<()> {
    weft_router::logging::init(args.log_format, &args.log_level)?;
    weft_router::join_secrets::unmap_large_allocations_when_freed();
    let secret = match (&args.join_secret_file, std::env::var_os("WEFT_JOIN_SECRET")) {
        (Some(_), Some(_)) => bail!(
            "both --join-secret-file (or WEFT_JOIN_SECRET_FILE) and WEFT_JOIN_SECRET are set; \
             give the join secret one way"
        ),
        (Some(path), None) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .with_context(|| format!("reading the join secret from {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                eprintln!(
                    "weft: warning: the join secret file {} has mode {:04o}; others can read it \
                     (chmod 600 it)",
                    path.display(),
                    mode & 0o777
                );
            }
            weft_crypto::Secret::new(
                std::fs::read(path)
                    .with_context(|| format!("reading the join secret from {}", path.display()))?,
            )
        }
        (None, Some(v)) => weft_crypto::Secret::new(v.into_encoded_bytes()),
        (None, None) => bail!(
            "no join secret: pass --join-secret-file FILE or set WEFT_JOIN_SECRET \
             (make one with `weft keygen --join-secret`)"
        ),
    };
    // Argon2id, once per secret: tens of milliseconds each.
    let join_secrets = weft_crypto::JoinSecrets::parse(secret.expose(), &args.cluster_name)
        .context("reading the join secret")?;
    let join_secret_file =
        args.join_secret_file
            .clone()
            .map(|path| weft_router::join_secrets::JoinSecretFile {
                path,
                cluster_name: args.cluster_name.clone(),
                content: secret.clone(),
            });
    let mut seeds = args.seeds.clone();
    if let Some(file) = &args.seeds_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading seeds from {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                seeds.push(line.parse().with_context(|| {
                    format!("{}:{}: {line:?} is not address:port", file.display(), n + 1)
                })?);
            }
        }
    }
    let name = match args.name.or_else(|| args.node_name.clone()) {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "weft".into()),
    };
    let metrics = match args.metrics_addr.as_str() {
        "off" => None,
        a => Some(a.parse().with_context(|| format!("--metrics-addr {a:?}"))?),
    };
    let config = weft_router::RouterConfig {
        name,
        listen: args.listen,
        announce: args.announce,
        seeds,
        state_dir: args.state_dir,
        join_secrets,
        join_secret_file,
        cluster_range: args.cluster_range,
        block_prefix: args.block_prefix,
        pod_cidr: args.pod_cidr,
        found_address_space: args.found_address_space,
        bridge: args.bridge,
        underlay_mtu: args.underlay_mtu,
        metrics,
        ui: args.ui,
        offload: args.offload,
        masquerade: args.masquerade,
        masquerade_exempt: args.masquerade_exempt,
        kubernetes: args
            .kubernetes
            .then(|| weft_router::kubernetes::KubeConfig {
                node_name: args.node_name.clone().unwrap_or_default(),
                kubeconfig: args.kubeconfig.clone(),
                network_policy: args.network_policy == OnOff::On,
            }),
        cni: args
            .cni_conf_dir
            .map(|conf_dir| weft_router::config::CniConf {
                conf_dir,
                bin_dir: args.cni_bin_dir,
            }),
    };
    runtime()?.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        weft_router::run(config, shutdown).await
    })?;
    Ok(())
}

fn control_call(state_dir: &std::path::Path, request: &Request) -> anyhow::Result<Response> {
    let socket = state_dir.join(weft_router::state::CONTROL_SOCKET);
    let response = runtime()?
        .block_on(weft_router::control::call(&socket, request))
        .map_err(|e| {
            let hint = if e.is_permission_denied() {
                "the control socket is root's: run this as root".to_string()
            } else {
                format!(
                    "is `weft router` running with --state-dir {}?",
                    state_dir.display()
                )
            };
            anyhow::anyhow!(
                "cannot reach the router at {}: {e} ({hint})",
                socket.display()
            )
        })?;
    if let Response::Error { message } = &response {
        bail!("the router refused: {message}");
    }
    Ok(response)
}

fn show_status(state_dir: &std::path::Path, json: bool, peers_only: bool) -> anyhow::Result<()> {
    let Response::Status(report) = control_call(state_dir, &Request::Status)? else {
        bail!("the router answered something other than a status");
    };
    if json {
        if peers_only {
            println!("{}", serde_json::to_string_pretty(&report.peers)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        return Ok(());
    }
    if !peers_only {
        print!("{}", status_text(&report));
    }
    print!("{}", peers_table(&report.peers));
    Ok(())
}

fn status_text(r: &weft_router::control::StatusReport) -> String {
    let established = r
        .peers
        .iter()
        .filter(|p| p.state == "established" || p.state == "rekeying")
        .count();
    let mut rows = vec![
        ("Name", r.name.clone()),
        ("Public key", r.id.clone()),
        ("Listening", r.listen.to_string()),
        (
            "Pod block",
            r.block.clone().unwrap_or_else(|| "none yet".into()),
        ),
    ];
    if let Some(w) = &r.waiting {
        rows.push(("Waiting", w.clone()));
    }
    rows.push(("Pod MTU", r.pod_mtu.to_string()));
    if let Some(d) = &r.data_path {
        let offloads = |on: bool| if on { "on" } else { "off" };
        rows.push((
            "Data path",
            format!(
                "TUN offload {}, UDP GSO {} ({} segments), UDP GRO {}",
                offloads(d.tun_offload),
                offloads(d.gso_segments > 1),
                d.gso_segments,
                offloads(d.gro_segments > 1),
            ),
        ));
    }
    rows.push(("Members", r.members.to_string()));
    rows.push((
        "Peers",
        format!("{} ({established} established)", r.peers.len()),
    ));
    let dropped: u64 = r.drops.values().sum();
    if dropped > 0 {
        let reasons: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        rows.push(("Drops", format!("{dropped} ({})", reasons.join(", "))));
    }
    if let Some(p) = &r.policy {
        rows.push(("Policy", policy_line(p)));
    }
    if let Some(j) = &r.join_secrets {
        // Peers still on a secret other than the primary: while any, the old one must stay.
        let old = r
            .peers
            .iter()
            .filter(|p| p.join_secret.as_deref().is_some_and(|s| s != "primary"))
            .count();
        let ids: Vec<String> = j
            .accepted
            .iter()
            .enumerate()
            .map(|(n, id)| {
                if n == 0 {
                    format!("{id} primary")
                } else {
                    id.clone()
                }
            })
            .collect();
        let mut line = format!(
            "{} accepted ({}), {old} peers on an old one",
            ids.len(),
            ids.join(", ")
        );
        if j.watched {
            line += &format!(
                ", file reloaded {}x, refused {}x",
                j.reloads, j.reload_errors
            );
        }
        rows.push(("Join secret", line));
    }
    let mut out: String = rows
        .into_iter()
        .map(|(k, v)| format!("{k:>12}: {v}\n"))
        .collect();
    out.push('\n');
    out
}

/// `weft status`'s NetworkPolicy line: isolated pods, updates, denials per policy.
fn policy_line(p: &weft_router::control::PolicyReport) -> String {
    let denied: Vec<String> = p
        .denied
        .iter()
        .filter(|d| d.packets > 0)
        .map(|d| format!("{} {} {}", d.policy, d.direction, d.packets))
        .collect();
    let mut line = format!(
        "{} pods isolated, {} updates, denied: {}",
        p.isolated_pods,
        p.updates,
        if denied.is_empty() {
            "none".to_string()
        } else {
            denied.join(", ")
        }
    );
    if !p.problems.is_empty() {
        line += &format!(", {} malformed objects", p.problems.len());
    }
    line
}

fn peers_table(peers: &[weft_router::control::PeerReport]) -> String {
    let mut out = format!(
        "{:<12} {:<10} {:<12} {:<22} {:<12} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9} {}\n",
        "PEER",
        "NAME",
        "STATE",
        "ENDPOINT",
        "PATH",
        "RTT",
        "TX",
        "RX",
        "TX PKTS",
        "RX PKTS",
        "HANDSHAKE",
        "SECRET"
    );
    for p in peers {
        out += &format!(
            "{:<12} {:<10} {:<12} {:<22} {:<12} {:>8} {:>10} {:>10} {:>8} {:>8} {:>9} {}\n",
            p.id.chars().take(10).collect::<String>(),
            printable(p.name.as_deref().unwrap_or("?")),
            p.state,
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            p.path.as_deref().unwrap_or("-"),
            p.rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            human_bytes(p.tx_bytes),
            human_bytes(p.rx_bytes),
            p.tx_packets,
            p.rx_packets,
            p.last_handshake_secs
                .map(|s| format!("{s}s ago"))
                .unwrap_or_else(|| "-".into()),
            p.join_secret.as_deref().unwrap_or("-"),
        );
    }
    // Why a relayed peer is not direct, under the table (a line can be long).
    for p in peers {
        if let Some(why) = &p.why_relayed {
            out += &format!(
                "{} relayed: {}\n",
                printable(p.name.as_deref().unwrap_or("?")),
                printable(why)
            );
        }
    }
    out
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn run_lab(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            nodes,
            pods,
            nat,
            netem,
            delay_line,
            wrong_secret,
            block,
            offload,
            cni_bin,
            no_routers,
            kubernetes,
            api,
            model,
            which,
        } => {
            let spec = weft_lab::LabSpec {
                prefix: which.prefix,
                nodes,
                pods,
                nat: nat.iter().map(|(n, _)| *n).collect::<BTreeSet<_>>(),
                nat_kind: nat
                    .iter()
                    .filter(|(_, k)| *k != weft_lab::NatKind::Masquerade)
                    .copied()
                    .collect(),
                netem: weft_lab::plan::with_nat_distance(
                    nat.iter().map(|(n, _)| *n),
                    netem.into_iter().collect::<BTreeMap<_, _>>(),
                ),
                blocked: block.into_iter().collect(),
                routers: !no_routers,
                wrong_secret: wrong_secret.into_iter().collect(),
                delay_line,
                offload,
                kubernetes: kubernetes.map(std::path::absolute).transpose()?,
                api,
                model: model.map(std::path::absolute).transpose()?,
            };
            let mut bins = weft_lab::Binaries::beside(std::env::current_exe()?);
            if let Some(cni) = cni_bin {
                bins.cni = cni;
            }
            let state = weft_lab::up(&spec, &bins)?;
            print!("{}", weft_lab::render(&state));
        }
        LabCommand::Router {
            action,
            node,
            original_seeds,
            weft_bin,
            which,
        } => {
            let weft = match weft_bin {
                Some(path) if !matches!(action, RouterActionArg::Start) => {
                    bail!("--weft-bin {} is for start only", path.display())
                }
                // Checked here: `ip netns exec` would start and fail without telling us.
                Some(path) if !path.is_file() => {
                    bail!("--weft-bin {}: not a file", path.display())
                }
                Some(path) => std::path::absolute(&path)
                    .with_context(|| format!("--weft-bin {}", path.display()))?,
                None => std::env::current_exe()?,
            };
            match weft_lab::router(&which.prefix, &node, action.into(), original_seeds, &weft)? {
                Some(pid) => println!("started the router of {node} (pid {pid})"),
                None => println!("the router of {node} has stopped"),
            }
        }
        LabCommand::Pod { action } => {
            let bins = weft_lab::Binaries::beside(std::env::current_exe()?);
            match action {
                PodAction::Add { node, which } => {
                    let pod = weft_lab::pod_add(&which.prefix, &node, &bins)?;
                    println!("{} {} {}", pod.name, pod.node, pod.address);
                }
                PodAction::Del { pod, which } => {
                    let pod = weft_lab::pod_del(&which.prefix, &pod, &bins)?;
                    println!("deleted pod {} ({})", pod.name, pod.address);
                }
            }
        }
        LabCommand::Flood {
            node,
            kind,
            seconds,
            sources,
            json,
            which,
        } => {
            let report =
                weft_lab::flood::flood(&which.prefix, &node, kind.parse()?, seconds, sources)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.render());
            }
        }
        LabCommand::Block { link, which } => {
            weft_lab::set_blocked(&which.prefix, link, true)?;
            println!("blocked {}-{}", link.0, link.1);
        }
        LabCommand::Unblock { link, which } => {
            weft_lab::set_blocked(&which.prefix, link, false)?;
            println!("unblocked {}-{}", link.0, link.1);
        }
        LabCommand::DelayLine { a, b, delay_ms } => {
            weft_lab::delay::run(&a, &b, std::time::Duration::from_millis(delay_ms))?;
        }
        LabCommand::Ui { node, port, which } => {
            let forwarder = weft_lab::ui::UiForwarder::bind(&which.prefix, &node, port)?;
            println!("http://{}/", forwarder.local_addr()?);
            println!(
                "the page of {node}, until Ctrl-C or `weft lab down --prefix {}`",
                which.prefix
            );
            use std::io::Write as _;
            std::io::stdout().flush()?;
            forwarder.run()?;
            println!("lab {:?} is down: stopped", which.prefix);
        }
        LabCommand::Kubeconfig { which } => {
            let state = weft_lab::status(&which.prefix)?;
            if !state.spec.api {
                bail!(
                    "lab {:?} runs no API server (start it with `weft lab up --api`)",
                    which.prefix
                );
            }
            println!(
                "{}",
                weft_lab::api::kubeconfig_file(&which.prefix).display()
            );
        }
        LabCommand::ApiServe { which } => weft_lab::api::serve_lab(&which.prefix)?,
        LabCommand::Down { which } => {
            let n = weft_lab::down(&which.prefix)?;
            println!("lab {:?}: removed {n} namespaces", which.prefix);
        }
        LabCommand::Status { json, which } => {
            let state = weft_lab::status(&which.prefix)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", weft_lab::render(&state));
            }
        }
        LabCommand::Exec {
            pod,
            command,
            which,
        } => {
            let code = weft_lab::exec(&which.prefix, &pod, &command)?;
            std::process::exit(code);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_line_lists_what_was_denied() {
        use weft_router::control::{DeniedReport, PolicyReport};
        let mut p = PolicyReport {
            isolated_pods: 2,
            updates: 3,
            ..Default::default()
        };
        assert_eq!(policy_line(&p), "2 pods isolated, 3 updates, denied: none");
        p.denied = vec![
            DeniedReport {
                policy: "x/a".into(),
                direction: "ingress".into(),
                packets: 4,
            },
            DeniedReport {
                policy: "x/b".into(),
                direction: "egress".into(),
                packets: 0,
            },
        ];
        p.problems = vec!["networkpolicy x/c: spec: bad".into()];
        assert_eq!(
            policy_line(&p),
            "2 pods isolated, 3 updates, denied: x/a ingress 4, 1 malformed objects"
        );
    }

    #[test]
    fn keygen_writes_a_new_key_and_refuses_an_existing_file() {
        let dir = std::env::temp_dir().join(format!("weft-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let public = keygen(&path).unwrap();
        assert_eq!(weft_router::keyfile::load(&path).unwrap().public(), public);
        let before = std::fs::read(&path).unwrap();
        let err = format!("{:#}", keygen(&path).unwrap_err());
        assert!(err.contains("already exists"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the key was replaced"
        );
        // A directory that is not there is an I/O error, said as such.
        let err = format!("{:#}", keygen(&dir.join("missing/key")).unwrap_err());
        assert!(err.starts_with("writing the new key: "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
