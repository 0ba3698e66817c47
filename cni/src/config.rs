//! The network configuration on stdin, parsed once into a checked [`NetConf`].
//!
//! This is the parser the `cni_config` fuzz target drives: any bytes in, either a `NetConf`
//! whose every field is valid or a [`ConfigError`] that says what is wrong.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde_json::Value;

use crate::env::{Attachment, ContainerId, IfName};
use crate::result::{CniError, CniResult, Dns, ErrorCode};
use crate::version::CniVersion;

pub const DEFAULT_BRIDGE: &str = "weft";
/// Default pod MTU: a 1500-byte underlay less weft's tunnel overhead on its longest (relayed)
/// path, as `weft_sys::mtu::pod_mtu(1500)` computes it (a test in [`crate::install`] holds the
/// two together). The router computes the real value and install-cni writes it into the
/// conflist.
pub const DEFAULT_MTU: u32 = 1500 - weft_sys::mtu::TUNNEL_OVERHEAD;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The smallest MTU IPv4 allows (RFC 791) and the largest a veth takes.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;
/// `policy.timeout_seconds`: its range and default.
pub const POLICY_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=120;
pub const DEFAULT_POLICY_TIMEOUT: u64 = 10;
/// Larger stdin is refused before parsing: a real config is a few kilobytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A route to install in the pod: `dst` via `gw` (the bridge's gateway when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// `policy`: the router enforces NetworkPolicy, and ADD waits for it to judge the pod
/// before the pod's link goes up (docs/networkpolicy.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWait {
    /// The router's control socket (absolute).
    pub control_socket: PathBuf,
    /// How long ADD waits for the router's answer.
    pub timeout: std::time::Duration,
}

/// The checked network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub bridge: IfName,
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub dns: Option<Dns>,
    /// Empty means "a default route via the gateway".
    pub routes: Vec<PodRoute>,
    pub prev_result: Option<CniResult>,
    /// GC only: the attachments the runtime still wants (`cni.dev/valid-attachments` and the
    /// older `cni.dev/attachments`, merged). `None` when neither key was sent.
    pub valid_attachments: Option<BTreeSet<Attachment>>,
    /// Set by a router that enforces NetworkPolicy; `None`: ADD does not wait.
    pub policy: Option<PolicyWait>,
}

/// Why a configuration was refused. Each maps to one CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Too large, not JSON, or a field of the wrong type (code 6).
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    /// cniVersion is missing or not one we speak (code 1).
    #[error("cniVersion {0:?} is not supported; supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")]
    IncompatibleVersion(String),
    /// A field weft does not implement (code 2).
    #[error("unsupported field {field}: {why}")]
    Unsupported {
        field: &'static str,
        why: &'static str,
    },
    /// A value that decodes but is invalid (code 7).
    #[error("invalid network configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The error as the runtime sees it; `version` is the config's when it was readable.
    pub fn to_cni(&self) -> CniError {
        let code = match self {
            ConfigError::Decode(_) => ErrorCode::DecodeFailure,
            ConfigError::IncompatibleVersion(_) => ErrorCode::IncompatibleVersion,
            ConfigError::Unsupported { .. } => ErrorCode::UnsupportedField,
            ConfigError::Invalid(_) => ErrorCode::InvalidConfig,
        };
        CniError::new(code, self.to_string())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    control_socket: String,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: IpNet,
    #[serde(default)]
    gw: Option<IpAddr>,
}

/// The wire shape. Keys we do not know (args, runtimeConfig, capabilities, …) are ignored, as
/// the spec allows; keys we know but do not implement are refused rather than ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    ip_masq: Option<bool>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
    // A misspelt key inside it would silently turn the wait off: refused instead.
    #[serde(default)]
    policy: Option<Value>,
}

