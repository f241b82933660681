//! Compiles a route's `[routes.cors]`: allowed origins (exact, or a wildcard subdomain),
//! methods, request headers, exposed headers, credentials and the preflight cache time. The
//! checks refuse what would silently weaken CORS: `*` with credentials, the `null` origin,
//! origins with a path, a wildcard that is not a whole leading label.

use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::error::ErrorKind;
use super::proxy_compile::duration;
use super::raw::Strings;
use super::reader::{Field, Table};
use super::routes;
use super::source::Diagnostics;
use crate::proxy::cors::{CorsPolicy, OriginMatch};

/// Defaults, named once for the docs and the schema.
pub(crate) mod defaults {
    use std::time::Duration;

    /// How long browsers may cache a preflight answer.
    pub(crate) const MAX_AGE: Duration = Duration::from_secs(600);
    /// Browsers cap it anyway (Firefox at 24 h, Chromium at 2 h).
    pub(crate) const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
}

/// `[routes.cors]`.
pub(crate) struct RawCors {
    pub allowed_origins: Option<Spanned<Strings>>,
    pub allowed_methods: Field<Strings>,
    pub allowed_headers: Field<Strings>,
    pub exposed_headers: Field<Strings>,
    pub allow_credentials: Field<bool>,
    pub max_age: Field<String>,
}

impl RawCors {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            allowed_origins: t.required("allowed_origins", d),
            allowed_methods: t.value("allowed_methods", d),
            allowed_headers: t.value("allowed_headers", d),
            exposed_headers: t.value("exposed_headers", d),
            allow_credentials: t.value("allow_credentials", d),
            max_age: t.value("max_age", d),
        };
        t.finish(d);
        raw
    }
}

/// The policy; `route_methods` (the route's own list, empty for any) is the default for
/// `allowed_methods`, narrowed to GET, HEAD and POST when the route takes any method.
pub(crate) fn policy(
    raw: &RawCors,
    route_methods: &[http::Method],
    d: &mut Diagnostics,
) -> CorsPolicy {
    let credentials = raw.allow_credentials.value_or(false);
    let origins = raw.allowed_origins.as_ref().map_or_else(Vec::new, |list| {
        if list.get_ref().is_empty() {
            let kind = ErrorKind::EmptyList {
                key: "routes.cors.allowed_origins".into(),
                hint: "list the origins (`https://app.example.com`) that may call this route",
            };
            d.at(&list.span(), kind);
        }
        list.get_ref()
            .iter()
            .filter_map(|o| origin(o, credentials, d))
            .collect()
    });
    let methods = if raw.allowed_methods.present().is_some() {
        routes::methods(&raw.allowed_methods, "routes.cors.allowed_methods", d)
    } else if route_methods.is_empty() {
        vec![http::Method::GET, http::Method::HEAD, http::Method::POST]
    } else {
        route_methods.to_vec()
    };
    let max_age = duration(
        &raw.max_age,
        "routes.cors.max_age",
        defaults::MAX_MAX_AGE,
        d,
    )
    .value_or(defaults::MAX_AGE);
    CorsPolicy {
        origins,
        methods,
        headers: header_names(&raw.allowed_headers, "routes.cors.allowed_headers", d),
        expose: header_names(&raw.exposed_headers, "routes.cors.exposed_headers", d),
        credentials,
        max_age: Duration::from_secs(max_age.as_secs()),
    }
}

fn origin(o: &Spanned<String>, credentials: bool, d: &mut Diagnostics) -> Option<OriginMatch> {
    let value = o.get_ref();
    let invalid = |reason: &str, d: &mut Diagnostics| {
        let kind = ErrorKind::Invalid {
            key: "routes.cors.allowed_origins".into(),
            value: value.clone(),
            reason: reason.into(),
        };
        d.at(&o.span(), kind);
        None
    };
    if value == "*" {
        if credentials {
            return invalid(
                "`*` cannot be combined with `allow_credentials = true` (browsers refuse it, and \
                 echoing every origin with credentials would let any site act as the user); \
                 list the origins",
                d,
            );
        }
        return Some(OriginMatch::Any);
    }
    if value.eq_ignore_ascii_case("null") {
        return invalid(
            "the `null` origin is shared by sandboxed frames, local files and redirects: \
             allowing it allows all of them",
            d,
        );
    }
    let lower = value.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return invalid("expected `scheme://host[:port]`", d);
    };
    if scheme != "https" && scheme != "http" {
        return invalid("the scheme must be https or http", d);
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return invalid(
            "an origin is `scheme://host[:port]`: no path, query, user or trailing slash",
            d,
        );
    }
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = match rest.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((v6, after)) => (&rest[..v6.len() + 2], after),
            None => return invalid("an IPv6 address needs its closing `]`", d),
        },
        None => match rest.split_once(':') {
            Some((h, _)) => (h, &rest[h.len()..]),
            None => (rest, ""),
        },
    };
    let port = match port.strip_prefix(':') {
        Some(p) if p.parse::<u16>().is_ok() => format!(":{p}"),
        None if port.is_empty() => String::new(),
        _ => return invalid("the port is not a number from 0 to 65535", d),
    };
    // The default port is not part of a serialised origin (browsers omit it).
    let port = match (scheme, port.as_str()) {
        ("https", ":443") | ("http", ":80") => String::new(),
        _ => port,
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') || !suffix.contains('.') {
            return invalid(
                "a wildcard must be a whole leading label of a domain with at least two labels \
                 (`https://*.example.com`)",
                d,
            );
        }
        return Some(OriginMatch::Subdomain {
            scheme: format!("{scheme}://"),
            suffix: format!(".{suffix}"),
            port,
        });
    }
    if host.contains('*') {
        return invalid(
            "`*` is allowed alone or as the whole first label (`https://*.example.com`)",
            d,
        );
    }
    Some(OriginMatch::Exact(format!("{scheme}://{host}{port}")))
}

fn header_names(raw: &Field<Strings>, key: &str, d: &mut Diagnostics) -> Vec<HeaderName> {
    let Some(list) = raw.present() else {
        return Vec::new();
    };
    let mut out: Vec<HeaderName> = Vec::new();
    for h in list.get_ref() {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) if h.get_ref() != "*" => {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            _ => {
                let kind = ErrorKind::HeaderName {
                    key: key.into(),
                    value: h.get_ref().clone(),
                };
                d.at(&h.span(), kind);
            }
        }
    }
    out
}
