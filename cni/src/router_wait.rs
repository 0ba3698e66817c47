//! ADD's wait for the router, when it enforces NetworkPolicy (the conflist's `policy` key):
//! one `pod_added` request on the router's control socket, answered `pod_ready` once the
//! rules in the kernel judge the pod (docs/networkpolicy.md). Blocking std I/O with one
//! deadline over connect, write and read; weft-cni starts no async runtime.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::PolicyWait;
use crate::env::PodRef;

/// The largest answer read: the router's answers to `pod_added` are a few dozen bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// Why the router did not confirm the pod.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("cannot reach the weft router at {socket}: {source} (is it running?)")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("the weft router did not confirm NetworkPolicy rules for the pod within {0:?}")]
    Timeout(Duration),
    #[error("talking to the weft router: {0}")]
    Io(std::io::Error),
    #[error("the weft router refused: {0}")]
    Refused(String),
    #[error("the weft router's answer is not one weft-cni knows: {0:?}")]
    BadAnswer(String),
}

/// Asks the router to confirm `pod` at `address`; `Ok(enforced)` when it did.
pub fn wait(policy: &PolicyWait, pod: &PodRef, address: Ipv4Addr) -> Result<bool, WaitError> {
    let deadline = Instant::now() + policy.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(WaitError::Timeout(policy.timeout))
    };
    let mut stream =
        UnixStream::connect(&policy.control_socket).map_err(|source| WaitError::Connect {
            socket: policy.control_socket.display().to_string(),
            source,
        })?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            WaitError::Timeout(policy.timeout)
        }
        _ => WaitError::Io(e),
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(WaitError::Io)?;
    let mut request = serde_json::to_vec(&serde_json::json!({
        "command": "pod_added",
        "namespace": pod.namespace,
        "name": pod.name,
        "address": address.to_string(),
    }))
    .expect("a request serialises");
    request.push(b'\n');
    stream.write_all(&request).map_err(timed_out)?;
    // The write half stays open: the router takes our hanging up as giving up.
    let mut answer = Vec::new();
    let mut reader = (&stream).take(MAX_ANSWER);
    let mut buf = [0u8; 512];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(WaitError::Io)?;
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    parse_answer(&answer)
}

/// The router's answer: `{"result":"pod_ready","enforced":B}` or `{"result":"error",
/// "message":M}`.
pub fn parse_answer(bytes: &[u8]) -> Result<bool, WaitError> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    let value: serde_json::Value =
        serde_json::from_slice(bytes.trim_ascii()).map_err(|_| WaitError::BadAnswer(shown()))?;
    match value.get("result").and_then(|r| r.as_str()) {
        Some("pod_ready") => value
            .get("enforced")
            .and_then(|e| e.as_bool())
            .ok_or_else(|| WaitError::BadAnswer(shown())),
        Some("error") => Err(WaitError::Refused(
            value
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("(no message)")
                .to_owned(),
        )),
        _ => Err(WaitError::BadAnswer(shown())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers() {
        assert!(parse_answer(br#"{"result":"pod_ready","enforced":true}"#).unwrap());
        assert!(!parse_answer(b"{\"result\":\"pod_ready\",\"enforced\":false}\n").unwrap());
        let e = parse_answer(br#"{"result":"error","message":"no such pod"}"#).unwrap_err();
        assert!(e.to_string().contains("no such pod"), "{e}");
        for bad in [
            &b""[..],
            b"junk",
            br#"{"result":"pod_ready"}"#,
            br#"{"result":"accepted"}"#,
        ] {
            assert!(matches!(parse_answer(bad), Err(WaitError::BadAnswer(_))));
        }
    }

    fn pod() -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn sends_the_request_and_bounds_the_wait() {
        let dir = std::env::temp_dir().join(format!("weft-cni-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let policy = PolicyWait {
            control_socket: socket.clone(),
            timeout: Duration::from_secs(1),
        };
        // A router that answers.
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while c.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            c.write_all(b"{\"result\":\"pod_ready\",\"enforced\":true}\n")
                .unwrap();
            drop(c);
            // A router that never answers.
            let (c, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(c);
            line
        });
        assert!(wait(&policy, &pod(), "10.32.1.5".parse().unwrap()).unwrap());
        let started = Instant::now();
        let e = wait(&policy, &pod(), "10.32.1.5".parse().unwrap()).unwrap_err();
        assert!(matches!(e, WaitError::Timeout(_)), "{e}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
            "{took:?}"
        );
        let sent: serde_json::Value = serde_json::from_slice(&server.join().unwrap()).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"command": "pod_added", "namespace": "default", "name": "web",
                "address": "10.32.1.5"})
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // No router at all.
        let e = wait(&policy, &pod(), "10.32.1.5".parse().unwrap()).unwrap_err();
        assert!(matches!(e, WaitError::Connect { .. }), "{e}");
    }
}
