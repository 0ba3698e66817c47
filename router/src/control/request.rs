//! A control request and its parser: the bytes a client sends on the control socket become a
//! [`Request`] here, or an error that says what to send instead. Pure (std, serde): the
//! control-socket fuzz target compiles this file on its own, without the router's runtime.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A request to the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The node and its peers.
    Status,
    /// This node's view of the whole mesh (`weft report`).
    Report,
    /// Dial an endpoint.
    Connect {
        /// `address:port`.
        endpoint: SocketAddr,
    },
    /// Forget a member (its public key, base64).
    Forget {
        /// The member's key.
        peer: String,
    },
    /// weft-cni attached a pod (its host end still down): answer once the policy rules in the
    /// kernel judge it at `address` (docs/networkpolicy.md).
    PodAdded {
        /// Its namespace (a DNS label).
        namespace: String,
        /// Its name (a DNS subdomain).
        name: String,
        /// The address weft-cni leased it.
        address: Ipv4Addr,
    },
}

/// What a refused request is told to send instead.
const REQUEST_EXAMPLES: &str = "send one JSON object such as {\"command\":\"status\"}, \
     {\"command\":\"report\"}, \
     {\"command\":\"connect\",\"endpoint\":\"198.18.0.1:6786\"}, \
     {\"command\":\"forget\",\"peer\":\"BASE64KEY\"} or \
     {\"command\":\"pod_added\",\"namespace\":\"NS\",\"name\":\"POD\",\"address\":\"10.32.0.5\"}";

/// Why a request line was refused; the message says what is wrong and what to send, for
/// the client to show.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or JSON that is no request (unknown command, a value missing or of the
    /// wrong type).
    #[error("cannot parse the request ({0}); {examples}", examples = REQUEST_EXAMPLES)]
    Malformed(#[source] serde_json::Error),
    /// A request with fields its command does not take.
    #[error(
        "cannot parse the request (unknown or malformed fields); {examples}",
        examples = REQUEST_EXAMPLES
    )]
    UnknownFields,
    /// A value of the right type that no object can have (a pod name with a slash, say).
    #[error("cannot parse the request ({0}); {examples}", examples = REQUEST_EXAMPLES)]
    BadValue(String),
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let value: serde_json::Value =
        serde_json::from_slice(line.trim_ascii()).map_err(RequestError::Malformed)?;
    let request: Request =
        serde_json::from_value(value.clone()).map_err(RequestError::Malformed)?;
    // serde ignores unknown fields of internally tagged unit variants: a request must be
    // exactly what it parsed to, so a misspelt option is an error, not silently dropped.
    if serde_json::to_value(&request).ok().as_ref() != Some(&value) {
        return Err(RequestError::UnknownFields);
    }
    if let Request::PodAdded {
        namespace, name, ..
    } = &request
    {
        // The API server's own rules: a namespace is a DNS label, a pod name a DNS subdomain.
        check_dns_name("namespace", namespace, 63, false)?;
        check_dns_name("name", name, 253, true)?;
    }
    Ok(request)
}

/// A DNS-1123 label (`dots` false) or subdomain (`dots` true) of at most `max` bytes.
fn check_dns_name(field: &str, value: &str, max: usize, dots: bool) -> Result<(), RequestError> {
    if weft_cni::env::dns_name(value, max, dots) {
        Ok(())
    } else {
        Err(RequestError::BadValue(format!(
            "{field} {value:?} is not a Kubernetes {} (lowercase letters, digits and '-'{}, \
             at most {max} bytes)",
            if dots { "DNS subdomain" } else { "DNS label" },
            if dots { ", labels joined by '.'" } else { "" },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_gets_a_message() {
        assert_eq!(
            parse_request(br#"{"command":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            parse_request(br#"{"command":"report"}"#).unwrap(),
            Request::Report
        );
        assert_eq!(
            parse_request(b"{\"command\":\"connect\",\"endpoint\":\"198.18.0.1:6786\"}\n").unwrap(),
            Request::Connect {
                endpoint: "198.18.0.1:6786".parse().unwrap()
            }
        );
        assert_eq!(
            parse_request(
                br#"{"command":"pod_added","namespace":"default","name":"web-1.a","address":"10.32.1.5"}"#
            )
            .unwrap(),
            Request::PodAdded {
                namespace: "default".into(),
                name: "web-1.a".into(),
                address: "10.32.1.5".parse().unwrap(),
            }
        );
        for bad in [
            &b"hello"[..],
            br#"{"command":"pod_added","namespace":"default","name":"a"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"a","address":"fd00::1"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"a","address":"10.32.1.5","x":1}"#,
            br#"{"command":"pod_added","namespace":"Default","name":"a","address":"10.32.1.5"}"#,
            br#"{"command":"pod_added","namespace":"a.b","name":"a","address":"10.32.1.5"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"a/b","address":"10.32.1.5"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"","address":"10.32.1.5"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"-a","address":"10.32.1.5"}"#,
            br#"{"command":"pod_added","namespace":"default","name":"a..b","address":"10.32.1.5"}"#,
            b"{}",
            br#"{"command":"reboot"}"#,
            br#"{"command":"connect"}"#,
            br#"{"command":"status","x":1}"#,
            br#"{"command":"report","schema":2}"#,
        ] {
            let err = parse_request(bad).unwrap_err().to_string();
            assert!(err.contains("cannot parse the request"), "{err}");
        }
    }
}
