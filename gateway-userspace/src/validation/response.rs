//! Response validation per route (`[routes.response]` with `schema` or `openapi`,
//! docs/validation.md): the backend's status, media type and JSON body are checked against
//! the matching operation's documented `responses`, or every 2xx JSON body against one JSON
//! Schema.
//!
//! A failure here is the backend's fault, not the client's: the client gets a plain 502 (in
//! prevent mode) without the failures, which describe the backend's internals, and the abuse
//! detector does not count it.

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

use super::openapi::Operation;
use super::{BodyRule, Failure, Schema, is_json, media_type, range_matches};

/// A route's compiled response validation.
#[derive(Debug)]
pub struct ResponseValidation {
    pub rules: ResponseRules,
    /// Bodies are buffered for validation up to this size (docs/validation.md says what
    /// happens above it).
    pub max_body_bytes: u64,
    /// The document or schema file, watched and re-read with the config.
    pub file: PathBuf,
}

#[derive(Debug)]
pub enum ResponseRules {
    /// One JSON Schema for the JSON bodies of 2xx responses.
    Body(Arc<Schema>),
    /// The operations of an OpenAPI document, with their responses.
    OpenApi(Vec<Operation>),
}

/// What a response needs, decided from its head.
#[derive(Debug)]
pub enum ResponseCheck<'v> {
    /// Nothing to check: no operation describes the request, or nothing is documented for
    /// this status or media type beyond what it is.
    Skip,
    /// The status or media type is not one the document describes.
    Failed(Failure),
    /// The body must be buffered and checked against this schema.
    Body(&'v Schema),
}

impl ResponseValidation {
    /// Judges a response's head. `has_body` is false for HEAD requests and for responses that
    /// cannot carry one (204, 304) or announce none.
    pub fn check_head(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
        has_body: bool,
    ) -> ResponseCheck<'_> {
        let media = media_type(headers);
        match &self.rules {
            ResponseRules::Body(schema) => {
                if status.is_success() && has_body && media.as_deref().is_some_and(is_json) {
                    ResponseCheck::Body(schema)
                } else {
                    ResponseCheck::Skip
                }
            }
            ResponseRules::OpenApi(ops) => {
                let Some(op) = ops
                    .iter()
                    .find(|op| op.method == *method && op.match_path(path).is_some())
                else {
                    return ResponseCheck::Skip;
                };
                // OpenAPI 3.1 makes `responses` optional: an operation without any documents
                // nothing to hold the backend to.
                if op.responses.is_empty() {
                    return ResponseCheck::Skip;
                }
                let Some(documented) = op.response_for(status.as_u16()) else {
                    return ResponseCheck::Failed(Failure::new(
                        "status",
                        format!("status {} is not documented", status.as_u16()),
                    ));
                };
                if !has_body || documented.media.is_empty() {
                    return ResponseCheck::Skip;
                }
                let Some(media) = media else {
                    return ResponseCheck::Failed(Failure::new(
                        "header:content-type",
                        "the body has no content type",
                    ));
                };
                let Some((_, schema)) = documented
                    .media
                    .iter()
                    .find(|(range, _)| range_matches(range, &media))
                else {
                    return ResponseCheck::Failed(Failure::new(
                        "header:content-type",
                        "the media type is not documented for this status",
                    ));
                };
                match schema {
                    Some(schema) if is_json(&media) => ResponseCheck::Body(schema),
                    _ => ResponseCheck::Skip,
                }
            }
        }
    }
}

/// The failures of a buffered response body against `schema` (an empty body passes: whether
/// one is required is the status's business, judged by the head).
pub fn check_body(schema: &Schema, body: &[u8]) -> Vec<Failure> {
    BodyRule {
        required: false,
        schema: Some(schema),
    }
    .check(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::openapi::{self, Parts};

    const DOC: &str = r#"
openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /orders/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer}}
    get:
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Order'}
        4XX:
          $ref: '#/components/responses/Problem'
    delete:
      responses:
        "204": {description: gone}
  /health:
    get: {}
