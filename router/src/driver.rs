//! The router's main loop: kernel and network in, `mesh::Node` in the middle, kernel and
//! network out. It follows the Node's documented drain order after every input: events (the
//! state is saved before anything is sent), transmits, TUN packets, then the next deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use weft_crypto::{Handshaker, OsRandom, PublicKey, Timestamp};
use weft_mesh::{Command, Event, NextHop, Node, PeerId};

use crate::config::{RouterConfig, TUN_NAME, pod_mtu};
use crate::control::{self, Call, PeerReport, Request, Response, RouteReport, StatusReport};
use crate::dataplane::{self, Offload, Paths, Queues, Receivers, Shared, ToNode};
use crate::metrics::{self, Snapshot};
use crate::netconf;
use crate::state::{StateDir, StateError};

/// Socket buffers: the default 208 KiB overflows within a millisecond at a gigabit while the
/// single loop is busy sealing a batch (RcvbufErrors seen in the lab before this).
const SOCKET_BUFFER: usize = 8 << 20;
/// Packets the kernel may queue on the TUN device for the router (default 500: it dropped
/// under one TCP stream in the lab).
const TUN_QUEUE: u32 = 4096;
/// How often the metrics snapshot is rebuilt, at most.
const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a router could not start or had to stop. As rustls keeps them apart: what the
/// operator gave that cannot work, what the machine refused, and what broke inside the
/// router once it ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot work; [`RouterConfig::validate`] says why, naming the flag.
    #[error("{0}")]
    InvalidConfig(String),
    /// The underlay MTU leaves too little room for pods once the tunnel's overhead is taken.
    #[error("an underlay MTU of {underlay} leaves less than 576 bytes for pods")]
    UnderlayMtuTooSmall {
        /// The underlay MTU, given or detected.
        underlay: u32,
    },
    /// The pod MTU is more than a TUN device takes (it must fit in 16 bits).
    #[error("pod MTU {pod_mtu} is larger than a TUN device takes")]
    PodMtuTooLarge {
        /// The pod MTU computed from the underlay's.
        pod_mtu: u32,
    },
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The kernel could not be configured.
    #[error(transparent)]
    Netconf(#[from] netconf::NetconfError),
    /// A socket could not be bound (address in use, no permission, bad path).
    #[error("bind {socket}: {source}")]
    Bind {
        /// Which socket.
        socket: Socket,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The UDP socket, once bound, could not be set up.
    #[error("{step}: {source}")]
    UdpSetup {
        /// What was being done.
        step: UdpStep,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TUN device could not be created.
    #[error(
        "create TUN device {tun} (is another router running in this namespace?){with}: {source}",
        tun = TUN_NAME,
        with = .offloads_required.then_some(" with offloads (--offload on)").unwrap_or_default()
    )]
    TunCreate {
        /// Whether offloads were required (`--offload on`), so no fallback was tried.
        offloads_required: bool,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The TUN device could not be brought up.
    #[error("bring {tun} up: {0}", tun = TUN_NAME)]
    TunUp(#[source] std::io::Error),
    /// The data-plane threads could not be started.
    #[error("start the data-plane threads: {0}")]
    WorkersStart(#[source] std::io::Error),
    /// A data-plane worker stopped for good: its device or socket failed under it.
    #[error("the data-plane worker {worker}: {source}")]
    WorkerStopped {
        /// Which worker (its thread name).
        worker: &'static str,
        /// What failed.
        source: std::io::Error,
    },
    /// A blocking kernel-configuration task panicked or was cancelled: a bug, not a
    /// refusal by the kernel (that is [`RunError::Netconf`]).
    #[error("a netlink task failed: {0}")]
    NetlinkTask(#[from] tokio::task::JoinError),
    /// Kubernetes discovery could not start.
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
    /// weft-cni's conflist could not be written (`--cni-conf-dir`).
    #[error("write the CNI configuration: {0}")]
    Cni(#[from] weft_cni::install::InstallError),
}

/// A socket the router binds at start.
#[derive(Debug)]
pub enum Socket {
    /// The control socket in the state directory.
    Control(std::path::PathBuf),
    /// The HTTP listener for metrics and health.
    Metrics(SocketAddr),
    /// The UDP socket that carries everything between routers.
    Udp(SocketAddr),
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Control(path) => write!(f, "the control socket {}", path.display()),
            Socket::Metrics(addr) => write!(f, "metrics {addr}"),
            Socket::Udp(addr) => write!(f, "UDP {addr}"),
        }
    }
}

/// A step of setting up the bound UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpStep {
    /// Making it non-blocking (the data-plane threads poll it themselves).
    NonBlocking,
    /// Reading the address it was bound to.
    LocalAddr,
    /// Probing GSO and GRO (quinn-udp's socket state).
    Probe,
}

impl std::fmt::Display for UdpStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UdpStep::NonBlocking => "make the UDP socket non-blocking",
            UdpStep::LocalAddr => "read the socket address",
            UdpStep::Probe => "configure the UDP socket (GSO/GRO probe)",
        })
    }
}

