//! CORS phase (Fetch standard, "CORS protocol"): for a route with `[routes.cors]` the gateway
//! answers preflight requests itself, before identity and limits (a browser sends no
//! credentials on a preflight), and adds the CORS response headers to the actual response
//! when the request's `Origin` is allowed, error responses included, so a browser can read
//! a 401 or 429 instead of seeing an opaque network error.
//!
//! Restrictive by construction: an origin, method or request header that is not allowed gets
//! a preflight answer without any CORS header (the browser then refuses the real request), and
//! an actual response to a disallowed origin carries none either. `*` is never sent with
//! credentials; allowed origins are echoed one at a time, with `Vary: Origin` so caches keep
//! answers for different origins apart. On such routes the gateway owns CORS: whatever
//! `Access-Control-*` headers the backend sent are replaced.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::respond::{Body, empty};

/// A route's CORS policy, compiled (see `config/cors.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsPolicy {
    pub origins: Vec<OriginMatch>,
    /// Methods a preflight may ask for.
    pub methods: Vec<Method>,
    /// Request headers a preflight may ask for, lower case (CORS-safelisted ones are always
    /// allowed by browsers and need not be listed).
    pub headers: Vec<HeaderName>,
    /// Response headers scripts may read beyond the safelisted ones.
    pub expose: Vec<HeaderName>,
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
}

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginMatch {
    /// Any origin (`*`); the compiler refuses it together with credentials.
    Any,
    /// `scheme://host[:port]`, lower case, default port omitted.
    Exact(String),
    /// `scheme://*.suffix[:port]`: any subdomain (one or more labels) of `suffix`, not `suffix`
    /// itself. Stored as (`scheme://`, `.suffix`, `:port` or empty).
    Subdomain {
        scheme: String,
        suffix: String,
        port: String,
    },
}

impl OriginMatch {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o == origin,
            Self::Subdomain {
                scheme,
                suffix,
                port,
            } => {
                let Some(rest) = origin.strip_prefix(scheme.as_str()) else {
                    return false;
                };
                let Some(host) = rest.strip_suffix(port.as_str()) else {
                    return false;
                };
                // The port part must be exactly the configured one: `host` must not still
                // carry a port of its own.
                let Some(sub) = host.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                !sub.is_empty()
                    && !host.contains(':')
                    && sub
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(is_host_byte))
            }
        }
    }
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// The request's `Origin`, normalised for comparison: exactly one header, visible ASCII, lower
/// case (scheme and host are case-insensitive; an origin has no path). `None` for a missing,
/// repeated or malformed one, and for `null` (opaque origins are never allowed).
fn request_origin(headers: &HeaderMap) -> Option<(String, HeaderValue)> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    if text == "null" || text.is_empty() || text.contains([' ', ',']) {
        return None;
    }
    Some((text.to_ascii_lowercase(), value.clone()))
}

/// What a preflight asks for.
pub struct Preflight {
    origin: Option<(String, HeaderValue)>,
    pub method: Method,
    headers: Vec<String>,
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. Any other
/// `OPTIONS` is an ordinary request for the route.
pub fn preflight<B>(req: &Request<B>) -> Option<Preflight> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ORIGIN) {
        return None;
    }
    let method = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()
        .and_then(|m| Method::from_bytes(m.trim().as_bytes()).ok())?;
    let headers = req
        .headers()
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    Some(Preflight {
        origin: request_origin(req.headers()),
        method,
        headers,
    })
}

