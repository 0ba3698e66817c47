//! The CNI result and error formats, for every supported version.
//!
//! A [`CniResult`] is version-free; [`CniResult::to_json`] writes the shape a given version
//! expects, and [`CniResult::from_json`] reads any supported version's shape (a `prevResult`
//! from another plugin, or our own from a previous ADD).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::version::CniVersion;

/// The spec's well-known error codes we use, plus our own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's cniVersion is not one we speak, or the operation needs a newer one.
    IncompatibleVersion = 1,
    /// 2: the config asks for something weft does not do (its own `ipam`, `ipMasq`).
    UnsupportedField = 2,
    /// 3: the container's namespace does not exist, or the attachment is unknown.
    UnknownContainer = 3,
    /// 4: a CNI_* variable the command needs is missing or malformed.
    InvalidEnvironment = 4,
    /// 5: the kernel or the file system refused an operation.
    IoFailure = 5,
    /// 6: stdin is not the JSON we expect.
    DecodeFailure = 6,
    /// 7: the JSON decodes but a value is invalid.
    InvalidConfig = 7,
    /// 11: the node's block is not known yet; the runtime should retry.
    TryAgainLater = 11,
    /// 50: STATUS: the plugin cannot serve ADDs now.
    PluginNotAvailable = 50,
    /// 100: CHECK found the attachment different from what ADD made.
    CheckFailed = 100,
    /// 101: every address of the node's block is leased.
    BlockExhausted = 101,
    /// 102: ADD for a (container, ifname) that is already attached.
    AlreadyAttached = 102,
}

/// An error as the runtime reads it: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.as_str().into());
        m.insert("code".into(), self.code.into());
        m.insert("msg".into(), self.msg.clone().into());
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone().into());
        }
        Value::Object(m)
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Present for interfaces inside a sandbox (the pod end); absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Spec 1.1.0 only; dropped when writing an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Fields of other plugins' interfaces (socketPath, pciID, …), passed through untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    /// The address with the prefix length of its subnet, e.g. `10.32.3.7/24`.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One route of a result or of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Spec 1.1.0 fields (mtu, advmss, priority, table, scope) of other plugins, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The DNS section, as configured (we do not run DNS; we only report it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A version-free CNI result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Dns>,
}

#[derive(Deserialize)]
struct RawIp {
    #[serde(default)]
    version: Option<String>,
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

/// Why a result could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The JSON does not have the shape of a CNI result.
    #[error("not a CNI result: {0}")]
    Decode(#[from] serde_json::Error),
    /// An ips entry points at an interface the result does not list.
    #[error("ips[{ip}] names interface {index}, but the result lists {count} interfaces")]
    BadInterfaceIndex {
        ip: usize,
        index: usize,
        count: usize,
    },
    /// An ips entry's `version` disagrees with its address.
    #[error("ips[{0}] has a version that does not match its address")]
    BadIpVersion(usize),
}

impl CniResult {
    /// Reads a result in the shape of any supported version.
    pub fn from_json(value: &Value) -> Result<CniResult, ResultError> {
        let raw = RawResult::deserialize(value)?;
        let mut ips = Vec::with_capacity(raw.ips.len());
        for (i, ip) in raw.ips.into_iter().enumerate() {
            if let Some(index) = ip.interface
                && index >= raw.interfaces.len()
            {
                return Err(ResultError::BadInterfaceIndex {
                    ip: i,
                    index,
                    count: raw.interfaces.len(),
                });
            }
            let want = if ip.address.addr().is_ipv4() {
                "4"
            } else {
                "6"
            };
            if ip.version.as_deref().is_some_and(|v| v != want) {
                return Err(ResultError::BadIpVersion(i));
            }
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            interfaces: raw.interfaces,
            ips,
            routes: raw.routes,
            dns: raw.dns.filter(|d| !d.is_empty()),
        })
    }

    /// Writes the result in `version`'s shape.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.as_str().into());
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if version < CniVersion::V1_1_0 {
                    i.mtu = None;
                }
                serde_json::to_value(i).expect("an interface always serialises")
            })
            .collect();
        if !interfaces.is_empty() {
            m.insert("interfaces".into(), interfaces.into());
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), v.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(index) = ip.interface {
                    o.insert("interface".into(), index.into());
                }
                Value::Object(o)
            })
            .collect();
        if !ips.is_empty() {
            m.insert("ips".into(), ips.into());
        }
        if !self.routes.is_empty() {
            m.insert(
                "routes".into(),
                serde_json::to_value(&self.routes).expect("routes always serialise"),
            );
        }
        if let Some(dns) = self.dns.as_ref().filter(|d| !d.is_empty()) {
            m.insert(
                "dns".into(),
                serde_json::to_value(dns).expect("dns always serialises"),
            );
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    sandbox: None,
                    mtu: Some(1376),
                    extra: Map::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1376),
                    extra: Map::new(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.3.2/24".parse().unwrap(),
                gateway: Some("10.32.3.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.32.3.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: None,
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu() {
        let v = sample().to_json(CniVersion::V0_4_0);
        assert_eq!(v["ips"][0]["version"], json!("4"));
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(CniVersion::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], json!(1376));
    }

    #[test]
    fn round_trips_through_every_version() {
        for version in CniVersion::ALL {
            let mut want = sample();
            if version < CniVersion::V1_1_0 {
                for i in &mut want.interfaces {
                    i.mtu = None;
                }
            }
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back, want, "{version}");
        }
    }

    #[test]
    fn refuses_dangling_interface_index() {
        let v = json!({"interfaces": [], "ips": [{"address": "10.0.0.1/24", "interface": 0}]});
        assert!(matches!(
            CniResult::from_json(&v),
            Err(ResultError::BadInterfaceIndex { .. })
        ));
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(ErrorCode::InvalidConfig, "bad").with_details("why");
        assert_eq!(
            e.to_json(CniVersion::V1_0_0),
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"})
        );
    }
}