fn bind_error(socket: Socket) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Bind { socket, source }
}

fn udp_error(step: UdpStep) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::UdpSetup { step, source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, netconf::NetconfError> + Send + 'static,
) -> Result<T, RunError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Enlarges the socket's buffers, past `net.core.[rw]mem_max` when we have the privilege
/// (the router runs with CAP_NET_ADMIN), else as far as the limit allows.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = SOCKET_BUFFER;
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &size);
    }
    if setsockopt(socket, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &size);
    }
}

/// Sends one of the Node's datagrams on the shared non-blocking socket. When the data plane
/// has filled the send buffer it waits a moment for room (these are few and small: handshakes,
/// gossip, keepalives) rather than drop them.
fn send_control(socket: &std::net::UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    match socket.send_to(bytes, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let room = Instant::now() + std::time::Duration::from_millis(10);
            dataplane::wait(
                [(socket.as_fd(), nix::poll::PollFlags::POLLOUT)],
                Some(room),
            )?;
            socket.send_to(bytes, to).map(drop)
        }
        r => r.map(drop),
    }
}

/// Turns UDP GRO off again (quinn-udp turns it on): `--offload off` means one datagram per
/// receive too.
fn disable_gro(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(socket, sockopt::UdpGroSegment, &false) {
        warn!(error = %e, "could not turn UDP GRO off");
    }
}

/// Creates the TUN device, with virtio headers (TSO in, GSO out) unless `offload` is off;
/// `auto` falls back to plain packets when the kernel refuses them.
fn open_tun(offload: Offload, pod_mtu: u32) -> Result<tun_rs::SyncDevice, RunError> {
    let mtu = u16::try_from(pod_mtu).map_err(|_| RunError::PodMtuTooLarge { pod_mtu })?;
    let build = |vnet: bool| {
        tun_rs::DeviceBuilder::new()
            .name(TUN_NAME)
            .mtu(mtu)
            .tx_queue_len(TUN_QUEUE)
            .offload(vnet)
            // Up only after IPv6 is off on it, or the kernel's first solicitation gets
            // through.
            .enable(false)
            .build_sync()
            .and_then(|d| d.set_nonblocking(true).map(|()| d))
    };
    let refused = |offloads_required| {
        move |source| RunError::TunCreate {
            offloads_required,
            source,
        }
    };
    match offload {
        Offload::Off => build(false).map_err(refused(false)),
        Offload::On => build(true).map_err(refused(true)),
        Offload::Auto => build(true).or_else(|e| {
            warn!(error = %e, "TUN offloads refused; one packet per read and write");
            build(false).map_err(refused(false))
        }),
    }
}

