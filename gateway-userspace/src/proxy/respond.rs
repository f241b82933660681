//! The one place where decisions and errors become HTTP responses: a status and an
//! `application/problem+json` body (RFC 9457) carrying the request id. Bodies never echo
//! request data (headers, tokens, keys, paths with query strings), so nothing secret leaks.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

/// Errors crossing the proxy's body types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy produces.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Which side a failure belongs to, for metrics and logs (client, upstream, or us).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

/// Why the gateway answered instead of the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No route matches host and path.
    NotFound,
    /// A route matches host and path but not the method.
    MethodNotAllowed(Vec<Method>),
    /// The request is malformed (bad host, bad framing...). The string is ours, never input.
    BadRequest(&'static str),
    /// The body is larger than the route allows.
    PayloadTooLarge { limit: u64 },
    /// The request's content type is not one the route's validation allows.
    UnsupportedMediaType,
    /// Parameters or body fail the route's validation: where and why, never the values.
    ValidationFailed(Vec<crate::validation::Failure>),
    /// A gateway rule refused the client (userspace backstop: deny, geo, ban).
    Forbidden { rule: String },
    /// The route needs a token and none was presented (RFC 6750 section 3.1: no error code).
    TokenMissing,
    /// The token was presented more than once or malformed in its location (`invalid_request`).
    TokenRequestInvalid,
    /// The token failed validation (`invalid_token`).
    TokenInvalid,
    /// The token is valid but its claims do not satisfy the route (`insufficient_scope`).
    InsufficientClaims,
    /// The route needs an API key and none was presented.
    KeyMissing,
    /// The API key is unknown, expired, or presented ambiguously.
    KeyInvalid,
    /// The API key is valid but not for this API or product.
    KeyScope,
    /// The route needs a client certificate and the connection has none.
    CertificateRequired,
    /// The client certificate is valid but the route's rules do not admit it.
    CertificateRefused,
    /// A rate limit's budget for the client is spent (429). Carries `Retry-After` in seconds
    /// and the budget headers; never the key the budget belongs to.
    RateLimited {
        retry_after: u64,
        headers: crate::limits::headers::BudgetHeaders,
    },
    /// A quota is used up for its period: 403 as Azure API Management answers, or 429.
    QuotaExhausted {
        retry_after: u64,
        status: StatusCode,
        headers: crate::limits::headers::BudgetHeaders,
    },
    /// The shared store (cluster mode) cannot answer and its mode is `closed`.
    ClusterUnavailable,
    /// Every endpoint of the pool is unhealthy or ejected.
    NoHealthyUpstream,
    /// The gateway has no credentials for the backend (its token endpoint is unreachable).
    BackendAuthUnavailable,
    /// Connecting to the backend failed or it answered with something that is not HTTP.
    BadGateway,
    /// The backend answered with a status code the route does not allow.
    ResponseNotAllowed,
    /// The backend answered with this 5xx; its body (stack traces, internal names) is
    /// replaced by the gateway's problem document.
    UpstreamError(StatusCode),
    /// The backend did not answer within the route's timeouts.
    GatewayTimeout,
}

