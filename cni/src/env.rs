//! The CNI_* environment, parsed once into checked types.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use crate::result::{CniError, ErrorCode};

/// A container id as libcni accepts it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

/// Longest container id we accept; runtimes use 64 hex digits, this leaves room and bounds
/// what ends up in a lease file.
const CONTAINER_ID_MAX: usize = 256;

impl ContainerId {
    pub fn parse(s: &str) -> Result<ContainerId, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok {
            return Err(format!(
                "container id {s:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            ));
        }
        if s.len() > CONTAINER_ID_MAX {
            return Err(format!(
                "container id is {} bytes, at most {CONTAINER_ID_MAX}",
                s.len()
            ));
        }
        Ok(ContainerId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name: what the kernel's `dev_valid_name` accepts, in printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// IFNAMSIZ is 16 including the terminating NUL.
pub const IFNAME_MAX: usize = 15;

impl IfName {
    pub fn parse(s: &str) -> Result<IfName, String> {
        if s.is_empty() {
            return Err("interface name is empty".into());
        }
        if s.len() > IFNAME_MAX {
            return Err(format!(
                "interface name {s:?} is longer than {IFNAME_MAX} bytes"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("interface name {s:?} is not allowed"));
        }
        // The kernel forbids '/', ':' and whitespace; we also refuse non-printable and
        // non-ASCII bytes, which no runtime sends and which would be unreadable in `ip link`.
        if let Some(c) = s
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':'))
        {
            return Err(format!(
                "interface name {s:?} contains {c:?}; allowed: printable ASCII without '/', ':' or spaces"
            ));
        }
        Ok(IfName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pod attachment: the key of a lease and of a host veth.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: ContainerId,
    pub ifname: IfName,
}

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// One invocation, with exactly the environment its command needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Add {
        attachment: Attachment,
        netns: PathBuf,
        /// The pod the runtime names in CNI_ARGS (the kubelet always does).
        pod: PodArgs,
    },
    /// DEL tolerates a missing or empty `CNI_NETNS` (containerd sends an empty one).
    Del {
        attachment: Attachment,
        netns: Option<PathBuf>,
    },
    Check {
        attachment: Attachment,
        netns: PathBuf,
    },
    Status,
    Gc,
    Version,
}

impl Invocation {
    pub fn command(&self) -> Command {
        match self {
            Invocation::Add { .. } => Command::Add,
            Invocation::Del { .. } => Command::Del,
            Invocation::Check { .. } => Command::Check,
            Invocation::Status => Command::Status,
            Invocation::Gc => Command::Gc,
            Invocation::Version => Command::Version,
        }
    }

    /// Parses the environment through `get` (a closure so tests need not touch the process
    /// environment). Unset and empty variables are the same thing, as in libcni.
    pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Invocation, CniError> {
        let var = |name: &str| -> Result<Option<String>, CniError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| env_error(format!("{name} is not valid UTF-8"))),
            }
        };
        let required = |name: &str| -> Result<String, CniError> {
            var(name)?.ok_or_else(|| env_error(format!("{name} is required for this command")))
        };
        let command = match required("CNI_COMMAND")?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(env_error(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )));
            }
        };
        let mut pod = PodArgs::default();
        if let Some(args) = var("CNI_ARGS")? {
            pod = check_cni_args(&args)?;
        }
        let attachment = || -> Result<Attachment, CniError> {
            Ok(Attachment {
                container_id: ContainerId::parse(&required("CNI_CONTAINERID")?)
                    .map_err(|e| env_error(format!("CNI_CONTAINERID: {e}")))?,
                ifname: IfName::parse(&required("CNI_IFNAME")?)
                    .map_err(|e| env_error(format!("CNI_IFNAME: {e}")))?,
            })
        };
        let netns = |value: String| -> Result<PathBuf, CniError> {
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Err(env_error(format!(
                    "CNI_NETNS {} is not an absolute path",
                    path.display()
                )));
            }
            Ok(path)
        };
        Ok(match command {
            Command::Add => Invocation::Add {
                attachment: attachment()?,
                netns: netns(required("CNI_NETNS")?)?,
                pod,
            },
            Command::Del => Invocation::Del {
                attachment: attachment()?,
                netns: var("CNI_NETNS")?.map(netns).transpose()?,
            },
            Command::Check => Invocation::Check {
                attachment: attachment()?,
                netns: netns(required("CNI_NETNS")?)?,
            },
            Command::Status => Invocation::Status,
            Command::Gc => Invocation::Gc,
            Command::Version => Invocation::Version,
        })
    }
}

