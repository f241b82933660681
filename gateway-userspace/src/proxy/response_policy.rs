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

use http::{HeaderMap, HeaderName, StatusCode};

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

/// Whether a check refuses or only reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Prevent,
    Detect,
}

/// A route's response policy (`[routes.response]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponsePolicy {
    /// Status codes the backend may answer with; empty: any.
    pub status_codes: Vec<u16>,
    pub action: Action,
    /// Headers removed in addition to [`LEAKY_HEADERS`].
    pub strip_headers: Vec<HeaderName>,
    /// Replace the body of a backend 5xx with the gateway's problem document.
    pub mask_server_errors: bool,
}

/// The policy of a route without `[routes.response]`: a static, so the request path
/// builds nothing per response.
pub static DEFAULT: ResponsePolicy = ResponsePolicy {
    status_codes: Vec::new(),
    action: Action::Prevent,
    strip_headers: Vec::new(),
    mask_server_errors: true,
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
}
