//! The control API: one JSON request and one JSON response per connection on a unix socket
//! in the state directory (the socket 0600 inside the directory's 0700). `weft status`, `weft
//! peers`, `weft report`, `weft connect` and `weft forget` are its clients; the types here are
//! shared. weft-cni is one too (`pod_added`, answered once the NetworkPolicy rules hold the
//! pod, which may take as long as the rules take to load): a `pod_added` client that hangs
//! up before its answer has given up, and the request is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

mod request;
pub use request::{Request, RequestError, parse_request};

/// The largest request accepted: requests are a few dozen bytes.
pub const MAX_REQUEST: usize = 4096;

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The status report (boxed: it is large, the other answers are small).
    Status(Box<StatusReport>),
    /// The mesh as this node sees it (boxed for the same reason).
    Report(Box<crate::report::MeshReport>),
    /// The command was accepted (it runs asynchronously; watch `status`).
    Accepted,
    /// `pod_added`: the pod may start. `enforced`: the NetworkPolicy rules in the kernel
    /// hold it; false when this router enforces no NetworkPolicy.
    PodReady {
        /// Whether NetworkPolicy is enforced here.
        enforced: bool,
    },
    /// The request was refused.
    Error {
        /// Why, for people.
        message: String,
    },
}

/// The node, as `weft status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Our public key.
    pub id: String,
    /// Our name.
    pub name: String,
    /// Our incarnation.
    pub incarnation: u64,
    /// Where we listen.
    pub listen: SocketAddr,
    /// Our pod block.
    pub block: Option<String>,
    /// Why we have no block yet.
    pub waiting: Option<String>,
    /// Address space we own but have not handed out.
    pub free_space: Vec<String>,
    /// The MTU pods get.
    pub pod_mtu: u32,
    /// Members known, ourselves included.
    pub members: usize,
    /// Every peer with a tunnel.
    pub peers: Vec<PeerReport>,
    /// Dropped packets and datagrams by reason.
    pub drops: BTreeMap<String, u64>,
    /// The overlay routes: every block this node knows, and which member owns it.
    #[serde(default)]
    pub routes: Vec<RouteReport>,
    /// Which data path the kernel gave the router (offloads probed at start).
    #[serde(default)]
    pub data_path: Option<DataPathReport>,
    /// NetworkPolicy enforcement, when on.
    #[serde(default)]
    pub policy: Option<PolicyReport>,
    /// The accepted join secrets and the file's reloads.
    #[serde(default)]
    pub join_secrets: Option<JoinSecretsReport>,
}

/// NetworkPolicy enforcement on this node (docs/networkpolicy.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// Packets denied since the router started, per isolating policy and direction.
    pub denied: Vec<DeniedReport>,
    /// The malformed objects of the current snapshot (each policy fails closed).
    pub problems: Vec<String>,
    /// Malformed objects seen since the router started.
    pub problems_seen: u64,
    /// Times the rules were replaced.
    pub updates: u64,
    /// This node's pods isolated in at least one direction.
    pub isolated_pods: usize,
}

/// Packets one policy denied in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedReport {
    /// `namespace/name`.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub packets: u64,
}

/// The data path in use, as probed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathReport {
    /// The TUN device carries virtio headers: 64 KiB TSO frames in, coalesced writes out.
    pub tun_offload: bool,
    /// Datagrams per UDP GSO send (1: no GSO).
    pub gso_segments: usize,
    /// Datagrams per UDP GRO receive (1: no GRO).
    pub gro_segments: usize,
}

/// One block of the route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReport {
    /// The block.
    pub block: String,
    /// Its owner's public key.
    pub peer: String,
    /// Its owner's name, when known.
    pub name: Option<String>,
}

/// A peer, as `weft peers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Its public key.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Tunnel state: idle, handshaking, established, rekeying.
    pub state: String,
    /// Its endpoint, or the relay's.
    pub endpoint: Option<SocketAddr>,
    /// `direct`, or `via NAME` when relayed.
    pub path: Option<String>,
    /// Round-trip time of the last handshake we initiated, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Datagrams sent to it (data and control; handshakes excluded).
    #[serde(default)]
    pub tx_packets: u64,
    /// Datagrams received from it that opened.
    #[serde(default)]
    pub rx_packets: u64,
    /// Seconds since the last handshake.
    pub last_handshake_secs: Option<u64>,
    /// Why it is relayed (a punch in progress or given up, a silent direct path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_relayed: Option<String>,
    /// Which of our join secrets made the current session: primary, other (an older one
    /// still accepted during a rotation) or removed (being re-made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_secret: Option<String>,
}

/// The join secrets this node accepts (docs/design.md §3), by fingerprint: never the secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecretsReport {
    /// Fingerprints of the accepted secrets, the primary first.
    pub accepted: Vec<String>,
    /// Whether the join secret file is watched for changes.
    pub watched: bool,
    /// New contents of the file applied since start.
    pub reloads: u64,
    /// Contents of the file refused since start (each bad content counted once).
    pub reload_errors: u64,
}

/// Control requests refused, by reason; reported with the Node's drops under labels of their
/// own ([`RefusedRequests::by_reason`]).
#[derive(Debug, Default)]
pub struct RefusedRequests {
    /// Not a request we know (bad JSON, unknown command or field, bad value).
    pub malformed: AtomicU64,
    /// Longer than [`MAX_REQUEST`].
    pub too_long: AtomicU64,
    /// No complete request within the timeout.
    pub timeout: AtomicU64,
}

