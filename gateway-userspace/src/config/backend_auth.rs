//! Compiles a pool's `[pools.auth]` (how the gateway authenticates to its backends) and the
//! client certificate of `[pools.tls]`. Secrets are read here, from a file or an environment
//! variable, so a missing secret is a config error at its key, and never printed.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::compile::resolve;
use super::error::ErrorKind;
use super::proxy_compile::duration;
use super::proxy_model::ClientIdentity;
use super::reader::{Field, Keyword, Table};
use super::source::{Diagnostics, Span};
use super::tls_files::{self, PairFile};
use crate::identity::oidc::{OidcError, check_url};
use crate::proxy::backend_auth::{BackendAuthConfig, ClientAuthMethod, ClientCredentials, Secret};

pub(crate) mod defaults {
    use std::time::Duration;

    /// A backend token is replaced this long before it expires.
    pub(crate) const REFRESH_BEFORE: Duration = Duration::from_secs(60);
    pub(crate) const MAX_REFRESH_BEFORE: Duration = Duration::from_secs(3600);
    /// Deadline of one token request.
    pub(crate) const TOKEN_TIMEOUT: Duration = Duration::from_secs(5);
}

/// The kinds of `[pools.auth]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthKind {
    Basic,
    ClientCredentials,
}

impl Keyword for AuthKind {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("basic", Self::Basic),
        ("client_credentials", Self::ClientCredentials),
    ];
}

impl Keyword for ClientAuthMethod {
    const WORDS: &'static [(&'static str, Self)] = &[("basic", Self::Basic), ("post", Self::Post)];
}

/// `[pools.auth]`.
pub(crate) struct RawBackendAuth {
    pub header: Span,
    pub kind: Option<Spanned<AuthKind>>,
    pub username: Field<String>,
    pub password_file: Field<String>,
    pub password_env: Field<String>,
    pub token_url: Field<String>,
    pub client_id: Field<String>,
    pub client_secret_file: Field<String>,
    pub client_secret_env: Field<String>,
    pub client_auth: Field<ClientAuthMethod>,
    pub scope: Field<String>,
    pub resource: Field<String>,
    pub ca: Field<String>,
    pub refresh_before: Field<String>,
}

impl RawBackendAuth {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            kind: t.required_keyword("type", d),
            username: t.value("username", d),
            password_file: t.value("password_file", d),
            password_env: t.value("password_env", d),
            token_url: t.value("token_url", d),
            client_id: t.value("client_id", d),
            client_secret_file: t.value("client_secret_file", d),
            client_secret_env: t.value("client_secret_env", d),
            client_auth: t.keyword("client_auth", d),
            scope: t.value("scope", d),
            resource: t.value("resource", d),
            ca: t.value("ca", d),
            refresh_before: t.value("refresh_before", d),
        };
        t.finish(d);
        raw
    }
}

