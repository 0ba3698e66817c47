//! What is wrong with one object. A problem never stops the computation: the object it is
//! about is handled as docs/networkpolicy.md says (a malformed policy fails closed), and the
//! others are computed as if it were not there.

use std::fmt;

/// Which object a model entry or a problem is about: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One malformed object: which one, where in it, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {error}")]
pub struct Problem {
    pub kind: ObjectKind,
    pub object: ObjectRef,
    /// The field path, as `kubectl explain` spells it: `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    pub error: Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    NetworkPolicy,
    Pod,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::NetworkPolicy => "networkpolicy",
            ObjectKind::Pod => "pod",
        })
    }
}

/// The ways an object can be malformed. Each is refused by the API server's validation of
/// `networking.k8s.io/v1`, so they come from clients that skip it (or from a bug).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the object has no namespace")]
    NoNamespace,
    #[error("unknown policy type {0:?} (Ingress or Egress)")]
    UnknownPolicyType(String),
    #[error("unknown selector operator {0:?} (In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator(String),
    #[error("operator {0} needs at least one value")]
    MissingValues(String),
    #[error("operator {0} takes no values")]
    UnexpectedValues(String),
    #[error("a peer must set podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    #[error("ipBlock cannot be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector,
    #[error("{0:?} is not a CIDR ({1})")]
    BadCidr(String, String),
    #[error("except {except} is not strictly inside cidr {cidr}")]
    ExceptOutside { except: String, cidr: String },
    #[error("unknown protocol {0:?} (TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("port {0} is outside 1-65535")]
    PortOutOfRange(i64),
    #[error("{0:?} is not a valid port name (IANA service name: 1-15 of a-z, 0-9, '-')")]
    BadPortName(String),
    #[error("endPort needs a numeric port")]
    EndPortWithoutNumericPort,
    #[error("endPort {end} is below port {port}")]
    EndPortBelowPort { port: i64, end: i64 },
    #[error("{0:?} is not an IP address")]
    BadPodIp(String),
}
