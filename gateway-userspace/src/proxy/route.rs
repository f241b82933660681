//! Route phase: picks the route for a request by host, path and method. Routes arrive sorted
//! by specificity from the config compiler, so the first match wins. It does not look at
//! identity or limits (later phases).

use http::Method;

use crate::config::{HostMatch, PathMatch, RouteConfig};

/// The outcome of matching.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(usize, &'a RouteConfig),
    /// A route matches host and path but not the method: 405 with these methods allowed.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

impl PartialEq for RouteMatch<'_> {
    /// Routes compare by position: the route table is fixed for a generation.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Found(a, _), Self::Found(b, _)) => a == b,
            (Self::MethodNotAllowed(a), Self::MethodNotAllowed(b)) => a == b,
            (Self::NotFound, Self::NotFound) => true,
            _ => false,
        }
    }
}

/// The host a request is for: `:authority` (h2) or `Host`, lower case, without port.
pub fn request_host(uri: &http::Uri, headers: &http::HeaderMap) -> Option<String> {
    let raw = match uri.authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = headers.get(http::header::HOST)?.to_str().ok()?;
            let a: http::uri::Authority = h.parse().ok()?;
            a.host().to_string()
        }
    };
    // Hosts are case-insensitive (RFC 9110 section 4.2.3); a trailing dot names the same host.
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn host_matches(patterns: &[HostMatch], host: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    patterns.iter().any(|p| match p {
        HostMatch::Exact(h) => h == host,
        HostMatch::Suffix(s) => {
            host.len() > s.len()
                && host.ends_with(s.as_str())
                && !host[..host.len() - s.len()].contains('.')
        }
    })
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            if p == "/" {
                return true;
            }
            let p = p.trim_end_matches('/');
            // At a segment boundary: /api matches /api and /api/x, never /apix.
            path == p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
        }
    }
}

/// Methods a route without a `methods` list accepts. Anything else (TRACE, WebDAV and RTSP
/// methods, made-up tokens) must be listed by the route: an API gateway has no reason to pass
/// methods nobody asked for. CONNECT is never routed: this is not a forward proxy.
const DEFAULT_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Matches `routes` (already in specificity order) against a request.
pub fn find<'a>(
    routes: &'a [RouteConfig],
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> RouteMatch<'a> {
    let mut allowed: Vec<Method> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if !host_matches(&r.hosts, host) || !path_matches(&r.path, path) {
            continue;
        }
        let accepts = if r.methods.is_empty() {
            DEFAULT_METHODS.contains(method)
        } else {
            r.methods.contains(method)
        };
        if accepts && method != Method::CONNECT {
            return RouteMatch::Found(i, r);
        }
        if r.methods.is_empty() {
            allowed.extend(
                DEFAULT_METHODS
                    .iter()
                    .filter(|m| !allowed.contains(m))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            continue;
        }
        for m in &r.methods {
            if !allowed.contains(m) {
                allowed.push(m.clone());
            }
        }
    }
    if allowed.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RouteTimeouts;

    fn route(name: &str, hosts: &[&str], path: PathMatch, methods: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            product: None,
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(s) => HostMatch::Suffix(s.to_string()),
                    None => HostMatch::Exact(h.to_string()),
                })
                .collect(),
            path,
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            pool: 0,
            timeouts: RouteTimeouts {
                connect: Duration::from_secs(1),
                response_headers: Duration::from_secs(1),
                total: Duration::from_secs(1),
            },
            retries: 0,
            max_body_bytes: 1024,
            websocket: false,
            auth: Default::default(),
            cors: None,
            response: None,
            validation: None,
        }
    }

    fn name<'a>(m: RouteMatch<'a>) -> &'a str {
        match m {
            RouteMatch::Found(_, r) => &r.name,
            RouteMatch::MethodNotAllowed(_) => "405",
            RouteMatch::NotFound => "404",
        }
    }

    #[test]
    fn hosts_paths_and_methods() {
        let routes = vec![
            route(
                "exact",
                &["api.example.com"],
                PathMatch::Exact("/health".into()),
                &[],
            ),
            route(
                "write",
                &["api.example.com"],
                PathMatch::Prefix("/orders".into()),
                &["POST"],
            ),
            route(
                "read",
                &["api.example.com"],
                PathMatch::Prefix("/orders".into()),
                &["GET"],
            ),
            route(
                "wild",
                &["*.example.net"],
                PathMatch::Prefix("/".into()),
                &[],
            ),
            route("any", &[], PathMatch::Prefix("/public/".into()), &[]),
        ];
        let get = Method::GET;
        assert_eq!(
            name(find(&routes, Some("api.example.com"), "/health", &get)),
            "exact"
        );
        assert_eq!(
            name(find(
                &routes,
                Some("api.example.com"),
                "/orders/7",
                &Method::POST
            )),
            "write"
        );
        assert_eq!(
            name(find(&routes, Some("api.example.com"), "/orders", &get)),
            "read"
        );
        assert_eq!(
            name(find(&routes, Some("api.example.com"), "/ordersx", &get)),
            "404"
        );
        assert_eq!(
            find(&routes, Some("api.example.com"), "/orders", &Method::DELETE),
            RouteMatch::MethodNotAllowed(vec![Method::POST, Method::GET])
        );
        assert_eq!(
            name(find(&routes, Some("x.example.net"), "/anything", &get)),
            "wild"
        );
        assert_eq!(
            name(find(&routes, Some("a.b.example.net"), "/anything", &get)),
            "404"
        );
        assert_eq!(name(find(&routes, Some("example.net"), "/x", &get)), "404");
        assert_eq!(name(find(&routes, None, "/public/x", &get)), "any");
        assert_eq!(
            name(find(&routes, Some("other.test"), "/public/x", &get)),
            "any"
        );
        // Methods outside the default set need a route that lists them; CONNECT never routes.
        let announce = Method::from_bytes(b"ANNOUNCE").unwrap();
        assert_eq!(name(find(&routes, None, "/public/x", &announce)), "405");
        assert_eq!(
            name(find(&routes, None, "/public/x", &Method::CONNECT)),
            "405"
        );
        let listed = vec![route(
            "dav",
            &[],
            PathMatch::Prefix("/".into()),
            &["PROPFIND", "CONNECT"],
        )];
        assert_eq!(
            name(find(
                &listed,
                None,
                "/x",
                &Method::from_bytes(b"PROPFIND").unwrap()
            )),
            "dav"
        );
        assert_eq!(name(find(&listed, None, "/x", &Method::CONNECT)), "405");
    }

    #[test]
    fn host_is_normalised() {
        let uri: http::Uri = "/x".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, "API.Example.COM.:8443".parse().unwrap());
        assert_eq!(request_host(&uri, &h).as_deref(), Some("api.example.com"));
        let uri: http::Uri = "https://Api.example.com/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &http::HeaderMap::new()).as_deref(),
            Some("api.example.com")
        );
        h.insert(http::header::HOST, "bad host".parse().unwrap());
        assert_eq!(request_host(&"/".parse().unwrap(), &h), None);
    }
}
