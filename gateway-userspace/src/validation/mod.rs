//! Request validation per route (`[routes.validation]`, docs/validation.md): the request is
//! matched to an operation of an OpenAPI 3.0/3.1 document by path template and method, then
//! its path, query and header parameters, its content type and its JSON body are checked
//! against the document's schemas; or, with a plain JSON Schema, only the body is.
//!
//! Responses are checked by [`response`] (`[routes.response]` with `schema` or `openapi`).
//!
//! Failures name the field (a JSON pointer or a parameter name) and a short reason built from
//! the schema, never from the request: a refused value may be a password or a card number.

pub mod openapi;
pub mod response;

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, Method};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

pub use openapi::{Operation, Param, ParamIn};

/// What a failing request gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Refuse (400, 415, 404 for unknown operations when so configured).
    #[default]
    Prevent,
    /// Log the failures and forward the request.
    Detect,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prevent => "prevent",
            Self::Detect => "detect",
        }
    }
}

/// What happens to a request whose path and method no operation of the document describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownOperations {
    /// Forward it unchecked: the document may describe only part of the API.
    #[default]
    Pass,
    /// Refuse it with 404 (prevent) or log it (detect).
    Refuse,
}

/// A route's compiled validation.
#[derive(Debug)]
pub struct RouteValidation {
    pub action: Action,
    /// Allowed media types (lower case, without parameters; `type/*` and `*/*` ranges allowed).
    /// Empty: what the operation's `requestBody.content` lists.
    pub content_types: Vec<String>,
    /// Bodies are buffered for validation up to this size, refused above it (413).
    pub max_body_bytes: u64,
    pub unknown_operations: UnknownOperations,
    pub rules: Rules,
    /// The document or schema file, re-read when the config is reloaded.
    pub file: PathBuf,
}

#[derive(Debug)]
pub enum Rules {
    /// Operations of an OpenAPI document, in document order.
    OpenApi(Vec<Operation>),
    /// One JSON Schema for every request body of the route.
    Body(Arc<Schema>),
}

/// A compiled schema.
pub struct Schema(pub jsonschema::Validator);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// One reason a request is invalid: where (a JSON pointer into the body, or `query:name`,
/// `path:name`, `header:name`) and why. Never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub location: String,
    pub reason: String,
}

impl Failure {
    pub(crate) fn new(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            reason: reason.into(),
        }
    }
}

/// The outcome of checking a request's head (before its body is read).
#[derive(Debug)]
pub enum Head<'v> {
    /// No operation describes the request.
    Unknown,
    /// The content type is not allowed (415).
    UnsupportedType,
    /// Parameter failures (possibly none) and what the body must satisfy.
    Checked {
        failures: Vec<Failure>,
        body: BodyRule<'v>,
    },
}

/// What the body must satisfy.
#[derive(Debug, Default)]
pub struct BodyRule<'v> {
    /// A body must be present.
    pub required: bool,
    /// The schema for the body, for JSON media types.
    pub schema: Option<&'v Schema>,
}

impl RouteValidation {
    /// Checks method, path, query and headers; `has_body` tells whether the request carries
    /// one (the content type is only checked then).
    pub fn check_head(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        has_body: bool,
    ) -> Head<'_> {
        let media = media_type(headers);
        match &self.rules {
            Rules::Body(schema) => {
                if has_body && !allowed(&self.content_types, media.as_deref()) {
                    return Head::UnsupportedType;
                }
                let json = media.as_deref().is_some_and(is_json);
                Head::Checked {
                    failures: Vec::new(),
                    body: BodyRule {
                        required: false,
                        schema: (has_body && json).then_some(schema.as_ref()),
                    },
                }
            }
            Rules::OpenApi(ops) => {
                let Some((op, path_values)) = ops.iter().find_map(|op| {
                    (op.method == *method)
                        .then(|| op.match_path(path))
                        .flatten()
                        .map(|v| (op, v))
                }) else {
                    return Head::Unknown;
                };
                let mut failures = op.check_params(&path_values, query, headers);
                let mut body = BodyRule {
                    required: op.body_required,
                    schema: None,
                };
                if has_body {
                    let listed: Vec<String> = if self.content_types.is_empty() {
                        op.media.iter().map(|(m, _)| m.clone()).collect()
                    } else {
                        self.content_types.clone()
                    };
                    // An operation without a request body takes none.
                    if listed.is_empty() || !allowed(&listed, media.as_deref()) {
                        return Head::UnsupportedType;
                    }
                    if let Some(m) = media.as_deref().filter(|m| is_json(m)) {
                        body.schema = op
                            .media
                            .iter()
                            .find(|(range, _)| range_matches(range, m))
                            .and_then(|(_, s)| s.as_deref());
                    }
                } else if op.body_required {
                    failures.push(Failure::new("", "a request body is required"));
                }
                Head::Checked { failures, body }
            }
        }
    }
}