/// The compiled `[pools.auth]`; `None` when it had errors (reported).
pub(crate) fn backend_auth(raw: &RawBackendAuth, d: &mut Diagnostics) -> Option<BackendAuthConfig> {
    let kind = *raw.kind.as_ref()?.get_ref();
    let before = d.error_count();
    let only =
        |field: &Field<String>, key: &'static str, applies: &'static str, d: &mut Diagnostics| {
            if let Some(v) = field.present() {
                let kind = ErrorKind::NotApplicable {
                    key: format!("pools.auth.{key}"),
                    applies,
                };
                d.at(&v.span(), kind);
            }
        };
    const BASIC: &str = "with `type = \"basic\"`";
    const CC: &str = "with `type = \"client_credentials\"`";
    let config = match kind {
        AuthKind::Basic => {
            for (f, k) in [
                (&raw.token_url, "token_url"),
                (&raw.client_id, "client_id"),
                (&raw.client_secret_file, "client_secret_file"),
                (&raw.client_secret_env, "client_secret_env"),
                (&raw.scope, "scope"),
                (&raw.resource, "resource"),
                (&raw.ca, "ca"),
                (&raw.refresh_before, "refresh_before"),
            ] {
                only(f, k, CC, d);
            }
            if let Some(m) = raw.client_auth.present() {
                let kind = ErrorKind::NotApplicable {
                    key: "pools.auth.client_auth".into(),
                    applies: CC,
                };
                d.at(&m.span(), kind);
            }
            // Every key is checked before giving up, so all mistakes show at once.
            let username = required(&raw.username, "username", &raw.header, d);
            if username.as_ref().is_some_and(|u| u.contains(':')) {
                invalid(
                    &raw.username,
                    "pools.auth.username",
                    "HTTP Basic user names cannot contain `:` (RFC 7617)",
                    d,
                );
            }
            let password = secret(
                (&raw.password_file, "password_file"),
                (&raw.password_env, "password_env"),
                &raw.header,
                d,
            );
            BackendAuthConfig::Basic {
                username: username?,
                password: password?,
            }
        }
        AuthKind::ClientCredentials => {
            for (f, k) in [
                (&raw.username, "username"),
                (&raw.password_file, "password_file"),
                (&raw.password_env, "password_env"),
            ] {
                only(f, k, BASIC, d);
            }
            let ca_roots = raw.ca.present().and_then(|ca| {
                let path = resolve("pools.auth.ca", ca, d)?;
                tls_files::root_store(&path)
                    .map_err(|e| d.at(&ca.span(), e.into()))
                    .ok()
                    .map(Arc::new)
            });
            let token_url = required(&raw.token_url, "token_url", &raw.header, d).and_then(|url| {
                check_url(&url, !matches!(raw.ca, Field::Absent))
                    .map_err(|e| {
                        let reason = match e {
                            OidcError::NoCaBundle(_) => "is https:// but there is no `ca`: name \
                                the PEM bundle of the CA that signed the token endpoint's \
                                certificate"
                                .to_owned(),
                            OidcError::InsecureUrl(_) => "is plain http:// to a host that is \
                                not loopback: the client secret would travel in clear; use \
                                https:// with `ca`"
                                .to_owned(),
                            other => other.to_string(),
                        };
                        invalid(&raw.token_url, "pools.auth.token_url", &reason, d);
                    })
                    .ok()
            });
            let client_id = required(&raw.client_id, "client_id", &raw.header, d);
            let client_secret = secret(
                (&raw.client_secret_file, "client_secret_file"),
                (&raw.client_secret_env, "client_secret_env"),
                &raw.header,
                d,
            );
            let refresh_before = duration(
                &raw.refresh_before,
                "pools.auth.refresh_before",
                defaults::MAX_REFRESH_BEFORE,
                d,
            )
            .value_or(defaults::REFRESH_BEFORE);
            BackendAuthConfig::ClientCredentials(ClientCredentials {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scope: raw.scope.present().map(|s| s.get_ref().clone()),
                resource: raw.resource.present().map(|s| s.get_ref().clone()),
                client_auth: raw.client_auth.value_or(ClientAuthMethod::default()),
                ca_roots,
                refresh_before: Duration::from_secs(refresh_before.as_secs()),
                timeout: defaults::TOKEN_TIMEOUT,
            })
        }
    };
    (d.error_count() == before).then_some(config)
}

fn required(
    field: &Field<String>,
    key: &'static str,
    header: &Span,
    d: &mut Diagnostics,
) -> Option<String> {
    match field {
        Field::Present(v) if !v.get_ref().is_empty() => Some(v.get_ref().clone()),
        Field::Present(v) => {
            invalid(field, &format!("pools.auth.{key}"), "must not be empty", d);
            let _ = v;
            None
        }
        Field::Absent => {
            let kind = ErrorKind::Missing {
                key,
                table: "[pools.auth]".into(),
            };
            d.at(header, kind);
            None
        }
        Field::Invalid => None,
    }
}

fn invalid(field: &Field<String>, key: &str, reason: &str, d: &mut Diagnostics) {
    if let Some(v) = field.present() {
        let kind = ErrorKind::Invalid {
            key: key.into(),
            value: v.get_ref().clone(),
            reason: reason.into(),
        };
        d.at(&v.span(), kind);
    }
}

