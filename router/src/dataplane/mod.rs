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
use tokio::sync::mpsc::error::TrySendError;
use weft_crypto::MessageType;
use weft_mesh::{ActivityReport, DataPlane, DropReason, Tally};

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

/// What a worker hands the control task (and so the Node) on its main queue.
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
    /// Datagrams that are not confirmed-session data from a peer's direct endpoint, and not
    /// handshake initiations.
    Datagrams(Vec<(SocketAddr, Vec<u8>)>),
}

/// Batches waiting on the main queue (datagrams and packets the Node must see).
pub const MAIN_QUEUE: usize = 1024;
/// Handshake initiations waiting for the control task. It answers a few thousand a second
/// (each costs Diffie-Hellman); past this, a flood's initiations are dropped and counted
/// ([`DropReason::HandshakeQueueFull`]) instead of waiting seconds to be refused anyway.
pub const INITIATION_QUEUE: usize = 256;
/// Activity reports waiting (each worker sends at most ten a second).
pub const REPORT_QUEUE: usize = 16;

/// The three queues from the data-plane thread to the control task (docs/design.md §3,
/// "Handshakes under load"). A flood of initiations fills only its own queue, which the
/// control task serves last, so it can neither push established peers' control traffic out
/// nor delay the activity reports that keep live paths from looking silent. Nothing is
/// dropped uncounted: what does not fit is counted in the worker's tally by reason, and a
/// report that does not fit stays in the tally and goes with the next.
#[derive(Debug, Clone)]
pub struct Queues {
    /// Everything the Node must see but initiations, and a worker's stop.
    pub main: mpsc::Sender<ToNode>,
    /// Handshake initiations, one per message.
    pub initiations: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    /// Activity reports.
    pub reports: mpsc::Sender<ActivityReport>,
}

/// The control task's ends of [`Queues`].
#[derive(Debug)]
pub struct Receivers {
    /// See [`Queues::main`].
    pub main: mpsc::Receiver<ToNode>,
    /// See [`Queues::initiations`].
    pub initiations: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// See [`Queues::reports`].
    pub reports: mpsc::Receiver<ActivityReport>,
}

impl Queues {
    /// The queues with their standard bounds.
    pub fn new() -> (Self, Receivers) {
        Self::with_bounds(MAIN_QUEUE, INITIATION_QUEUE, REPORT_QUEUE)
    }

    fn with_bounds(main: usize, initiations: usize, reports: usize) -> (Self, Receivers) {
        let (main_tx, main_rx) = mpsc::channel(main);
        let (init_tx, init_rx) = mpsc::channel(initiations);
        let (rep_tx, rep_rx) = mpsc::channel(reports);
        (
            Self {
                main: main_tx,
                initiations: init_tx,
                reports: rep_tx,
            },
            Receivers {
                main: main_rx,
                initiations: init_rx,
                reports: rep_rx,
            },
        )
    }

    /// Hands the Node datagrams the snapshot does not cover: initiations to their own queue,
    /// the rest in one batch; what does not fit is counted in `tally`.
    pub fn datagrams(
        &self,
        datagrams: Vec<(SocketAddr, Vec<u8>)>,
        tally: &mut Tally,
        now: Instant,
    ) {
        let initiation = MessageType::HandshakeInitiation as u8;
        let (initiations, rest): (Vec<_>, Vec<_>) = datagrams
            .into_iter()
            .partition(|(_, d)| d.first() == Some(&initiation));
        for datagram in initiations {
            if let Err(TrySendError::Full(_)) = self.initiations.try_send(datagram) {
                tally.drop_for(DropReason::HandshakeQueueFull, now);
            }
        }
        if !rest.is_empty() {
            self.main_or_count(ToNode::Datagrams(rest), tally, now);
        }
    }

    /// Hands the Node TUN packets the snapshot has no direct session for.
    pub fn packets(&self, packets: Vec<Vec<u8>>, tally: &mut Tally, now: Instant) {
        if !packets.is_empty() {
            self.main_or_count(ToNode::Packets(packets), tally, now);
        }
    }

    fn main_or_count(&self, message: ToNode, tally: &mut Tally, now: Instant) {
        if let Err(TrySendError::Full(message)) = self.main.try_send(message) {
            let n = match message {
                ToNode::Packets(p) => p.len(),
                ToNode::Datagrams(d) => d.len(),
                ToNode::Stopped { .. } => 0,
            };
            tally.drops_for(DropReason::NodeQueueFull, n as u64, now);
        }
    }

