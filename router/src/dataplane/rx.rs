//! UDP → open → TUN.
//!
//! `recvmmsg` with GRO (quinn-udp) fills a few 64 KiB buffers with runs of datagrams. Each
//! confirmed-session data datagram from its peer's direct endpoint is opened in place, its
//! source address checked against the peer's blocks, and the packet copied once into a
//! reusable buffer with room for a virtio header in front, so that tun-rs can coalesce TCP
//! segments again and write 64 KiB at a time. Everything else goes to the Node unopened.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSocketState};
use tracing::debug;
use tun_rs::{GROTable, SyncDevice};
use weft_crypto::DATA_HEADER_LEN;
use weft_mesh::{DataPlane, DropReason, Received, Tally};

use super::{Queues, Shared};

/// Messages per `recvmmsg`.
const MESSAGES: usize = 16;
/// One message's buffer: a whole GRO run.
const MESSAGE_BUFFER: usize = 65_536;
/// Opened packets per TUN write batch (tun-rs coalesces within one batch).
const OUT_BATCH: usize = 64;
/// An opened packet's buffer: room for a whole coalesced 64 KiB segment, because tun-rs
/// coalesces only into buffers that need no reallocation (wireguard-go's rule). Pages are
/// touched only as far as packets fill them.
const OUT_BUFFER: usize = 2 * DATA_HEADER_LEN + 65_535;
/// Consecutive failed receives after which the socket is taken to be gone.
const MAX_RECV_ERRORS: u32 = 100;

/// The receiving worker.
pub struct Rx {
    /// The TUN device.
    pub tun: Arc<SyncDevice>,
    /// The router's UDP socket.
    pub socket: Arc<std::net::UdpSocket>,
    /// quinn-udp's view of it (GRO, recvmmsg).
    pub udp: Arc<UdpSocketState>,
    /// The Node's snapshot.
    pub shared: Arc<Shared>,
    /// Where datagrams the snapshot does not cover, and reports, go.
    pub to_node: Queues,
}

/// Opened packets waiting for the TUN write: each `[DATA_HEADER_LEN bytes | packet]`; the
/// bytes in front hold the virtio header tun-rs writes. Buffers are kept across batches.
struct Out {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl Out {
    fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(OUT_BUFFER));
        }
        let b = &mut self.bufs[self.len];
        b.clear();
        b.resize(DATA_HEADER_LEN, 0);
        b.extend_from_slice(packet);
        self.len += 1;
    }
}

/// A receiving worker's buffers, made once, and its running tally.
pub struct RxState {
    bufs: [Vec<u8>; MESSAGES],
    metas: [RecvMeta; MESSAGES],
    out: Out,
    gro: GROTable,
    tally: Tally,
    errors: u32,
}

impl RxState {
    /// When its pending activity report is due.
    pub fn due(&self) -> Option<Instant> {
        self.tally.due()
    }
}

impl Rx {
    /// The device's batch methods (non-blocking system calls).
    fn device(&self) -> &tun_rs::DeviceImpl {
        &self.tun
    }

    /// A fresh working state for [`Rx::step`].
    pub fn state(&self) -> RxState {
        RxState {
            bufs: std::array::from_fn(|_| vec![0u8; MESSAGE_BUFFER]),
            metas: [RecvMeta::default(); MESSAGES],
            out: Out {
                bufs: Vec::new(),
                len: 0,
            },
            gro: GROTable::new(),
            tally: Tally::default(),
            errors: 0,
        }
    }

    /// Receives, opens and writes one `recvmmsg` worth of datagrams if any are waiting;
    /// reports activity when due. `Ok(false)`: nothing was waiting. An error: the socket is
    /// gone.
    pub fn step(&self, st: &mut RxState) -> io::Result<bool> {
        let received = {
            let mut iovs = st.bufs.each_mut().map(|b| IoSliceMut::new(b));
            self.udp
                .recv((&*self.socket).into(), &mut iovs, &mut st.metas)
        };
        let now = Instant::now();
        let busy = match received {
            Ok(n) => {
                st.errors = 0;
                let dp = self.shared.load();
                let mut slow = Vec::new();
                for (buf, meta) in st.bufs.iter_mut().zip(&st.metas).take(n) {
                    if meta.len == 0 {
                        // An empty datagram: no chunk below sees it, the Node counts it.
                        slow.push((meta.addr, Vec::new()));
                        continue;
                    }
                    let stride = meta.stride.max(1);
                    for datagram in buf[..meta.len].chunks_mut(stride) {
                        if !open(&dp, datagram, meta.addr, now, &mut st.out, &mut st.tally) {
                            slow.push((meta.addr, datagram.to_vec()));
                        }
                        if st.out.len == OUT_BATCH {
                            self.write(&mut st.gro, &mut st.out);
                        }
                    }
                }
                self.write(&mut st.gro, &mut st.out);
                if !slow.is_empty() {
                    self.to_node.datagrams(slow, &mut st.tally, now);
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                // Transient (ENOBUFS, an ICMP error surfacing) unless it keeps failing.
                st.errors += 1;
                if st.errors >= MAX_RECV_ERRORS {
                    return Err(e);
                }
                debug!(error = %e, "UDP receive failed");
                true
            }
        };
        self.to_node.report(&mut st.tally, now);
        Ok(busy)
    }

    /// Writes the opened packets to the TUN device (coalesced when it takes virtio headers)
    /// and empties `out`.
    fn write(&self, gro: &mut GROTable, out: &mut Out) {
        if out.len == 0 {
            return;
        }
        if let Err(e) = self
            .device()
            .send_multiple(gro, &mut out.bufs[..out.len], DATA_HEADER_LEN)
        {
            debug!(error = %e, "TUN write failed");
        }
        out.len = 0;
    }
}

/// Opens `datagram` when the snapshot covers it, queueing the packet or counting its drop.
/// Returns false when the Node must see it.
fn open(
    dp: &DataPlane,
    datagram: &mut [u8],
    from: SocketAddr,
    now: Instant,
    out: &mut Out,
    tally: &mut Tally,
) -> bool {
    let len = datagram.len();
    match dp.open(datagram, from, now) {
        Received::ToNode => return false,
        Received::Failed => tally.drop_for(DropReason::OpenFailed, now),
        Received::Refused { peer, reason } => {
            tally.received(peer, len, now, from);
            tally.drop_for(reason, now);
        }
        Received::Deliver { peer, range } => {
            tally.received(peer, len, now, from);
            out.push(&datagram[range]);
        }
    }
    true
}
