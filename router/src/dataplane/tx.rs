//! TUN → seal → UDP.
//!
//! Packets are split (from the TUN's 64 KiB TSO frames) straight into fixed-size slots of one
//! buffer, `DATA_HEADER_LEN` bytes in, and sealed in place. A slot is as long as a sealed
//! datagram of a full pod-MTU packet, which is what TCP sends in bulk, so consecutive full
//! datagrams to one endpoint lie back to back and leave in one GSO `sendmsg` without being
//! copied again.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use nix::poll::PollFlags;
use quinn_udp::{Transmit, UdpSocketState};
use tracing::{debug, warn};
use tun_rs::SyncDevice;
use weft_crypto::{DATA_HEADER_LEN, DATA_OVERHEAD};
use weft_mesh::{DropReason, Ipv4View, PeerId, PeerPath, Tally};

use super::{Queues, Shared, wait};

/// Packet slots per batch.
const SLOTS: usize = 256;
/// Slots an offloaded TUN frame may need: the router caps the TUN device's GSO frames at this
/// many segments (netconf::limit_gso_segments); another frame is read into the same batch only
/// while this many are free.
pub const FRAME_SLOTS: usize = 128;
/// The largest UDP GSO send the kernel takes: an IPv4 datagram's 64 KiB less its headers.
const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;
/// Consecutive failed TUN reads after which the device is taken to be gone.
const MAX_READ_ERRORS: u32 = 100;

/// The sending worker.
pub struct Tx {
    /// The TUN device (a queue of it).
    pub tun: Arc<SyncDevice>,
    /// The router's UDP socket.
    pub socket: Arc<std::net::UdpSocket>,
    /// quinn-udp's view of it (GSO support).
    pub udp: Arc<UdpSocketState>,
    /// The Node's snapshot.
    pub shared: Arc<Shared>,
    /// Where packets the snapshot does not cover go.
    pub to_node: Queues,
    /// Whether the TUN device carries virtio headers.
    pub offload: bool,
    /// Whether to send runs with UDP GSO.
    pub gso: bool,
    /// The pod MTU: the largest packet the TUN device hands over.
    pub pod_mtu: usize,
}

/// A sending worker's working memory, made once, and its running tally.
pub struct TxState {
    b: Batch,
    tally: Tally,
    errors: u32,
}

impl TxState {
    /// When its pending activity report is due.
    pub fn due(&self) -> Option<Instant> {
        self.tally.due()
    }
}

/// One batch's working memory.
struct Batch {
    /// `SLOTS` slots of `stride` bytes.
    out: Vec<u8>,
    stride: usize,
    /// Plaintext length in each slot.
    sizes: Vec<usize>,
    /// Where each slot's sealed datagram goes (`None`: not sealed).
    dest: Vec<Option<SocketAddr>>,
    /// The TUN frame as read (virtio header and unsplit packet).
    raw: Vec<u8>,
}

impl Tx {
    /// The device's batch methods (non-blocking system calls).
    fn device(&self) -> &tun_rs::DeviceImpl {
        &self.tun
    }