impl Denial {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ValidationFailed(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden { .. }
            | Self::InsufficientClaims
            | Self::KeyScope
            | Self::CertificateRequired
            | Self::CertificateRefused => StatusCode::FORBIDDEN,
            Self::KeyMissing | Self::KeyInvalid => StatusCode::UNAUTHORIZED,
            Self::TokenMissing | Self::TokenInvalid => StatusCode::UNAUTHORIZED,
            Self::TokenRequestInvalid => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExhausted { status, .. } => *status,
            Self::NoHealthyUpstream | Self::BackendAuthUnavailable | Self::ClusterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadGateway | Self::ResponseNotAllowed => StatusCode::BAD_GATEWAY,
            Self::UpstreamError(status) => *status,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable code, also used as the "rule" in logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "route_not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            // The abuse detector counts this code (docs/abuse-bans.md).
            Self::ValidationFailed(_) => "validation_failed",
            Self::Forbidden { .. } => "forbidden",
            Self::TokenMissing => "token_missing",
            Self::TokenRequestInvalid => "token_request_invalid",
            Self::TokenInvalid => "token_invalid",
            Self::InsufficientClaims => "insufficient_claims",
            Self::KeyMissing => "key_missing",
            Self::KeyInvalid => "key_invalid",
            Self::KeyScope => "key_scope",
            Self::CertificateRequired => "client_cert_required",
            Self::CertificateRefused => "client_cert_refused",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExhausted { .. } => "quota_exhausted",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::BackendAuthUnavailable => "backend_auth_unavailable",
            Self::BadGateway => "bad_gateway",
            Self::ResponseNotAllowed => "response_not_allowed",
            Self::UpstreamError(_) => "upstream_error",
            Self::GatewayTimeout => "gateway_timeout",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::NotFound
            | Self::MethodNotAllowed(_)
            | Self::BadRequest(_)
            | Self::PayloadTooLarge { .. }
            | Self::UnsupportedMediaType
            | Self::ValidationFailed(_)
            | Self::Forbidden { .. }
            | Self::TokenMissing
            | Self::TokenRequestInvalid
            | Self::TokenInvalid
            | Self::InsufficientClaims
            | Self::KeyMissing
            | Self::KeyInvalid
            | Self::KeyScope
            | Self::CertificateRequired
            | Self::CertificateRefused
            | Self::RateLimited { .. }
            | Self::QuotaExhausted { .. } => Side::Client,
            Self::NoHealthyUpstream
            | Self::ClusterUnavailable
            | Self::BackendAuthUnavailable
            | Self::BadGateway
            | Self::ResponseNotAllowed
            | Self::UpstreamError(_)
            | Self::GatewayTimeout => Side::Upstream,
        }
    }

    /// `WWW-Authenticate` for token problems (RFC 6750 section 3).
    fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::TokenMissing => Some("Bearer realm=\"portcullis\""),
            Self::TokenRequestInvalid => {
                Some("Bearer realm=\"portcullis\", error=\"invalid_request\"")
            }
            Self::TokenInvalid => Some("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            Self::InsufficientClaims => {
                Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\"")
            }
            _ => None,
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::NotFound => "No route matches this host and path.".into(),
            Self::MethodNotAllowed(_) => "The route does not accept this method.".into(),
            Self::BadRequest(why) => format!("The request is malformed: {why}."),
            Self::PayloadTooLarge { limit } => {
                format!("The request body exceeds the limit of {limit} bytes.")
            }
            Self::UnsupportedMediaType => {
                "The route does not accept this content type for this operation.".into()
            }
            Self::ValidationFailed(_) => "The request does not match the API's schema.".into(),
            Self::Forbidden { .. } => "The client is not allowed to use this service.".into(),
            Self::TokenMissing => "This route requires a bearer token.".into(),
            Self::TokenRequestInvalid => {
                "The access token was presented in more than one place or malformed.".into()
            }
            Self::TokenInvalid => "The access token is not valid.".into(),
            Self::InsufficientClaims => "The access token does not grant this operation.".into(),
            Self::KeyMissing => "This route requires an API key.".into(),
            Self::KeyInvalid => "The API key is not valid.".into(),
            Self::KeyScope => "The API key is not valid for this API.".into(),
            Self::CertificateRequired => "This route requires a client certificate.".into(),
            Self::CertificateRefused => {
                "The client certificate is not allowed to use this route.".into()
            }
            Self::RateLimited { retry_after, .. } => format!(
                "The rate limit for this client is exhausted; retry after {retry_after} seconds."
            ),
            Self::QuotaExhausted { retry_after, .. } => format!(
                "The quota for this client is used up for its period; it renews in \
                 {retry_after} seconds."
            ),
            Self::ClusterUnavailable => {
                "The gateway cannot reach its shared limit store; retry later.".into()
            }
            Self::NoHealthyUpstream => "No healthy backend is available.".into(),
            Self::BackendAuthUnavailable => {
                "The gateway cannot authenticate to the backend right now.".into()
            }
            Self::BadGateway => {
                "The backend could not be reached or gave an invalid response.".into()
            }
            Self::GatewayTimeout => "The backend did not answer in time.".into(),
            Self::ResponseNotAllowed => {
                "The backend gave a response this API does not allow.".into()
            }
            Self::UpstreamError(_) => "The backend could not complete the request.".into(),
        }
    }
}

/// The problem response for `denial`.
pub fn problem(denial: &Denial, request_id: &str) -> Response<Body> {
    let status = denial.status();
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": denial.detail(),
        "code": denial.code(),
        "request_id": request_id,
    });
    if let Denial::ValidationFailed(failures) = denial {
        body["failures"] = failures
            .iter()
            .map(|f| serde_json::json!({"location": f.location, "reason": f.reason}))
            .collect();
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = denial.www_authenticate() {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
    }
    if let Denial::RateLimited {
        retry_after,
        headers,
    }
    | Denial::QuotaExhausted {
        retry_after,
        headers,
        ..
    } = denial
    {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        headers.apply(h);
    }
    if let Denial::MethodNotAllowed(methods) = denial {
        let allow = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            h.insert(header::ALLOW, v);
        }
    }
    resp
}

/// 308 to the HTTPS URL of the same host and path (RFC 9110 section 15.4.9: keeps the method).
pub fn redirect_to_https(host: &str, port: u16, path_and_query: &str) -> Response<Body> {
    let location = if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_denial_is_a_problem_document() {
        let all = [
            Denial::NotFound,
            Denial::MethodNotAllowed(vec![Method::GET]),
            Denial::BadRequest("missing host"),
            Denial::PayloadTooLarge { limit: 10 },
            Denial::Forbidden {
                rule: "deny:x".into(),
            },
            Denial::TokenMissing,
            Denial::TokenRequestInvalid,
            Denial::TokenInvalid,
            Denial::InsufficientClaims,
            Denial::KeyMissing,
            Denial::KeyInvalid,
            Denial::KeyScope,
            Denial::CertificateRequired,
            Denial::CertificateRefused,
            Denial::RateLimited {
                retry_after: 2,
                headers: Default::default(),
            },
            Denial::QuotaExhausted {
                retry_after: 3600,
                status: StatusCode::FORBIDDEN,
                headers: Default::default(),
            },
            Denial::NoHealthyUpstream,
            Denial::ClusterUnavailable,
            Denial::BackendAuthUnavailable,
            Denial::BadGateway,
            Denial::ResponseNotAllowed,
            Denial::UpstreamError(StatusCode::INTERNAL_SERVER_ERROR),
            Denial::GatewayTimeout,
        ];
        for d in all {
            let resp = problem(&d, "req-1");
            assert_eq!(resp.status(), d.status());
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["status"], d.status().as_u16());
            assert_eq!(v["request_id"], "req-1");
            assert_eq!(v["code"], d.code());
            // The rule that decided is for logs, not for the client.
            assert!(!body.windows(6).any(|w| w == b"deny:x"));
        }
    }

    #[test]
    fn redirect_keeps_host_and_path() {
        let r = redirect_to_https("api.example.com", 443, "/a?b=c");
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://api.example.com/a?b=c"
        );
        let r = redirect_to_https("api.example.com", 8443, "/");
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://api.example.com:8443/"
        );
    }
}
