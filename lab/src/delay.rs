//! A userspace delay line: the lab's substitute for `tc netem delay` on kernels built without
//! `sch_netem`. It runs inside a namespace of its own between a node and the switch, holding
//! two veth ends, and forwards every Ethernet frame from one end to the other after holding it
//! for the configured time (both directions, order kept, nothing dropped or changed).
//!
//! Frames are read and written with `AF_PACKET` raw sockets bound to each end. The sockets are
//! declared here by hand (the lab carries no libc crate, as `sys.rs` does for `geteuid`);
//! the few calls are the stable Linux ABI. UDP and TCP checksums the veth left to offload
//! are completed on the way through (see [`fill_checksum`]).

use std::ffi::CString;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;
/// Every protocol (`ETH_P_ALL`), in network byte order as `socket(2)` wants it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
const SOL_SOCKET: i32 = 1;
const SO_RCVBUF: i32 = 8;
const SO_SNDBUF: i32 = 7;
/// `sll_pkttype` of a frame this host sent: seen by taps too, and must not be forwarded back.
const PACKET_OUTGOING: u8 = 4;
/// Frames a side may hold; a burst beyond it waits in the socket buffer instead.
const QUEUE: usize = 65536;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

unsafe extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrLl, len: u32) -> i32;
    fn recvfrom(
        fd: i32,
        buf: *mut u8,
        len: usize,
        flags: i32,
        addr: *mut SockaddrLl,
        addrlen: *mut u32,
    ) -> isize;
    fn send(fd: i32, buf: *const u8, len: usize, flags: i32) -> isize;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
    fn if_nametoindex(name: *const std::ffi::c_char) -> u32;
}

/// One veth end, opened for raw frames.
struct Port {
    fd: i32,
    name: String,
}

impl Port {
    fn open(name: &str) -> anyhow::Result<Self> {
        let cname = CString::new(name)?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {name:?} in this namespace");
        }
        // SAFETY: plain syscalls on values we own; errors are checked.
        let fd = unsafe { socket(AF_PACKET, SOCK_RAW, i32::from(ETH_P_ALL_BE)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
        }
        let addr = SockaddrLl {
            family: AF_PACKET as u16,
            protocol: ETH_P_ALL_BE,
            ifindex: ifindex as i32,
            ..Default::default()
        };
        let size = 4 << 20;
        // SAFETY: addr and size live across the calls; lengths are theirs.
        unsafe {
            if bind(fd, &addr, std::mem::size_of::<SockaddrLl>() as u32) < 0 {
                return Err(std::io::Error::last_os_error()).context(format!("bind to {name}"));
            }
            // Large buffers so a TCP burst is delayed, not dropped (best effort).
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4);
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, 4);
        }
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// The next frame that arrived on this end (not one this host sent).
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut from = SockaddrLl::default();
            let mut len = std::mem::size_of::<SockaddrLl>() as u32;
            // SAFETY: buf and from are valid for their lengths.
            let n =
                unsafe { recvfrom(self.fd, buf.as_mut_ptr(), buf.len(), 0, &mut from, &mut len) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if from.pkttype != PACKET_OUTGOING {
                return Ok(n as usize);
            }
        }
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: frame is valid for its length.
        let n = unsafe { send(self.fd, frame.as_ptr(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Writes the UDP or TCP checksum of an IPv4 frame. A veth offloads it: a frame a tap reads
/// may carry only the pseudo-header sum, which the kernel would have finished on the way out
/// but does not when the frame is written back through a packet socket; the receiver would
/// drop it. A checksum that was already right is written unchanged.
fn fill_checksum(frame: &mut [u8]) {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let offset = match ip[9] {
        17 => 6,
        6 => 16,
        _ => return,
    };
    if ip[0] >> 4 != 4
        || ihl < 20
        || total < ihl + offset + 2
        || ETH + total > frame.len()
        || fragment
    {
        return;
    }
    let (proto, len) = (u32::from(ip[9]), (total - ihl) as u32);
    let mut sum: u32 = proto + len;
    for pair in ip[12..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    let l4 = &mut frame[ETH + ihl..ETH + total];
    l4[offset] = 0;
    l4[offset + 1] = 0;
    for pair in l4.chunks(2) {
        let hi = pair[0];
        let lo = pair.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut check = !(sum as u16);
    if check == 0 && proto == 17 {
        // In UDP a zero checksum means "none"; all ones is the same sum.
        check = 0xffff;
    }
    l4[offset..offset + 2].copy_from_slice(&check.to_be_bytes());
}

/// Forwards frames between interfaces `a` and `b` (in the current namespace), each held for
/// `delay`. Runs until an interface goes away (the lab's `down` removes the namespace).
pub fn run(a: &str, b: &str, delay: Duration) -> Result<(), crate::LabError> {
    Ok(forward(a, b, delay)?)
}

fn forward(a: &str, b: &str, delay: Duration) -> anyhow::Result<()> {
    let ports = [
        std::sync::Arc::new(Port::open(a)?),
        std::sync::Arc::new(Port::open(b)?),
    ];
    eprintln!(
        "weft lab delay-line: {a} <-> {b}, {} ms each way",
        delay.as_millis()
    );
    let mut threads = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
        let input = ports[from].clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = input
                    .recv(&mut buf)
                    .with_context(|| format!("reading {}", input.name))?;
                let mut frame = buf[..n].to_vec();
                fill_checksum(&mut frame);
                // The deadline is taken on arrival, so the hold is the same for every frame.
                if tx.send((Instant::now() + delay, frame)).is_err() {
                    return Ok(());
                }
            }
        }));
        let output = ports[to].clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            for (due, frame) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // A frame the far end refuses (too big, link down) is lost, like on a wire.
                if let Err(e) = output.send(&frame)
                    && e.raw_os_error() == Some(19)
                {
                    // ENODEV: the interface is gone, the lab is being removed.
                    return Ok(());
                }
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().expect("delay-line thread panicked")?;
    }
    Ok(())
}
