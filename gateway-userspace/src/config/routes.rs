//! Compiles `[[routes]]`: host patterns, paths and methods checked and normalized, pool names
//! resolved to indexes, routes sorted into match order, and routes that could never match
//! (shadowed by an earlier one) refused. `[routes.token]` compiles in [`super::token`]. Matching requests against routes is the proxy's job.

use std::cmp::Reverse;
use std::collections::HashMap;

use toml::Spanned;

use super::compile::{Names, is_valid_name};
use super::error::ErrorKind;
use super::proxy_compile::{defaults, duration, integer};
use super::proxy_model::{HostMatch, PathMatch, RouteAuth, RouteConfig, RouteTimeouts};
use super::proxy_raw::{PathMatchKind, RawRoute, RawTimeouts};
use super::reader::{Field, closest};
use super::size;
use super::source::{Diagnostics, Span};
use super::token;

/// A compiled route with what the shadowing check needs to know about its source.
struct Compiled {
    route: RouteConfig,
    header: Span,
    /// No error in the keys that decide what it matches: only such routes are compared, so
    /// one typo does not also produce a shadowing error.
    clean: bool,
}

/// The routes in match order. `pool_names` and `provider_names` are the pools' and token
/// providers' names by index (`None` where one has none); `api_keys_declared` whether
/// `[api_keys]` is written (routes may then require keys).
pub(crate) fn routes(
    raw: Vec<RawRoute>,
    pool_names: &[Option<String>],
    provider_names: &[Option<String>],
    api_keys_declared: bool,
    client_certs_offered: bool,
    d: &mut Diagnostics,
) -> Vec<RouteConfig> {
    let mut names = Names::new("route");
    let mut compiled: Vec<Compiled> = raw
        .into_iter()
        .map(|r| {
            route(
                r,
                &mut names,
                pool_names,
                provider_names,
                api_keys_declared,
                client_certs_offered,
                d,
            )
        })
        .collect();
    // Stable: routes equally specific keep their config order, which decides between them.
    compiled.sort_by_key(|c| specificity(&c.route));
    check_shadowing(&compiled, d);
    compiled.into_iter().map(|c| c.route).collect()
}

fn route(
    r: RawRoute,
    names: &mut Names,
    pool_names: &[Option<String>],
    provider_names: &[Option<String>],
    api_keys_declared: bool,
    client_certs_offered: bool,
    d: &mut Diagnostics,
) -> Compiled {
    if let Some(name) = &r.name {
        names.check(name, d);
    }
    let product = r.product.present().map(|p| {
        if !is_valid_name(p.get_ref()) {
            d.at(&p.span(), Names::new("product").malformed(p.get_ref()));
        }
        p.get_ref().clone()
    });

    let errors_before = d.error_count();
    let hosts = hosts(&r.hosts, d);
    let path_match = r.path_match.value_or(PathMatchKind::Prefix);
    let path = r.path.as_ref().map_or_else(String::new, |p| {
        if let Some(reason) = route_path_problem(p.get_ref()) {
            let kind = ErrorKind::Path {
                key: "routes.path".into(),
                value: p.get_ref().clone(),
                reason,
            };
            d.at(&p.span(), kind);
        }
        p.get_ref().clone()
    });
    let methods = methods(&r.methods, "routes.methods", d);
    let cors = r
        .cors
        .as_ref()
        .map(|c| std::sync::Arc::new(super::cors::policy(c, &methods, d)));
    let clean = d.error_count() == errors_before
        && r.path.is_some()
        && !matches!(r.hosts, Field::Invalid)
        && !matches!(r.methods, Field::Invalid)
        && !matches!(r.path_match, Field::Invalid);

    let pool = r.pool.as_ref().map_or(0, |p| pool_index(p, pool_names, d));
    let retries = integer(&r.retries, "routes.retries", (0, defaults::MAX_RETRIES), d)
        .value_or(defaults::RETRIES);
    let max_body_bytes = match r.max_body_size.present() {
        Some(s) => size::parse(s.get_ref()).unwrap_or_else(|reason| {
            let kind = ErrorKind::Size {
                key: "routes.max_body_size".into(),
                value: s.get_ref().to_string(),
                reason,
            };
            d.at(&s.span(), kind);
            defaults::MAX_BODY_BYTES
        }),
        None => defaults::MAX_BODY_BYTES,
    };
    let validation = r
        .validation
        .as_ref()
        .and_then(|v| super::validation::compile(v, &r.header, max_body_bytes, d));

    Compiled {
        route: RouteConfig {
            name: r
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.get_ref().clone()),
            product,
            hosts,
            path: match path_match {
                PathMatchKind::Prefix => PathMatch::Prefix(path),
                PathMatchKind::Exact => PathMatch::Exact(path),
            },
            methods,
            pool,
            timeouts: timeouts(r.timeouts.as_ref(), d),
            retries: u32::try_from(retries).unwrap_or(0),
            max_body_bytes,
            websocket: r.websocket.value_or(false),
            auth: RouteAuth {
                token: r
                    .token
                    .as_ref()
                    .map(|t| token::route_token(t, provider_names, d)),
                api_key: match r.api_key.present() {
                    Some(flag) if *flag.get_ref() => {
                        if !api_keys_declared {
                            d.at(&flag.span(), ErrorKind::ApiKeyWithoutKeys);
                        }
                        true
                    }
                    _ => false,
                },
                client_cert: r.client_cert.as_ref().map(|c| {
                    super::client_certs::route(c, r.token.is_some(), client_certs_offered, d)
                }),
                // Filled in by `super::limits::attach` once every route is known.
                limits: None,
            },
            cors,
            response: r
                .response
                .as_ref()
                .map(|raw| std::sync::Arc::new(super::response::policy(raw, d))),
            validation,
        },
        header: r.header,
        clean,
    }
}

