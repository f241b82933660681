//! Compiles `[api_keys]`: the key file read and indexed (its errors located in it), the header
//! and query parameter clients present keys in checked, and key scopes checked against the
//! routes. A route's `api_key` flag compiles in [`super::routes`]; the keys themselves are
//! [`crate::identity::api_keys`].

use std::sync::Arc;

use http::HeaderName;

use super::compile::resolve;
use super::error::{ConfigError, ErrorKind, Location};
use super::proxy_model::{ApiKeysConfig, RouteConfig};
use super::proxy_raw::RawApiKeys;
use super::reader::Field;
use super::source::Diagnostics;
use super::token::forbidden_claim_header;
use crate::identity::api_keys::{
    DEFAULT_HEADER_NAME, DEFAULT_QUERY_PARAM, KeyFileErrorKind, KeyStore, Scope,
};

/// `[api_keys]`, or `None` when absent or when anything in it (the key file included) is wrong
/// (reported).
pub(crate) fn api_keys(raw: &Field<RawApiKeys>, d: &mut Diagnostics) -> Option<ApiKeysConfig> {
    let raw = raw.present()?.get_ref();
    let errors_before = d.error_count();
    let header = match raw.header.present() {
        None => DEFAULT_HEADER_NAME,
        Some(name) => match HeaderName::from_bytes(name.get_ref().as_bytes()) {
            Err(_) => {
                let kind = ErrorKind::HeaderName {
                    key: "api_keys.header".into(),
                    value: name.get_ref().clone(),
                };
                d.at(&name.span(), kind);
                DEFAULT_HEADER_NAME
            }
            Ok(header) => {
                if let Some(reason) = forbidden_claim_header(&header) {
                    let kind = ErrorKind::ForbiddenKeyHeader {
                        value: name.get_ref().clone(),
                        reason,
                    };
                    d.at(&name.span(), kind);
                }
                header
            }
        },
    };
    let query_param = match raw.query_param.present() {
        None => DEFAULT_QUERY_PARAM.to_owned(),
        Some(p) => {
            if p.get_ref().is_empty() {
                let kind = ErrorKind::Invalid {
                    key: "api_keys.query_param".into(),
                    value: String::new(),
                    reason: "the parameter name must not be empty".into(),
                };
                d.at(&p.span(), kind);
            }
            p.get_ref().clone()
        }
    };
    let file = raw.file.as_ref()?;
    let path = resolve("api_keys.file", file, d)?;
    let store = match KeyStore::load(&path) {
        Ok(store) => store,
        Err(errors) => {
            for e in errors.into_vec() {
                match e.kind {
                    // The file as a whole: reported where the config names it.
                    KeyFileErrorKind::Read(reason) => {
                        let kind = ErrorKind::KeyFileRead {
                            path: file.get_ref().clone(),
                            reason,
                        };
                        d.at(&file.span(), kind);
                    }
                    kind => d.push(ConfigError {
                        location: e.location,
                        kind: ErrorKind::KeyFile(kind),
                    }),
                }
            }
            return None;
        }
    };
    if d.error_count() != errors_before {
        return None;
    }
    Some(ApiKeysConfig {
        store: Arc::new(store),
        file: path,
        header,
        query_param,
    })
}

/// Refuses keys whose scope names a product or API (route) that no route has: such a key
/// would be refused everywhere, which is a typo rather than an intent. Located in the key
/// file, at the entry's `[[keys]]` header.
pub(crate) fn check_scopes(keys: &ApiKeysConfig, routes: &[RouteConfig], d: &mut Diagnostics) {
    for entry in keys.store.entries() {
        let known = match entry.scope() {
            Scope::All => true,
            Scope::Product(p) => routes.iter().any(|r| r.product.as_deref() == Some(&**p)),
            Scope::Api(a) => routes.iter().any(|r| r.name == **a),
        };
        if !known {
            d.push(ConfigError {
                location: Location {
                    file: keys.file.clone(),
                    line: entry.line(),
                    column: 1,
                },
                kind: ErrorKind::UnknownKeyScope {
                    id: entry.id().to_owned(),
                    scope: entry.scope().to_string(),
                },
            });
        }
    }
}
