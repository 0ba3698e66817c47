//! Protocols and ports: a policy's `ports` entries checked once, and resolved (named ports)
//! against the destination pod's container ports.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::Malformed;

/// The protocols NetworkPolicy names. Never interchangeable: a rule for TCP 80 says nothing
/// about UDP 80 or SCTP 80.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The protocol of an optional `protocol` field: absent means TCP, the API's default.
    pub fn parse_field(field: Option<&str>) -> Result<Self, Malformed> {
        field.map_or(Ok(Protocol::Tcp), str::parse)
    }
}

impl FromStr for Protocol {
    type Err = Malformed;

    /// Exactly as the API spells them: the API server refuses `tcp`, so do we.
    fn from_str(s: &str) -> Result<Self, Malformed> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(Malformed::UnknownProtocol(other.to_owned())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// An inclusive range of destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every port of a protocol (a `ports` entry with a protocol and no port).
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// What traffic an allow entry covers, in a form a packet filter matches directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ports {
    /// The rule has no `ports`: every port of every IP protocol (ICMP included).
    Any,
    /// One protocol, destination ports in a range (`PortRange::ALL` for all of them).
    Only {
        protocol: Protocol,
        range: PortRange,
    },
}

impl Ports {
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::Only { protocol: p, range } => *p == protocol && range.contains(port),
        }
    }
}

/// A checked `ports` entry. Named ports wait for the destination pod to be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Resolved(Ports),
    Named { protocol: Protocol, name: String },
}

impl PortSpec {
    /// Checks one `NetworkPolicyPort` as the API server's validation does; the error names
    /// the field inside the entry.
    pub fn parse(entry: &NetworkPolicyPort) -> Result<Self, (&'static str, Malformed)> {
        let protocol =
            Protocol::parse_field(entry.protocol.as_deref()).map_err(|e| ("protocol", e))?;
        let port = match &entry.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(port_number(i64::from(*n)).map_err(|e| ("port", e))?),
            Some(IntOrString::String(name)) => {
                if entry.end_port.is_some() {
                    return Err(("endPort", Malformed::EndPortWithoutNumericPort));
                }
                if !is_iana_service_name(name) {
                    return Err(("port", Malformed::BadPortName(name.clone())));
                }
                return Ok(PortSpec::Named {
                    protocol,
                    name: name.clone(),
                });
            }
        };
        let range = match (port, entry.end_port) {
            (None, None) => PortRange::ALL,
            (None, Some(_)) => return Err(("endPort", Malformed::EndPortWithoutNumericPort)),
            (Some(p), None) => PortRange::single(p),
            (Some(p), Some(end)) => {
                let end = port_number(i64::from(end)).map_err(|e| ("endPort", e))?;
                if end < p {
                    let err = Malformed::EndPortBelowPort {
                        port: p.into(),
                        end: end.into(),
                    };
                    return Err(("endPort", err));
                }
                PortRange {
                    first: p,
                    last: end,
                }
            }
        };
        Ok(PortSpec::Resolved(Ports::Only { protocol, range }))
    }
}

fn port_number(n: i64) -> Result<u16, Malformed> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(Malformed::PortOutOfRange(n))
}

/// Upstream's IsValidPortName: 1-15 characters of a-z, 0-9 and '-', at least one letter,
/// no hyphen at either end and no two hyphens in a row.
fn is_iana_service_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A container port that has a name, as the pod declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        port: Option<IntOrString>,
        end_port: Option<i32>,
        protocol: Option<&str>,
    ) -> NetworkPolicyPort {
        NetworkPolicyPort {
            port,
            end_port,
            protocol: protocol.map(Into::into),
        }
    }

    #[test]
    fn entries_are_checked_like_the_api_server() {
        let ok = |e| PortSpec::parse(&e).unwrap();
        let err = |e| PortSpec::parse(&e).unwrap_err();
        let tcp = |first, last| {
            PortSpec::Resolved(Ports::Only {
                protocol: Protocol::Tcp,
                range: PortRange { first, last },
            })
        };
        assert_eq!(
            ok(entry(Some(IntOrString::Int(80)), None, None)),
            tcp(80, 80)
        );
        assert_eq!(
            ok(entry(Some(IntOrString::Int(80)), Some(81), Some("TCP"))),
            tcp(80, 81)
        );
        assert_eq!(ok(entry(None, None, None)), tcp(0, 65535));
        assert_eq!(
            ok(entry(
                Some(IntOrString::String("serve-80-udp".into())),
                None,
                Some("UDP")
            )),
            PortSpec::Named {
                protocol: Protocol::Udp,
                name: "serve-80-udp".into()
            }
        );
        assert_eq!(
            err(entry(Some(IntOrString::Int(81)), Some(80), None)),
            ("endPort", Malformed::EndPortBelowPort { port: 81, end: 80 })
        );
        assert_eq!(
            err(entry(None, Some(80), None)).1,
            Malformed::EndPortWithoutNumericPort
        );
        assert_eq!(
            err(entry(
                Some(IntOrString::String("http".into())),
                Some(80),
                None
            ))
            .1,
            Malformed::EndPortWithoutNumericPort
        );
        assert_eq!(
            err(entry(Some(IntOrString::Int(0)), None, None)).1,
            Malformed::PortOutOfRange(0)
        );
        assert_eq!(
            err(entry(Some(IntOrString::Int(65536)), None, None)).1,
            Malformed::PortOutOfRange(65536)
        );
        assert_eq!(
            err(entry(None, None, Some("tcp"))).1,
            Malformed::UnknownProtocol("tcp".into())
        );
        assert_eq!(
            err(entry(None, None, Some("ICMP"))).1,
            Malformed::UnknownProtocol("ICMP".into())
        );
    }

    #[test]
    fn port_names_follow_iana_rules() {
        for good in ["http", "serve-80-tcp", "a", "dns-tcp", "abcdefghijklmno"] {
            assert!(is_iana_service_name(good), "{good}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "abcdefghijklmnop",
            "h_ttp",
        ] {
            assert!(!is_iana_service_name(bad), "{bad}");
        }
    }
}