fn pool_index(pool: &Spanned<String>, pool_names: &[Option<String>], d: &mut Diagnostics) -> usize {
    let wanted = pool.get_ref();
    if let Some(i) = pool_names.iter().position(|n| n.as_ref() == Some(wanted)) {
        return i;
    }
    let known: Vec<String> = pool_names.iter().flatten().cloned().collect();
    let kind = ErrorKind::UnknownPool {
        name: wanted.clone(),
        suggestion: closest(wanted, known.iter().map(String::as_str)).map(str::to_owned),
        pools: known.clone(),
    };
    d.at(&pool.span(), kind);
    0
}

fn hosts(raw: &Field<Vec<Spanned<String>>>, d: &mut Diagnostics) -> Vec<HostMatch> {
    let Some(list) = raw.present() else {
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: "routes.hosts".into(),
            hint: "list at least one host, or remove the key to match any host",
        };
        d.at(&list.span(), kind);
    }
    let mut out = Vec::new();
    for h in list.get_ref() {
        match host_pattern(h.get_ref()) {
            Ok(m) if out.contains(&m) => {
                let kind = ErrorKind::Duplicate {
                    key: "routes.hosts".into(),
                    value: h.get_ref().clone(),
                };
                d.at(&h.span(), kind);
            }
            Ok(m) => out.push(m),
            Err(reason) => {
                let kind = ErrorKind::HostPattern {
                    value: h.get_ref().clone(),
                    reason,
                };
                d.at(&h.span(), kind);
            }
        }
    }
    out
}

const WILDCARD_PLACE: &str =
    "a wildcard is allowed only as the whole leftmost label, as in `*.example.com`";

/// A host as the router compares it: lower case, no port, no trailing dot.
fn host_pattern(s: &str) -> Result<HostMatch, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if !s.is_ascii() {
        return Err("it is not ASCII; write an internationalized name in its `xn--` form".into());
    }
    let host = s.to_ascii_lowercase();
    if host == "*" {
        return Err("`*` alone is not a pattern; remove `hosts` to match any host".into());
    }
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                Ok(HostMatch::Exact(host.clone()))
            }
            Some((_, port)) if port.starts_with(':') => Err(format!(
                "hosts are matched without a port; write `{}`",
                &host[..host.len() - port.len()]
            )),
            _ => Err("it is not an IPv6 address in brackets, such as `[2001:db8::1]`".into()),
        };
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        return Err(
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                format!("hosts are matched without a port; write `{name}`")
            } else {
                "it contains `:`".into()
            },
        );
    }
    if host.ends_with('.') {
        return Err(format!(
            "write it without the trailing dot, as `{}`",
            host.trim_end_matches('.')
        ));
    }
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host.as_str(), false),
    };
    if name.contains('*') {
        return Err(WILDCARD_PLACE.into());
    }
    if let Some(problem) = dns_name_problem(name) {
        return Err(format!("the name {problem}"));
    }
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(host)
    })
}

/// What makes `name` unusable as a host name, phrased to follow "the name" or "the host";
/// `None` when it is fine. Letters, digits, `-` and `_` (seen in internal names), labels of 1
/// to 63 characters not starting or ending with `-`, 253 characters at most (RFC 1035).
pub(crate) fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!("contains `{c}`"));
    }
    if name.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label".into());
        }
        if label.len() > 63 {
            return Some("has a label longer than 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("has a label that starts or ends with `-`".into());
        }
    }
    None
}