/// A secret from exactly one of a file (its first line, without the line ending) or an
/// environment variable. Errors name the file or variable, never the value.
fn secret(
    (file, file_key): (&Field<String>, &'static str),
    (env, env_key): (&Field<String>, &'static str),
    header: &Span,
    d: &mut Diagnostics,
) -> Option<Secret> {
    match (file.present(), env.present()) {
        (Some(_), Some(e)) => {
            let kind = ErrorKind::Invalid {
                key: format!("pools.auth.{env_key}"),
                value: e.get_ref().clone(),
                reason: format!("give the secret one way: `{file_key}` or `{env_key}`, not both"),
            };
            d.at(&e.span(), kind);
            None
        }
        (Some(f), None) => {
            let path = resolve(&format!("pools.auth.{file_key}"), f, d)?;
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let value = text.lines().next().unwrap_or_default().to_owned();
                    if value.is_empty() {
                        let kind = ErrorKind::Invalid {
                            key: format!("pools.auth.{file_key}"),
                            value: f.get_ref().clone(),
                            reason: "the file's first line is empty".into(),
                        };
                        d.at(&f.span(), kind);
                        return None;
                    }
                    Some(Secret::new(value))
                }
                Err(e) => {
                    let kind = ErrorKind::Invalid {
                        key: format!("pools.auth.{file_key}"),
                        value: f.get_ref().clone(),
                        reason: format!("cannot read it: {e}"),
                    };
                    d.at(&f.span(), kind);
                    None
                }
            }
        }
        (None, Some(e)) => match std::env::var(e.get_ref()) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                let kind = ErrorKind::Invalid {
                    key: format!("pools.auth.{env_key}"),
                    value: e.get_ref().clone(),
                    reason: "the environment variable is not set or empty".into(),
                };
                d.at(&e.span(), kind);
                None
            }
        },
        (None, None) => {
            if matches!(file, Field::Invalid) || matches!(env, Field::Invalid) {
                return None;
            }
            let kind = ErrorKind::Missing {
                key: file_key,
                table: format!("[pools.auth] (or `{env_key}`)"),
            };
            d.at(header, kind);
            None
        }
    }
}

/// The gateway's client certificate for mTLS to backends or Redis (`client_cert` and
/// `client_key` of `[pools.tls]` or `[cluster.tls]`, named by `table`); both or neither.
pub(crate) fn client_identity(
    cert: &Field<String>,
    key: &Field<String>,
    header: &Span,
    table: &str,
    d: &mut Diagnostics,
) -> Option<ClientIdentity> {
    let (cert, key) = match (cert.present(), key.present()) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) | (None, Some(_)) => {
            let missing = if cert.present().is_some() {
                "client_key"
            } else {
                "client_cert"
            };
            let kind = ErrorKind::Missing {
                key: missing,
                table: format!("[{table}] (client_cert and client_key go together)"),
            };
            d.at(header, kind);
            return None;
        }
    };
    let cert_file = resolve(&format!("{table}.client_cert"), cert, d)?;
    let key_file = resolve(&format!("{table}.client_key"), key, d)?;
    let chain = tls_files::certificates(&cert_file)
        .map_err(|e| d.at(&cert.span(), e.into()))
        .ok()?;
    let private = tls_files::private_key(&key_file)
        .map_err(|e| d.at(&key.span(), e.into()))
        .ok()?;
    // Checked the way the listeners' pairs are: a key that is not the certificate's fails
    // every handshake, so it is a config error.
    match tls_files::certified_key(chain.clone(), &cert_file, private.clone_key(), &key_file) {
        Ok(_) => Some(ClientIdentity {
            chain,
            key: Arc::new(private),
            cert_file,
            key_file,
        }),
        Err((PairFile::Cert, e)) => {
            d.at(&cert.span(), e.into());
            None
        }
        Err((PairFile::Key, e)) => {
            d.at(&key.span(), e.into());
            None
        }
    }
}