fn wall_now() -> Timestamp {
    Timestamp::from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Runs a router until `shutdown` completes. On the way out the TUN device goes (and with it
/// the cluster route); the bridge and the pods stay, so an upgrade does not cut pods off.
pub async fn run(config: RouterConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    config.validate().map_err(RunError::InvalidConfig)?;
    tokio::pin!(shutdown);
    let state = StateDir::open(&config.state_dir)?;
    let key = state.key(&mut OsRandom)?;
    let persisted = state.load_mesh()?;
    let bridge = config.bridge.clone();
    let underlay = match config.underlay_mtu {
        Some(m) => m,
        None => blocking(move || netconf::underlay_mtu(&[TUN_NAME, &bridge])).await?,
    };
    let pod_mtu = pod_mtu(underlay).ok_or(RunError::UnderlayMtuTooSmall { underlay })?;

    // Everything that can fail to bind is bound before the kernel is touched, so a failure
    // leaves nothing behind.
    let socket_path = state.control_socket();
    let control_listener =
        control::bind(&socket_path).map_err(bind_error(Socket::Control(socket_path.clone())))?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_error(Socket::Metrics(addr)))?,
        ),
        None => None,
    };
    // A std socket and a sync TUN device, registered with no epoll: the data-plane thread
    // waits on them itself, and a tokio registration would wake the runtime on every
    // arrival for nothing (thousands of wake-ups a second under load, measured).
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(bind_error(Socket::Udp(config.listen)))?;
    socket
        .set_nonblocking(true)
        .map_err(udp_error(UdpStep::NonBlocking))?;
    grow_buffers(&socket);
    let listen = socket.local_addr().map_err(udp_error(UdpStep::LocalAddr))?;
    let udp =
        quinn_udp::UdpSocketState::new((&socket).into()).map_err(udp_error(UdpStep::Probe))?;
    let gso = config.offload != Offload::Off && udp.max_gso_segments() > 1;
    let gro = config.offload != Offload::Off && udp.gro_segments() > 1;
    if !gro && udp.gro_segments() > 1 {
        disable_gro(&socket);
    }
    // Fail closed first: from here on the cluster range never follows the default route,
    // whether this router runs or not (docs/design.md).
    let range = config.cluster_range;
    blocking(move || netconf::hold_cluster_range(range)).await?;
    let rules = crate::nftables::Rules {
        cluster_range: range,
        tun: TUN_NAME.into(),
        masquerade: config.masquerade,
        exempt: config.masquerade_exempt.clone(),
    };
    // With NetworkPolicy on, a table left by the last run keeps its policy chains until the
    // enforcer has complete lists to replace it from: masquerade only would open every pod.
    if !config.kubernetes.as_ref().is_some_and(|k| k.network_policy)
        || !blocking(crate::nftables::exists).await?
    {
        blocking(move || crate::nftables::apply(&rules)).await?;
    }
    let tun = open_tun(config.offload, pod_mtu)?;
    let paths = Paths {
        tun_offload: tun.tcp_gso(),
        gso_segments: if gso { udp.max_gso_segments() } else { 1 },
        gro_segments: if gro { udp.gro_segments() } else { 1 },
    };
    if paths.tun_offload {
        let segs = dataplane::tx::FRAME_SLOTS as u32;
        if let Err(e) = blocking(move || netconf::limit_gso_segments(TUN_NAME, segs)).await {
            // Then frames of more segments than a batch holds are dropped and counted
            // (tun_frame), never fatal.
            warn!(error = %e, "could not cap the TUN device's GSO segments");
        }
    }
    blocking(|| netconf::disable_ipv6(TUN_NAME)).await?;
    tun.enabled(true).map_err(RunError::TunUp)?;
    blocking(move || netconf::route_cluster_range(TUN_NAME, range)).await?;

    let ready = Arc::new(AtomicBool::new(false));
    // The status listener serves from here on, so a kubelet's liveness probe sees a router
    // waiting for the API server or its podCIDR as alive (`/healthz` 200), and not ready
    // (`/readyz` 503) until it has its block. The loop does not turn yet: a heartbeat keeps
    // `/healthz` fresh until it does.
    let snapshot = metrics::Shared::default();
    // The page shows every member's key, endpoints and blocks: on loopback unless opted in.
    let ui = config
        .metrics
        .filter(|addr| config.ui.serves_on(*addr))
        .map(|_| crate::ui::Published::default());
    let metrics_task = metrics_listener.map(|listener| {
        let (snapshot, ready, ui) = (snapshot.clone(), ready.clone(), ui.clone());
        let dir = state.path().to_owned();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, snapshot, ready, dir, ui).await {
                error!(error = %e, "metrics server failed");
            }
        })
    });
    let heartbeat = {
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            loop {
                snapshot.update(Snapshot::default());
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    };
    // Under Kubernetes the block is the Node's podCIDR: known before the mesh starts.
    let discovery = tokio::select! {
        d = crate::kubernetes::start_for(&config, key.public(), listen.port(), &ready) => d,
        _ = &mut shutdown => {
            heartbeat.abort();
            let _ = std::fs::remove_file(&socket_path);
            return Ok(());
        }
    };
    heartbeat.abort();
    let discovery = discovery?;
    let pod_cidr = discovery.as_ref().map(|d| d.pod_cidr).or(config.pod_cidr);
    let policy = crate::kubernetes::policy::Enforcer::start_for(&config, discovery.as_ref());

    let now = Instant::now();
    let mut mesh_config = weft_mesh::Config::new(config.name.clone());
    mesh_config.announce = config.announce.clone();
    mesh_config.seeds = config.seeds.clone();
    mesh_config.cluster_range = config.cluster_range;
    mesh_config.block_prefix = config.block_prefix;
    mesh_config.pod_cidr = pod_cidr;
    mesh_config.found_address_space = config.found_address_space;
    let handshaker = Handshaker::new(key.clone(), config.join_secrets.clone());
    let mut node = Node::new(
        mesh_config,
        handshaker,
        persisted,
        Box::new(OsRandom),
        now,
        wall_now(),
    );
    // The pins of the initial Node list apply before any datagram is handled.
    let mut discovery = discovery;
    if let Some(d) = discovery.as_mut() {
        while let Ok(command) = d.commands.try_recv() {
            node.handle_command(now, command);
        }
    }
    info!(
        peer = %key.public(),
        name = %config.name,
        %listen,
        underlay_mtu = underlay,
        pod_mtu,
        "router started"
    );
    info!(
        offload = ?config.offload,
        tun_offload = paths.tun_offload,
        udp_gso_segments = paths.gso_segments,
        udp_gro_segments = paths.gro_segments,
        "data path: {}",
        if paths.tun_offload && gso && gro {
            "64 KiB batches (TUN TSO/GRO, UDP GSO/GRO)"
        } else if paths.tun_offload || gso || gro {
            "partly batched (see the flags)"
        } else {
            "one packet per system call"
        }
    );
    if weft_crypto::INSECURE_SIMULATION_CURVE_COMPILED {
        warn!(
            "this debug build contains the simulator's insecure curve (feature insecure-fast-dh); \
             the router does not use it, but do not ship this build"
        );
    }

    let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
    let refused = Arc::new(control::RefusedRequests::default());
    let refused_counts = refused.clone();
    let control_task = tokio::spawn(async move {
        if let Err(e) = control::serve(control_listener, calls_tx, refused_counts).await {
            error!(error = %e, "control socket failed");
        }
    });
    // A block file left by an earlier run whose state is gone must not keep weft-cni handing
    // out addresses the mesh no longer gives us.
    let written_block = weft_cni::node_block::NodeBlock::read(state.path())
        .ok()
        .flatten()
        .map(|b| b.cidr());

    // The data plane: two workers beside the control task (docs/design.md §2).
    let socket = Arc::new(socket);
    let tun = Arc::new(tun);
    let udp = Arc::new(udp);
    let shared = Arc::new(Shared::default());
    let (to_node, from_workers) = Queues::new();
    let tx = dataplane::tx::Tx {
        tun: tun.clone(),
        socket: socket.clone(),
        udp: udp.clone(),
        shared: shared.clone(),
        to_node: to_node.clone(),
        offload: paths.tun_offload,
        gso,
        pod_mtu: pod_mtu as usize,
    };
    let rx = dataplane::rx::Rx {
        tun: tun.clone(),
        socket: socket.clone(),
        udp,
        shared: shared.clone(),
        to_node: to_node.clone(),
    };
    let workers =
        dataplane::Workers::start(tx, rx, to_node.main).map_err(RunError::WorkersStart)?;

    let mut driver = Driver {
        node,
        state,
        socket,
        tun,
        tun_offload: paths.tun_offload,
        paths,
        shared,
        published: None,
        listen,
        pod_mtu,
        snapshot,
        ui,
        history: crate::report::TunnelHistory::default(),
        metrics_on: config.metrics.is_some(),
        last_snapshot: None,
        ready,
        written_block,
        tun_block: None,
        refused,
        discovery,
        join_secret_watch: config
            .join_secret_file
            .clone()
            .map(crate::join_secrets::Watch::start),
        policy,
        config,
    };
    let result = driver.run(&mut calls, from_workers, shutdown).await;
    // Stops and joins the workers: their descriptors close, and with the last one the TUN
    // device and its route go.
    drop(workers);
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    if let Err(e) = driver.state.save_mesh(&driver.node.persistent_state()) {
        warn!(error = %e, "saving the mesh state on the way out");
    }
    info!(
        "router stopped; the TUN device and its route are gone, the bridge, the pods and the \
         blackhole that keeps the cluster range off the underlay stay"
    );
    result
}

