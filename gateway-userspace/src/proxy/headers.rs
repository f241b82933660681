//! Header hygiene between client and backend: hop-by-hop headers removed (RFC 9110 section
//! 7.6.1), X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239) set, X-Request-Id generated
//! or taken from a trusted proxy. What a client wrote is only kept when the hop that delivered
//! it is a trusted proxy; otherwise it is replaced, so a backend never sees a spoofed chain.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers that never cross a proxy.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers and every header the `Connection` header names. `Upgrade` is
/// kept (with `Connection: upgrade`) only for a WebSocket pass-through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// What the gateway knows about the hop it received a request from.
pub struct Forwarding<'a> {
    /// The resolved client address (see `client_ip`).
    pub client: IpAddr,
    /// The TCP peer (or PROXY source).
    pub peer: IpAddr,
    /// Whether `peer` is a trusted proxy whose forwarding headers we keep and extend.
    pub peer_trusted: bool,
    /// "https" or "http": how the request reached us.
    pub proto: &'static str,
    /// The request's host as the client sent it (`Host` or `:authority`).
    pub host: Option<&'a str>,
    pub request_id: &'a str,
}

/// Sets the forwarding headers for the backend.
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let for_node = forwarded_node(f.peer);
    if f.peer_trusted {
        // Extend the chain the trusted proxy sent: append the hop we received it from.
        append_list(headers, &X_FORWARDED_FOR, &f.peer.to_string());
        let mut element = format!("for={for_node};proto={}", f.proto);
        if let Some(h) = f.host {
            let _ = write!(element, ";host=\"{}\"", h.replace(['"', '\\'], ""));
        }
        append_list(headers, &header::FORWARDED, &element);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(v) = f.host.and_then(|h| HeaderValue::from_str(h).ok())
        {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    } else {
        // The client is the first hop: nothing it wrote about forwarding is believed.
        set(headers, &X_FORWARDED_FOR, &f.client.to_string());
        let mut element = format!("for={};proto={}", forwarded_node(f.client), f.proto);
        if let Some(h) = f.host {
            let _ = write!(element, ";host=\"{}\"", h.replace(['"', '\\'], ""));
        }
        set(headers, &header::FORWARDED, &element);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
        match f.host.and_then(|h| HeaderValue::from_str(h).ok()) {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST.clone(), v);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(f.request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
}

/// RFC 7239 section 6: IPv6 nodes are quoted and bracketed.
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Joins every existing value of `name` and appends `item` as one list value.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    let existing: Vec<String> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let joined = if existing.is_empty() {
        item.to_string()
    } else {
        format!("{}, {item}", existing.join(", "))
    };
    set(headers, name, &joined);
}

/// The request id: a trusted proxy's `X-Request-Id` when it is well formed, else a new one.
pub fn request_id(headers: &HeaderMap, peer_trusted: bool) -> String {
    if peer_trusted
        && let Some(v) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return v.to_string();
    }
    new_request_id()
}

/// 128 random bits, hex.
pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    // getrandom only fails without an entropy source; a fixed id then is better than a panic.
    let _ = getrandom::fill(&mut b);
    b.iter().fold(String::with_capacity(32), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, hv("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", hv("1"));
        h.insert("keep-alive", hv("timeout=5"));
        h.insert(header::TE, hv("trailers"));
        h.insert(header::TRANSFER_ENCODING, hv("chunked"));
        h.insert(header::UPGRADE, hv("websocket"));
        h.insert("x-kept", hv("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, hv("Upgrade"));
        h.insert(header::UPGRADE, hv("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn untrusted_peer_gets_its_forwarding_headers_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, hv("6.6.6.6"));
        h.insert(header::FORWARDED, hv("for=6.6.6.6"));
        h.insert(&X_FORWARDED_PROTO, hv("https"));
        h.insert(&X_REQUEST_ID, hv("spoofed"));
        let f = Forwarding {
            client: "192.0.2.1".parse().unwrap(),
            peer: "192.0.2.1".parse().unwrap(),
            peer_trusted: false,
            proto: "http",
            host: Some("api.example.com"),
            request_id: "abc",
        };
        set_forwarding(&mut h, &f);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.1;proto=http;host=\"api.example.com\""
        );
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[&X_REQUEST_ID], "abc");
    }

    #[test]
    fn trusted_peer_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, hv("203.0.113.9"));
        h.append(&X_FORWARDED_FOR, hv("10.0.0.2"));
        let f = Forwarding {
            client: "203.0.113.9".parse().unwrap(),
            peer: "2001:db8::7".parse().unwrap(),
            peer_trusted: true,
            proto: "https",
            host: None,
            request_id: "r",
        };
        set_forwarding(&mut h, &f);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.0.0.2, 2001:db8::7");
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::7]\";proto=https");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, hv("lb-123"));
        assert_eq!(request_id(&h, true), "lb-123");
        assert_ne!(request_id(&h, false), "lb-123");
        h.insert(&X_REQUEST_ID, hv("bad id with spaces"));
        assert_eq!(request_id(&h, true).len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
