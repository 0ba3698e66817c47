//! Reading weft's named counters back from the kernel: the JSON of `nft -j list counters
//! table ip weft`, parsed once, checked, into packets per counter name.
//!
//! Self-contained (serde only), so the fuzz target compiles this file on its own.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Why the output of `nft -j list counters` was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CountersError {
    /// Not the JSON nft writes (`{"nftables": [...]}`).
    #[error("nft -j list counters: not nft's JSON: {0}")]
    Json(String),
    /// One counter named twice: the kernel holds one object per name in a table.
    #[error("nft -j list counters: counter {0:?} listed twice")]
    Duplicate(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    nftables: Vec<Item>,
}

/// One entry of the list: the `metainfo` header, a counter, or anything else nft may add
/// in a later schema (ignored, not refused).
#[derive(Deserialize)]
struct Item {
    counter: Option<Counter>,
}

#[derive(Deserialize)]
struct Counter {
    family: String,
    table: String,
    name: String,
    packets: u64,
}

/// Packets per counter name of `table` in the `ip` family, from `nft -j list counters`.
pub fn parse_counters(json: &[u8], table: &str) -> Result<BTreeMap<String, u64>, CountersError> {
    let out: Output =
        serde_json::from_slice(json).map_err(|e| CountersError::Json(e.to_string()))?;
    let mut counters = BTreeMap::new();
    for item in out.nftables {
        let Some(c) = item.counter else { continue };
        if c.family != "ip" || c.table != table {
            continue;
        }
        if counters.insert(c.name.clone(), c.packets).is_some() {
            return Err(CountersError::Duplicate(c.name));
        }
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_output_gives_packets_per_counter_of_our_table() {
        // As nftables 1.0.6 writes it.
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"counter": {"family": "ip", "name": "deny-ingress/x/web", "table": "weft", "handle": 1, "packets": 7, "bytes": 420}}, {"counter": {"family": "ip", "name": "deny-egress/y/h0123", "table": "weft", "handle": 2, "packets": 0, "bytes": 0}}, {"counter": {"family": "inet", "name": "deny-ingress/x/web", "table": "weft", "handle": 1, "packets": 9, "bytes": 9}}]}"#;
        let c = parse_counters(json, "weft").unwrap();
        assert_eq!(
            c,
            BTreeMap::from([
                ("deny-egress/y/h0123".to_string(), 0),
                ("deny-ingress/x/web".to_string(), 7),
            ])
        );
        assert!(parse_counters(json, "other").unwrap().is_empty());
    }

    #[test]
    fn what_is_not_nft_output_is_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"nftables\": 3}",
            b"{\"nftables\": [], \"x\": 1}",
            b"{\"nftables\": [{\"counter\": {\"family\": \"ip\", \"table\": \"weft\", \"name\": \"a\", \"packets\": -1}}]}",
            b"{\"nftables\": [{\"counter\": {\"family\": \"ip\", \"table\": \"weft\", \"name\": \"a\"}}]}",
        ] {
            assert!(
                matches!(parse_counters(bad, "weft"), Err(CountersError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let twice = br#"{"nftables": [{"counter": {"family": "ip", "table": "weft", "name": "a", "packets": 1}}, {"counter": {"family": "ip", "table": "weft", "name": "a", "packets": 2}}]}"#;
        assert_eq!(
            parse_counters(twice, "weft"),
            Err(CountersError::Duplicate("a".into()))
        );
    }
}