impl CorsPolicy {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.matches(origin))
    }

    /// `Access-Control-Allow-Origin`: `*` only for `Any` without credentials, else the origin.
    fn allow_origin(&self, value: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginMatch::Any) {
            HeaderValue::from_static("*")
        } else {
            value.clone()
        }
    }

    /// The gateway's answer to a preflight: 204, with the CORS headers only when origin,
    /// method and every requested header are allowed. The rule that decided is returned for
    /// the access log.
    pub fn answer_preflight(&self, p: &Preflight) -> (Response<Body>, &'static str) {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        // The answer depends on these request headers: caches must key on them.
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        let Some((origin, raw_origin)) = &p.origin else {
            return (resp, "cors:origin_invalid");
        };
        if !self.origin_allowed(origin) {
            return (resp, "cors:origin_not_allowed");
        }
        if !self.methods.contains(&p.method) {
            return (resp, "cors:method_not_allowed");
        }
        if !p
            .headers
            .iter()
            .all(|asked| safelisted(asked) || self.headers.iter().any(|a| a.as_str() == asked))
        {
            return (resp, "cors:header_not_allowed");
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(raw_origin),
        );
        if let Some(v) = join(self.methods.iter().map(Method::as_str)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = join(self.headers.iter().map(HeaderName::as_str)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age.as_secs()),
        );
        (resp, "cors:preflight")
    }

    /// The headers for the actual response to a request with these headers, if its origin is
    /// allowed; computed before the request is forwarded (its headers move on).
    pub fn for_request(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let (origin, raw) = request_origin(headers)?;
        self.origin_allowed(&origin)
            .then(|| self.allow_origin(&raw))
    }

    /// Sets the CORS headers of an actual response (removing the backend's own):
    /// `allow_origin` from [`CorsPolicy::for_request`], `None` when the origin is not allowed.
    pub fn apply(&self, allow_origin: Option<HeaderValue>, h: &mut HeaderMap) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(name);
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = allow_origin else {
            return;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = join(self.expose.iter().map(HeaderName::as_str)) {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

/// CORS-safelisted request headers (Fetch §2.2.2) a preflight may list without them being
/// configured. Their values are not inspected here: a browser only lists them in
/// `Access-Control-Request-Headers` when their values are not safelisted, and then they do need
/// to be allowed, but the common cases (`content-type: application/json`) are written in the
/// config explicitly anyway.
fn safelisted(name: &str) -> bool {
    matches!(name, "accept" | "accept-language" | "content-language")
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let list: Vec<&str> = items.collect();
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(credentials: bool) -> CorsPolicy {
        CorsPolicy {
            origins: vec![
                OriginMatch::Exact("https://app.example.com".into()),
                OriginMatch::Subdomain {
                    scheme: "https://".into(),
                    suffix: ".example.org".into(),
                    port: String::new(),
                },
            ],
            methods: vec![Method::GET, Method::POST],
            headers: vec![HeaderName::from_static("content-type")],
            expose: vec![HeaderName::from_static("x-request-id")],
            credentials,
            max_age: Duration::from_secs(600),
        }
    }

    fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method(Method::OPTIONS)
            .uri("/orders")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method);
        if let Some(h) = headers {
            b = b.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn preflight_matrix() {
        let p = policy(true);
        let cases = [
            (
                "https://app.example.com",
                "POST",
                Some("Content-Type"),
                true,
            ),
            ("HTTPS://APP.EXAMPLE.COM", "GET", None, true),
            ("https://a.example.org", "GET", None, true),
            ("https://a.b.example.org", "GET", None, true),
            ("https://example.org", "GET", None, false),
            ("https://evilexample.org", "GET", None, false),
            ("https://a.example.org:8443", "GET", None, false),
            ("http://app.example.com", "GET", None, false),
            ("https://app.example.com.evil", "GET", None, false),
            ("null", "GET", None, false),
            ("https://app.example.com", "DELETE", None, false),
            (
                "https://app.example.com",
                "POST",
                Some("content-type, x-admin"),
                false,
            ),
            ("https://app.example.com", "POST", Some("accept"), true),
        ];
        for (origin, method, headers, allowed) in cases {
            let req = preflight_req(origin, method, headers);
            let pf = preflight(&req).expect("a preflight");
            let (resp, rule) = p.answer_preflight(&pf);
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            let h = resp.headers();
            assert_eq!(
                h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                allowed,
                "{origin} {method} {headers:?}: {rule}"
            );
            if allowed {
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], origin);
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
                assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
            } else {
                assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
            }
            assert!(h[header::VARY].to_str().unwrap().contains("Origin"));
        }
    }

    #[test]
    fn only_options_with_a_requested_method_is_a_preflight() {
        let plain = Request::builder()
            .method(Method::OPTIONS)
            .header(header::ORIGIN, "https://app.example.com")
            .body(())
            .unwrap();
        assert!(preflight(&plain).is_none());
        let get = Request::builder()
            .header(header::ORIGIN, "https://app.example.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(())
            .unwrap();
        assert!(preflight(&get).is_none());
    }

    #[test]
    fn actual_responses_echo_allowed_origins_only() {
        let p = policy(false);
        let mut req = HeaderMap::new();
        req.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        p.apply(p.for_request(&req), &mut resp);
        assert_eq!(
            resp[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(resp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));

        req.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        p.apply(p.for_request(&req), &mut resp);
        assert!(
            !resp.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "the backend's wildcard is removed for a disallowed origin"
        );
        assert_eq!(resp[header::VARY], "Origin");
    }

    #[test]
    fn any_origin_is_a_wildcard_only_without_credentials() {
        let mut p = policy(false);
        p.origins = vec![OriginMatch::Any];
        let mut req = HeaderMap::new();
        req.insert(header::ORIGIN, "https://x.test".parse().unwrap());
        assert_eq!(p.for_request(&req).unwrap(), "*");
        p.credentials = true;
        assert_eq!(p.for_request(&req).unwrap(), "https://x.test");
        // Two Origin headers are not an origin.
        req.append(header::ORIGIN, "https://y.test".parse().unwrap());
        assert!(p.for_request(&req).is_none());
    }
}