/// Request paths arrive ASCII (RFC 3986 percent-encodes the rest); a route path that could
/// never equal one is a mistake.
fn path_chars_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("it must start with `/`")
    } else if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        Some("it contains a space or control character")
    } else if !path.is_ascii() {
        Some("it contains a character that is not ASCII; write it percent-encoded")
    } else if path.contains('#') {
        Some("it contains `#`, which never reaches a server")
    } else {
        None
    }
}

fn route_path_problem(path: &str) -> Option<&'static str> {
    path_chars_problem(path).or_else(|| {
        path.contains('?')
            .then_some("it contains `?`: routes match the path alone, without the query")
    })
}

/// A health check path may carry a query; it must be a request target the prober can send.
pub(crate) fn health_path_problem(path: &str) -> Option<&'static str> {
    path_chars_problem(path).or_else(|| {
        path.parse::<http::uri::PathAndQuery>()
            .is_err()
            .then_some("it is not a valid request target")
    })
}

/// RFC 9110 section 5.6.2: `tchar`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// HTTP methods, upper-cased, for `key`; absent is empty (any method).
pub(crate) fn methods(
    raw: &Field<Vec<Spanned<String>>>,
    key: &str,
    d: &mut Diagnostics,
) -> Vec<http::Method> {
    let Some(list) = raw.present() else {
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        let kind = ErrorKind::EmptyList {
            key: key.into(),
            hint: "list at least one method, or remove the key to match any method",
        };
        d.at(&list.span(), kind);
    }
    let mut out: Vec<http::Method> = Vec::new();
    for m in list.get_ref() {
        let upper = m.get_ref().to_ascii_uppercase();
        let method = is_token(&upper)
            .then(|| http::Method::from_bytes(upper.as_bytes()).ok())
            .flatten();
        match method {
            None => {
                let kind = ErrorKind::Method {
                    key: key.into(),
                    value: m.get_ref().clone(),
                };
                d.at(&m.span(), kind);
            }
            Some(method) if out.contains(&method) => {
                let kind = ErrorKind::Duplicate {
                    key: key.into(),
                    value: m.get_ref().clone(),
                };
                d.at(&m.span(), kind);
            }
            Some(method) => out.push(method),
        }
    }
    out
}

fn timeouts(raw: Option<&RawTimeouts>, d: &mut Diagnostics) -> RouteTimeouts {
    let default = RouteTimeouts {
        connect: defaults::CONNECT_TIMEOUT,
        response_headers: defaults::RESPONSE_HEADERS_TIMEOUT,
        total: defaults::TOTAL_TIMEOUT,
    };
    let Some(raw) = raw else {
        return default;
    };
    let connect = duration(
        &raw.connect,
        "routes.timeouts.connect",
        defaults::MAX_CONNECT_TIMEOUT,
        d,
    );
    let response_headers = duration(
        &raw.response_headers,
        "routes.timeouts.response_headers",
        defaults::MAX_RESPONSE_HEADERS_TIMEOUT,
        d,
    );
    let total = duration(
        &raw.total,
        "routes.timeouts.total",
        defaults::MAX_TOTAL_TIMEOUT,
        d,
    );
    let t = RouteTimeouts {
        connect: connect.value_or(default.connect),
        response_headers: response_headers.value_or(default.response_headers),
        total: total.value_or(default.total),
    };
    let invalid = |f: &Field<_>| matches!(f, Field::Invalid);
    if t.total < t.response_headers && !invalid(&total) && !invalid(&response_headers) {
        // At whichever of the two is written (one must be, or the defaults would conflict).
        let span = total
            .present()
            .or(response_headers.present())
            .map(|s| s.span())
            .unwrap_or_default();
        let kind = ErrorKind::DurationOrder {
            key: "routes.timeouts.total".into(),
            value: t.total,
            relation: "at least",
            other: "routes.timeouts.response_headers".into(),
            other_value: t.response_headers,
        };
        d.at(&span, kind);
    }
    t
}

/// Match order, most specific first: exact host before wildcard before any host; exact path
/// before longer prefix before shorter. A route with several hosts ranks by its most
/// specific one.
fn specificity(r: &RouteConfig) -> (u8, u8, Reverse<usize>) {
    let host = if r.hosts.is_empty() {
        2
    } else if r.hosts.iter().any(|h| matches!(h, HostMatch::Exact(_))) {
        0
    } else {
        1
    };
    let (path, len) = match &r.path {
        PathMatch::Exact(_) => (0, 0),
        PathMatch::Prefix(p) => (1, p.len()),
    };
    (host, path, Reverse(len))
}