components:
  schemas:
    Order:
      type: object
      required: [id, status]
      properties:
        id: {type: integer}
        status: {enum: [open, shipped]}
  responses:
    Problem:
      description: problem
      content:
        application/problem+json:
          schema: {type: object, required: [title]}
"#;

    fn validation() -> ResponseValidation {
        let doc = openapi::parse(DOC).expect("parse");
        ResponseValidation {
            rules: ResponseRules::OpenApi(openapi::operations(doc, Parts::Responses).expect("ops")),
            max_body_bytes: 1 << 20,
            file: PathBuf::new(),
        }
    }

    fn json(media: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, media.parse().expect("media"));
        h
    }

    #[test]
    fn status_media_and_body_follow_the_document() {
        let v = validation();
        let head = |m: &Method, p: &str, s: u16, h: &HeaderMap, body: bool| {
            v.check_head(m, p, StatusCode::from_u16(s).expect("status"), h, body)
        };
        let j = json("application/json; charset=utf-8");
        let ResponseCheck::Body(schema) = head(&Method::GET, "/orders/7", 200, &j, true) else {
            panic!("the 200 body is checked");
        };
        assert!(check_body(schema, br#"{"id": 7, "status": "open"}"#).is_empty());
        let f = check_body(schema, br#"{"id": "7", "status": "lost"}"#);
        let at: Vec<&str> = f.iter().map(|f| f.location.as_str()).collect();
        assert_eq!(at, ["/id", "/status"]);
        // `4XX` through a `$ref` to components/responses.
        let p = json("application/problem+json");
        assert!(matches!(
            head(&Method::GET, "/orders/7", 404, &p, true),
            ResponseCheck::Body(_)
        ));
        assert!(matches!(
            head(&Method::GET, "/orders/7", 404, &j, true),
            ResponseCheck::Failed(f) if f.location == "header:content-type"
        ));
        assert!(matches!(
            head(&Method::GET, "/orders/7", 500, &j, true),
            ResponseCheck::Failed(f) if f.reason == "status 500 is not documented"
        ));
        assert!(matches!(
            head(&Method::DELETE, "/orders/7", 204, &HeaderMap::new(), false),
            ResponseCheck::Skip
        ));
        assert!(matches!(
            head(&Method::DELETE, "/orders/7", 200, &HeaderMap::new(), false),
            ResponseCheck::Failed(_)
        ));
        // Undocumented operations and operations without responses are not judged here.
        assert!(matches!(
            head(&Method::GET, "/elsewhere", 500, &j, true),
            ResponseCheck::Skip
        ));
        assert!(matches!(
            head(&Method::GET, "/health", 503, &j, true),
            ResponseCheck::Skip
        ));
        // HEAD-like exchanges: the status still counts, there is no body to check.
        assert!(matches!(
            head(&Method::GET, "/orders/7", 200, &j, false),
            ResponseCheck::Skip
        ));
    }

    #[test]
    fn a_plain_schema_checks_json_success_bodies_only() {
        let schema = openapi::compile(
            &serde_json::json!({"type": "object", "required": ["id"]}),
            "",
            openapi::Dialect::Draft202012,
        )
        .expect("schema");
        let v = ResponseValidation {
            rules: ResponseRules::Body(schema),
            max_body_bytes: 1 << 20,
            file: PathBuf::new(),
        };
        let j = json("application/json");
        assert!(matches!(
            v.check_head(&Method::GET, "/", StatusCode::OK, &j, true),
            ResponseCheck::Body(_)
        ));
        for (status, h) in [
            (StatusCode::NOT_FOUND, j.clone()),
            (StatusCode::OK, json("text/plain")),
        ] {
            assert!(matches!(
                v.check_head(&Method::GET, "/", status, &h, true),
                ResponseCheck::Skip
            ));
        }
    }

    #[test]
    fn bad_status_keys_are_document_errors() {
        for key in ["\"600\"", "\"20\"", "\"2xY\"", "ok"] {
            let doc = format!(
                "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      responses:\n        {key}: {{description: x}}\n"
            );
            let r = openapi::parse(&doc).and_then(|d| openapi::operations(d, Parts::Responses));
            assert!(r.is_err(), "{key}");
        }
    }
}
