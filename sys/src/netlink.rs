//! The few rtnetlink requests weft needs (bridge, veth, addresses, routes, gso_max_segs),
//! over a blocking netlink socket: the plugin and the router share this one client.
//!
//! A socket is bound to the network namespace of the thread that opened it, for its whole
//! life; [`crate::netns::Netns::netlink`] uses that to talk to a pod's namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A link as far as weft cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// The bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    /// "bridge", "veth", … when the kernel reports a kind.
    pub kind: Option<String>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// A blocking rtnetlink connection.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// The kernel answered EEXIST: the thing is already there.
pub fn is_exists(e: &io::Error) -> bool {
    is_errno(e, libc_errno::EEXIST)
}

/// The kernel answered ENODEV/ENOENT/ESRCH: there is no such thing.
pub fn is_not_found(e: &io::Error) -> bool {
    is_errno(e, libc_errno::ENODEV)
        || is_errno(e, libc_errno::ENOENT)
        || is_errno(e, libc_errno::ESRCH)
}

/// The errno values we branch on (nix re-exports them; named here once).
mod libc_errno {
    use nix::errno::Errno;
    pub const EEXIST: i32 = Errno::EEXIST as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ESRCH: i32 = Errno::ESRCH as i32;
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Ask the kernel to say which attribute it disliked; it shows up in the errno text.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the replies until the ACK (or DONE for a dump).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::from(message);
        // Every non-dump request asks for an ACK, so each one ends with an ACK or an error
        // (a GET otherwise ends with its single reply, and we could not tell when to stop).
        let ack = if flags & NLM_F_DUMP == NLM_F_DUMP {
            0
        } else {
            NLM_F_ACK
        };
        packet.header.flags = NLM_F_REQUEST | ack | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;

        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue; // a late answer to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(replies), // the ACK
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, NLM_F_ACK | flags).map(|_| ())
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge; EEXIST when a link of that name exists.
    pub fn add_bridge(&mut self, name: &str, mtu: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates a veth pair: `host` here, `peer` moved at birth into the namespace `peer_netns`
    /// (so no moment exists where the pod's end sits in the host namespace under a temporary
    /// name). EEXIST when either name is taken on its side.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: u32,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Caps the segments per GSO frame the kernel hands `index` (`ip link set DEV
    /// gso_max_segs N`): bigger frames are cut in software first.
    pub fn set_gso_max_segs(&mut self, index: u32, segs: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::GsoMaxSegs(segs));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Makes `index` a port of `bridge`.
    pub fn set_master(&mut self, index: u32, bridge: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(bridge));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Turns hairpin mode on for a bridge port, so a pod can reach itself through a service
    /// address that is NATed back to it (the reference bridge plugin does the same).
    pub fn set_hairpin(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        // NEWLINK on an existing link changes it; EXCL would make it fail.
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Has bridge `index` hand what it forwards to the IPv4 netfilter hooks (`ip link set DEV
    /// type bridge nf_call_iptables 1`; br_netfilter must be loaded for it to take effect).
    pub fn set_bridge_nf_call_iptables(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::NfCallIpTables(on)])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Whether hairpin mode is on for a bridge port (for CHECK and tests).
    pub fn hairpin(&mut self, index: u32) -> io::Result<Option<bool>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0)?;
        for m in replies {
            if let RouteNetlinkMessage::NewLink(l) = m {
                for a in l.attributes {
                    if let LinkAttribute::LinkInfo(infos) = a {
                        for i in infos {
                            if let LinkInfo::PortData(InfoPortData::BridgePort(p)) = i {
                                for x in p {
                                    if let InfoBridgePort::HairpinMode(on) = x {
                                        return Ok(Some(on));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Deletes a link (a veth's peer goes with it, wherever it is).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Net>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, net)| net)
            .collect())
    }

    /// Every IPv4 address of every link, with its link's index, in one dump.
    pub fn all_addresses(&mut self) -> io::Result<Vec<(u32, Ipv4Net)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr
                && let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len)
            {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    /// Adds an IPv4 address; EEXIST when the link has it already.
    pub fn add_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        let ip = IpAddr::V4(net.addr());
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if net.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(net.broadcast()));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route4>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN
                || r.header.address_family != AddressFamily::Inet
            {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Ok(dst) = Ipv4Net::new(dst, r.header.destination_prefix_length) {
                out.push(Route4 { dst, gw, oif });
            }
        }
        Ok(out)
    }

    /// Adds a route of the main table; EEXIST when one to the same destination exists,
    /// unless `append` (then it goes after the existing ones, as `ip route append`).
    pub fn add_route(&mut self, route: Route4, append: bool) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // "boot" is what `ip route add` uses; "static" would claim a routing daemon made it.
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if route.gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if route.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.dst.network(),
                )));
        }
        if let Some(gw) = route.gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        let mode = if append { NLM_F_APPEND } else { NLM_F_EXCL };
        self.ack(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | mode)
    }
}

