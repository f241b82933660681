//! Compiles a route's `[routes.response]`: allowed status codes, response validation against
//! a JSON Schema or an OpenAPI document, prevent or detect, extra headers to strip, and
//! whether backend 5xx bodies are masked. Without the section a route still gets the defaults
//! of [`ResponsePolicy`].

use std::sync::Arc;

use http::HeaderName;

use super::error::ErrorKind;
use super::raw::Strings;
use super::reader::{Field, Table};
use super::size::{self, RawSize};
use super::source::Diagnostics;
use super::validation::{invalid, read_document};
use crate::proxy::response_policy::{Action, ResponsePolicy};
use crate::validation::openapi::{self, Dialect, Parts};
use crate::validation::response::{ResponseRules, ResponseValidation};

/// Response bodies are buffered for validation up to this size unless `max_body_size` says
/// otherwise: API responses are small, and the buffer is held per request in flight.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// `[routes.response]`.
pub(crate) struct RawResponse {
    pub status_codes: Field<Vec<toml::Spanned<i64>>>,
    pub action: Field<Action>,
    pub strip_headers: Field<Strings>,
    pub mask_server_errors: Field<bool>,
    pub schema: Field<String>,
    pub openapi: Field<String>,
    pub max_body_size: Field<RawSize>,
}

impl RawResponse {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            status_codes: t.value("status_codes", d),
            action: t.keyword("action", d),
            strip_headers: t.value("strip_headers", d),
            mask_server_errors: t.value("mask_server_errors", d),
            schema: t.value("schema", d),
            openapi: t.value("openapi", d),
            max_body_size: t.value("max_body_size", d),
        };
        t.finish(d);
        raw
    }
}

pub(crate) fn policy(raw: &RawResponse, d: &mut Diagnostics) -> ResponsePolicy {
    let mut status_codes = Vec::new();
    if let Some(list) = raw.status_codes.present() {
        if list.get_ref().is_empty() {
            let kind = ErrorKind::EmptyList {
                key: "routes.response.status_codes".into(),
                hint: "list the status codes the backend may answer with, or remove the key",
            };
            d.at(&list.span(), kind);
        }
        for code in list.get_ref() {
            match u16::try_from(*code.get_ref()) {
                Ok(c) if (100..=599).contains(&c) => status_codes.push(c),
                _ => {
                    let kind = ErrorKind::Invalid {
                        key: "routes.response.status_codes".into(),
                        value: code.get_ref().to_string(),
                        reason: "an HTTP status code is from 100 to 599".into(),
                    };
                    d.at(&code.span(), kind);
                }
            }
        }
    }
    let mut strip_headers = Vec::new();
    if let Some(list) = raw.strip_headers.present() {
        for h in list.get_ref() {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => strip_headers.push(name),
                Err(_) => {
                    let kind = ErrorKind::HeaderName {
                        key: "routes.response.strip_headers".into(),
                        value: h.get_ref().clone(),
                    };
                    d.at(&h.span(), kind);
                }
            }
        }
    }
    ResponsePolicy {
        status_codes,
        action: raw.action.value_or(Action::Prevent),
        strip_headers,
        mask_server_errors: raw.mask_server_errors.value_or(true),
        body: body_validation(raw, d),
    }
}

/// `schema` or `openapi`, compiled now so a broken document is a config error at its key.
fn body_validation(raw: &RawResponse, d: &mut Diagnostics) -> Option<Arc<ResponseValidation>> {
    let (key, file, is_openapi) = match (raw.openapi.present(), raw.schema.present()) {
        (Some(_), Some(schema)) => {
            invalid(
                "routes.response.schema",
                schema,
                "give `openapi` or `schema`, not both".into(),
                d,
            );
            return None;
        }
        (Some(f), None) => ("routes.response.openapi", f, true),
        (None, Some(f)) => ("routes.response.schema", f, false),
        // `max_body_size` alone bounds nothing; writing out its default is not a mistake.
        (None, None) => return None,
    };
    let (path, rules) = read_document(key, file, d, |value| {
        if is_openapi {
            openapi::operations(value, Parts::Responses).map(ResponseRules::OpenApi)
        } else {
            openapi::compile(&value, "", Dialect::Draft202012).map(ResponseRules::Body)
        }
    })?;
    let max_body_bytes = match raw.max_body_size.present() {
        Some(s) => match size::parse(s.get_ref()) {
            Ok(n) => n,
            Err(reason) => {
                let kind = ErrorKind::Size {
                    key: "routes.response.max_body_size".into(),
                    value: s.get_ref().to_string(),
                    reason,
                };
                d.at(&s.span(), kind);
                DEFAULT_MAX_BODY
            }
        },
        None => DEFAULT_MAX_BODY,
    };
    Some(Arc::new(ResponseValidation {
        rules,
        max_body_bytes,
        file: path,
    }))
}