    /// A fresh working state for [`Tx::step`].
    pub fn state(&self) -> TxState {
        let stride = DATA_OVERHEAD + self.pod_mtu;
        TxState {
            b: Batch {
                out: vec![0u8; stride * SLOTS],
                stride,
                sizes: vec![0; SLOTS],
                dest: vec![None; SLOTS],
                raw: vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65_536],
            },
            tally: Tally::default(),
            errors: 0,
        }
    }

    /// Reads, seals and sends one batch if packets are waiting; reports activity when due.
    /// `Ok(false)`: nothing was waiting. An error: the TUN device is gone.
    pub fn step(&self, st: &mut TxState) -> io::Result<bool> {
        let b = &mut st.b;
        let read = {
            // Slot views are rebuilt per batch (one small allocation per batch, none per
            // packet): they borrow `out`, which the send below reads as a whole.
            let mut slots: Vec<&mut [u8]> = b.out.chunks_mut(b.stride).collect();
            self.device()
                .recv_multiple(&mut b.raw, &mut slots, &mut b.sizes, DATA_HEADER_LEN)
                .map(|n| self.read_more(&mut b.raw, &mut slots, &mut b.sizes, n, &mut st.tally))
        };
        let now = Instant::now();
        let busy = match read {
            Ok(n) => {
                st.errors = 0;
                self.seal(b, n, &mut st.tally, now);
                self.send(b, n)?;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // A frame tun-rs cannot split (a pod's UDP GSO send with a tiny segment size, a
            // malformed virtio header) costs that frame only: a pod can send such frames as
            // often as it likes, so they must never stop the router.
            Err(e) if e.raw_os_error().is_none() => {
                debug!(error = %e, "TUN frame dropped");
                st.tally.drop_for(DropReason::TunFrame, now);
                true
            }
            Err(e) => {
                // A device that keeps failing is gone.
                st.errors += 1;
                if st.errors >= MAX_READ_ERRORS {
                    return Err(e);
                }
                debug!(error = %e, "TUN read failed");
                true
            }
        };
        self.to_node.report(&mut st.tally, now);
        Ok(busy)
    }

    /// Reads further frames that are already waiting, while the batch has room for them.
    fn read_more(
        &self,
        raw: &mut [u8],
        slots: &mut [&mut [u8]],
        sizes: &mut [usize],
        mut n: usize,
        tally: &mut Tally,
    ) -> usize {
        let need = if self.offload { FRAME_SLOTS } else { 1 };
        while SLOTS - n >= need {
            match self.device().recv_multiple(
                raw,
                &mut slots[n..],
                &mut sizes[n..],
                DATA_HEADER_LEN,
            ) {
                Ok(k) => n += k,
                // Read but not split: that frame is lost (as in `step`), the batch goes on.
                Err(e) if e.raw_os_error().is_none() => {
                    tally.drop_for(DropReason::TunFrame, Instant::now())
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Seals every slot the snapshot has a direct session for, in place; hands the rest to
    /// the Node.
    fn seal(&self, b: &mut Batch, n: usize, tally: &mut Tally, now: Instant) {
        let dp = self.shared.load();
        let mut slow = Vec::new();
        // TCP sends runs to one destination: look each address up once per run.
        let mut last: Option<(Ipv4Addr, Option<(PeerId, &PeerPath)>)> = None;
        for i in 0..n {
            b.dest[i] = None;
            let len = b.sizes[i];
            let slot = &mut b.out[i * b.stride..i * b.stride + DATA_OVERHEAD + len];
            let target = match Ipv4View::new_checked(&slot[DATA_HEADER_LEN..DATA_HEADER_LEN + len])
                .map(|v| v.dst())
            {
                Ok(dst) => match last {
                    Some((addr, t)) if addr == dst => t,
                    _ => {
                        let t = dp.route(dst);
                        last = Some((dst, t));
                        t
                    }
                },
                Err(_) => None,
            };
            if let Some((peer, path)) = target
                && let Some(endpoint) = path.seal(slot, now)
            {
                b.dest[i] = Some(endpoint);
                tally.sent(peer, slot.len(), now);
                continue;
            }
            // No route, a relay, no confirmed session, or a session past its limits: the
            // Node decides (it queues, relays, rekeys or counts the drop).
            slow.push(slot[DATA_HEADER_LEN..DATA_HEADER_LEN + len].to_vec());
        }
        self.to_node.packets(slow, tally, now);
    }

    /// Sends the sealed slots: each run of full datagrams to one endpoint in one `sendmsg`.
    fn send(&self, b: &Batch, n: usize) -> io::Result<()> {
        let gso = if self.gso {
            self.udp
                .max_gso_segments()
                .min(MAX_GSO_BYTES / b.stride)
                .max(1)
        } else {
            1
        };
        let datagram_len = |k: usize| DATA_OVERHEAD + b.sizes[k];
        let mut i = 0;
        while i < n {
            let Some(endpoint) = b.dest[i] else {
                i += 1;
                continue;
            };
            let mut j = i;
            while j + 1 < n
                && j + 1 - i < gso
                && b.dest[j + 1] == Some(endpoint)
                && datagram_len(j) == b.stride
            {
                j += 1;
            }
            let contents = &b.out[i * b.stride..j * b.stride + datagram_len(j)];
            let segment = (j > i).then_some(b.stride);
            self.transmit(endpoint, contents, segment)?;
            i = j + 1;
        }
        Ok(())
    }

    /// Sends one datagram or GSO run. Only a failure to wait for the socket is an error:
    /// a refused send must not stop the worker (the mesh notices an unreachable peer).
    fn transmit(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        match self.send_one(destination, contents, segment) {
            Ok(()) => {}
            Err(e) if segment.is_some() && gso_refused(&e) => {
                // The kernel refused GSO on this path (quinn-udp now reports 1 segment):
                // this run goes one datagram at a time, later ones are built that way.
                warn!(error = %e, "UDP GSO refused; sending one datagram per call from now on");
                for d in contents.chunks(segment.unwrap_or(contents.len())) {
                    if let Err(e) = self.send_one(destination, d, None) {
                        debug!(%destination, error = %e, "send failed");
                    }
                }
            }
            Err(e) => debug!(%destination, error = %e, "send failed"),
        }
        Ok(())
    }

    /// One `sendmsg`, waiting while the socket buffer is full.
    fn send_one(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            match self.udp.try_send((&*self.socket).into(), &transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait([(self.socket.as_fd(), PollFlags::POLLOUT)], None)?;
                }
                other => return other,
            }
        }
    }
}

/// EIO or EINVAL: what Linux answers a GSO send the egress device cannot segment.
fn gso_refused(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error()
        .is_some_and(|c| c == Errno::EIO as i32 || c == Errno::EINVAL as i32)
}