struct Driver {
    node: Node,
    state: StateDir,
    socket: Arc<std::net::UdpSocket>,
    tun: Arc<tun_rs::SyncDevice>,
    /// Whether TUN writes carry a virtio header.
    tun_offload: bool,
    /// The data path probed at start, for status.
    paths: Paths,
    /// Where the Node's data-plane snapshot is published for the workers.
    shared: Arc<Shared>,
    published: Option<Arc<weft_mesh::DataPlane>>,
    config: RouterConfig,
    listen: SocketAddr,
    pod_mtu: u32,
    snapshot: metrics::Shared,
    /// Where the report for the live page is published, when it is served.
    ui: Option<crate::ui::Published>,
    /// Each tunnel's counters sampled over the last minutes, for the report's rates.
    history: crate::report::TunnelHistory,
    metrics_on: bool,
    last_snapshot: Option<Instant>,
    ready: Arc<AtomicBool>,
    /// The block weft-cni was last told about (the file on disk).
    written_block: Option<ipnet::Ipv4Net>,
    /// The block whose address the TUN device holds ([`netconf::tun_address`]).
    tun_block: Option<ipnet::Ipv4Net>,
    /// Control requests refused, counted by the control task.
    refused: Arc<control::RefusedRequests>,
    /// Kubernetes Node discovery, when on: pins and forgets for the Node.
    discovery: Option<crate::kubernetes::Discovery>,
    /// NetworkPolicy enforcement, when on.
    policy: Option<crate::kubernetes::policy::Enforcer>,
    /// The join secret file, polled for a rotation (docs/design.md §3).
    join_secret_watch: Option<crate::join_secrets::Watch>,
}