impl BodyRule<'_> {
    /// Checks a buffered body.
    pub fn check(&self, body: &[u8]) -> Vec<Failure> {
        if body.is_empty() {
            return if self.required {
                vec![Failure::new("", "a request body is required")]
            } else {
                Vec::new()
            };
        }
        let Some(schema) = self.schema else {
            return Vec::new();
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => schema_failures(schema, &value, ""),
            Err(_) => vec![Failure::new("", "the body is not valid JSON")],
        }
    }
}

/// At most this many failures are reported: enough to fix a request, bounded for a hostile one.
const MAX_FAILURES: usize = 20;

/// The schema's failures for `value`, their pointers prefixed with `prefix`.
pub(crate) fn schema_failures(schema: &Schema, value: &Value, prefix: &str) -> Vec<Failure> {
    let mut out = Vec::new();
    for e in schema.0.iter_errors(value).take(MAX_FAILURES) {
        let at = format!("{prefix}{}", e.instance_path());
        match e.kind() {
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(Failure::new(
                    format!("{at}/{}", escape(name)),
                    "required property is missing",
                ));
            }
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                for name in unexpected.iter().take(MAX_FAILURES) {
                    out.push(Failure::new(
                        format!("{at}/{}", escape(name)),
                        "property is not allowed",
                    ));
                }
            }
            kind => out.push(Failure::new(at, reason(kind))),
        }
    }
    out.truncate(MAX_FAILURES);
    out
}

/// A short reason from the schema's side of a failure (limits, types, formats), never the value.
fn reason(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Type { kind } => {
            let types: Vec<String> = match kind {
                TypeKind::Single(t) => vec![t.to_string()],
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
            };
            format!("expected {}", types.join(" or "))
        }
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        ValidationErrorKind::MinLength { limit } => format!("must be at least {limit} characters"),
        ValidationErrorKind::MaxLength { limit } => format!("must be at most {limit} characters"),
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} items"),
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} items"),
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. } => {
            "is not one of the allowed values".into()
        }
        ValidationErrorKind::Format { format } => format!("is not a valid {format}"),
        ValidationErrorKind::Pattern { .. } => "does not match the required pattern".into(),
        ValidationErrorKind::FalseSchema => "is not allowed".into(),
        other => format!("fails `{}`", other.keyword()),
    }
}

/// A JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The request's media type, lower case, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let m = v.split(';').next()?.trim().to_ascii_lowercase();
    (!m.is_empty()).then_some(m)
}

pub(crate) fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

fn allowed(list: &[String], media: Option<&str>) -> bool {
    // A body without a content type is refused: the gateway would not know how to check it.
    media.is_some_and(|m| list.iter().any(|range| range_matches(range, m)))
}

/// `type/subtype`, `type/*` or `*/*` against a media type (both lower case).
pub(crate) fn range_matches(range: &str, media: &str) -> bool {
    let range = range.split(';').next().unwrap_or_default().trim();
    if range == "*/*" || range == media {
        return true;
    }
    match range.strip_suffix("/*") {
        Some(main) => media
            .split_once('/')
            .is_some_and(|(media_main, _)| media_main == main),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges() {
        assert!(range_matches("application/json", "application/json"));
        assert!(range_matches("application/*", "application/json"));
        assert!(range_matches("*/*", "text/plain"));
        assert!(!range_matches("application/json", "text/json"));
        assert!(!range_matches("text/*", "application/json"));
        assert!(is_json("application/problem+json"));
        assert!(!allowed(&["application/json".into()], None));
    }

    #[test]
    fn failures_never_carry_the_value() {
        let schema = Schema(
            jsonschema::validator_for(&serde_json::json!({
                "type": "object",
                "required": ["id"],
                "additionalProperties": false,
                "properties": {"id": {"type": "integer"}, "card": {"type": "string", "maxLength": 4}}
            }))
            .expect("schema"),
        );
        let value = serde_json::json!({"card": "4111111111111111", "x": "secret-token"});
        let failures = schema_failures(&schema, &value, "");
        let text = format!("{failures:?}");
        assert!(!text.contains("4111111111111111"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(failures.iter().any(|f| f.location == "/id"), "{text}");
        assert!(failures.iter().any(|f| f.location == "/x"), "{text}");
        assert!(failures.iter().any(|f| f.location == "/card"), "{text}");
    }

    #[test]
    fn bodies_that_are_not_json_fail_without_panic() {
        let schema = Schema(jsonschema::validator_for(&serde_json::json!({})).expect("schema"));
        let rule = BodyRule {
            required: true,
            schema: Some(&schema),
        };
        assert_eq!(rule.check(b"{").len(), 1);
        assert_eq!(rule.check(b"").len(), 1);
        assert!(rule.check(b"[1]").is_empty());
    }
}
