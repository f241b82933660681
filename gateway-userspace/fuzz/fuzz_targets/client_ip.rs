//! `client_ip::resolve` with header lines made from arbitrary bytes: it never panics, and an
//! untrusted peer (or PROXY source) is always the answer, whatever the headers say.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue, header::FORWARDED};
use libfuzzer_sys::fuzz_target;
use portcullis::config::{ClientIpHeader, TrustedProxies};
use portcullis::proxy::client_ip::{ClientIp, Origin, X_FORWARDED_FOR, resolve};

/// An address from the first bytes: IPv4 or IPv6, often inside the trusted ranges so that
/// both the trusted and the untrusted paths are explored.
fn addr(b: &[u8]) -> IpAddr {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    match at(0) % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(10, at(1), at(2), at(3))),
        1 => IpAddr::V4(Ipv4Addr::new(at(1), at(2), at(3), at(4))),
        2 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(at(1)))),
        _ => IpAddr::V6(Ipv4Addr::new(at(1), at(2), at(3), at(4)).to_ipv6_mapped()),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let (head, rest) = data.split_at(11);
    let trusted = TrustedProxies {
        load_balancers: vec!["192.168.0.0/16".parse().expect("valid prefix")],
        proxies: vec![
            "10.0.0.0/8".parse().expect("valid prefix"),
            "fd00::/8".parse().expect("valid prefix"),
        ],
        client_ip_header: match head[0] % 3 {
            0 => ClientIpHeader::XForwardedFor,
            1 => ClientIpHeader::Forwarded,
            _ => ClientIpHeader::None,
        },
    };
    let peer = addr(&head[1..6]);
    let proxy_source = (head[0] & 0x80 != 0).then(|| addr(&head[6..11]));
    // Lines separated by newlines; each goes to either header, as the client may send both.
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if which & 1 == 0 {
            X_FORWARDED_FOR
        } else {
            FORWARDED
        };
        headers.append(name, value);
    }

    let got = resolve(peer, proxy_source, &headers, &trusted);
    assert!(got.vouched());
    assert_eq!(got.kernel_bannable(), got.origin != Origin::Header);
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
    let first_is_proxy = trusted.proxies.iter().any(|p| p.contains(first.addr));
    if !first_is_proxy || trusted.client_ip_header == ClientIpHeader::None {
        assert_eq!(got, first);
    }
    if got.origin != Origin::Header {
        assert_eq!(got, first);
    }
});