/// Refuses a route that an earlier one (in match order) makes unreachable: the same hosts and
/// path (and path_match), with methods that include all of its methods. Routes with the same
/// hosts and path sort together in config order, so "earlier" is also earlier in the file.
fn check_shadowing(routes: &[Compiled], d: &mut Diagnostics) {
    let mut groups: HashMap<(Vec<String>, &PathMatch), Vec<&Compiled>> = HashMap::new();
    for c in routes.iter().filter(|c| c.clean) {
        let mut hosts: Vec<String> = c
            .route
            .hosts
            .iter()
            .map(|h| match h {
                HostMatch::Exact(s) => format!("={s}"),
                HostMatch::Suffix(s) => format!("*{s}"),
            })
            .collect();
        hosts.sort();
        let earlier = groups.entry((hosts, &c.route.path)).or_default();
        let covers = |e: &Compiled| {
            e.route.methods.is_empty()
                || (!c.route.methods.is_empty()
                    && c.route.methods.iter().all(|m| e.route.methods.contains(m)))
        };
        if let Some(by) = earlier.iter().find(|e| covers(e)) {
            let kind = ErrorKind::Shadowed {
                route: c.route.name.clone(),
                by: by.route.name.clone(),
                line: d.source().location(by.header.start).line,
            };
            d.at(&c.header, kind);
        }
        earlier.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let ok = |s| host_pattern(s).expect(s);
        assert_eq!(
            ok("API.Example.com"),
            HostMatch::Exact("api.example.com".into())
        );
        assert_eq!(
            ok("*.Example.com"),
            HostMatch::Suffix(".example.com".into())
        );
        assert_eq!(ok("10.0.0.1"), HostMatch::Exact("10.0.0.1".into()));
        assert_eq!(
            ok("[2001:DB8::1]"),
            HostMatch::Exact("[2001:db8::1]".into())
        );
        assert_eq!(
            ok("svc_a.internal"),
            HostMatch::Exact("svc_a.internal".into())
        );
        let err = |s: &str| host_pattern(s).expect_err(s);
        assert_eq!(err(""), "it is empty");
        assert_eq!(
            err("*"),
            "`*` alone is not a pattern; remove `hosts` to match any host"
        );
        assert_eq!(err("*.*.example.com"), WILDCARD_PLACE);
        assert_eq!(err("api.*.com"), WILDCARD_PLACE);
        assert_eq!(err("*api.example.com"), WILDCARD_PLACE);
        assert_eq!(
            err("api.example.com:443"),
            "hosts are matched without a port; write `api.example.com`"
        );
        assert_eq!(
            err("[::1]:443"),
            "hosts are matched without a port; write `[::1]`"
        );
        assert_eq!(err("a:b"), "it contains `:`");
        assert_eq!(
            err("[nope]"),
            "it is not an IPv6 address in brackets, such as `[2001:db8::1]`"
        );
        assert_eq!(
            err("example.com."),
            "write it without the trailing dot, as `example.com`"
        );
        assert_eq!(err("a..b"), "the name has an empty label");
        assert_eq!(
            err("-a.b"),
            "the name has a label that starts or ends with `-`"
        );
        assert_eq!(err("a b"), "the name contains ` `");
        assert_eq!(
            err("bücher.de"),
            "it is not ASCII; write an internationalized name in its `xn--` form"
        );
        assert_eq!(
            err(&"a".repeat(64)),
            "the name has a label longer than 63 characters"
        );
        assert_eq!(
            err(&["a"; 128].join(".")),
            "the name is longer than 253 characters"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(route_path_problem("/"), None);
        assert_eq!(route_path_problem("/api/v1/orders%20x"), None);
        assert_eq!(route_path_problem("api"), Some("it must start with `/`"));
        assert_eq!(route_path_problem(""), Some("it must start with `/`"));
        assert_eq!(
            route_path_problem("/a?b=1"),
            Some("it contains `?`: routes match the path alone, without the query")
        );
        assert_eq!(
            route_path_problem("/a#x"),
            Some("it contains `#`, which never reaches a server")
        );
        assert_eq!(
            route_path_problem("/a b"),
            Some("it contains a space or control character")
        );
        assert_eq!(
            route_path_problem("/é"),
            Some("it contains a character that is not ASCII; write it percent-encoded")
        );
        assert_eq!(health_path_problem("/healthz?full=1"), None);
        assert_eq!(
            health_path_problem("healthz"),
            Some("it must start with `/`")
        );
    }

    #[test]
    fn tokens() {
        assert!(is_token("GET"));
        assert!(is_token("PROPFIND"));
        assert!(is_token("X-CUSTOM_1"));
        assert!(!is_token(""));
        assert!(!is_token("GE T"));
        assert!(!is_token("GET/"));
        assert!(!is_token("\"GET\""));
    }
}
