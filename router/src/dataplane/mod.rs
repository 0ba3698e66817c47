//! The per-packet path (docs/design.md §2: "the mesh decides, the data plane executes").
//!
//! A data-plane thread moves pod traffic without waiting on the Node, in two halves: [`tx`]
//! reads the TUN device, seals and sends; [`rx`] receives, opens and writes to the TUN
//! device. It works on a read-mostly [`DataPlane`] snapshot the Node publishes (routes,
//! confirmed sessions, direct endpoints; the per-packet decisions are `weft_mesh::dataplane`'s)
//! and hands the Node everything the snapshot does not cover: handshakes, control messages,
//! relayed or roaming datagrams, packets for peers without a session. It reports what it
//! sealed and opened (a [`weft_mesh::Tally`] per worker) so the Node's liveness and keepalive clocks run
//! as if it had seen every packet. The socket and the TUN device are registered with no tokio
//! reactor: the thread sleeps in `poll` on them itself.
//!
//! The cost of a userspace tunnel is per system call, not per byte (docs/performance.md), so
//! both workers move 64 KiB at a time where the kernel lets them:
//! - the TUN device is opened with `IFF_VNET_HDR` and TSO, so a pod's TCP hands over whole
//!   64 KiB segments, which are split into MTU-sized packets in userspace (tun-rs), sealed in
//!   place into one buffer and sent with one UDP GSO `sendmsg` per destination run;
//! - the UDP socket receives with GRO and `recvmmsg` (quinn-udp); opened packets are coalesced
//!   again (tun-rs's GRO table) and written to the TUN with a virtio header.
//!
//! Each of these is probed at start and logged; without them (old kernels, `--offload off`)
//! the same workers move one packet per call.

pub mod rx;
pub mod tx;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::mpsc;
use weft_mesh::{ActivityReport, DataPlane};

pub use weft_mesh::dataplane::REPORT_EVERY;

/// Whether to use the kernel's segmentation offloads (`--offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// Use what the kernel supports; fall back silently to one packet per call.
    #[default]
    Auto,
    /// Require TUN offloads; refuse to start without them.
    On,
    /// One packet per system call (the fallback path, for tests and comparison).
    Off,
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

impl std::str::FromStr for Offload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("offload must be auto, on or off, not {other:?}")),
        }
    }
}

/// Which paths the kernel gave us, as probed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    /// The TUN device carries virtio headers (TSO in, GSO out).
    pub tun_offload: bool,
    /// Datagrams per UDP GSO `sendmsg` (1: none).
    pub gso_segments: usize,
    /// Datagrams per UDP GRO receive (1: none).
    pub gro_segments: usize,
}

/// The snapshot the workers read: swapped by the control task when the Node publishes a new
/// one, read once per batch by each worker.
#[derive(Debug, Default)]
pub struct Shared {
    snapshot: RwLock<Arc<DataPlane>>,
}

impl Shared {
    /// The current snapshot.
    pub fn load(&self) -> Arc<DataPlane> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a new snapshot.
    pub fn store(&self, dp: Arc<DataPlane>) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = dp;
    }
}

/// What a worker hands the control task (and so the Node).
#[derive(Debug)]
pub enum ToNode {
    /// A worker stopped for good (its device or socket failed); the router stops too.
    Stopped {
        /// Which worker.
        worker: &'static str,
        /// Why.
        error: io::Error,
    },
    /// TUN packets the snapshot has no direct session for.
    Packets(Vec<Vec<u8>>),
    /// Datagrams that are not confirmed-session data from a peer's direct endpoint.
    Datagrams(Vec<(SocketAddr, Vec<u8>)>),
    /// What was sealed and opened, and dropped, since the last report.
    Activity(ActivityReport),
}

/// The longest a worker sleeps before it looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Blocks until one of `fds` is ready for its events, `until` passes, or [`STOP_CHECK`]
/// elapses.
pub(crate) fn wait<const N: usize>(
    fds: [(BorrowedFd<'_>, PollFlags); N],
    until: Option<Instant>,
) -> io::Result<()> {
    let timeout = until
        .map_or(STOP_CHECK, |t| t.saturating_duration_since(Instant::now()))
        .min(STOP_CHECK);
    // At most STOP_CHECK (200 ms), so it fits; at least 1 ms, so a due report cannot spin.
    let timeout = PollTimeout::from(timeout.as_millis().clamp(1, 200) as u16);
    let mut fds = fds.map(|(fd, ev)| PollFd::new(fd, ev));
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The data-plane thread: one per router, both directions.
///
/// It takes a batch from the TUN device and one from the socket in turn, and sleeps in
/// `poll` on both only when neither has anything. One thread rather than one per direction:
/// a router's traffic is mostly one way (data one way, acknowledgements the other), and on
/// the small nodes weft targets a second thread cost more in wake-ups than it gave back in
/// parallelism (measured in docs/performance.md); a packet still wakes exactly the thread
/// that handles it, one context switch per crossing.
pub struct Workers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts the data-plane thread; it tells the control task through `to_node` if it
    /// stops on an error.
    pub fn start(tx: tx::Tx, rx: rx::Rx, to_node: mpsc::Sender<ToNode>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-data".into())
            .spawn(move || {
                if let Err(error) = run(&tx, &rx, &flag) {
                    let _ = to_node.blocking_send(ToNode::Stopped {
                        worker: "weft-data",
                        error,
                    });
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(tx: &tx::Tx, rx: &rx::Rx, stop: &AtomicBool) -> io::Result<()> {
    let (mut ts, mut rs) = (tx.state(), rx.state());
    while !stop.load(Ordering::Relaxed) {
        let sent = tx.step(&mut ts)?;
        let received = rx.step(&mut rs)?;
        if !sent && !received {
            let due = match (ts.due(), rs.due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            wait(
                [
                    (tx.tun.as_fd(), PollFlags::POLLIN),
                    (rx.socket.as_fd(), PollFlags::POLLIN),
                ],
                due,
            )?;
        }
    }
    Ok(())
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
