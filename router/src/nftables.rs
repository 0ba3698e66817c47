//! weft's nftables table (`table ip weft`): the masquerade that gives the mesh and the
//! outside world addresses they answer. Written as one `nft -f -` script that deletes and
//! recreates the table in one transaction, so the rules are replaced atomically and a second
//! run changes nothing; `weft uninstall` deletes the table. It outlives the router, as the
//! blackhole route does: a restart keeps its connections' NAT state.
//!
//! The rules, in the order nftables meets them (docs/kubernetes.md says why):
//! 1. whatever leaves through weft-tun with a source outside the cluster range (the node's
//!    own traffic after a DNAT, kube-proxy's unmasqueraded paths) takes the node's mesh
//!    address, the only one the other routers accept from it;
//! 2. pod traffic within the cluster range, or to an exempt CIDR, keeps its source;
//! 3. the rest of the pods' traffic (the internet, a cloud API, another node's host address)
//!    leaves with the node's address, unless egress masquerade is off.
//!
//! With NetworkPolicy ([`policy`]), the same table holds the filter chains that enforce it,
//! so the masquerade and the policy always change together, in one transaction.

pub mod counters;
pub mod policy;

use std::collections::BTreeMap;

use std::io::{self, Write};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::netconf::NetconfError;

/// The table's name, in the `ip` family.
pub const TABLE: &str = "weft";

/// What the table is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The cluster's pod range.
    pub cluster_range: Ipv4Net,
    /// The TUN device.
    pub tun: String,
    /// Masquerade pod traffic leaving the cluster range.
    pub masquerade: bool,
    /// Destinations pod traffic reaches with its own source (routed pod ranges).
    pub exempt: Vec<Ipv4Net>,
}

impl Rules {
    /// The `nft -f` script without NetworkPolicy.
    pub fn script(&self) -> String {
        self.script_with(&policy::Enforcement::default())
    }

    /// The `nft -f` script: create (so the delete cannot fail), delete, create whole, with
    /// `policy`'s counters and chains.
    pub fn script_with(&self, policy: &policy::Enforcement) -> String {
        let range = self.cluster_range;
        let mut s = format!(
            "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n \
             chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  \
             oifname \"{tun}\" ip saddr != {range} masquerade\n",
            tun = self.tun
        );
        if self.masquerade {
            s += &format!("  ip saddr {range} ip daddr {range} return\n");
            if !self.exempt.is_empty() {
                let set: Vec<String> = self.exempt.iter().map(|n| n.to_string()).collect();
                s += &format!(
                    "  ip saddr {range} ip daddr {{ {} }} return\n",
                    set.join(", ")
                );
            }
            s += &format!("  ip saddr {range} masquerade\n");
        }
        s += " }\n";
        s += policy.as_str();
        s += "}\n";
        s
    }
}

/// Replaces weft's table with `rules`, in one transaction.
pub fn apply(rules: &Rules) -> Result<(), NetconfError> {
    apply_with(rules, &policy::Enforcement::default())
}

/// Replaces weft's table with `rules` and `policy`, in one transaction: the kernel switches
/// from the old rules to the new ones between two packets, or keeps the old ones on error.
pub fn apply_with(rules: &Rules, policy: &policy::Enforcement) -> Result<(), NetconfError> {
    nft(&rules.script_with(policy))
        .map_err(|e| NetconfError::new(format!("nft -f (table ip {TABLE})"), e))
}

/// Packets per named counter of weft's table (`nft -j list counters`); none when there is
/// no table.
pub fn read_counters() -> Result<BTreeMap<String, u64>, NetconfError> {
    let what = || format!("nft -j list counters table ip {TABLE}");
    let out = Command::new("nft")
        .args(["-j", "list", "counters", "table", "ip", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetconfError::new(what(), not_installed(e)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(BTreeMap::new());
        }
        return Err(NetconfError::new(
            what(),
            io::Error::other(err.trim().to_owned()),
        ));
    }
    counters::parse_counters(&out.stdout, TABLE)
        .map_err(|e| NetconfError::new(what(), io::Error::other(e)))
}

/// Whether weft's table is there.
pub fn exists() -> Result<bool, NetconfError> {
    Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(|e| NetconfError::new(format!("nft list table ip {TABLE}"), not_installed(e)))
}

/// Deletes weft's table; false when there was none.
pub fn remove() -> Result<bool, NetconfError> {
    let what = || format!("nft delete table ip {TABLE}");
    if !exists()? {
        return Ok(false);
    }
    nft(&format!("delete table ip {TABLE}\n"))
        .map(|()| true)
        .map_err(|e| NetconfError::new(what(), e))
}

fn not_installed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::other("the nft command is not installed (Debian: apt-get install nftables)")
    } else {
        e
    }
}

/// Runs `nft -f -` with `script` on its standard input.
fn nft(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(not_installed)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            cluster_range: "10.32.0.0/12".parse().unwrap(),
            tun: "weft-tun".into(),
            masquerade: true,
            exempt: vec![],
        }
    }

    #[test]
    fn the_script_replaces_the_table_in_one_transaction() {
        let s = rules().script();
        assert!(s.starts_with("table ip weft\ndelete table ip weft\ntable ip weft {\n"));
        assert!(s.contains("oifname \"weft-tun\" ip saddr != 10.32.0.0/12 masquerade\n"));
        assert!(s.contains("ip saddr 10.32.0.0/12 ip daddr 10.32.0.0/12 return\n"));
        // The pods' masquerade comes after every exemption.
        assert!(
            s.ends_with("  ip saddr 10.32.0.0/12 masquerade\n }\n}\n"),
            "{s}"
        );
    }

    #[test]
    fn exempt_cidrs_come_before_the_masquerade_and_off_means_none() {
        let mut r = rules();
        r.exempt = vec![
            "192.168.0.0/16".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
        ];
        let s = r.script();
        let exempt = s
            .find("ip daddr { 192.168.0.0/16, 172.16.0.0/12 } return")
            .expect(&s);
        assert!(exempt < s.find("ip saddr 10.32.0.0/12 masquerade").unwrap());
        r.masquerade = false;
        let s = r.script();
        assert!(!s.contains("ip saddr 10.32.0.0/12 masquerade"), "{s}");
        // Traffic into the mesh still takes the node's mesh address.
        assert!(s.contains("oifname \"weft-tun\""));
    }

    #[test]
    fn policy_chains_go_inside_the_one_table_after_the_masquerade() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "a"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.32.1.2"},
        }))
        .unwrap();
        let deny: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}},
        }))
        .unwrap();
        let model = weft_policy::compute(
            &[deny],
            &[pod],
            &[] as &[Namespace],
            weft_policy::Local::All,
        );
        let policy = policy::Enforcement::render(&model, &[]);
        let s = rules().script_with(&policy);
        let masquerade = s.find(" chain postrouting {").unwrap();
        let chains = s.find(policy.as_str()).expect(&s);
        assert!(masquerade < chains, "{s}");
        assert!(s.ends_with(&format!("{}}}\n", policy.as_str())), "{s}");
        // Exactly one table is created and deleted.
        assert_eq!(s.matches("table ip weft").count(), 3, "{s}");
        assert_eq!(s.matches("table ").count(), 3, "{s}");
    }
}