impl Netlink {
    /// Adds `blackhole DST metric METRIC` to the main table (as `ip route add blackhole`):
    /// a route that outlives every device, for a more preferred route (a lower metric) to
    /// override while it exists. EEXIST when it is there already.
    pub fn add_blackhole(&mut self, dst: Ipv4Net, metric: u32) -> io::Result<()> {
        let msg = blackhole_message(dst, metric);
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes the route [`Netlink::add_blackhole`] adds; ESRCH when there is none.
    pub fn delete_blackhole(&mut self, dst: Ipv4Net, metric: u32) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::DelRoute(blackhole_message(dst, metric)),
            0,
        )
    }

    /// Deletes the neighbour (ARP) entry link `index` holds for `ip` (as `ip neigh del`):
    /// an entry left by an earlier holder of the address, or a failed resolution, would
    /// hold back a new pod's first packets. `Ok(false)` when there was none.
    pub fn delete_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes an IPv4 address of a link; EADDRNOTAVAIL when the link does not have it.
    pub fn delete_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(net.addr())));
        self.ack(RouteNetlinkMessage::DelAddress(msg), 0)
    }
}

fn blackhole_message(dst: Ipv4Net, metric: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::BlackHole;
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                dst.network(),
            )));
    }
    msg.attributes.push(RouteAttribute::Priority(metric));
    msg
}

/// Why a bridge could not be made ready.
#[derive(Debug)]
pub enum BridgeError {
    /// A link of that name exists and is not a bridge; its kind, as the kernel names it.
    NotABridge(String),
    /// A request failed while doing `what` ("look up", "create", "set up", …).
    Io { what: String, source: io::Error },
}

impl Netlink {
    /// Makes sure bridge `name` exists (made with `mtu` if not), is a bridge, is up and holds
    /// `gateway`. Idempotent, and safe against a concurrent creator: the plugin runs it on
    /// every ADD, the router as soon as it knows its block.
    pub fn ensure_bridge(
        &mut self,
        name: &str,
        mtu: u32,
        gateway: Ipv4Net,
    ) -> Result<Link, BridgeError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| BridgeError::Io { what, source }
        };
        let mut link = match self.link_by_name(name).map_err(io("look up"))? {
            Some(l) => l,
            None => {
                match self.add_bridge(name, mtu) {
                    Ok(()) => {}
                    // Another plugin run made it between our look-up and our create.
                    Err(e) if is_exists(&e) => {}
                    Err(e) => return Err(io("create")(e)),
                }
                self.link_by_name(name)
                    .map_err(io("look up"))?
                    .ok_or_else(|| io("look up after creating")(io::ErrorKind::NotFound.into()))?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(BridgeError::NotABridge(
                link.kind
                    .clone()
                    .unwrap_or_else(|| "link of unknown kind".into()),
            ));
        }
        if !link.up {
            self.set_up(link.index).map_err(io("set up"))?;
            link.up = true;
        }
        let have = self.addresses(link.index).map_err(io("list addresses"))?;
        if !have.contains(&gateway) {
            match self.add_address(link.index, gateway) {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(io(&format!("add gateway {gateway}"))(e)),
            }
        }
        Ok(link)
    }
}

fn to_link(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: l.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                link.mac = Some(
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            }
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