impl Driver {
    async fn run(
        &mut self,
        calls: &mut mpsc::Receiver<Call>,
        mut from_workers: Receivers,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        {
            self.drain().await?;
            loop {
                let deadline = self.node.poll_timeout();
                let sleep = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                // In this order (docs/design.md §3, "Handshakes under load"): activity
                // reports and established traffic before timers, requests and new handshakes,
                // which come last, so a flood of initiations waits in its own bounded queue.
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return Ok(()),
                    Some(report) = from_workers.reports.recv() => {
                        report.apply(&mut self.node, Instant::now());
                    }
                    Some(message) = from_workers.main.recv() => {
                        let now = Instant::now();
                        match message {
                            ToNode::Packets(packets) => self.node.handle_tun_packets(now, packets),
                            ToNode::Datagrams(datagrams) => self.node.handle_datagrams(
                                now,
                                datagrams.iter().map(|(from, d)| (*from, d.as_slice())),
                            ),
                            ToNode::Stopped { worker, error } => {
                                return Err(RunError::WorkerStopped {
                                    worker,
                                    source: error,
                                });
                            }
                        }
                    }
                    _ = sleep => self.node.handle_timeout(Instant::now()),
                    Some((request, reply)) = calls.recv() => match request {
                        // Answered later, by the enforcer, once its rules hold the pod.
                        Request::PodAdded { namespace, name, address } => {
                            self.pod_added(namespace, name, address, reply);
                        }
                        request => {
                            let response = self.handle_request(request);
                            let _ = reply.send(response);
                        }
                    },
                    command = crate::kubernetes::Discovery::next_command(&mut self.discovery) => {
                        // A deleted Node whose key never joined the mesh (refused, or gone
                        // before it came up) has nothing to forget: not worth the warning a
                        // refused `weft forget` gets.
                        if let Command::Forget(peer) = &command
                            && self.node.members().get(peer).is_none()
                        {
                            debug!(peer = %peer, "deleted Node's key was never a member: nothing to forget");
                        } else {
                            self.node.handle_command(Instant::now(), command);
                        }
                    }
                    secrets = crate::join_secrets::Watch::next(&mut self.join_secret_watch) => {
                        self.node.handle_command(Instant::now(), Command::SetJoinSecrets(secrets));
                    }
                    Some((from, initiation)) = from_workers.initiations.recv() => {
                        self.node.handle_datagram(Instant::now(), from, &initiation);
                    }
                }
                self.drain().await?;
            }
        }
    }

    /// Drains the Node in its documented order.
    async fn drain(&mut self) -> Result<(), RunError> {
        while let Some(event) = self.node.poll_event() {
            self.handle_event(event).await?;
        }
        while let Some(t) = self.node.poll_transmit() {
            if let Err(e) = send_control(&self.socket, &t.bytes, t.destination) {
                // An unreachable peer must not stop the router; the mesh notices by itself.
                debug!(endpoint = %t.destination, error = %e, "send failed");
            }
        }
        while let Some(packet) = self.node.poll_tun() {
            let written = if self.tun_offload {
                // A device with virtio headers takes one in front of every packet; zero
                // means "no offload" for this one.
                const NO_OFFLOAD: [u8; tun_rs::VIRTIO_NET_HDR_LEN] =
                    [0; tun_rs::VIRTIO_NET_HDR_LEN];
                self.tun.send_vectored(&[
                    std::io::IoSlice::new(&NO_OFFLOAD),
                    std::io::IoSlice::new(&packet),
                ])
            } else {
                self.tun.send(&packet)
            };
            if let Err(e) = written {
                debug!(error = %e, "TUN write failed");
            }
        }
        let dp = self.node.data_plane(Instant::now());
        if !self.published.as_ref().is_some_and(|p| Arc::ptr_eq(p, &dp)) {
            self.shared.store(dp.clone());
            self.published = Some(dp);
        }
        self.sync_block().await?;
        // Metrics are a view for scrapes: refreshed at most once a second, not per batch.
        // The page polls at most once a second too, and the report's rates are sampled more
        // rarely still: the same clock serves all three.
        let now = Instant::now();
        if self
            .last_snapshot
            .is_none_or(|t| now.duration_since(t) >= SNAPSHOT_EVERY)
        {
            self.history.observe(now, &self.node.status().peers);
            if self.metrics_on {
                self.snapshot.update(self.metrics_snapshot());
            }
            if let Some(ui) = self.ui.as_ref().filter(|ui| ui.wanted()) {
                ui.update(&self.mesh_report());
            }
            self.last_snapshot = Some(now);
        }
        Ok(())
    }

    /// Keeps weft-cni's block file, the bridge and readiness in step with the Node's block:
    /// a block the mesh took back (or one left from a run whose state is gone) is withdrawn
    /// from weft-cni at once, so no address of it is handed out again.
    async fn sync_block(&mut self) -> Result<(), RunError> {
        let block = self.node.block();
        // The TUN device is new in every run: it gets the node's address even when the
        // block file is the last run's.
        if block != self.tun_block {
            let old = self.tun_block;
            blocking(move || netconf::set_tun_address(TUN_NAME, old, block)).await?;
            self.tun_block = block;
        }
        if block == self.written_block {
            return Ok(());
        }
        match block {
            Some(block) => {
                info!(%block, "pod block ready");
                self.state.write_block(block)?;
                let (bridge, mtu) = (self.config.bridge.clone(), self.pod_mtu);
                blocking(move || netconf::ensure_bridge(&bridge, block, mtu)).await?;
                // Last: the conflist is what makes the kubelet call the network ready, and
                // by now the block, the bridge, the TUN device and its route are all up.
                self.write_conflist().await?;
                self.ready.store(true, Ordering::Relaxed);
            }
            None => {
                if let Some(old) = self.written_block {
                    warn!(
                        block = %old,
                        "no pod block any more: withdrawn from weft-cni until one is claimed"
                    );
                }
                self.state.remove_block()?;
                self.ready.store(false, Ordering::Relaxed);
            }
        }
        self.written_block = block;
        Ok(())
    }

    /// Writes weft-cni's conflist when `--cni-conf-dir` asks for it (atomic, idempotent: an
    /// unchanged file is not rewritten, so a restart does not make the runtime reload).
    async fn write_conflist(&self) -> Result<(), RunError> {
        use weft_cni::install::{self, Options, PLUGIN_NAME, Parts};
        let Some(cni) = &self.config.cni else {
            return Ok(());
        };
        let options = Options {
            plugin: cni.bin_dir.join(PLUGIN_NAME),
            bin_dir: cni.bin_dir.clone(),
            conf_dir: cni.conf_dir.clone(),
            state_dir: self.config.state_dir.clone(),
            bridge: self.config.bridge.clone(),
            pod_mtu: self.pod_mtu,
        };
        // With NetworkPolicy enforced, ADD waits for the rules to hold each new pod.
        let policy = self.policy.as_ref().map(|_| weft_cni::config::PolicyWait {
            control_socket: self.config.state_dir.join(crate::state::CONTROL_SOCKET),
            timeout: std::time::Duration::from_secs(weft_cni::config::DEFAULT_POLICY_TIMEOUT),
        });
        let actions = tokio::task::spawn_blocking(move || {
            install::install_parts_with(&options, Parts::Conflist, policy.as_ref())
        })
        .await??;
        for action in actions {
            info!("CNI: {action}");
        }
        Ok(())
    }

    /// Acts on the Node's events. Each event is logged once, by the layer that knows it
    /// (docs/logging.md): the mesh logs tunnels, membership, commands and address space as it
    /// decides them, so only the events it emits without a log line are logged here.
    async fn handle_event(&mut self, event: Event) -> Result<(), RunError> {
        match event {
            Event::StateChanged => self.state.save_mesh(&self.node.persistent_state())?,
            Event::MemberJoined { peer, name } => info!(peer = %peer, %name, "member joined"),
            Event::RoutesChanged => debug!("routes changed"),
            // Acted on in `sync_block`, after every drain, from the Node's current block.
            Event::BlockClaimed { .. } | Event::BlockWaiting { .. } => {}
            // Logged by the mesh; nothing here acts on them.
            Event::PeerUp { .. }
            | Event::PeerDown { .. }
            | Event::MemberDeparted { .. }
            | Event::CommandRefused { .. }
            | Event::BlocksTakenOver { .. } => {}
        }
        Ok(())
    }

    /// weft-cni's `pod_added`: answered at once without NetworkPolicy enforcement, else by
    /// the enforcer once the rules in the kernel hold the pod (docs/networkpolicy.md).
    fn pod_added(
        &mut self,
        namespace: String,
        name: String,
        address: std::net::Ipv4Addr,
        reply: tokio::sync::oneshot::Sender<Response>,
    ) {
        let Some(policy) = &self.policy else {
            let _ = reply.send(Response::PodReady { enforced: false });
            return;
        };
        // Only an address weft-cni could have leased here: any other would be shown as a
        // local pod's and judged on this node.
        match self.node.block() {
            Some(block) if block.contains(&address) => {
                policy.pod_added(namespace, name, address, reply)
            }
            block => {
                let _ = reply.send(Response::Error {
                    message: format!(
                        "address {address} is not in this node's pod block ({})",
                        block.map_or("none yet".into(), |b| b.to_string())
                    ),
                });
            }
        }
    }

    fn handle_request(&mut self, request: Request) -> Response {
        let now = Instant::now();
        match request {
            Request::PodAdded { .. } => Response::Error {
                message: "pod_added is answered by the policy loop".into(),
            },
            Request::Status => Response::Status(Box::new(self.status_report())),
            Request::Report => Response::Report(Box::new(self.mesh_report())),
            Request::Connect { endpoint } => {
                self.node.handle_command(now, Command::Connect(endpoint));
                Response::Accepted
            }
            Request::Forget { peer } => match peer.parse::<PublicKey>() {
                Ok(key) => {
                    self.node
                        .handle_command(now, Command::Forget(PeerId::from(key)));
                    Response::Accepted
                }
                Err(e) => Response::Error {
                    message: format!("peer {peer:?} is not a public key: {e}"),
                },
            },
        }
    }

    fn status_report(&self) -> StatusReport {
        let status = self.node.status();
        let now = Instant::now();
        StatusReport {
            id: status.id.to_string(),
            name: status.name,
            incarnation: status.incarnation,
            listen: self.listen,
            block: status.block.map(|b| b.to_string()),
            waiting: status.waiting.map(|w| w.to_string()),
            free_space: status.free_space.iter().map(|n| n.to_string()).collect(),
            pod_mtu: self.pod_mtu,
            members: status.members,
            peers: status
                .peers
                .into_iter()
                .map(|p| PeerReport {
                    why_relayed: p.why_relayed(now),
                    id: p.id.to_string(),
                    name: p.name,
                    state: format!("{:?}", p.state).to_lowercase(),
                    endpoint: p.path.as_ref().map(|h| match h {
                        NextHop::Direct(e) => *e,
                        NextHop::Relay { endpoint, .. } => *endpoint,
                    }),
                    path: p.path.as_ref().map(|h| describe_path(&self.node, h)),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    tx_packets: p.tx_packets,
                    rx_packets: p.rx_packets,
                    last_handshake_secs: p.last_handshake.map(|t| now.duration_since(t).as_secs()),
                    join_secret: p.join_secret.map(|u| u.as_str().to_owned()),
                })
                .collect(),
            drops: drop_counts(self.node.drops(), &self.refused),
            routes: self
                .node
                .routes()
                .blocks()
                .iter()
                .map(|(block, owner)| RouteReport {
                    block: block.to_string(),
                    peer: owner.to_string(),
                    name: self.node.members().get(owner).map(|r| r.name.clone()),
                })
                .collect(),
            data_path: Some(control::DataPathReport {
                tun_offload: self.paths.tun_offload,
                gso_segments: self.paths.gso_segments,
                gro_segments: self.paths.gro_segments,
            }),
            policy: self.policy.as_ref().map(|p| p.report()),
            join_secrets: Some(self.join_secrets_report()),
        }
    }

    fn join_secrets_report(&self) -> control::JoinSecretsReport {
        let secrets = self.node.join_secrets();
        let counters = self.join_secret_watch.as_ref().map(|w| &w.counters);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        control::JoinSecretsReport {
            accepted: secrets.ids().map(|id| id.to_string()).collect(),
            watched: self.join_secret_watch.is_some(),
            reloads: counters.map_or(0, |c| load(&c.reloads)),
            reload_errors: counters.map_or(0, |c| load(&c.errors)),
        }
    }

    fn mesh_report(&self) -> crate::report::MeshReport {
        let local = crate::report::Local {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: self.listen,
            pod_mtu: self.pod_mtu,
            drops: drop_counts(self.node.drops(), &self.refused),
        };
        crate::report::build(&self.node, Instant::now(), local, &self.history)
    }

    fn metrics_snapshot(&self) -> Snapshot {
        let report = self.status_report();
        let stats = self.node.stats();
        Snapshot::from_report(&report, stats)
    }
}

