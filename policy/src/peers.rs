//! Address sets: who an allow entry lets in (ingress) or out to (egress).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::IPBlock;

use crate::error::Malformed;

/// The peers of an allow entry, in a form a packet filter matches directly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peers {
    /// The rule has no `from`/`to`: every address, inside the cluster or not.
    Any,
    /// Disjoint prefixes in ascending order (pods as /32 or /128).
    Nets(Vec<IpNet>),
}

impl Peers {
    /// Merges and sorts `nets` into the canonical disjoint form.
    pub fn nets(nets: Vec<IpNet>) -> Self {
        Peers::Nets(IpNet::aggregate(&nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Peers::Any => true,
            Peers::Nets(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Peers::Nets(n) if n.is_empty())
    }
}

/// A checked `ipBlock`: `cidr` less every `except`, as disjoint prefixes. Host bits in
/// `cidr` are cleared (the API server accepts `10.0.0.1/8` and means `10.0.0.0/8`).
pub fn parse_ip_block(block: &IPBlock) -> Result<Vec<IpNet>, (String, Malformed)> {
    let cidr = parse_cidr(&block.cidr).map_err(|e| ("cidr".to_owned(), e))?;
    let mut nets = vec![cidr];
    for (i, except) in block.except.iter().flatten().enumerate() {
        let field = format!("except[{i}]");
        let hole = parse_cidr(except).map_err(|e| (field.clone(), e))?;
        // Upstream's rule: a strict subset of cidr (same family, longer prefix, inside).
        if !(cidr.contains(&hole) && hole.prefix_len() > cidr.prefix_len()) {
            let err = Malformed::ExceptOutside {
                except: except.clone(),
                cidr: block.cidr.clone(),
            };
            return Err((field, err));
        }
        nets = nets.into_iter().flat_map(|n| subtract(n, hole)).collect();
    }
    Ok(nets)
}

fn parse_cidr(s: &str) -> Result<IpNet, Malformed> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| Malformed::BadCidr(s.to_owned(), e.to_string()))
}

/// `net` less `hole`: `net` itself if they do not overlap, nothing if `hole` covers it,
/// else the sibling halves on the way down from `net` to `hole` (at most one per bit).
fn subtract(net: IpNet, hole: IpNet) -> Vec<IpNet> {
    if hole.contains(&net) {
        return Vec::new();
    }
    if !net.contains(&hole) {
        return vec![net];
    }
    let mut out = Vec::new();
    let mut cur = net;
    while cur != hole {
        let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
            break; // unreachable: cur strictly contains hole, so it can be split
        };
        let (Some(lo), Some(hi)) = (halves.next(), halves.next()) else {
            break;
        };
        let (keep, down) = if lo.contains(&hole) {
            (hi, lo)
        } else {
            (lo, hi)
        };
        out.push(keep);
        cur = down;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IPBlock {
        IPBlock {
            cidr: cidr.into(),
            except: (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn except_cuts_exactly_its_addresses() {
        let nets = Peers::nets(
            parse_ip_block(&block("10.0.0.0/8", &["10.1.0.0/16", "10.2.3.4/32"])).unwrap(),
        );
        for (addr, inside) in [
            ("10.0.0.1", true),
            ("10.0.255.255", true),
            ("10.1.0.0", false),
            ("10.1.255.255", false),
            ("10.2.0.0", true),
            ("10.2.3.3", true),
            ("10.2.3.4", false),
            ("10.2.3.5", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
        ] {
            assert_eq!(nets.contains(ip(addr)), inside, "{addr}");
        }
    }

    #[test]
    fn whole_space_less_one_host_is_one_prefix_per_bit() {
        let nets = parse_ip_block(&block("0.0.0.0/0", &["192.0.2.1/32"])).unwrap();
        assert_eq!(nets.len(), 32);
        let v6 = parse_ip_block(&block("::/0", &["2001:db8::1/128"])).unwrap();
        assert_eq!(v6.len(), 128);
    }

    #[test]
    fn host_bits_are_cleared_and_bad_blocks_refused() {
        assert_eq!(
            parse_ip_block(&block("10.0.0.1/8", &[])).unwrap(),
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert!(
            matches!(parse_ip_block(&block("10.0.0.0", &[])), Err((f, Malformed::BadCidr(..))) if f == "cidr")
        );
        assert!(matches!(
            parse_ip_block(&block("10.0.0.0/33", &[])),
            Err((_, Malformed::BadCidr(..)))
        ));
        let outside = parse_ip_block(&block("10.0.0.0/16", &["10.1.0.0/24"])).unwrap_err();
        assert!(matches!(outside, (f, Malformed::ExceptOutside { .. }) if f == "except[0]"));
        // Not strictly inside: the same prefix, or another family.
        assert!(parse_ip_block(&block("10.0.0.0/16", &["10.0.0.0/16"])).is_err());
        assert!(parse_ip_block(&block("10.0.0.0/16", &["::/64"])).is_err());
    }
}