impl NetConf {
    /// Reads just the cniVersion, so that even an error about the rest can be written in the
    /// caller's version. `None` when unreadable or unsupported.
    pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            cni_version: String,
        }
        let v: V = serde_json::from_slice(bytes).ok()?;
        CniVersion::parse(&v.cni_version)
    }

    /// The one checked parse of the stdin configuration.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Decode(format!(
                "{} bytes, at most {MAX_CONFIG_BYTES}",
                bytes.len()
            )));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Decode(e.to_string()))?;
        if !value.is_object() {
            return Err(ConfigError::Decode("not a JSON object".into()));
        }
        let cni_version = match value.get("cniVersion") {
            Some(Value::String(s)) => {
                CniVersion::parse(s).ok_or_else(|| ConfigError::IncompatibleVersion(s.clone()))?
            }
            Some(other) => return Err(ConfigError::IncompatibleVersion(other.to_string())),
            None => return Err(ConfigError::IncompatibleVersion(String::new())),
        };
        let raw =
            RawNetConf::deserialize(&value).map_err(|e| ConfigError::Decode(e.to_string()))?;
        if raw.ipam.is_some() {
            return Err(ConfigError::Unsupported {
                field: "ipam",
                why: "weft-cni allocates from the node's block itself",
            });
        }
        if raw.ip_masq == Some(true) {
            return Err(ConfigError::Unsupported {
                field: "ipMasq",
                why: "traffic leaves the node through the weft router, not through NAT",
            });
        }
        check_network_name(&raw.name)?;
        if raw.kind.is_empty() {
            return Err(ConfigError::Invalid("type is empty".into()));
        }
        let bridge = IfName::parse(raw.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE))
            .map_err(|e| ConfigError::Invalid(format!("bridge: {e}")))?;
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !MTU_RANGE.contains(&mtu) {
            return Err(ConfigError::Invalid(format!(
                "mtu {mtu} is outside {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )));
        }
        let state_dir = PathBuf::from(raw.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() || raw.state_dir.as_deref().is_some_and(|s| s.contains('\0')) {
            return Err(ConfigError::Invalid(format!(
                "stateDir {} must be an absolute path",
                state_dir.display()
            )));
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            let IpNet::V4(dst) = r.dst else {
                return Err(ConfigError::Invalid(format!(
                    "routes[{i}].dst {}: weft pods are IPv4-only",
                    r.dst
                )));
            };
            if dst.trunc() != dst {
                return Err(ConfigError::Invalid(format!(
                    "routes[{i}].dst {dst} has host bits set (did you mean {}?)",
                    dst.trunc()
                )));
            }
            let gw = match r.gw {
                None => None,
                Some(IpAddr::V4(gw)) => Some(gw),
                Some(IpAddr::V6(gw)) => {
                    return Err(ConfigError::Invalid(format!(
                        "routes[{i}].gw {gw}: weft pods are IPv4-only"
                    )));
                }
            };
            routes.push(PodRoute { dst, gw });
        }
        if let Some(dns) = &raw.dns {
            let strings = dns.domain.iter().chain(&dns.search).chain(&dns.options);
            if strings
                .into_iter()
                .any(|s| s.is_empty() || s.contains('\0'))
            {
                return Err(ConfigError::Invalid(
                    "dns: domain, search and options must be non-empty strings".into(),
                ));
            }
        }
        let prev_result = raw
            .prev_result
            .map(|v| CniResult::from_json(&v))
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("prevResult: {e}")))?;
        let valid_attachments = match (raw.valid_attachments, raw.attachments) {
            (None, None) => None,
            (a, b) => {
                let mut set = BTreeSet::new();
                for (i, raw) in a.into_iter().chain(b).flatten().enumerate() {
                    let container_id = ContainerId::parse(&raw.container_id)
                        .map_err(|e| ConfigError::Invalid(format!("valid attachment {i}: {e}")))?;
                    let ifname = IfName::parse(&raw.ifname)
                        .map_err(|e| ConfigError::Invalid(format!("valid attachment {i}: {e}")))?;
                    set.insert(Attachment {
                        container_id,
                        ifname,
                    });
                }
                Some(set)
            }
        };
        let policy = raw.policy.map(check_policy).transpose()?;
        Ok(NetConf {
            cni_version,
            name: raw.name,
            bridge,
            mtu,
            state_dir,
            dns: raw.dns.filter(|d| !d.is_empty()),
            routes,
            prev_result,
            valid_attachments,
            policy,
        })
    }
}

fn check_policy(raw: Value) -> Result<PolicyWait, ConfigError> {
    // Decoded on its own, so the error names the key (serde's would not).
    let raw = RawPolicy::deserialize(&raw).map_err(|e| {
        ConfigError::Decode(format!(
            "policy: {e} (expected {{\"control_socket\": ABSOLUTE PATH, \"timeout_seconds\": 1..=120}})"
        ))
    })?;
    let control_socket = PathBuf::from(&raw.control_socket);
    if !control_socket.is_absolute() || raw.control_socket.contains('\0') {
        return Err(ConfigError::Invalid(format!(
            "policy.control_socket {:?} must be an absolute path",
            raw.control_socket
        )));
    }
    let seconds = raw.timeout_seconds.unwrap_or(DEFAULT_POLICY_TIMEOUT);
    if !POLICY_TIMEOUT_RANGE.contains(&seconds) {
        return Err(ConfigError::Invalid(format!(
            "policy.timeout_seconds {seconds} is outside {}..={}",
            POLICY_TIMEOUT_RANGE.start(),
            POLICY_TIMEOUT_RANGE.end()
        )));
    }
    Ok(PolicyWait {
        control_socket,
        timeout: std::time::Duration::from_secs(seconds),
    })
}