    /// Sends the tally's report when it is due and the queue has room; otherwise the tally
    /// keeps it (and keeps adding to it) for the next try, so no report is ever lost.
    pub fn report(&self, tally: &mut Tally, now: Instant) {
        if tally.due().is_none_or(|t| t > now) {
            return;
        }
        if let Ok(permit) = self.reports.try_reserve()
            && let Some(report) = tally.take()
        {
            permit.send(report);
        }
    }
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
        // (`to_node` is the main queue: a stop must reach the control task, so it waits.)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 6786))
    }

    fn initiation() -> Vec<u8> {
        let mut d = vec![0u8; weft_crypto::wire::INITIATION_LEN];
        d[0] = MessageType::HandshakeInitiation as u8;
        d
    }

    fn control() -> Vec<u8> {
        let mut d = vec![0u8; weft_crypto::DATA_OVERHEAD];
        d[0] = MessageType::Control as u8;
        d
    }

    fn drops(report: &ActivityReport, reason: DropReason) -> u64 {
        report
            .drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// A flood of initiations fills only its own queue: established peers' control traffic
    /// still gets through, and every initiation that did not fit is counted.
    #[test]
    fn a_flood_of_initiations_does_not_push_out_control_traffic() {
        let (q, mut r) = Queues::with_bounds(4, 8, 2);
        let mut tally = Tally::default();
        let now = Instant::now();
        for round in 0..10u8 {
            let mut batch: Vec<_> = (0..16).map(|i| (addr(i), initiation())).collect();
            batch.push((addr(200), control()));
            q.datagrams(batch, &mut tally, now);
            // The control task keeps up with the main queue only.
            match r.main.try_recv() {
                Ok(ToNode::Datagrams(d)) => {
                    assert_eq!(d, vec![(addr(200), control())], "round {round}")
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        let mut queued = 0;
        while r.initiations.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 8);
        let report = tally.take().expect("drops were counted");
        assert_eq!(drops(&report, DropReason::HandshakeQueueFull), 160 - 8);
        assert_eq!(drops(&report, DropReason::NodeQueueFull), 0);
    }

    /// When the main queue is full, what does not fit is counted, not lost silently.
    #[test]
    fn a_full_main_queue_counts_what_it_drops() {
        let (q, mut r) = Queues::with_bounds(1, 1, 1);
        let mut tally = Tally::default();
        let now = Instant::now();
        q.datagrams(vec![(addr(1), control())], &mut tally, now);
        q.datagrams(
            vec![(addr(1), control()), (addr(2), control())],
            &mut tally,
            now,
        );
        q.packets(vec![vec![0x45; 20]; 3], &mut tally, now);
        assert!(r.main.try_recv().is_ok());
        let report = tally.take().expect("drops were counted");
        assert_eq!(drops(&report, DropReason::NodeQueueFull), 5);
    }

    /// A report that finds its queue full stays in the tally, which goes on adding to it; it
    /// leaves whole once there is room.
    #[test]
    fn reports_wait_in_the_tally_and_are_never_lost() {
        let (q, mut r) = Queues::with_bounds(1, 1, 1);
        let mut tally = Tally::default();
        let t0 = Instant::now();
        let due = t0 + REPORT_EVERY;
        tally.drop_for(DropReason::OpenFailed, t0);
        q.report(&mut tally, t0);
        assert!(r.reports.try_recv().is_err(), "not due yet");
        q.report(&mut tally, due);
        // The queue holds one report; the next waits.
        tally.drop_for(DropReason::OpenFailed, due);
        q.report(&mut tally, due + REPORT_EVERY);
        tally.drop_for(DropReason::OpenFailed, due + REPORT_EVERY);
        q.report(&mut tally, due + 2 * REPORT_EVERY);
        let first = r.reports.try_recv().expect("the first report");
        assert_eq!(drops(&first, DropReason::OpenFailed), 1);
        assert!(r.reports.try_recv().is_err());
        q.report(&mut tally, due + 3 * REPORT_EVERY);
        let second = r.reports.try_recv().expect("the waiting report");
        assert_eq!(drops(&second, DropReason::OpenFailed), 2);
    }
}