/// A drop reason as metrics and the status API name it: its stable label
/// ([`weft_mesh::DropReason::as_str`]), one fixed spelling for dashboards.
pub fn drop_reason_name(reason: weft_mesh::DropReason) -> String {
    reason.as_str().to_owned()
}

/// The `drops` of the status report and the `reason`s of `weft_drops_total`: the Node's drops
/// by their labels, and the control socket's refusals that have counted something, under
/// labels no [`weft_mesh::DropReason`] uses (so neither count hides the other).
pub fn drop_counts(
    node: &weft_mesh::DropCounters,
    refused: &control::RefusedRequests,
) -> BTreeMap<String, u64> {
    node.iter()
        .map(|(r, n)| (drop_reason_name(*r), *n))
        .chain(
            refused
                .by_reason()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), n)),
        )
        .collect()
}

fn describe_path(node: &Node, hop: &NextHop) -> String {
    match hop {
        NextHop::Direct(_) => "direct".into(),
        NextHop::Relay { via, .. } => {
            let name = node
                .members()
                .get(via)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| format!("{via:?}"));
            format!("via {name}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_name_what_failed_as_before() {
        let os = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let bind = RunError::Bind {
            socket: Socket::Udp("198.18.0.1:6786".parse().unwrap()),
            source: os(),
        };
        assert!(
            bind.to_string().starts_with("bind UDP 198.18.0.1:6786: "),
            "{bind}"
        );
        let control = RunError::Bind {
            socket: Socket::Control("/var/lib/weft/control.sock".into()),
            source: os(),
        };
        assert!(
            control
                .to_string()
                .starts_with("bind the control socket /var/lib/weft/control.sock: "),
            "{control}"
        );
        let tun = RunError::TunCreate {
            offloads_required: true,
            source: os(),
        };
        assert!(
            tun.to_string().starts_with(
                "create TUN device weft-tun (is another router running in this namespace?) \
                 with offloads (--offload on): "
            ),
            "{tun}"
        );
        let tun = RunError::TunCreate {
            offloads_required: false,
            source: os(),
        };
        assert!(
            tun.to_string()
                .contains("(is another router running in this namespace?): "),
            "{tun}"
        );
        assert_eq!(
            RunError::UnderlayMtuTooSmall { underlay: 600 }.to_string(),
            "an underlay MTU of 600 leaves less than 576 bytes for pods"
        );
        let probe = RunError::UdpSetup {
            step: UdpStep::Probe,
            source: os(),
        };
        assert!(
            probe
                .to_string()
                .starts_with("configure the UDP socket (GSO/GRO probe): "),
            "{probe}"
        );
    }
}
