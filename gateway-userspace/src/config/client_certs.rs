//! Compiles client-certificate (mTLS) settings: a TLS listener's `[listeners.client_certs]`
//! (mode, CA bundles, CRLs, revocation policy) and a route's `[routes.client_cert]` (allow
//! lists, facts forwarded to the backend, RFC 8705 token binding).
//!
//! The listener's verifier is built here once, so a CRL rustls cannot use is a config error
//! with its location rather than a listener that fails at start or at reload.

use std::sync::Arc;

use toml::Spanned;

use super::compile::resolve;
use super::error::ErrorKind;
use super::proxy_model::{ClientCertsConfig, RouteClientCert};
use super::raw::Strings;
use super::reader::{Field, Keyword, Table};
use super::source::{Diagnostics, Span};
use super::tls_files;
use crate::identity::mtls::{self, CertRule, ClientAuth, RevocationPolicy};

impl Keyword for ClientAuth {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("none", Self::None),
        ("optional", Self::Optional),
        ("required", Self::Required),
    ];
}

/// How far up the chain revocation is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RevocationDepth {
    Chain,
    EndEntity,
}

impl Keyword for RevocationDepth {
    const WORDS: &'static [(&'static str, Self)] =
        &[("chain", Self::Chain), ("end_entity", Self::EndEntity)];
}

/// `[listeners.client_certs]`.
pub(crate) struct RawClientCerts {
    pub header: Span,
    pub mode: Field<ClientAuth>,
    pub ca: Field<Strings>,
    pub crls: Field<Strings>,
    pub revocation_depth: Field<RevocationDepth>,
    pub allow_unknown_revocation: Field<bool>,
    pub allow_expired_crls: Field<bool>,
}

impl RawClientCerts {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            mode: t.keyword("mode", d),
            ca: t.value("ca", d),
            crls: t.value("crls", d),
            revocation_depth: t.keyword("revocation_depth", d),
            allow_unknown_revocation: t.value("allow_unknown_revocation", d),
            allow_expired_crls: t.value("allow_expired_crls", d),
        };
        t.finish(d);
        raw
    }

    /// Whether the section asks clients for certificates (the default mode does).
    pub(crate) fn asks(&self) -> bool {
        self.mode.value_or(ClientAuth::Required) != ClientAuth::None
    }
}

/// `[routes.client_cert]`.
pub(crate) struct RawRouteClientCert {
    pub header: Span,
    pub thumbprints: Field<Strings>,
    pub subjects: Field<Strings>,
    pub issuers: Field<Strings>,
    pub dns: Field<Strings>,
    pub uris: Field<Strings>,
    pub forward: Field<Strings>,
    pub bound_token: Field<bool>,
}

impl RawRouteClientCert {
    pub(crate) fn read(mut t: Table, d: &mut Diagnostics) -> Self {
        let raw = Self {
            header: t.span().clone(),
            thumbprints: t.value("thumbprints", d),
            subjects: t.value("subjects", d),
            issuers: t.value("issuers", d),
            dns: t.value("dns", d),
            uris: t.value("uris", d),
            forward: t.value("forward", d),
            bound_token: t.value("bound_token", d),
        };
        t.finish(d);
        raw
    }
}

/// Names accepted in `forward`, with the header each one sets.
pub(crate) const FORWARD_FACTS: [(&str, &str); 6] = [
    ("thumbprint", mtls::HEADER_THUMBPRINT),
    ("subject", mtls::HEADER_SUBJECT),
    ("issuer", mtls::HEADER_ISSUER),
    ("san_dns", mtls::HEADER_SAN_DNS),
    ("san_uri", mtls::HEADER_SAN_URI),
    ("not_after", mtls::HEADER_NOT_AFTER),
];

