//! Response phase hygiene (validate-status-code and the header part of validate-headers in
//! the reference gateway): headers that advertise the backend's software are removed from
//! every response, a backend's 5xx body (stack traces, internal names) is replaced by the
//! gateway's own problem document, and a route may list the status codes its backend is
//! allowed to answer with.
//!
//! Defaults are the safe reading: every route strips [`LEAKY_HEADERS`] and masks 5xx bodies
//! without any configuration; `[routes.response]` adds headers, lists status codes, and can
//! opt out of masking (`mask_server_errors = false`) for backends whose error bodies are part
//! of their API.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::respond::{self, Body, BoxError, Denial};
use crate::validation::Failure;
use crate::validation::response::{ResponseCheck, ResponseValidation, check_body};

/// Headers that tell an attacker which software, version or host answered. Removed from every
/// backend response.
pub const LEAKY_HEADERS: [&str; 8] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-debug-token",
    "x-debug-token-link",
    "x-backend-server",
];

/// Whether a check refuses or only reports: the same words as request validation's.
pub use crate::validation::Action;

/// A route's response policy (`[routes.response]`).
#[derive(Clone, Debug)]
pub struct ResponsePolicy {
    /// Status codes the backend may answer with; empty: any.
    pub status_codes: Vec<u16>,
    pub action: Action,
    /// Headers removed in addition to [`LEAKY_HEADERS`].
    pub strip_headers: Vec<HeaderName>,
    /// Replace the body of a backend 5xx with the gateway's problem document.
    pub mask_server_errors: bool,
    /// Status, media type and body checked against a schema or an OpenAPI document
    /// (`schema`, `openapi`); the verdict follows `action`.
    pub body: Option<Arc<ResponseValidation>>,
}

/// The policy of a route without `[routes.response]`: a static, so the request path
/// builds nothing per response.
pub static DEFAULT: ResponsePolicy = ResponsePolicy {
    status_codes: Vec::new(),
    action: Action::Prevent,
    strip_headers: Vec::new(),
    mask_server_errors: true,
    body: None,
};

impl Default for ResponsePolicy {
    fn default() -> Self {
        DEFAULT.clone()
    }
}

/// What to do with a backend response, decided from its status before the body is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The status is not one the route allows (prevent mode): 502.
    StatusNotAllowed,
    /// A 5xx whose body is replaced by the gateway's problem document, status kept.
    MaskServerError(StatusCode),
}

impl ResponsePolicy {
    /// The verdict for a response with `status`; `report` is called with the rule when a
    /// detect-mode check would have refused.
    pub fn judge(&self, status: StatusCode, report: impl FnOnce(&'static str)) -> Verdict {
        if !self.status_codes.is_empty() && !self.status_codes.contains(&status.as_u16()) {
            match self.action {
                Action::Prevent => return Verdict::StatusNotAllowed,
                Action::Detect => report("response:status_not_allowed"),
            }
        }
        if self.mask_server_errors && status.is_server_error() {
            return Verdict::MaskServerError(status);
        }
        Verdict::Pass
    }

    /// Removes the leaky headers from a response going to the client.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for name in LEAKY_HEADERS {
            headers.remove(name);
        }
        for name in &self.strip_headers {
            headers.remove(name);
        }
    }
}

/// Reports a response validation failure: the rule and the failures (locations and reasons,
/// never values), for the log and the metrics.
pub type Report<'r> = &'r mut (dyn FnMut(&'static str, &[Failure]) + Send);

impl ResponsePolicy {
    /// Checks a response that passed [`ResponsePolicy::judge`] against the route's response
    /// validation (`schema`, `openapi`), buffering its body when a schema applies. Returns the
    /// response to send on: the buffered body byte for byte, or the stream untouched. In
    /// prevent mode a failure is a [`Denial::ResponseNotAllowed`]; in detect mode it is only
    /// reported. `deadline` is the route's total deadline, which also bounds the buffering.
    pub async fn validate(
        &self,
        method: &Method,
        path: &str,
        resp: Response<Body>,
        deadline: Instant,
        report: Report<'_>,
    ) -> Result<Response<Body>, Denial> {
        let Some(v) = &self.body else {
            return Ok(resp);
        };
        let status = resp.status();
        let has_body = *method != Method::HEAD
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
            && !resp.body().is_end_stream();
        let schema = match v.check_head(method, path, status, resp.headers(), has_body) {
            ResponseCheck::Skip => return Ok(resp),
            ResponseCheck::Failed(failure) => {
                let rule = if failure.location == "status" {
                    "response:status_not_documented"
                } else {
                    "response:media_type"
                };
                report(rule, std::slice::from_ref(&failure));
                return self.verdict(resp);
            }
            ResponseCheck::Body(schema) => schema,
        };
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > v.max_body_bytes) {
            report("response:body_too_large", &[]);
            return self.verdict(resp);
        }
        let (parts, mut body) = resp.into_parts();
        let mut chunks = VecDeque::new();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                if Instant::now() >= deadline {
                    Denial::GatewayTimeout
                } else {
                    Denial::BadGateway
                }
            })?;
            // Trailers of a JSON body have no meaning to a schema and are not kept.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            chunks.push_back(data);
            if size > v.max_body_bytes {
                // Too large to check: the part read so far goes on ahead of the rest.
                report("response:body_too_large", &[]);
                let rest = Prefixed {
                    head: chunks,
                    rest: body,
                }
                .boxed();
                return self.verdict(Response::from_parts(parts, rest));
            }
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(size as usize);
                chunks.iter().for_each(|c| all.extend_from_slice(c));
                all.freeze()
            }
        };
        let failures = check_body(schema, &bytes);
        let resp = Response::from_parts(parts, respond::full(bytes));
        if failures.is_empty() {
            return Ok(resp);
        }
        report("response:body_invalid", &failures);
        self.verdict(resp)
    }

    fn verdict(&self, resp: Response<Body>) -> Result<Response<Body>, Denial> {
        match self.action {
            Action::Prevent => Err(Denial::ResponseNotAllowed),
            Action::Detect => Ok(resp),
        }
    }
}

