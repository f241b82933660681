//! The real client IP: the one address every rule, limit, log line and ban of a request uses.
//! This module owns deciding it from the TCP peer, the PROXY header of a trusted load balancer
//! and the `X-Forwarded-For` / `Forwarded` chain of trusted proxies. It does not read the PROXY
//! header (`super::proxy_protocol`), nor decide whether a peer may send one (the listener checks
//! `trusted.load_balancers` before passing `proxy_source`), nor write the headers sent upstream.
//!
//! The rule that makes it unspoofable: an address is believed only when the party that wrote it
//! is trusted. The TCP peer is written by the kernel; a PROXY source by a trusted load balancer;
//! a chain entry by the hop to its right, which must itself be a trusted proxy. When the chain
//! cannot be followed any further (an entry that is not an address, the end of the chain, the
//! entry limit), the answer is the last hop that was believed, never an entry further left.
//! See `docs/client-ip.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use crate::config::{ClientIpHeader, TrustedProxies};
use crate::rules::Prefix;

/// `X-Forwarded-For` (a de facto standard; the `http` crate has no constant for it).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// At most this many chain entries are examined, from the right. Real chains have a handful of
/// hops; a longer all-trusted chain stops at its 64th entry (still an address a trusted proxy
/// wrote), so a client cannot make us walk a huge header.
pub const MAX_CHAIN_ENTRIES: usize = 64;

/// Where the client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The TCP peer of the connection.
    Peer,
    /// The source address in the PROXY header of a trusted load balancer.
    ProxyProtocol,
    /// An `X-Forwarded-For` or `Forwarded` entry written by a trusted proxy.
    Header,
}

/// The resolved client address of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp {
    /// Canonical: an IPv4-mapped IPv6 address is given as IPv4, as the kernel rules see it.
    pub addr: IpAddr,
    pub origin: Origin,
}

impl ClientIp {
    /// Whether the address is vouched for: the TCP peer itself, or written by a trusted load
    /// balancer or proxy. Always true for what [`resolve`] returns, because it never returns an
    /// address that an untrusted party wrote: it stops at the last trusted hop instead. It exists
    /// so that code taking a `ClientIp` can say, and assert, what it relies on.
    pub fn vouched(&self) -> bool {
        true
    }

    /// Whether this address may go into the kernel (XDP) ban map. Only for addresses that are
    /// real packet sources: the TCP peer, or the PROXY source that a trusted load balancer
    /// completed a TCP handshake with. An address learned from an HTTP header is believed, but
    /// the packets carrying its requests come from the proxy, so the kernel can never drop them
    /// by that address: bans on it must be enforced in userspace. (A PROXY source is dropped in
    /// the kernel only where its packets arrive with that source, for example behind a load
    /// balancer that preserves client addresses, or on other gateways of a cluster; elsewhere
    /// the userspace check is what enforces it.)
    ///
    /// The ban layer must still refuse to ban infrastructure ([`is_trusted_hop`]): when the
    /// chain cannot be followed, the result is the last trusted hop, a proxy's own address.
    pub fn kernel_bannable(&self) -> bool {
        matches!(self.origin, Origin::Peer | Origin::ProxyProtocol)
    }
}

/// Whether `addr` is one of our own load balancers or proxies, an address no ban may name.
pub fn is_trusted_hop(trusted: &TrustedProxies, addr: IpAddr) -> bool {
    contains(&trusted.load_balancers, addr) || contains(&trusted.proxies, addr)
}