/// A listener's client-certificate settings; `None` when the mode is `none` (no certificate
/// is asked for) or when the section had errors (reported).
pub(crate) fn listener(raw: &RawClientCerts, d: &mut Diagnostics) -> Option<ClientCertsConfig> {
    let mode = raw.mode.value_or(ClientAuth::Required);
    let errors_before = d.error_count();
    let mut roots = rustls::RootCertStore::empty();
    let mut ca_files = Vec::new();
    match &raw.ca {
        Field::Absent if mode != ClientAuth::None => {
            let kind = ErrorKind::Missing {
                key: "ca",
                table: "[listeners.client_certs]".into(),
            };
            d.at(&raw.header, kind);
        }
        Field::Present(list) => {
            if list.get_ref().is_empty() {
                let kind = ErrorKind::EmptyList {
                    key: "listeners.client_certs.ca".into(),
                    hint: "name at least one PEM bundle of the CAs that issue client certificates",
                };
                d.at(&list.span(), kind);
            }
            for file in list.get_ref() {
                let Some(path) = resolve("listeners.client_certs.ca", file, d) else {
                    continue;
                };
                match tls_files::root_store(&path) {
                    Ok(store) => roots.roots.extend(store.roots),
                    Err(e) => d.at(&file.span(), e.into()),
                }
                ca_files.push(path);
            }
        }
        _ => {}
    }
    let mut crls = Vec::new();
    let mut crl_files = Vec::new();
    if let Field::Present(list) = &raw.crls {
        for file in list.get_ref() {
            let Some(path) = resolve("listeners.client_certs.crls", file, d) else {
                continue;
            };
            match tls_files::crls(&path) {
                Ok(lists) => crls.extend(lists),
                Err(e) => d.at(&file.span(), e.into()),
            }
            crl_files.push(path);
        }
    }
    let revocation = RevocationPolicy {
        end_entity_only: raw.revocation_depth.value_or(RevocationDepth::Chain)
            == RevocationDepth::EndEntity,
        allow_unknown_status: raw.allow_unknown_revocation.value_or(false),
        allow_expired_crls: raw.allow_expired_crls.value_or(false),
    };
    if mode == ClientAuth::None || d.error_count() != errors_before {
        return None;
    }
    let roots = Arc::new(roots);
    // Built once here so that what rustls refuses (a CRL it cannot parse, say) is reported
    // with its location; the listener builds its own from the same parts.
    if let Err(e) = mtls::client_verifier_with(mode, roots.clone(), crls.clone(), revocation) {
        let span = match &raw.crls {
            Field::Present(list) if !list.get_ref().is_empty() => list.span(),
            _ => raw.header.clone(),
        };
        let kind = ErrorKind::Invalid {
            key: "listeners.client_certs".into(),
            value: "client certificate verifier".into(),
            reason: e.to_string(),
        };
        d.at(&span, kind);
        return None;
    }
    Some(ClientCertsConfig {
        mode,
        roots,
        crls,
        revocation,
        ca_files,
        crl_files,
    })
}

/// A route's certificate requirement. `has_token`: whether the route also requires a token
/// (`bound_token` needs one); `offered`: whether any listener asks for client certificates.
pub(crate) fn route(
    raw: &RawRouteClientCert,
    has_token: bool,
    offered: bool,
    d: &mut Diagnostics,
) -> RouteClientCert {
    if !offered {
        d.at(&raw.header, ErrorKind::ClientCertNotOffered);
    }
    let list = |field: &Field<Strings>| -> Vec<String> {
        field
            .present()
            .map(|l| l.get_ref().iter().map(|s| s.get_ref().clone()).collect())
            .unwrap_or_default()
    };
    if let Some(prints) = raw.thumbprints.present() {
        for t in prints.get_ref() {
            let hex: String = t.get_ref().chars().filter(|c| *c != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                let kind = ErrorKind::Invalid {
                    key: "routes.client_cert.thumbprints".into(),
                    value: t.get_ref().clone(),
                    reason: "expected the SHA-256 of the certificate's DER as 64 hex digits \
                             (`:` separators allowed)"
                        .into(),
                };
                d.at(&t.span(), kind);
            }
        }
    }
    for (field, key) in [
        (&raw.dns, "routes.client_cert.dns"),
        (&raw.uris, "routes.client_cert.uris"),
        (&raw.subjects, "routes.client_cert.subjects"),
        (&raw.issuers, "routes.client_cert.issuers"),
    ] {
        if let Some(l) = field.present() {
            for entry in l.get_ref() {
                if entry.get_ref().trim().is_empty() {
                    empty_entry(key, entry, d);
                }
            }
        }
    }
    let forward = raw
        .forward
        .present()
        .map(|l| {
            l.get_ref()
                .iter()
                .filter_map(|name| {
                    let found = FORWARD_FACTS.iter().find(|(n, _)| *n == name.get_ref());
                    if found.is_none() {
                        let kind = ErrorKind::Invalid {
                            key: "routes.client_cert.forward".into(),
                            value: name.get_ref().clone(),
                            reason: format!(
                                "not a certificate fact; expected one of {}",
                                FORWARD_FACTS.map(|(n, _)| n).join(", ")
                            ),
                        };
                        d.at(&name.span(), kind);
                    }
                    found.map(|(_, header)| *header)
                })
                .collect()
        })
        .unwrap_or_default();
    let bound_token = match raw.bound_token.present() {
        Some(flag) if *flag.get_ref() => {
            if !has_token {
                d.at(&flag.span(), ErrorKind::BoundTokenWithoutToken);
            }
            true
        }
        _ => false,
    };
    RouteClientCert {
        rule: CertRule {
            thumbprints: list(&raw.thumbprints),
            subjects: list(&raw.subjects),
            issuers: list(&raw.issuers),
            dns: list(&raw.dns),
            uris: list(&raw.uris),
        },
        forward,
        bound_token,
    }
}

fn empty_entry(key: &str, entry: &Spanned<String>, d: &mut Diagnostics) {
    let kind = ErrorKind::Invalid {
        key: key.into(),
        value: entry.get_ref().clone(),
        reason: "an empty entry matches no certificate; remove it".into(),
    };
    d.at(&entry.span(), kind);
}