impl RefusedRequests {
    /// The counts by reason name, as `drops` shows them. No name is a
    /// [`weft_mesh::DropReason`] label: the mesh's `control_malformed` counts control
    /// *messages* from peers that do not decode, this socket's requests are
    /// `control_request_malformed`.
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        [
            (
                "control_request_malformed",
                self.malformed.load(Ordering::Relaxed),
            ),
            ("control_too_long", self.too_long.load(Ordering::Relaxed)),
            ("control_timeout", self.timeout.load(Ordering::Relaxed)),
        ]
    }
}

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the socket at `path` (replacing a stale one), mode 0600: only root may command the
/// router.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the bound socket, handing requests to `calls` and counting refusals in `refused`.
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    refused: Arc<RefusedRequests>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let calls = calls.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, calls, &refused).await {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
}

async fn answer(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    refused: &RefusedRequests,
) -> std::io::Result<()> {
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let response =
        match tokio::time::timeout(Duration::from_secs(5), reader.read_until(b'\n', &mut line))
            .await
        {
            Err(_) => {
                count(&refused.timeout);
                Response::Error {
                    message: "timed out waiting for a request".into(),
                }
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                count(&refused.too_long);
                Response::Error {
                    message: format!("request longer than {MAX_REQUEST} bytes"),
                }
            }
            Ok(Ok(_)) => match parse_request(&line) {
                Err(e) => {
                    count(&refused.malformed);
                    Response::Error {
                        message: e.to_string(),
                    }
                }
                Ok(request) => {
                    let waits = matches!(request, Request::PodAdded { .. });
                    let (tx, rx) = oneshot::channel();
                    let dropped = || Response::Error {
                        message: "the router dropped the request".into(),
                    };
                    if calls.send((request, tx)).await.is_err() {
                        Response::Error {
                            message: "the router is shutting down".into(),
                        }
                    } else if waits {
                        // A client that hangs up has given up (weft-cni's ADD timed out and
                        // undid its work): dropping `rx` tells whoever holds the request.
                        // Only here: the other answers are immediate, and a client may
                        // half-close once it has sent its request.
                        tokio::select! {
                            r = rx => r.unwrap_or_else(|_| dropped()),
                            () = hung_up(&mut reader) => return Ok(()),
                        }
                    } else {
                        rx.await.unwrap_or_else(|_| dropped())
                    }
                }
            },
        };
    let mut bytes = serde_json::to_vec(&response).expect("responses serialize");
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Returns when the client closes its end (or sends more than a request may hold).
async fn hung_up(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 256];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Why a client got no answer from the router.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached or the exchange broke off (no router there, or the
    /// socket is root's).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The router answered something that is not a response.
    #[error("the answer is not a response: {0}")]
    BadAnswer(#[source] serde_json::Error),
    /// No answer within [`CALL_TIMEOUT`]: the router's loop is stuck or overloaded.
    #[error("no answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
}

impl CallError {
    /// Whether the socket refused us for lack of permission (it is root's, mode 0600).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, CallError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// Sends `request` to the router whose state directory holds `socket`, waiting at most
/// [`CALL_TIMEOUT`] (a router whose loop is stuck does not hang its CLI).
pub async fn call(socket: &Path, request: &Request) -> Result<Response, CallError> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut bytes = serde_json::to_vec(request).expect("requests serialize");
        bytes.push(b'\n');
        stream.write_all(&bytes).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        serde_json::from_slice(&out).map_err(CallError::BadAnswer)
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| CallError::Timeout)?
}

/// How long a client waits for the router's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    /// weft-cni giving up (its timeout) must reach whoever holds its request, so that the
    /// announcement does not outlive the lease weft-cni then releases; a client of an
    /// immediate answer may half-close and still gets it.
    #[tokio::test]
    async fn a_waiting_client_that_hangs_up_closes_its_request() {
        let dir = std::env::temp_dir().join(format!("weft-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let (calls, mut requests) = mpsc::channel(4);
        let server = tokio::spawn(serve(
            bind(&path).unwrap(),
            calls,
            Arc::new(RefusedRequests::default()),
        ));

        let mut client = UnixStream::connect(&path).await.unwrap();
        client
            .write_all(
                b"{\"command\":\"pod_added\",\"namespace\":\"default\",\"name\":\"a\",\"address\":\"10.32.1.5\"}\n",
            )
            .await
            .unwrap();
        let (request, mut reply) = requests.recv().await.unwrap();
        assert!(matches!(request, Request::PodAdded { .. }));
        assert!(!reply.is_closed());
        drop(client);
        tokio::time::timeout(Duration::from_secs(2), reply.closed())
            .await
            .expect("the hang-up closes the request");

        let mut client = UnixStream::connect(&path).await.unwrap();
        client
            .write_all(b"{\"command\":\"report\"}\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let (_, reply) = requests.recv().await.unwrap();
        reply.send(Response::Accepted).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<Response>(&out).unwrap(),
            Response::Accepted
        );
        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A refusal counted under a mesh drop label would replace the mesh's count in the
    /// status and the metrics (the drops are one map by label).
    #[test]
    fn refusal_labels_are_no_drop_reasons() {
        let refused = RefusedRequests::default();
        for (label, _) in refused.by_reason() {
            assert!(
                weft_mesh::DropReason::ALL
                    .iter()
                    .all(|r| r.as_str() != label),
                "{label} is also a DropReason label"
            );
        }
    }
}