/// The spec: an alphanumeric first character, then alphanumerics, '_', '.' or '-'.
fn check_network_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "network name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, ConfigError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}"#).unwrap();
        assert_eq!(c.bridge.as_str(), "weft");
        assert_eq!(c.mtu, 1375);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/weft"));
        assert!(c.routes.is_empty() && c.dns.is_none() && c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
        assert!(c.policy.is_none());
    }

    #[test]
    fn policy_wait() {
        let base = r#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","policy":"#;
        let with = |p: &str| parse(&format!("{base}{p}}}"));
        let c = with(r#"{"control_socket":"/var/lib/weft/control.sock"}"#).unwrap();
        assert_eq!(
            c.policy,
            Some(PolicyWait {
                control_socket: "/var/lib/weft/control.sock".into(),
                timeout: std::time::Duration::from_secs(10),
            })
        );
        let c = with(r#"{"control_socket":"/s","timeout_seconds":120}"#).unwrap();
        assert_eq!(c.policy.unwrap().timeout.as_secs(), 120);
        for (bad, code, says) in [
            (r#"{"control_socket":"rel.sock"}"#, 7, "absolute"),
            (
                r#"{"control_socket":"/s","timeout_seconds":0}"#,
                7,
                "1..=120",
            ),
            (
                r#"{"control_socket":"/s","timeout_seconds":121}"#,
                7,
                "1..=120",
            ),
            (
                r#"{"control_socket":"/s","timeout_seconds":-1}"#,
                6,
                "timeout_seconds",
            ),
            (
                r#"{"control_socket":"/s","timeout_seconds":1.5}"#,
                6,
                "timeout_seconds",
            ),
            (r#"{"control_socket":"/s","timeout":5}"#, 6, "timeout"),
            (r#"{"timeout_seconds":5}"#, 6, "control_socket"),
            (r#""/s""#, 6, "policy"),
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.to_cni().code, code, "{bad}: {e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"{"cniVersion":"0.4.0","name":"n.1","type":"weft-cni","bridge":"br-x","mtu":9000,
                "stateDir":"/tmp/w","dns":{"nameservers":["10.96.0.10"],"search":["svc"]},
                "routes":[{"dst":"10.32.0.0/12"},{"dst":"0.0.0.0/0","gw":"10.32.3.254"}],
                "args":{"anything":1},"runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V0_4_0);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some("10.32.3.254".parse().unwrap()));
        assert_eq!(c.dns.unwrap().nameservers.len(), 1);
    }

    #[test]
    fn codes_for_each_kind_of_bad_input() {
        let code = |s: &str| parse(s).unwrap_err().to_cni().code;
        assert_eq!(code("not json"), 6);
        assert_eq!(code("[1]"), 6);
        assert_eq!(code(r#"{"name":"n","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":1,"name":"n","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","type":"t"}"#), 6);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"x"}"#),
            6
        );
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"-n","type":"t"}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":10}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","bridge":"a/b"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","stateDir":"rel"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","routes":[{"dst":"::/0"}]}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","routes":[{"dst":"10.0.0.1/8"}]}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{}}"#),
            2
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipMasq":true}"#),
            2
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.1.0","name":"n","type":"t",
                    "cni.dev/valid-attachments":[{"containerID":"a b","ifname":"eth0"}]}"#
            ),
            7
        );
    }

    #[test]
    fn both_attachment_keys_are_merged() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"},
                                       {"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap().len(), 2);
    }

    #[test]
    fn peek_version_reads_only_the_version() {
        assert_eq!(
            NetConf::peek_version(br#"{"cniVersion":"0.3.1","junk":[}"#),
            None
        );
        assert_eq!(
            NetConf::peek_version(br#"{"cniVersion":"0.3.1","mtu":"junk"}"#),
            Some(CniVersion::V0_3_1)
        );
    }
}
