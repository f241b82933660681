//! The counter key of a request under one limit: the values of the limit's `by` parts, joined.
//! A part the request lacks (no API key, no such claim or header) reads as `-`, so such
//! requests share one budget rather than escaping the limit.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::{KeyPart, KeySpec};
use crate::identity::jwt::Claims;

/// Separates parts in a key (never in a part: parts are cleaned of control characters).
pub const SEPARATOR: char = '|';
/// What a missing part reads as.
pub const ABSENT: &str = "-";
/// Parts longer than this are replaced by their SHA-256, bounding memory per tracked key.
const MAX_PART: usize = 128;

/// What a request offers to key its counters by.
pub struct Facts<'a> {
    pub route: &'a str,
    pub product: Option<&'a str>,
    /// The API key's id (never the key itself).
    pub key_id: Option<&'a str>,
    pub claims: Option<&'a Claims>,
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
}

/// The counter key of `facts` under `spec`.
pub fn key(spec: &KeySpec, facts: &Facts<'_>) -> String {
    let mut out = String::new();
    for (i, part) in spec.parts.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        let value = match part {
            KeyPart::ApiKey => facts.key_id.map(str::to_owned),
            KeyPart::Route => Some(facts.route.to_owned()),
            KeyPart::Ip => Some(ip(facts.client, spec)),
            KeyPart::Claim(name) => facts.claims.and_then(|c| c.get(name)).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            KeyPart::Header(name) => {
                // Several copies: all of them, so adding a copy cannot select another budget.
                let values: Vec<&[u8]> = facts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                (!values.is_empty())
                    .then(|| String::from_utf8_lossy(&values.join(&b","[..])).into())
            }
        };
        out.push_str(&clean(value.as_deref().unwrap_or(ABSENT)));
    }
    out
}

fn ip(addr: IpAddr, spec: &KeySpec) -> String {
    let addr = addr.to_canonical();
    let len = match addr {
        IpAddr::V4(_) => spec.ipv4_prefix,
        IpAddr::V6(_) => spec.ipv6_prefix,
    };
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if len >= full {
        return addr.to_string();
    }
    IpNet::new(addr, len).map_or_else(|_| addr.to_string(), |n| n.trunc().to_string())
}

/// A part as stored: no separator or control characters, bounded in length.
fn clean(value: &str) -> String {
    let escaped: String = value
        .chars()
        .map(|c| {
            if c == SEPARATOR || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if escaped.len() <= MAX_PART {
        return escaped;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(parts: Vec<KeyPart>) -> KeySpec {
        KeySpec {
            parts,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        }
    }

    fn facts<'a>(headers: &'a HeaderMap, client: &str, key_id: Option<&'a str>) -> Facts<'a> {
        Facts {
            route: "orders",
            product: None,
            key_id,
            claims: None,
            client: client.parse().unwrap(),
            headers,
        }
    }

    #[test]
    fn parts_are_joined_and_absent_ones_shared() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "blue".parse().unwrap());
        let s = spec(vec![
            KeyPart::ApiKey,
            KeyPart::Ip,
            KeyPart::Header(http::HeaderName::from_static("x-tenant")),
            KeyPart::Route,
            KeyPart::Claim("sub".into()),
        ]);
        assert_eq!(
            key(&s, &facts(&h, "203.0.113.77", Some("acme"))),
            "acme|203.0.113.0/24|blue|orders|-"
        );
        assert_eq!(
            key(&s, &facts(&HeaderMap::new(), "2001:db8:1:2:3::9", None)),
            "-|2001:db8:1:2::/64|-|orders|-"
        );
        // An IPv4-mapped address counts as IPv4.
        assert_eq!(
            key(
                &spec(vec![KeyPart::Ip]),
                &facts(&h, "::ffff:198.51.100.9", None)
            ),
            "198.51.100.0/24"
        );
        assert_eq!(key(&spec(vec![]), &facts(&h, "192.0.2.1", None)), "");
    }

    #[test]
    fn hostile_values_stay_one_bounded_part() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "a|b".parse().unwrap());
        let s = spec(vec![KeyPart::Header(http::HeaderName::from_static(
            "x-tenant",
        ))]);
        assert_eq!(key(&s, &facts(&h, "192.0.2.1", None)), "a_b");
        h.insert("x-tenant", "x".repeat(4000).parse().unwrap());
        let k = key(&s, &facts(&h, "192.0.2.1", None));
        assert!(k.starts_with("sha256:") && k.len() == 71, "{k}");
    }
}