/// The client address of a request that arrived from `peer`.
///
/// `proxy_source` is the source address from a PROXY header; the caller passes it only when the
/// peer is in `trusted.load_balancers` (the listener refuses the header otherwise), and `None`
/// when there was no header or it carried no address (`LOCAL`, `UNKNOWN`). Nothing here checks
/// that again: this function trusts its caller for the L4 part and decides the HTTP part.
///
/// The first hop is the PROXY source, else the peer. If it is a trusted proxy and a client IP
/// header is configured, the header's chain is walked from the right: each entry was appended
/// by the hop to its right, so while that hop is trusted the entry is believed, and the first
/// entry that is not a trusted proxy is the client. An entry that is not an address (malformed,
/// `unknown`, an obfuscated identifier, empty), the end of the chain or the
/// [`MAX_CHAIN_ENTRIES`] limit stops the walk at the last believed hop.
pub fn resolve(
    peer: IpAddr,
    proxy_source: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> ClientIp {
    let first = match proxy_source {
        Some(src) => ClientIp {
            addr: src.to_canonical(),
            origin: Origin::ProxyProtocol,
        },
        None => ClientIp {
            addr: peer.to_canonical(),
            origin: Origin::Peer,
        },
    };
    // An untrusted first hop may have written any header: ignore them all.
    if !contains(&trusted.proxies, first.addr) {
        return first;
    }
    match trusted.client_ip_header {
        ClientIpHeader::None => first,
        ClientIpHeader::XForwardedFor => walk(first, xff_entries(headers), &trusted.proxies),
        ClientIpHeader::Forwarded => walk(first, forwarded_entries(headers), &trusted.proxies),
    }
}

fn contains(prefixes: &[Prefix], addr: IpAddr) -> bool {
    prefixes.iter().any(|p| p.contains(addr))
}

/// Walks `entries` (right to left, `None` for an entry that is not an address) starting from
/// the trusted hop `first`.
fn walk(
    first: ClientIp,
    entries: impl Iterator<Item = Option<IpAddr>>,
    proxies: &[Prefix],
) -> ClientIp {
    let mut believed = first;
    for entry in entries.take(MAX_CHAIN_ENTRIES) {
        // `believed` is a trusted proxy, and it appended `entry`: the address of its own peer.
        let Some(addr) = entry else {
            // It did not know (or hid) its peer: whoever is further left is unknown to us.
            return believed;
        };
        believed = ClientIp {
            addr,
            origin: Origin::Header,
        };
        if !contains(proxies, addr) {
            return believed;
        }
    }
    believed
}

/// The `X-Forwarded-For` entries, right to left: every field line in order, each a
/// comma-separated list (lines combine into one list, RFC 9110 §5.3).
fn xff_entries(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
        .map(xff_entry)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:80`), IPv6 bare or in brackets. Anything else, the empty entry included, is
/// not an address: an empty entry is a hop that did not know its peer, so skipping it (as RFC
/// 9110 §5.6.1 allows for lists in general) would credit the next entry to the wrong writer.
fn xff_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(trim_ows(raw)).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if s.starts_with('[') {
        return bracketed_v6(s, false);
    }
    // `a.b.c.d:port`; a bare IPv6 address with a port is ambiguous and must be bracketed.
    let (host, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `[v6]` or `[v6]:port`; with `obfuscated_port`, also RFC 7239 §6's `[v6]:_obfport`.
fn bracketed_v6(s: &str, obfuscated_port: bool) -> Option<IpAddr> {
    let inner = s.strip_prefix('[')?;
    let (addr, rest) = inner.split_once(']')?;
    let port_ok = match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => is_port(port) || (obfuscated_port && is_obfuscated(port)),
    };
    if !port_ok {
        return None;
    }
    addr.parse::<Ipv6Addr>()
        .ok()
        .map(|a| IpAddr::V6(a).to_canonical())
}

/// RFC 7239 §6: `port = 1*5DIGIT`.
fn is_port(s: &str) -> bool {
    (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// RFC 7239 §6.3: `"_" 1*(ALPHA / DIGIT / "." / "_" / "-")`.
fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Optional whitespace (RFC 9110 §5.6.3) around list elements.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The `for=` values of the `Forwarded` elements (RFC 7239 §4), right to left. Each field line
/// is split into elements by the commas outside quoted strings, so a client's unbalanced quote
/// swallows the rest of its own line (which then reads as one malformed element) and never
/// reaches into a line a proxy added.
fn forwarded_entries(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(FORWARDED)
        .iter()
        .rev()
        .flat_map(|line| split_unquoted(line.as_bytes(), b',').into_iter().rev())
        .map(forwarded_element)
}

/// Splits at `sep` outside quoted strings (RFC 9110 §5.6.4: `"` ... `"` with `\` escapes). An
/// unterminated quoted string runs to the end of the input.
fn split_unquoted(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The client address in one `Forwarded` element: its `for` parameter if that is an address,
/// `None` if the element is malformed, has no `for` or more than one (RFC 7239 §4: "MUST NOT
/// occur more than once"), or names `unknown` or an obfuscated node (§6).
fn forwarded_element(element: &[u8]) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_unquoted(trim_ows(element), b';') {
        // `[ forwarded-pair ] *( ";" [ forwarded-pair ] )`: empty pairs are allowed. Spaces
        // around a pair are not in the grammar but harmless to accept.
        let pair = trim_ows(pair);
        if pair.is_empty() {
            continue;
        }
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], value(&pair[eq + 1..])?);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        // §4: parameter names are case-insensitive.
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return None;
            }
            node = Some(value);
        }
    }
    forwarded_node(&node?)
}

/// `value = token / quoted-string` (RFC 7239 §4), unescaped.
fn value(raw: &[u8]) -> Option<String> {
    let Some(inner) = raw.strip_prefix(b"\"") else {
        if raw.is_empty() || !raw.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        return String::from_utf8(raw.to_vec()).ok();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => {
                // The closing quote must end the value.
                if bytes.next().is_some() {
                    return None;
                }
                return String::from_utf8(out).ok();
            }
            _ => out.push(b),
        }
    }
    None
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 7239 §6 `node = nodename [ ":" node-port ]`: IPv4, `[IPv6]` (brackets required), with an
/// optional real or obfuscated port. `unknown` and obfuscated names are not addresses.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    if node.starts_with('[') {
        return bracketed_v6(node, true);
    }
    let host = match node.split_once(':') {
        Some((host, port)) if is_port(port) || is_obfuscated(port) => host,
        Some(_) => return None,
        None => node,
    };
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Proxies in 10.0.0.0/8 and fd00::/8; the load balancer in 192.168.0.0/16.
    fn trusted(header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies {
            load_balancers: vec!["192.168.0.0/16".parse().unwrap()],
            proxies: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            client_ip_header: header,
        }
    }

    fn headers(name: &HeaderName, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for l in lines {
            map.append(name, HeaderValue::from_str(l).unwrap());
        }
        map
    }

    fn xff(peer: &str, lines: &[&str]) -> ClientIp {
        resolve(
            ip(peer),
            None,
            &headers(&X_FORWARDED_FOR, lines),
            &trusted(ClientIpHeader::XForwardedFor),
        )
    }

    fn fwd(peer: &str, lines: &[&str]) -> ClientIp {
        resolve(
            ip(peer),
            None,
            &headers(&FORWARDED, lines),
            &trusted(ClientIpHeader::Forwarded),
        )
    }

    fn header(s: &str) -> ClientIp {
        ClientIp {
            addr: ip(s),
            origin: Origin::Header,
        }
    }

    fn peer(s: &str) -> ClientIp {
        ClientIp {
            addr: ip(s),
            origin: Origin::Peer,
        }
    }

    #[test]
    fn untrusted_peer_ignores_every_header() {
        for lines in [&["1.1.1.1"][..], &["1.1.1.1, 10.0.0.1"], &[]] {
            assert_eq!(xff("203.0.113.9", lines), peer("203.0.113.9"));
        }
        assert_eq!(fwd("203.0.113.9", &["for=1.1.1.1"]), peer("203.0.113.9"));
    }

    #[test]
    fn no_client_ip_header_means_the_first_hop() {
        let got = resolve(
            ip("10.0.0.1"),
            None,
            &headers(&X_FORWARDED_FOR, &["1.1.1.1"]),
            &trusted(ClientIpHeader::None),
        );
        assert_eq!(got, peer("10.0.0.1"));
        // The configured header is the only one read.
        let got = resolve(
            ip("10.0.0.1"),
            None,
            &headers(&FORWARDED, &["for=1.1.1.1"]),
            &trusted(ClientIpHeader::XForwardedFor),
        );
        assert_eq!(got, peer("10.0.0.1"));
    }

    #[test]
    fn xff_walks_from_the_right_past_trusted_proxies() {
        assert_eq!(xff("10.0.0.1", &["1.1.1.1"]), header("1.1.1.1"));
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6, 1.1.1.1, 10.0.0.3,10.0.0.2"]),
            header("1.1.1.1")
        );
        // Tabs and spaces around entries.
        assert_eq!(
            xff("10.0.0.1", &[" \t1.1.1.1 \t, 10.0.0.2 "]),
            header("1.1.1.1")
        );
        // Several field lines form one list, in order (RFC 9110 §5.3).
        assert_eq!(
            xff("10.0.0.1", &["6.6.6.6", "1.1.1.1, 10.0.0.3", "10.0.0.2"]),
            header("1.1.1.1")
        );
        assert_eq!(xff("10.0.0.1", &[]), peer("10.0.0.1"));
    }

    #[test]
    fn xff_strips_ports_and_canonicalises() {
        assert_eq!(xff("10.0.0.1", &["1.2.3.4:5678"]), header("1.2.3.4"));
        assert_eq!(
            xff("10.0.0.1", &["[2001:db8::1]:80"]),
            header("2001:db8::1")
        );
        assert_eq!(xff("10.0.0.1", &["[2001:db8::1]"]), header("2001:db8::1"));
        assert_eq!(xff("10.0.0.1", &["2001:DB8::1"]), header("2001:db8::1"));
        assert_eq!(xff("10.0.0.1", &["::ffff:1.2.3.4"]), header("1.2.3.4"));
        assert_eq!(xff("10.0.0.1", &["[::ffff:1.2.3.4]:9"]), header("1.2.3.4"));
        // A mapped trusted proxy is a trusted proxy.
        assert_eq!(
            xff("10.0.0.1", &["1.2.3.4, ::ffff:10.9.9.9"]),
            header("1.2.3.4")
        );
        // The peer itself, as a mapped address, is canonicalised too.
        assert_eq!(xff("::ffff:10.0.0.1", &["1.2.3.4"]), header("1.2.3.4"));
        assert_eq!(xff("::ffff:203.0.113.9", &["1.2.3.4"]), peer("203.0.113.9"));
        // IPv6 proxies.
        assert_eq!(
            xff("fd00::1", &["1.2.3.4, [fd00::2]:443"]),
            header("1.2.3.4")
        );
    }

    #[test]
    fn xff_stops_at_the_last_believed_hop_on_a_bad_entry() {
        // The bad entry was written by 10.0.0.2 (believed); what is left of it is not.
        for bad in [
            "unknown",
            "_hidden",
            "",
            "1.2.3.4:port",
            "2001:db8::1:80:x",
            "1.2.3.4:123456",
            "[2001:db8::1",
            "[1.2.3.4]",
            "01.2.3.4",
            "fe80::1%eth0",
            "1.2.3.4 5.6.7.8",
            "\"1.2.3.4\"",
        ] {
            let line = format!("6.6.6.6, {bad}, 10.0.0.2");
            assert_eq!(xff("10.0.0.1", &[&line]), header("10.0.0.2"), "{bad:?}");
        }
        // Straight after the peer: the peer is the answer.
        assert_eq!(xff("10.0.0.1", &["6.6.6.6, unknown"]), peer("10.0.0.1"));
        assert_eq!(xff("10.0.0.1", &["6.6.6.6,"]), peer("10.0.0.1"));
        // Non-UTF-8 bytes in an entry.
        let mut map = HeaderMap::new();
        map.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"6.6.6.6, \xff1.2.3.4").unwrap(),
        );
        let got = resolve(
            ip("10.0.0.1"),
            None,
            &map,
            &trusted(ClientIpHeader::XForwardedFor),
        );
        assert_eq!(got, peer("10.0.0.1"));
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost_entry() {
        assert_eq!(xff("10.0.0.1", &["10.0.0.3, 10.0.0.2"]), header("10.0.0.3"));
    }

    #[test]
    fn chain_walk_is_limited_to_64_entries() {
        let trusted_chain = vec!["10.0.0.7"; MAX_CHAIN_ENTRIES].join(", ");
        let line = format!("1.1.1.1, {trusted_chain}");
        assert_eq!(xff("10.0.0.1", &[&line]), header("10.0.0.7"));
        let line = format!(
            "1.1.1.1, {}",
            vec!["10.0.0.7"; MAX_CHAIN_ENTRIES - 1].join(", ")
        );
        assert_eq!(xff("10.0.0.1", &[&line]), header("1.1.1.1"));
    }

    #[test]
    fn proxy_protocol_source_is_the_first_hop() {
        let t = trusted(ClientIpHeader::XForwardedFor);
        let spoof = headers(&X_FORWARDED_FOR, &["1.1.1.1"]);
        let got = resolve(ip("192.168.1.1"), Some(ip("203.0.113.5")), &spoof, &t);
        assert_eq!(
            got,
            ClientIp {
                addr: ip("203.0.113.5"),
                origin: Origin::ProxyProtocol
            }
        );
        assert!(got.kernel_bannable() && got.vouched());
        // Behind the load balancer sits a trusted proxy (a CDN edge, say): walk its header.
        let got = resolve(ip("192.168.1.1"), Some(ip("::ffff:10.1.1.1")), &spoof, &t);
        assert_eq!(got, header("1.1.1.1"));
        assert!(!got.kernel_bannable() && got.vouched());
        // A load balancer is not a proxy: its own address does not make headers believed.
        let got = resolve(ip("192.168.1.1"), None, &spoof, &t);
        assert_eq!(got, peer("192.168.1.1"));
        assert!(is_trusted_hop(&t, ip("192.168.1.1")) && is_trusted_hop(&t, ip("10.0.0.9")));
        assert!(!is_trusted_hop(&t, ip("1.1.1.1")));
    }

    #[test]
    fn forwarded_rfc7239_examples() {
        // §7.1 and §4.
        assert_eq!(fwd("10.0.0.1", &["for=\"_gazonk\""]), peer("10.0.0.1"));
        assert_eq!(
            fwd("10.0.0.1", &["For=\"[2001:db8:cafe::17]:4711\""]),
            header("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            header("192.0.2.60")
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=192.0.2.43, for=198.51.100.17"]),
            header("198.51.100.17")
        );
        assert_eq!(
            fwd(
                "10.0.0.1",
                &["for=192.0.2.43, for=\"[2001:db8:cafe::17]\", for=unknown"]
            ),
            peer("10.0.0.1")
        );
        // §7.4: the transition from X-Forwarded-For to Forwarded gives the same answer.
        assert_eq!(
            xff("10.0.0.1", &["192.0.2.43, 2001:db8:cafe::17"]),
            header("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=192.0.2.43, for=\"[2001:db8:cafe::17]\""]),
            header("2001:db8:cafe::17")
        );
        // Obfuscated ports (§6.3) still give the address.
        assert_eq!(
            fwd("10.0.0.1", &["for=\"192.0.2.43:_p1\""]),
            header("192.0.2.43")
        );
        assert_eq!(
            fwd("10.0.0.1", &["for=\"[::ffff:192.0.2.43]:80\""]),
            header("192.0.2.43")
        );
    }

    #[test]
    fn forwarded_walks_past_trusted_and_handles_quoting() {
        assert_eq!(
            fwd(
                "10.0.0.1",
                &[
                    "for=6.6.6.6",
                    "for=1.1.1.1;by=10.0.0.3, for=\"[fd00::3]:1\";proto=https"
                ]
            ),
            header("1.1.1.1")
        );
        // Commas and semicolons inside quoted strings do not split.
        assert_eq!(
            fwd("10.0.0.1", &["for=1.1.1.1;ext=\"a,b;c\\\"d\""]),
            header("1.1.1.1")
        );
        // A client's unbalanced quote swallows the rest of its own line only.
        assert_eq!(
            fwd("10.0.0.1", &["for=\"6.6.6.6", "for=1.1.1.1"]),
            header("1.1.1.1")
        );
    }

    #[test]
    fn forwarded_stops_on_malformed_elements() {
        for bad in [
            "for=1.1.1.1;for=2.2.2.2",
            "by=10.0.0.3",
            "for=2001:db8::1",
            "for=\"2001:db8::1\"",
            "for=1.1.1.1:80",
            "for=\"1.1.1.1\"x",
            "for=\"1.1.1.1",
            "for=",
            "f r=1.1.1.1",
            "=1.1.1.1",
            "for=\"1.1.1.1:_\"",
            "for=\"[2001:db8::1]:http\"",
            "for",
            "",
            "for=UNKNOWN",
        ] {
            let lines = ["for=6.6.6.6", bad, "for=10.0.0.2"];
            assert_eq!(fwd("10.0.0.1", &lines), header("10.0.0.2"), "{bad:?}");
        }
    }

    #[test]
    fn only_peer_and_proxy_addresses_reach_the_kernel() {
        assert!(peer("1.1.1.1").kernel_bannable());
        assert!(
            ClientIp {
                addr: ip("1.1.1.1"),
                origin: Origin::ProxyProtocol
            }
            .kernel_bannable()
        );
        assert!(!header("1.1.1.1").kernel_bannable());
        assert!(header("1.1.1.1").vouched());
    }

    // ---- The key property: nothing a client writes can become its address ----

    fn is_proxy(a: IpAddr) -> bool {
        contains(&trusted(ClientIpHeader::XForwardedFor).proxies, a)
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        ]
    }

    fn proxy_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
            any::<[u8; 15]>().prop_map(|rest| {
                let mut o = [0xfd; 16];
                o[1..].copy_from_slice(&rest);
                IpAddr::from(o)
            }),
        ]
    }

    fn client_ip() -> impl Strategy<Value = IpAddr> {
        any_ip().prop_filter("not a proxy", |a| !is_proxy(*a))
    }

    /// An address as some X-Forwarded-For writer spells it (choice picks the spelling).
    fn xff_text(a: IpAddr, choice: u8, port: u16) -> String {
        match (a, choice % 4) {
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), 2) => format!("{}", v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), 2) => format!("[{v6}]"),
            _ => a.to_string(),
        }
    }

    /// The same, as a `Forwarded` element.
    fn forwarded_text(a: IpAddr, choice: u8, port: u16) -> String {
        let node = match (a, choice % 3) {
            (IpAddr::V4(v4), 0) => return format!("for={v4}"),
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), _) => format!("[{}]", v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), _) => format!("[{v6}]"),
        };
        if choice.is_multiple_of(2) {
            format!("for=\"{node}\";proto=https")
        } else {
            format!("by=x;For=\"{node}\"")
        }
    }

    /// What a client may write: any header-safe text, weighted towards the pieces our parser
    /// cares about (addresses, trusted addresses, quotes, brackets, separators).
    fn client_garbage() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[ -~\t]{0,12}",
            any_ip().prop_map(|a| a.to_string()),
            proxy_ip().prop_map(|a| a.to_string()),
            proxy_ip().prop_map(|a| format!("for=\"[{a}]\"")),
            any_ip().prop_map(|a| format!("for={a}")),
            Just(",".to_string()),
            Just(";".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("[".to_string()),
            Just("unknown".to_string()),
            Just("for=".to_string()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
    }

    fn value_ok(s: &str) -> bool {
        HeaderValue::from_str(s).is_ok()
    }

    proptest! {
        /// [client garbage..., real client, trusted proxies...] with the peer a trusted proxy:
        /// the answer is the real client, whatever the garbage. In X-Forwarded-For nothing the
        /// client writes can hide a comma, so the garbage may share the proxies' line.
        #[test]
        fn xff_client_cannot_spoof(
            garbage in proptest::collection::vec(client_garbage(), 0..3),
            same_line in any::<bool>(),
            real in client_ip(),
            hops in proptest::collection::vec((proxy_ip(), any::<u8>(), any::<u16>()), 0..5),
            style in any::<u8>(),
            port in any::<u16>(),
            peer_addr in proxy_ip(),
        ) {
            prop_assume!(garbage.iter().all(|g| value_ok(g)));
            let mut chain = vec![xff_text(real, style, port)];
            chain.extend(hops.iter().map(|(h, s, p)| xff_text(*h, *s, *p)));
            let chain = chain.join(", ");
            let mut lines = garbage.clone();
            if same_line {
                let last = lines.pop().unwrap_or_default();
                lines.push(format!("{last}, {chain}"));
            } else {
                lines.push(chain);
            }
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let got = xff(&peer_addr.to_string(), &lines);
            prop_assert_eq!(got, ClientIp { addr: real.to_canonical(), origin: Origin::Header });
        }

        /// The same for Forwarded, with the client's lines before the proxies' lines; when the
        /// garbage shares the proxies' line (where an unbalanced quote can swallow what follows),
        /// the answer is the real client or a trusted hop, never anything the client wrote.
        #[test]
        fn forwarded_client_cannot_spoof(
            garbage in proptest::collection::vec(client_garbage(), 0..3),
            same_line in any::<bool>(),
            real in client_ip(),
            hops in proptest::collection::vec((proxy_ip(), any::<u8>(), any::<u16>()), 0..5),
            style in any::<u8>(),
            port in any::<u16>(),
            peer_addr in proxy_ip(),
        ) {
            prop_assume!(garbage.iter().all(|g| value_ok(g)));
            let mut chain = vec![forwarded_text(real, style, port)];
            chain.extend(hops.iter().map(|(h, s, p)| forwarded_text(*h, *s, *p)));
            let chain = chain.join(", ");
            let mut lines = garbage.clone();
            if same_line {
                let last = lines.pop().unwrap_or_default();
                lines.push(format!("{last}, {chain}"));
            } else {
                lines.push(chain);
            }
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let got = fwd(&peer_addr.to_string(), &lines);
            if same_line {
                prop_assert!(got.addr == real.to_canonical() || is_proxy(got.addr), "{:?}", got);
            } else {
                prop_assert_eq!(got, ClientIp { addr: real.to_canonical(), origin: Origin::Header });
            }
        }

        /// An untrusted peer (or PROXY source) is the answer, whatever the headers say.
        #[test]
        fn untrusted_first_hop_is_final(
            garbage in proptest::collection::vec(client_garbage(), 0..4),
            first in client_ip(),
            via_proxy_protocol in any::<bool>(),
            forwarded in any::<bool>(),
        ) {
            prop_assume!(garbage.iter().all(|g| value_ok(g)));
            let mut map = HeaderMap::new();
            for g in &garbage {
                let v = HeaderValue::from_str(g).unwrap();
                map.append(X_FORWARDED_FOR, v.clone());
                map.append(FORWARDED, v);
            }
            let header = if forwarded { ClientIpHeader::Forwarded } else { ClientIpHeader::XForwardedFor };
            let t = trusted(header);
            let (peer_addr, src, origin) = if via_proxy_protocol {
                (ip("192.168.0.1"), Some(first), Origin::ProxyProtocol)
            } else {
                (first, None, Origin::Peer)
            };
            prop_assert_eq!(
                resolve(peer_addr, src, &map, &t),
                ClientIp { addr: first.to_canonical(), origin }
            );
        }

        /// Whatever the headers, resolve does not panic, and it answers the peer itself unless
        /// some header entry was believed.
        #[test]
        fn answer_is_always_accounted_for(
            lines in proptest::collection::vec(client_garbage(), 0..4),
            peer_addr in proxy_ip(),
            forwarded in any::<bool>(),
        ) {
            prop_assume!(lines.iter().all(|g| value_ok(g)));
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let got = if forwarded { fwd(&peer_addr.to_string(), &refs) } else { xff(&peer_addr.to_string(), &refs) };
            match got.origin {
                Origin::Peer => prop_assert_eq!(got.addr, peer_addr.to_canonical()),
                Origin::Header => prop_assert!(is_proxy(got.addr) || !lines.is_empty()),
                Origin::ProxyProtocol => prop_assert!(false, "no PROXY source given"),
            }
        }
    }
}