/// The kubelet's CNI_ARGS entries naming the pod, as sent. Only ADD with a `policy` config
/// uses them ([`PodArgs::pod`] checks them then): without one, ADD works as it always did
/// whatever they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// A pod's namespace and name, checked as the API server checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodArgs {
    /// The pod, or code 4 saying which entry is missing or malformed.
    pub fn pod(&self) -> Result<PodRef, CniError> {
        let get = |key: &str, value: &Option<String>, max: usize, dots: bool| {
            let v = value.as_deref().ok_or_else(|| {
                env_error(format!(
                    "CNI_ARGS has no {key}: weft enforces NetworkPolicy here and must know which \
                     pod this is (the kubelet sends K8S_POD_NAMESPACE and K8S_POD_NAME)"
                ))
            })?;
            if dns_name(v, max, dots) {
                Ok(v.to_owned())
            } else {
                Err(env_error(format!(
                    "CNI_ARGS {key}={v:?} is not a Kubernetes name (lowercase letters, digits, \
                     '-'{}; at most {max} bytes)",
                    if dots { " and '.'" } else { "" }
                )))
            }
        };
        Ok(PodRef {
            namespace: get("K8S_POD_NAMESPACE", &self.namespace, 63, false)?,
            name: get("K8S_POD_NAME", &self.name, 253, true)?,
        })
    }
}

/// A DNS-1123 label, or with `dots` a subdomain (labels joined by '.'), of at most `max`
/// bytes: the API server's rule for a namespace (a label, 63) and a pod name (a subdomain,
/// 253). The router checks the `pod_added` requests it gets from here with it too.
pub fn dns_name(v: &str, max: usize, dots: bool) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !v.is_empty()
        && v.len() <= max
        && if dots {
            v.split('.').all(label)
        } else {
            label(v)
        }
}

/// CNI_ARGS is `K=V;K=V`; we keep the pod's namespace and name, and refuse a malformed
/// string rather than guess what the caller meant.
fn check_cni_args(args: &str) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => match k {
                "K8S_POD_NAMESPACE" => pod.namespace = Some(v.to_owned()),
                "K8S_POD_NAME" => pod.name = Some(v.to_owned()),
                _ => {}
            },
            _ => {
                return Err(env_error(format!(
                    "CNI_ARGS entry {pair:?} is not KEY=VALUE"
                )));
            }
        }
    }
    Ok(pod)
}

fn env_error(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Invocation::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn ifname_rules() {
        for ok in ["eth0", "net1", "a", "x.y-z_1", "123456789012345"] {
            assert!(IfName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "1234567890123456",
            "ethé",
        ] {
            assert!(IfName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn container_id_rules() {
        for ok in ["abc", "0a.b-c_d", "A"] {
            assert!(ContainerId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-abc", ".a", "a b", "a/b", "a;b"] {
            assert!(ContainerId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ContainerId::parse(&"a".repeat(257)).is_err());
    }

    #[test]
    fn each_command_needs_its_environment() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_IFNAME"), "{e}");
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        // DEL without a namespace, and with an empty one (containerd), is fine.
        for netns in [None, Some("")] {
            let mut pairs = vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ];
            if let Some(n) = netns {
                pairs.push(("CNI_NETNS", n));
            }
            assert!(matches!(
                env(&pairs),
                Ok(Invocation::Del { netns: None, .. })
            ));
        }
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]), Ok(Invocation::Status));
        assert_eq!(env(&[("CNI_COMMAND", "bogus")]).unwrap_err().code, 4);
        assert_eq!(env(&[]).unwrap_err().code, 4);
        let e = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "relative/path"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("absolute"), "{e}");
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "novalue")]).unwrap_err();
        assert!(e.msg.contains("CNI_ARGS"), "{e}");
    }

    #[test]
    fn the_pod_comes_from_cni_args() {
        let add = |args: &str| {
            let Invocation::Add { pod, .. } = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_ARGS", args),
            ])
            .unwrap() else {
                panic!("not an ADD")
            };
            pod
        };
        let kubelet = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0.a;\
                       K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u";
        assert_eq!(
            add(kubelet).pod().unwrap(),
            PodRef {
                namespace: "default".into(),
                name: "web-0.a".into()
            }
        );
        for (args, says) in [
            ("", "K8S_POD_NAMESPACE"),
            ("K8S_POD_NAMESPACE=default", "K8S_POD_NAME"),
            ("K8S_POD_NAME=a", "K8S_POD_NAMESPACE"),
            (
                "K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=a",
                "K8S_POD_NAMESPACE=\"a.b\"",
            ),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=A", "K8S_POD_NAME=\"A\""),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=", "K8S_POD_NAME=\"\""),
        ] {
            let e = add(args).pod().unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(says), "{args}: {e}");
        }
    }
}