/// Chunks already read, then the rest of the stream.
struct Prefixed {
    head: VecDeque<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head: u64 = self.head.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let p = ResponsePolicy::default();
        assert_eq!(p.judge(StatusCode::OK, |_| {}), Verdict::Pass);
        assert_eq!(
            p.judge(StatusCode::INTERNAL_SERVER_ERROR, |_| {}),
            Verdict::MaskServerError(StatusCode::INTERNAL_SERVER_ERROR)
        );
        let listed = ResponsePolicy {
            status_codes: vec![200, 404],
            ..ResponsePolicy::default()
        };
        assert_eq!(
            listed.judge(StatusCode::CREATED, |_| {}),
            Verdict::StatusNotAllowed
        );
        let mut reported = None;
        let detect = ResponsePolicy {
            action: Action::Detect,
            mask_server_errors: false,
            ..listed
        };
        assert_eq!(
            detect.judge(StatusCode::BAD_GATEWAY, |r| reported = Some(r)),
            Verdict::Pass
        );
        assert_eq!(reported, Some("response:status_not_allowed"));
    }

    #[test]
    fn strips_leaky_and_configured_headers() {
        let p = ResponsePolicy {
            strip_headers: vec![HeaderName::from_static("x-internal-host")],
            ..ResponsePolicy::default()
        };
        let mut h = HeaderMap::new();
        h.insert("server", "Apache/2.4.1".parse().unwrap());
        h.insert("x-powered-by", "PHP/5.6".parse().unwrap());
        h.insert("x-internal-host", "db-3".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        p.strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    fn schema_policy(action: Action, max_body_bytes: u64) -> ResponsePolicy {
        use crate::validation::openapi::{Dialect, compile};
        use crate::validation::response::ResponseRules;
        let schema = compile(
            &serde_json::json!({"type": "object", "required": ["id"]}),
            "",
            Dialect::Draft202012,
        )
        .expect("schema");
        ResponsePolicy {
            action,
            body: Some(Arc::new(ResponseValidation {
                rules: ResponseRules::Body(schema),
                max_body_bytes,
                file: std::path::PathBuf::new(),
            })),
            ..ResponsePolicy::default()
        }
    }

    /// A chunked JSON response (no Content-Length), as a streaming backend sends it.
    fn chunked(chunks: &[&'static str]) -> Response<Body> {
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect::<Vec<_>>();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        resp
    }

    async fn run(
        p: &ResponsePolicy,
        resp: Response<Body>,
    ) -> (Result<String, Denial>, Vec<&'static str>) {
        let mut rules = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut report = |rule: &'static str, _: &[Failure]| rules.push(rule);
        let out = p
            .validate(&Method::GET, "/", resp, deadline, &mut report)
            .await;
        let out = match out {
            Ok(resp) => {
                let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                Ok(String::from_utf8(bytes.to_vec()).expect("utf-8"))
            }
            Err(d) => Err(d),
        };
        (out, rules)
    }

    #[tokio::test]
    async fn bodies_are_checked_and_passed_on_byte_for_byte() {
        let prevent = schema_policy(Action::Prevent, 1024);
        let (out, rules) = run(&prevent, chunked(&["{\"id\"", ": 7}"])).await;
        assert_eq!(out.expect("valid"), "{\"id\": 7}");
        assert!(rules.is_empty());
        let (out, rules) = run(&prevent, chunked(&["{\"name\": 1}"])).await;
        assert!(matches!(out, Err(Denial::ResponseNotAllowed)));
        assert_eq!(rules, ["response:body_invalid"]);
        let detect = schema_policy(Action::Detect, 1024);
        let (out, rules) = run(&detect, chunked(&["{\"name\": 1}"])).await;
        assert_eq!(out.expect("detect passes"), "{\"name\": 1}");
        assert_eq!(rules, ["response:body_invalid"]);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_or_streamed_whole() {
        let chunks = ["{\"id\": ", "\"0123456789", "0123456789", "0123456789\"}"];
        let (out, rules) = run(&schema_policy(Action::Prevent, 16), chunked(&chunks)).await;
        assert!(matches!(out, Err(Denial::ResponseNotAllowed)));
        assert_eq!(rules, ["response:body_too_large"]);
        // Detect: the chunks read before the limit and the rest arrive in order.
        let (out, rules) = run(&schema_policy(Action::Detect, 16), chunked(&chunks)).await;
        assert_eq!(out.expect("streamed"), chunks.concat());
        assert_eq!(rules, ["response:body_too_large"]);
    }
}
