//! Compiles a route's `[routes.response]`: allowed status codes, prevent or detect, extra
//! headers to strip, and whether backend 5xx bodies are masked. Without the section a route
//! still gets the defaults of [`ResponsePolicy`].

use http::HeaderName;

use super::error::ErrorKind;
use super::raw::Strings;
use super::reader::{Field, Keyword, Table};
use super::source::Diagnostics;
use crate::proxy::response_policy::{Action, ResponsePolicy};

impl Keyword for Action {
    const WORDS: &'static [(&'static str, Self)] =
        &[("prevent", Self::Prevent), ("detect", Self::Detect)];
}

/// `[routes.response]`.
pub(crate) struct RawResponse {
    pub status_codes: Field<Vec<toml::Spanned<i64>>>,
    pub action: Field<Action>,
    pub strip_headers: Field<Strings>,
    pub mask_server_errors: Field<bool>,
}

impl RawResponse {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            status_codes: t.value("status_codes", d),
            action: t.keyword("action", d),
            strip_headers: t.value("strip_headers", d),
            mask_server_errors: t.value("mask_server_errors", d),
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
    }
}
