//! Compiles a route's `[routes.validation]`: an OpenAPI 3.0/3.1 document (`openapi`) or a
//! JSON Schema for the body (`schema`), read and compiled now so a broken one is a config
//! error at its key (with the place inside the document) and a reload re-reads it.

use std::sync::Arc;

use toml::Spanned;

use super::compile::resolve;
use super::error::ErrorKind;
use super::raw::Strings;
use super::reader::{Field, Keyword, Table};
use super::size::{self, RawSize};
use super::source::Diagnostics;
use crate::validation::openapi::{self, Dialect};
use crate::validation::{Action, RouteValidation, Rules, UnknownOperations};

/// `[routes.validation]`.
pub(crate) struct RawValidation {
    pub openapi: Field<String>,
    pub schema: Field<String>,
    pub content_types: Field<Strings>,
    pub max_body_size: Field<RawSize>,
    pub action: Field<Action>,
    pub unknown_operations: Field<UnknownOperations>,
}

impl RawValidation {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            openapi: t.value("openapi", d),
            schema: t.value("schema", d),
            content_types: t.value("content_types", d),
            max_body_size: t.value("max_body_size", d),
            action: t.keyword("action", d),
            unknown_operations: t.keyword("unknown_operations", d),
        };
        t.finish(d);
        raw
    }
}

impl Keyword for Action {
    const WORDS: &'static [(&'static str, Self)] =
        &[("prevent", Self::Prevent), ("detect", Self::Detect)];
}

impl Keyword for UnknownOperations {
    const WORDS: &'static [(&'static str, Self)] =
        &[("pass", Self::Pass), ("refuse", Self::Refuse)];
}

/// The compiled validation; `None` when the table is unusable (errors reported).
/// `route_max` is the route's own body limit, the default and the ceiling here.
pub(crate) fn compile(
    raw: &RawValidation,
    header: &super::source::Span,
    route_max: u64,
    d: &mut Diagnostics,
) -> Option<Arc<RouteValidation>> {
    let (file_key, file, is_openapi) = match (raw.openapi.present(), raw.schema.present()) {
        (Some(_), Some(schema)) => {
            invalid(
                "routes.validation.schema",
                schema,
                "give `openapi` or `schema`, not both".into(),
                d,
            );
            return None;
        }
        (Some(f), None) => ("routes.validation.openapi", f, true),
        (None, Some(f)) => ("routes.validation.schema", f, false),
        (None, None) => {
            if !matches!(raw.openapi, Field::Invalid) && !matches!(raw.schema, Field::Invalid) {
                let kind = ErrorKind::Missing {
                    key: "openapi",
                    table: "routes.validation (or `schema`)".into(),
                };
                d.at(header, kind);
            }
            return None;
        }
    };
    let (path, rules) = read_document(file_key, file, d, |value| {
        if is_openapi {
            openapi::operations(value, openapi::Parts::Requests).map(Rules::OpenApi)
        } else {
            openapi::compile(&value, "", Dialect::Draft202012).map(Rules::Body)
        }
    })?;
    let content_types = match raw.content_types.present() {
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|m| media_range(m, d))
            .collect(),
        // A body schema is JSON Schema: JSON bodies, unless told otherwise.
        None if !is_openapi => vec!["application/json".to_string()],
        None => Vec::new(),
    };
    let max_body_bytes = match raw.max_body_size.present() {
        Some(s) => match size::parse(s.get_ref()) {
            Ok(n) if n <= route_max => n,
            Ok(_) => {
                let kind = ErrorKind::Invalid {
                    key: "routes.validation.max_body_size".into(),
                    value: s.get_ref().to_string(),
                    reason: format!(
                        "larger than the route's `max_body_size` ({route_max} bytes), which \
                         refuses such bodies anyway"
                    ),
                };
                d.at(&s.span(), kind);
                route_max
            }
            Err(reason) => {
                let kind = ErrorKind::Size {
                    key: "routes.validation.max_body_size".into(),
                    value: s.get_ref().to_string(),
                    reason,
                };
                d.at(&s.span(), kind);
                route_max
            }
        },
        None => route_max,
    };
    Some(Arc::new(RouteValidation {
        action: raw.action.value_or(Action::Prevent),
        content_types,
        max_body_bytes,
        unknown_operations: raw.unknown_operations.value_or(UnknownOperations::Pass),
        rules,
        file: path,
    }))
}

/// Reads the OpenAPI document or JSON Schema named at `key` (relative to the config file) and
/// compiles its parsed value with `compile`; a failure is reported at the key, with the place
/// inside the document.
pub(crate) fn read_document<T>(
    key: &str,
    file: &Spanned<String>,
    d: &mut Diagnostics,
    compile: impl FnOnce(serde_json::Value) -> Result<T, openapi::DocumentError>,
) -> Option<(std::path::PathBuf, T)> {
    let path = resolve(key, file, d)?;
    let compiled = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            let value = openapi::parse(&text).map_err(|e| e.to_string())?;
            compile(value).map_err(|e| e.to_string())
        });
    match compiled {
        Ok(t) => Some((path, t)),
        Err(reason) => {
            invalid(key, file, reason, d);
            None
        }
    }
}

pub(crate) fn invalid(key: &str, file: &Spanned<String>, reason: String, d: &mut Diagnostics) {
    let kind = ErrorKind::Invalid {
        key: key.into(),
        value: file.get_ref().clone(),
        reason,
    };
    d.at(&file.span(), kind);
}

fn media_range(m: &Spanned<String>, d: &mut Diagnostics) -> Option<String> {
    let v = m.get_ref().trim().to_ascii_lowercase();
    let ok = v.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a != "*" || b == "*") && !v.contains([';', ' ', ','])
    });
    if ok {
        return Some(v);
    }
    invalid(
        "routes.validation.content_types",
        m,
        "expected a media type such as `application/json` or a range such as `application/*`"
            .into(),
        d,
    );
    None
}
