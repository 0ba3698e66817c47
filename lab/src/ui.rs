//! `weft lab ui`: a lab node's live page (its router's metrics listener, loopback inside the
//! node's namespace) made reachable from this machine's browser. The only thing added to the
//! host's namespace is a listener on 127.0.0.1; each connection to it is forwarded through a
//! socket made inside the node's namespace. It runs until it is stopped, or until the lab's
//! namespace goes (`weft lab down`), and then closes everything it opened.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use weft_sys::netns::{Netns, NetnsError};

use crate::{LabError, routers, state};

/// Where a lab router serves its page: the router's default metrics listener, which lab
/// routers keep.
pub const PAGE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6787);

/// How often the forwarder checks that the lab is still up.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// A forwarder bound and ready to run: its loopback address is known before it runs.
pub struct UiForwarder {
    listener: TcpListener,
    netns: PathBuf,
    node: String,
}

impl UiForwarder {
    /// Binds 127.0.0.1:`port` (0: any free port) for `node` of lab `prefix`.
    pub fn bind(prefix: &str, node: &str, port: u16) -> Result<UiForwarder, LabError> {
        let mut lab = state::status(prefix)?;
        let node = routers::find_node(&mut lab, node)?;
        let netns = PathBuf::from("/run/netns").join(&node.namespace);
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        Ok(UiForwarder {
            listener,
            netns,
            node: node.name.clone(),
        })
    }

    /// The loopback address a browser opens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Forwards connections until the node's namespace is gone.
    pub fn run(self) -> Result<(), LabError> {
        loop {
            if !self.netns.exists() {
                return Ok(());
            }
            match self.listener.accept() {
                Ok((client, _)) => {
                    let netns = self.netns.clone();
                    let node = self.node.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = forward(client, &netns) {
                            eprintln!("weft lab ui {node}: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(WATCH_EVERY),
                Err(e) => return Err(anyhow::Error::from(e).context("accepting").into()),
            }
        }
    }
}

/// Copies bytes both ways between `client` and the page inside `netns` until both ends close.
fn forward(client: TcpStream, netns: &std::path::Path) -> Result<(), NetnsError> {
    client
        .set_nonblocking(false)
        .map_err(|source| NetnsError::Connect { addr: PAGE, source })?;
    let page = Netns::open(netns)?.connect_tcp(PAGE)?;
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let clone = |s: &TcpStream| {
        s.try_clone()
            .map_err(|source| NetnsError::Connect { addr: PAGE, source })
    };
    let (client2, page2) = (clone(&client)?, clone(&page)?);
    let a = pipe(client, page);
    let b = pipe(page2, client2);
    let _ = (a.join(), b.join());
    Ok(())
}
